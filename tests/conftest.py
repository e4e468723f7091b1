"""Shared fixtures: paths to bundled examples and the hand-calculation toy scenario."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def toy_config() -> dict:
    """The toy scenario (2 devices, 4 experts, fixed routing) as a mutable mapping."""
    return yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())


def toy_file(tmp_path: Path, config: dict) -> Path:
    """Write a (modified) toy config next to copies of the toy profiles."""
    for f in (DATA / "toy").glob("*.yaml"):
        if f.name != "toy-scenario.yaml":
            (tmp_path / f.name).write_text(f.read_text())
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def example_config(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def shrink_serving(cfg: dict, requests: int = 3, output_tokens: int = 3) -> dict:
    """A serving example cut to a few short requests (smoke tests of every example stay fast)."""
    sv = cfg["serving"]
    sv["num_requests"] = requests
    sv["output_tokens"] = {"dist": "fixed", "value": output_tokens}
    sv["prompt_tokens"] = {"dist": "fixed", "value": 64}
    if "users" in sv:
        sv["users"] = min(sv["users"], requests)
    return cfg


def write_config(tmp_path: Path, config: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------- example runs shared across modules

class ExampleRuns:
    """Each config simulated once per session, its run directory (and its run report, when asked for)
    kept: several modules report on the same few example runs, and a report is seconds of plotting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[str, tuple[object, Path]] = {}
        self._reports: dict[str, Path] = {}

    def run(self, config: dict, label: str) -> tuple[object, Path]:
        """(SimResult, run directory) of `config` (paths relative to examples/)."""
        from moesim.simulator.config import config_from_dict
        from moesim.simulator.run import simulate, write_run_dir

        key = yaml.safe_dump(config, sort_keys=True)
        if key not in self._runs:
            result = simulate(config_from_dict(config, EXAMPLES))
            self._runs[key] = (result, write_run_dir(result, self.root / f"{label}-{len(self._runs)}"))
        return self._runs[key]

    def report(self, config: dict, label: str) -> Path:
        """The run report of `config`'s run, written once into RUN-report beside the run directory."""
        from moesim.reports.run_report import write_run_report

        key = yaml.safe_dump(config, sort_keys=True)
        if key not in self._reports:
            run = self.run(config, label)[1]
            self._reports[key] = write_run_report(run, run.parent / f"{run.name}-report")
        return self._reports[key]


@pytest.fixture(scope="session")
def example_runs(tmp_path_factory) -> ExampleRuns:
    return ExampleRuns(tmp_path_factory.mktemp("example-runs"))


# ------------------------------------------------------------ fresh-Python runs, started beside the tests

# Some checks need a fresh Python: Triton interpreter checks (TRITON_INTERPRET must be set before triton is
# first imported), scripts and `python -m moesim.cli` commands. Starting one costs seconds of imports, and
# pytest itself keeps only one core busy. So the runs the selected tests registered work beside the tests,
# one at a time from the end of collection on, in the order the tests need them; the test that needs a
# result waits for it (or starts it) and asserts on it. Every selected interpreter snippet runs in ONE
# fresh interpreter, each with its own globals and captured stdout.
INTERPRETED: dict[str, str] = {}  # test name -> snippet run under TRITON_INTERPRET=1
BACKGROUND: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}  # test name -> python arguments, extra env
NEEDS: dict[str, tuple[str, ...]] = {}  # test name -> modules its run needs (none missing, or it is skipped)

_RUNNER = r"""
import contextlib, io, json, sys, traceback
results = {}
for name, code in json.loads(sys.stdin.read()).items():
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<" + name + ">", "exec"), {"__name__": "__interpreted__"})
        results[name] = {"ok": True, "stdout": buf.getvalue()}
    except BaseException:  # SystemExit included: a snippet's own "raise SystemExit(...)" is a failure
        results[name] = {"ok": False, "stdout": buf.getvalue(), "error": traceback.format_exc()}
sys.stdout.write("\n@@interpreted@@" + json.dumps(results))
"""
_SNIPPETS = "interpreter snippets"


def interpreted(name: str, code: str) -> str:
    """Register `code`, run under TRITON_INTERPRET=1, as the snippet of test `name`; returns `name`."""
    assert name not in INTERPRETED, name
    INTERPRETED[name] = textwrap.dedent(code)
    return name


