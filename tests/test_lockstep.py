"""The event-free path (simulator/lockstep.py) gives the event loop's timeline to the bit: every
bundled example, run both ways (MOESIM_ENGINE=events forces the event loop), has the same start
and end of every phase, the same traffic and the same summary. The default set runs one case of
each kind the path handles (a dense fixed batch, a fixed batch that hands over to the event loop,
serving with TP over every device, the DP + EP serving example); the slow set runs every example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate

from conftest import EXAMPLES, example_config, shrink_serving


def shrunk(name: str) -> dict:
    cfg = example_config(name)
    if cfg.get("serving"):
        shrink_serving(cfg, requests=6, output_tokens=4)
    else:
        cfg.setdefault("workload", {})["steps"] = 3
    return cfg


def both_ways(monkeypatch, cfg: dict):
    runs = []
    for engine in ("events", "auto"):
        monkeypatch.setenv("MOESIM_ENGINE", engine)
        runs.append(simulate(config_from_dict(json.loads(json.dumps(cfg)), EXAMPLES)))
    return runs


def assert_same(events, auto) -> None:
    a, b = events.raw, auto.raw
    assert np.array_equal(a.start, b.start, equal_nan=True)
    assert np.array_equal(a.end, b.end, equal_nan=True)
    assert np.array_equal(a.fabric.link_bytes, b.fabric.link_bytes)
    assert json.dumps(events.summary, sort_keys=True, default=str) == json.dumps(auto.summary, sort_keys=True,
                                                                                 default=str)
    if events.requests is not None:
        assert events.requests.equals(auto.requests)


def steps_of(result) -> int:
    return result.raw.start.shape[0]


def test_a_dense_decode_runs_every_step_event_free_and_equals_the_event_loop(monkeypatch):
    events, auto = both_ways(monkeypatch, shrunk("deepseek-v3-decode-4x8-h800.yaml"))
    assert events.raw.meta["event_free_steps"] == 0
    assert auto.raw.meta["event_free_steps"] == steps_of(auto) == 3
    assert_same(events, auto)


def test_a_sparse_all_to_all_hands_the_rest_of_the_run_to_the_event_loop(monkeypatch):
    """A layer where some pair sends nothing is not a barrier: from that step on the event loop
    runs, starting from the clocks the event-free steps left (48 tokens per GPU at EP32: step 0
    is dense, step 1 has a silent pair)."""
    cfg = shrunk("deepseek-v3-decode-4x8-h800.yaml")
    cfg["workload"].update(batch_size=48, steps=4)
    events, auto = both_ways(monkeypatch, cfg)
    assert 0 < auto.raw.meta["event_free_steps"] < steps_of(auto)
    assert_same(events, auto)


def test_serving_with_tp_over_every_device_runs_event_free(monkeypatch):
    events, auto = both_ways(monkeypatch, shrunk("serving-mixtral-8xh100.yaml"))
    assert auto.raw.meta["event_free_steps"] == steps_of(auto) > 0
    assert_same(events, auto)


def test_dp_plus_ep_serving_runs_event_free(monkeypatch):
    events, auto = both_ways(monkeypatch, shrunk("serving-deepseek-v3-dp16-ep16.yaml"))
    assert auto.raw.meta["event_free_steps"] == steps_of(auto) > 0
    assert_same(events, auto)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_gives_the_event_loops_timeline(monkeypatch, example):
    cfg = shrunk(example)
    if (cfg.get("serving") or {}).get("disaggregation"):
        pytest.skip("disaggregated serving runs its own engines (each checked through the others)")
    events, auto = both_ways(monkeypatch, cfg)
    assert_same(events, auto)


def test_an_unknown_engine_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MOESIM_ENGINE", "fast")
    with pytest.raises(ConfigError, match="MOESIM_ENGINE"):
        simulate(config_from_dict(shrunk("mixtral-decode-8xh100.yaml"), EXAMPLES))
