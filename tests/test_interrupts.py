"""SIGINT and SIGTERM stop every command within a second, in every output mode, exit 130/143 and
leave nothing half-written (issue 24). Each case runs the real `moesim` in a child process, sends
the signal at a random moment (seeded), to the process alone or to its whole process group (as a
terminal's Ctrl-C does, reaching the plan feed's child and a CBC solver too), and checks the exit
status, the message, the time to stop and every output. The default set runs one moment per
command family; the `slow` set runs every command at several seeds with both signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from moesim.outputs import MARKER

from conftest import EXAMPLES, ROOT

MIXTRAL = str(EXAMPLES / "mixtral-decode-8xh100.yaml")
SERVING = str(EXAMPLES / "serving-mixtral-8xh100.yaml")
TRACE = str(EXAMPLES / "traces" / "tiny-moe.parquet")
SWEEP_FILE = str(EXAMPLES / "sweeps" / "mixtral-batch-overlap.yaml")
TABLE = str(ROOT / "hardware_profiles" / "measurements" / "h100-2026-11-26-fused" / "measurements.csv")
STOP_WITHIN_S = 2.0  # "within a second", with room for a loaded 2-core CI machine


class Command(NamedTuple):
    name: str
    argv: list[str]
    outputs: list[str]  # folders or files (relative to the case folder) the command may write
    window: tuple[float, float] = (0.3, 3.0)  # seconds after the start in which the signal is sent
    stop_within: float = STOP_WITHIN_S


COMMANDS = {c.name: c for c in [
    Command("simulate-none", ["simulate", MIXTRAL, "--steps", "80", "--out", "out", "--progress", "none"], ["out"]),
    Command("simulate-plain", ["simulate", MIXTRAL, "--steps", "80", "--out", "out", "--progress", "plain"], ["out"]),
    Command("simulate-bar", ["simulate", MIXTRAL, "--steps", "80", "--out", "out", "--progress", "bar"], ["out"]),
    Command("simulate-json", ["simulate", MIXTRAL, "--steps", "80", "--out", "out", "--quiet", "--json"], ["out"]),
    Command("simulate-report", ["simulate", MIXTRAL, "--steps", "20", "--out", "out", "--report", "--quiet"],
            ["out"]),
    Command("serving", ["simulate", SERVING, "--set", "serving.num_requests=32", "--out", "out", "--progress",
                        "plain"], ["out"]),
    Command("sweep", ["simulate", SERVING, "--set", "serving.num_requests=8", "--load", "2,4,8", "--out", "out",
                      "--progress", "none"], ["out"], (0.3, 5.0)),
    Command("sweep-file", ["sweep", SWEEP_FILE, "--out", "out", "--workers", "2", "--quiet"], ["out"], (0.3, 4.0)),
    Command("place-highs", ["place", MIXTRAL, "--methods", "eplb,ilp", "--solver", "highs", "--time-limit", "5",
                            "--out", "out"], ["out"]),
    Command("place-cbc", ["place", MIXTRAL, "--methods", "eplb,ilp", "--solver", "cbc", "--time-limit", "5",
                          "--out", "out"], ["out"]),
    Command("roofline", ["roofline", MIXTRAL, "--out", "out"], ["out"]),
    Command("calibrate-table", ["calibrate", "--from-table", TABLE, "--profile", "H100-SXM", "--out", "out"],
            ["out"], (0.5, 6.0)),
    # a CPU GEMM being timed is not cut short: the command stops once it returns (up to ~1 s on 2 cores)
    Command("calibrate-cpu", ["calibrate", "--device", "cpu", "--size", "small", "--out", "out"], ["out"],
            (1.0, 12.0), 3.0),
    Command("report", ["report", "RUN", "--out", "rep"], ["rep"], (0.3, 2.5)),
    Command("trace-stats", ["trace", "stats", TRACE, "--out", "out"], ["out"], (0.3, 2.0)),
    Command("trace-convert", ["trace", "convert", TRACE, "t.parquet", "--sort"], ["t.parquet"], (0.3, 1.5)),
    Command("trace-fit", ["trace", "fit", TRACE, "--out", "g.yaml"], ["g.yaml"], (0.3, 2.0)),
    Command("config-show", ["config", "show", MIXTRAL], [], (0.1, 0.8)),
    Command("requests", ["requests", str(EXAMPLES / "workloads" / "requests-bursty.yaml"), "--out", "r.parquet"],
            ["r.parquet"], (0.2, 1.5)),
]}


class Outcome(NamedTuple):
    code: int | None
    err: str
    stop_s: float
    finished_first: bool


_STARTUP: list[float] = []


def startup_s() -> float:
    """Seconds from starting a `moesim` process to its handlers being in place (measured once, as
    the time `moesim --version` takes): a signal before that meets Python's defaults, not moesim."""
    if not _STARTUP:
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "moesim.cli", "--version"], check=True, capture_output=True)
        _STARTUP.append(time.monotonic() - t)
    return _STARTUP[0]


