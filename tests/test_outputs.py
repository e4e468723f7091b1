"""Run directories: summary, tables, a valid Chrome trace; every bundled example runs."""

import json

import jsonschema
import pandas as pd
import pytest

from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate, write_run_dir
from moesim.simulator.scenario import resolve

from conftest import shrink_serving, EXAMPLES, example_config, in_background, write_config

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


EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
SHORT_PROMPT = 1024  # prefill examples run with prompts cut to this many tokens by default


def _long_prompts(name: str) -> bool:
    workload = example_config(name).get("workload", {})
    return workload.get("phase") == "prefill" and workload.get("seq_len", 0) > SHORT_PROMPT


@pytest.mark.parametrize("example,full_prompts", [pytest.param(name, False, id=name) for name in EXAMPLE_NAMES] + [
    pytest.param(name, True, marks=pytest.mark.slow, id=f"{name}-full-prompts")
    for name in EXAMPLE_NAMES if _long_prompts(name)])
def test_every_bundled_example_runs(tmp_path, example, full_prompts):
    """Every example, a few steps or requests; long prefill prompts are shortened except in the slow set
    (DeepSeek-V3 prefill at its 4096-token prompts samples ~60M expert choices a step)."""
    cfg = example_config(example)
    if "serving" in cfg:
        shrink_serving(cfg)
    else:
        cfg["workload"]["steps"] = min(cfg["workload"]["steps"], 2)
        if not full_prompts and cfg["workload"].get("phase") == "prefill":
            cfg["workload"]["seq_len"] = min(cfg["workload"]["seq_len"], SHORT_PROMPT)
    cfg["outputs"] = {"dir": str(tmp_path / "run")}
    res = simulate(resolve(config_from_dict(cfg, EXAMPLES)))  # relative paths as in the example folder
    assert res.summary["makespan_s"] > 0
    if "serving" in cfg:  # a serving summary has no fixed-batch keys: its iterations' durations are under serving
        assert res.requests["finished"].all() and res.summary["serving"]["latency"]["ttft_s"]["count"] > 0
        assert "step_latency_s" not in res.summary
    else:
        assert res.summary["step_latency_s"]["mean"] > 0


CLI_SIMULATE = in_background("test_cli_simulate_writes_run_directory", "-m", "moesim.cli", "simulate",
                             EXAMPLES / "mixtral-decode-8xh100.yaml", "--steps", "2", "--out", "{out}/run")


def test_cli_simulate_writes_run_directory(background):
    """`python -m moesim.cli simulate` in a fresh Python (started beside the tests: see conftest)."""
    rc, out, err, folder = background.run(CLI_SIMULATE)
    assert rc == 0, err
    assert "step latency" in out
    assert (folder / "run" / "summary.json").exists() and (folder / "run" / "trace.json").exists()


def test_cli_profiles_list_and_show(capsys):
    """In process (the test above runs `python -m moesim.cli` itself; a fresh Python costs a second)."""
    from moesim.cli import main

    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    assert "H100-SXM" in out and "DeepSeek-V3" in out
    assert main(["profiles", "show", "h800-4x8"]) == 0
    assert "topology:" in capsys.readouterr().out
    assert main(["profiles", "show", "H900"]) == 2
    assert "H100-SXM" in capsys.readouterr().err
