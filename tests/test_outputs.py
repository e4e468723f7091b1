"""Run directories: summary, tables, a valid Chrome trace; every bundled example runs."""

import json
import subprocess
import sys

import jsonschema
import pandas as pd
import pytest

from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate, write_run_dir
from moesim.simulator.scenario import resolve

from conftest import shrink_serving, EXAMPLES, example_config, write_config

# The Trace Event Format (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU):
# complete events need name, ph "X", ts, dur (microseconds), pid, tid; metadata events ph "M".
TRACE_SCHEMA = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "traceEvents": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "ph", "pid", "tid"],
                "properties": {
                    "name": {"type": "string"},
                    "ph": {"enum": ["X", "M", "B", "E", "i", "C"]},
                    "ts": {"type": "number", "minimum": 0},
                    "dur": {"type": "number", "minimum": 0},
                    "pid": {"type": "integer"},
                    "tid": {"type": "integer"},
                    "args": {"type": "object"},
                },
                "allOf": [{"if": {"properties": {"ph": {"const": "X"}}}, "then": {"required": ["ts", "dur"]}}],
            },
        },
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["steps"] = 3
    return write_run_dir(simulate(write_config(tmp, cfg)), tmp / "out")


def test_summary_has_headline_metrics(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["moesim_version"]
    m = summary["metrics"]
    for key in ("step_latency_s", "throughput_tokens_per_s", "time_share", "straggler_ratio",
                "bytes_by_link_class", "tokens", "memory_per_device_bytes", "cache_hit_rate"):
        assert key in m
    assert sum(m["time_share"].values()) == pytest.approx(1.0, abs=1e-6)
    assert summary["config"]["model"] == "Mixtral-8x7B"


def test_phase_and_utilization_tables(run_dir):
    phases = pd.read_parquet(run_dir / "phases.parquet")
    assert set(phases.columns) >= {"step", "layer", "device", "phase", "start_s", "end_s", "duration_s"}
    assert (phases.duration_s >= -1e-15).all()
    assert phases.step.nunique() == 3 and phases.device.nunique() == 8 and phases.layer.nunique() == 32
    util = pd.read_csv(run_dir / "utilization.csv")
    assert len(util) == 8 and util.utilization.between(0, 1).all()


def test_trace_validates_against_trace_event_format(run_dir):
    trace = json.loads((run_dir / "trace.json").read_text())
    jsonschema.validate(trace, TRACE_SCHEMA)
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in complete} >= {"attention", "expert", "dispatch"}
    assert max(e["args"]["step"] for e in complete) == 1  # trace_steps: 2


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_bundled_example_runs(tmp_path, example):
    cfg = example_config(example)
    if "serving" in cfg:
        shrink_serving(cfg)
    else:
        cfg["workload"]["steps"] = min(cfg["workload"]["steps"], 2)
    cfg["outputs"] = {"dir": str(tmp_path / "run")}
    res = simulate(resolve(config_from_dict(cfg, EXAMPLES)))  # relative paths as in the example folder
    assert res.summary["step_latency_s"]["mean"] > 0
    if "serving" in cfg:
        assert res.requests["finished"].all() and res.summary["serving"]["latency"]["ttft_s"]["count"] > 0


def test_cli_simulate_writes_run_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "simulate", str(EXAMPLES / "mixtral-decode-8xh100.yaml"),
                           "--steps", "2", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "step latency" in proc.stdout
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / "trace.json").exists()


def test_cli_profiles_list_and_show():
    out = subprocess.run([sys.executable, "-m", "moesim.cli", "profiles", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "H100-SXM" in out.stdout and "DeepSeek-V3" in out.stdout
    show = subprocess.run([sys.executable, "-m", "moesim.cli", "profiles", "show", "h800-4x8"], capture_output=True, text=True)
    assert show.returncode == 0 and "topology:" in show.stdout
    bad = subprocess.run([sys.executable, "-m", "moesim.cli", "profiles", "show", "H900"], capture_output=True, text=True)
    assert bad.returncode == 2 and "H100-SXM" in bad.stderr