def in_background(name: str, *args: str | Path, env: dict[str, str] | None = None, needs: tuple[str, ...] = ()
                  ) -> str:
    """Register `python args...` for test `name` ("{out}" in an argument: a fresh folder) with `env` added,
    started only when the modules `needs` are installed; returns `name`. A test with several runs names
    them "test#1", "test#2" and so on."""
    assert name not in BACKGROUND, name
    BACKGROUND[name] = (tuple(str(a) for a in args), env or {})
    NEEDS[name] = needs
    return name


def _installed(modules) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


class _Run:
    """One fresh Python, its output going to temporary files."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str], stdin: str | None = None) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="moesim-background-")) if any("{out}" in a for a in args) else None
        self._files = [tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")]
        self.proc = subprocess.Popen([sys.executable, *(a.replace("{out}", str(self.out)) for a in args)],
                                     stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                     stdout=self._files[0], stderr=self._files[1], text=True,
                                     env={**os.environ, **env})
        if stdin is not None:
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        self._done: tuple[int, str, str] | None = None

    def wait(self, timeout: float = 600) -> tuple[int, str, str]:
        """(exit status, stdout, stderr); a run past `timeout` seconds is killed and fails the test."""
        if self._done is None:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"{self.proc.args[1:3]} still running after {timeout} s")
            for f in self._files:
                f.seek(0)
            self._done = (rc, self._files[0].read(), self._files[1].read())
        return self._done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)


_RUNS: dict[str, _Run] = {}  # started runs: _SNIPPETS or a test name -> its run
_QUEUE: list[str] = []  # runs not started yet, in the order the selected tests need them
_SELECTED: set[str] = set()  # names of the selected tests (empty: all of them)


def _start(name: str) -> _Run:
    """`name`'s run, started now unless it already was."""
    if name in _QUEUE:
        _QUEUE.remove(name)
    if name not in _RUNS:
        if name == _SNIPPETS:
            snippets = {n: c for n, c in INTERPRETED.items() if not _SELECTED or n in _SELECTED}
            _RUNS[name] = _Run(("-c", _RUNNER), {"TRITON_INTERPRET": "1"}, json.dumps(snippets))
        else:
            _RUNS[name] = _Run(*BACKGROUND[name])
    return _RUNS[name]


def _start_next() -> None:
    """One run at a time beside the tests: pytest keeps one core busy, the run another."""
    if _QUEUE and all(run.proc.poll() is not None for run in _RUNS.values()):
        _start(_QUEUE[0])


def pytest_collection_finish(session) -> None:
    """Queue the selected tests' fresh-Python runs and start the first; each next one starts between
    two tests once the one before it has finished."""
    if session.config.option.collectonly:
        return
    _SELECTED.update(item.name for item in session.items)
    for item in session.items:
        if item.name in INTERPRETED and _installed(["triton"]) and _SNIPPETS not in _QUEUE:
            _QUEUE.append(_SNIPPETS)
        _QUEUE.extend(n for n in BACKGROUND if n.split("#")[0] == item.name and _installed(NEEDS[n]))
    _start_next()


def pytest_runtest_logfinish(nodeid, location) -> None:
    _start_next()


def pytest_sessionfinish(session) -> None:
    for run in _RUNS.values():
        run.stop()
    _RUNS.clear()
    _QUEUE.clear()


class _Background:
    def snippet(self, name: str) -> str:
        """The stdout of test `name`'s interpreter snippet; fails the test if the snippet raised."""
        pytest.importorskip("triton")
        rc, out, err = _start(_SNIPPETS).wait()
        _, sep, tail = out.rpartition("\n@@interpreted@@")
        if rc != 0 or not sep:
            pytest.fail(f"interpreter run failed (rc {rc}):\n{out}\n{err}")
        results = json.loads(tail)
        if name not in results:
            pytest.fail(f"no snippet of {name} ran (registered snippets: {sorted(INTERPRETED)})")
        r = results[name]
        assert r["ok"], f"interpreter run of {name} failed:\n{r['stdout']}\n{r['error']}"
        return r["stdout"]

    def run(self, name: str) -> tuple[int, str, str, Path | None]:
        """Exit status, stdout, stderr and "{out}" folder of test `name`'s registered run."""
        for module in NEEDS[name]:
            pytest.importorskip(module)
        run = _start(name)
        return (*run.wait(), run.out)


@pytest.fixture(scope="session")
def background() -> _Background:
    """The fresh-Python runs queued after collection (see above): .snippet(test name), .run(test name)."""
    return _Background()