def interrupt(argv: list[str], folder: Path, seed: int, signum: int, window: tuple[float, float],
              after_line: str | None = None) -> Outcome:
    """Run `moesim argv` in `folder` (its own process group), send `signum` at a seeded random
    moment in `window` (never before moesim has started; with `after_line`, counted from the moment
    that line appears on stderr), wait; fail if it leaves a process behind."""
    rng = random.Random(seed)
    window = (max(window[0], startup_s()), max(window[1], startup_s() + 0.5))
    group = seed % 2 == 1  # odd seeds: the whole process group, as a terminal's Ctrl-C
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "moesim.cli", *argv], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen = b""
    if after_line is not None:  # a phase of the command, not a wall-clock guess that a faster machine misses
        window = (window[0], max(window))
        for line in proc.stderr:
            seen += line
            if after_line.encode() in line:
                break
    time.sleep(rng.uniform(*window))
    finished_first = proc.poll() is not None
    sent = time.monotonic()
    if not finished_first:
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"{argv} ignored {signal.Signals(signum).name} for 60 s")
    stop = time.monotonic() - sent
    survivors = _group_alive(proc.pid)
    if survivors:  # e.g. a plan-feed child its parent did not stop: it would hold the outputs' pipes
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{argv} left a process of its group running after it exited")
    return Outcome(proc.returncode, (seen + err).decode(errors="replace"), stop, finished_first)


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc (Linux); elsewhere, any."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running, a moment after its leader exited."""
    for _ in range(20):
        if not _members(pgid):
            return False
        time.sleep(0.05)
    return True


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".partial-" in p.name or ".old-" in p.name)


def check_outputs(command: Command, folder: Path) -> None:
    """Every output is absent or whole; nothing hidden is left behind."""
    assert leftovers(folder) == [], leftovers(folder)
    for name in command.outputs:
        path = folder / name
        if not path.exists():
            continue
        if path.is_dir():
            assert (path / MARKER).is_file(), f"{path} exists without moesim's marker: {list(path.iterdir())}"
            sweep = path / "sweep.json"
            if sweep.exists():  # an interrupted sweep keeps only whole points, and says which
                info = json.loads(sweep.read_text())
                kept = sorted(p.name for p in path.iterdir() if p.is_dir())
                assert kept == sorted(x.replace("/", "-per-") for x in info["finished"]), (kept, info)
                assert all((path / k / MARKER).is_file() for k in kept)
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            assert pq.read_table(path).num_rows > 0  # a whole file
        else:
            import yaml

            assert yaml.safe_load(path.read_text())  # a whole file


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> str:
    """A finished run directory for `moesim report` to read."""
    from moesim.cli import main

    out = tmp_path_factory.mktemp("interrupts") / "run"
    assert main(["simulate", MIXTRAL, "--steps", "20", "--out", str(out), "--quiet"]) == 0
    return str(out)


def check(command: Command, folder: Path, seed: int, signum: int, run: str = "") -> Outcome:
    argv = [run if a == "RUN" else a for a in command.argv]
    out = interrupt(argv, folder, seed, signum, command.window)
    assert "Traceback" not in out.err, out.err
    if out.finished_first:
        assert out.code == 0, out.err
    else:
        assert out.code in (128 + signum, 0), f"exit {out.code}: {out.err}"
        if out.code != 0:
            assert f"interrupted ({signal.Signals(signum).name})" in out.err, out.err
            assert out.stop_s < command.stop_within, f"took {out.stop_s:.2f} s to stop"
    check_outputs(command, folder)
    return out


