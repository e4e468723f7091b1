"""The command line as users drive it: overrides, run directories written atomically and never
over an earlier run by accident, strict JSON, output that survives pipes, the scale guard and
Ctrl-C. (Bad-input messages are in test_bad_inputs.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moesim.cli import main

ROOT = Path(__file__).resolve().parent.parent
MIXTRAL = str(ROOT / "examples" / "mixtral-decode-8xh100.yaml")


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_set_overrides_apply_validate_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", MIXTRAL, "--steps", "2", "--set", "workload.batch_size=32",
                 "--set", "hardware.scale.link_bandwidth=2", "--out", str(out), "--quiet"]) == 0
    summary = _strict((out / "summary.json").read_text())
    assert summary["config"]["workload"]["batch_size"] == 32 and summary["config"]["workload"]["steps"] == 2
    assert summary["config"]["hardware"]["scale"]["link_bandwidth"] == 2.0
    assert summary["overrides"] == ["workload.batch_size=32", "hardware.scale.link_bandwidth=2", "workload.steps=2"]
    capsys.readouterr()
    assert main(["simulate", MIXTRAL, "--set", "workload.batch_size=-4", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "workload.batch_size" in err and "--set workload.batch_size=-4" in err and "Traceback" not in err


def test_config_show_prints_the_resolved_config_with_defaults(capsys):
    assert main(["config", "show", MIXTRAL, "--set", "policies.overlap=two_batch"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["policies"]["overlap"] == "two_batch"
    assert cfg["policies"]["dispatch"]["algorithm"] == "direct"  # a default the file does not state
    assert cfg["outputs"]["trace_steps"] == 2


def test_an_existing_run_directory_needs_force_and_keeps_nothing_of_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", MIXTRAL, "--steps", "1", "--out", str(out), "--quiet"]) == 0
    (out / "copies.csv").write_text("stale from an offloading run\n")
    assert main(["simulate", MIXTRAL, "--steps", "1", "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "copies.csv").exists()
    assert main(["simulate", MIXTRAL, "--steps", "1", "--out", str(out), "--quiet", "--force"]) == 0
    assert not (out / "copies.csv").exists() and (out / "summary.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary siblings left


def test_the_default_run_directory_is_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["simulate", MIXTRAL, "--steps", "1", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mixtral-decode-8xh100", "mixtral-decode-8xh100-2"]
    assert "writing runs/mixtral-decode-8xh100-2" in out


def test_an_interrupted_write_leaves_no_run_directory(tmp_path, monkeypatch):
    import moesim.simulator.run as run

    def interrupted(result, run_dir, overrides):
        (run_dir / "summary.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_write_files", interrupted)
    result = run.simulate(run.load_scenario(MIXTRAL, ["workload.steps=1"]))
    with pytest.raises(KeyboardInterrupt):
        run.write_run_dir(result, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_an_incomplete_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")  # what an interrupted pre-atomic writer could leave
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a complete run directory" in err and "Traceback" not in err


def test_json_outputs_are_strict_json():
    from moesim import json_io

    text = json_io.dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert _strict(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_json_flag_prints_only_json_on_stdout(tmp_path, capsys):
    assert main(["simulate", MIXTRAL, "--steps", "1", "--out", str(tmp_path / "r"), "--json"]) == 0
    doc = _strict(capsys.readouterr().out)
    assert doc["run_dir"] == str(tmp_path / "r") and doc["metrics"]["step_latency_s"]["mean"] > 0


def test_quiet_prints_nothing(tmp_path, capsys):
    assert main(["simulate", MIXTRAL, "--steps", "2", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    got = capsys.readouterr()
    assert got.out == "" and got.err == ""


def test_profiles_show_writes_valid_yaml_to_a_pipe(capsys):
    for name in ("H100-SXM", "dgx-h100", "NVLink4", "Mixtral-8x7B"):
        assert main(["profiles", "show", name]) == 0
        doc = yaml.safe_load(capsys.readouterr().out)
        assert doc["name"].lower() == name.lower()


def test_tables_never_cut_or_split_values_in_a_narrow_terminal():
    from rich.console import Console
    from rich.table import Table

    from moesim.reports.terminal import print_table

    t = Table()
    t.add_column("method")
    t.add_column("time")
    t.add_row("contiguous_with_a_long_name", "9.9412345 ms")
    buf = io.StringIO()
    print_table(Console(file=buf, width=30), t)  # the table is 46 wide: one block per row
    text = buf.getvalue()
    assert "…" not in text and "9.9412345 ms" in text and "contiguous_with_a_long_name" in text


def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    assert main(["simulate", MIXTRAL, "--steps", "3", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "step 3/3 (100%)" in err


def test_scale_guard_refuses_a_run_that_would_not_fit(tmp_path, capsys, monkeypatch):
    import moesim.simulator.run_estimate as est

    monkeypatch.setattr(est, "available_memory", lambda: 0.6e9)  # ~190 steps of this scenario fit
    assert main(["simulate", MIXTRAL, "--steps", "1000", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "memory" in err and "--steps" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_memory_estimate_grows_with_steps_devices_and_layers():
    from moesim.simulator.run_estimate import estimate_run
    from moesim.simulator.scenario import load_scenario

    small = load_scenario(MIXTRAL)
    big = load_scenario(str(ROOT / "examples" / "deepseek-v3-decode-4x8-h800.yaml"))
    assert estimate_run(small, 20).memory_bytes < estimate_run(small, 200).memory_bytes
    assert estimate_run(small, 100).bytes_per_step < estimate_run(big, 100).bytes_per_step
    assert estimate_run(small, 100).seconds < estimate_run(big, 100).seconds


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics")
def test_ctrl_c_swallowed_inside_a_simpy_process_still_stops_the_run(tmp_path, monkeypatch, capsys):
    """SimPy hands a KeyboardInterrupt raised in one process to whatever waits on it, which may drop
    it; the run then finishes. The CLI remembers the Ctrl-C itself and still writes nothing."""
    import simpy

    import moesim.simulator.run as run_module

    real = run_module.simulate

    def interrupted_inside_simpy(*args, **kwargs):
        env = simpy.Environment()

        def device(env):
            yield env.timeout(1)
            signal.raise_signal(signal.SIGINT)  # the interrupt lands inside a process

        def waiter(env, p):
            try:
                yield p
            except BaseException:  # noqa: BLE001 - a waiter that drops it
                pass
        env.process(waiter(env, env.process(device(env))))
        env.run()
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "simulate", interrupted_inside_simpy)
    out = tmp_path / "run"
    assert main(["simulate", str(ROOT / "examples" / "tiny-moe-trace-8xh100.yaml"), "--out", str(out),
                 "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_the_run_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "moesim.cli", "simulate",
                             str(ROOT / "examples" / "deepseek-v3-decode-4x8-h800.yaml"), "--out", str(out),
                             "--progress", "plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = proc.stderr.readline()  # the first progress line: the run is under way
    assert b"step" in line, line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