FAST = [("simulate-none", 0, signal.SIGINT), ("simulate-plain", 1, signal.SIGTERM), ("serving", 1, signal.SIGINT),
        ("sweep", 2, signal.SIGTERM), ("sweep-file", 1, signal.SIGINT), ("place-highs", 0, signal.SIGINT),
        ("place-cbc", 3, signal.SIGTERM)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name,seed,signum", FAST, ids=[f"{n}-{s}-{signal.Signals(g).name}" for n, s, g in FAST])
def test_a_signal_at_a_random_moment_stops_the_command_cleanly(tmp_path, name, seed, signum):
    check(COMMANDS[name], tmp_path, seed, signum)


SLOW = [(name, seed, sig) for name in COMMANDS for seed in range(3) for sig in (signal.SIGINT, signal.SIGTERM)]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name,seed,signum", SLOW, ids=[f"{n}-{s}-{signal.Signals(g).name}" for n, s, g in SLOW])
def test_every_command_stops_cleanly_at_random_moments(tmp_path, run_dir, name, seed, signum):
    check(COMMANDS[name], tmp_path, 10 + seed, signum, run_dir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_during_the_solver_reaches_python_and_is_not_swallowed(tmp_path):
    """HiGHS runs in its own thread and highspy's handler would swallow Ctrl-C: a signal during a long
    solve stops the command within a second instead of after the time limit."""
    argv = ["place", MIXTRAL, "--methods", "ilp", "--solver", "highs", "--time-limit", "60", "--steps", "64",
            "--redundant", "8", "--out", "out"]  # the ILP takes ~5 s (fast machine) to ~13 s (2 cores), mostly HiGHS
    out = interrupt(argv, tmp_path, 0, signal.SIGINT, (2.5, 2.5), after_line="placing with ilp")
    assert out.code == 130 and out.stop_s < STOP_WITHIN_S, (out.code, out.stop_s, out.err)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


ORPHAN = """
import os, sys, time
from moesim.simulator.plan_feed import ProcessFeed

class Plan:
    payload = b"x" * 65536  # a few plans fill the pipe

def plans():
    while True:
        yield [Plan()]

feed = ProcessFeed(plans())
feed.next()
print(feed._proc.pid, flush=True)
time.sleep(0.3)  # the child fills the pipe and blocks on its next send
os._exit(0)  # the parent dies without stopping it (as an interrupt before the engine's cleanup would)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plan feed forks on Linux only")
def test_a_plan_feed_child_does_not_outlive_its_parent():
    """The forked plan builder must not block for ever on a full pipe once its parent is gone (it
    would hold the parent's stdout and stderr open, so whoever reads them would wait for ever)."""
    out = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=30)
    child = int(out.stdout.split()[0])
    for _ in range(60):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the plan feed's child was still running 3 s after its parent died")


def test_a_signal_a_library_turned_into_its_own_error_is_still_the_interruption(monkeypatch, capsys):
    """A signal during a C extension's import comes back as ImportError("initialization failed")
    (CI saw it in scipy's HiGHS wrapper): the command still exits 143 with the interrupt message,
    no traceback."""
    import argparse

    from moesim import cli, interrupts

    def cut_short(args):
        interrupts._seen.append(signal.SIGTERM)  # what the handler records before it raises
        try:
            raise interrupts.Interrupted(signal.SIGTERM)
        except interrupts.Interrupted as err:
            raise ImportError("initialization failed") from err

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=cut_short)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err and "SIGTERM" in err


def test_an_error_without_a_signal_is_not_taken_for_one(monkeypatch):
    import argparse

    from moesim import cli

    def broken(args):
        raise ImportError("a real missing module")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=broken)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(ImportError):
        cli.main([])


def test_a_signal_inside_a_weakref_callback_is_raised_again_where_it_is_not_lost():
    """A signal that lands in a WeakValueDictionary's removal callback (the garbage collector runs
    it anywhere; Python would print "Exception ignored" with a traceback and drop the exception) is
    redelivered to the main thread, which then stops (CI: roofline-0-SIGINT printed that traceback)."""
    from types import SimpleNamespace

    from moesim import interrupts

    code = SimpleNamespace(co_name="remove", co_filename="/usr/lib/python3.11/weakref.py")
    frame = SimpleNamespace(f_code=code, f_back=None)
    assert interrupts._where_exceptions_are_ignored(frame)
    with interrupts.handling_signals():
        interrupts._handler(signal.SIGINT, frame)  # remembered, not raised here
        with pytest.raises(KeyboardInterrupt):
            for _ in range(200):
                time.sleep(0.01)
    assert not interrupts._where_exceptions_are_ignored(SimpleNamespace(f_code=SimpleNamespace(
        co_name="remove", co_filename="/work/app/cleanup.py"), f_back=None))


def test_a_redelivered_signal_after_check_raised_it_does_not_interrupt_the_cleanup():
    """CI (roofline-0-SIGTERM): a signal in a weakref callback was redelivered while `check()` had
    already raised it and the CLI was printing what it kept; the redelivery raised again inside
    that print. Once raised, later deliveries are only remembered."""
    from types import SimpleNamespace

    from moesim import interrupts

    frame = SimpleNamespace(f_code=SimpleNamespace(co_name="remove", co_filename="/x/weakref.py"), f_back=None)
    with interrupts.handling_signals():
        interrupts._handler(signal.SIGTERM, frame)  # swallowed here, its redelivery on a timer
        with pytest.raises(interrupts.Interrupted):
            interrupts.check()
        time.sleep(0.2)  # the redelivery arrives during the "cleanup": it must not raise
        assert interrupts.pending() == signal.SIGTERM


@pytest.mark.parametrize("solver", ["cbc", "highs"])
def test_a_signal_the_solver_library_swallowed_stops_the_placement_after_that_solve(monkeypatch, solver):
    """PuLP closes CBC's log under a bare `except: pass`, so a signal landing there is lost as an
    exception (CI saw place-cbc run on for 3.8 s and write its folder): the ILP raises it as soon as
    the solve returns instead of solving the remaining layers."""
    import pulp

    from moesim import interrupts
    from moesim.placement.ilp import IlpOptions, _run_solver

    def swallowing_solve(self, solver=None, **kwargs):
        interrupts._seen.append(signal.SIGTERM)  # the handler recorded it; the library ate the raise
        return 1

    monkeypatch.setattr(pulp.LpProblem, "solve", swallowing_solve)
    monkeypatch.setattr(interrupts, "_seen", [])
    prob = pulp.LpProblem("p", pulp.LpMinimize)
    prob += prob.add_variable("x", lowBound=0)
    if solver == "highs":
        pytest.importorskip("highspy")
        monkeypatch.setattr(pulp.LpProblem, "solverModel", None, raising=False)
    with pytest.raises(interrupts.Interrupted):
        _run_solver(prob, solver, IlpOptions(solver=solver))
