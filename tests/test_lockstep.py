"""The event-free path (simulator/lockstep.py) gives the event loop's timeline: every bundled
example, run both ways (MOESIM_ENGINE=events forces the event loop), has the same start and end of
every phase, the same traffic and the same summary. Where every collective is a barrier the two are
equal to the bit; a sparse all-to-all, which the event loop costs wave by wave and the event-free
path in one pass, is equal to rounding (the waves' sums restart where the one pass runs on). The
default set runs one case of each kind the path handles (a dense fixed batch, a sparse one, a
fixed batch that hands over to the event loop, serving with TP over every device, the DP + EP
serving example, the two orders of waves it must hand over for); the slow set runs every example."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.simulator.compose import engine_for
from moesim.simulator.config import config_from_dict
from moesim.simulator.phases import PHASES
from moesim.simulator.roofline import scenario_plan
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario

from conftest import EXAMPLES, example_config, shrink_serving

ROUNDING = 1e-11  # of the run's last time: a sparse all-to-all's one pass against its waves (the FIFO scan offsets
# each link by a whole second, so a wave rounds at ~1e-14 s)


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


def assert_equal_to_rounding(events, auto) -> None:
    a, b = events.raw, auto.raw
    scale = float(np.nanmax(np.abs(a.end)))
    for x, y in ((a.start, b.start), (a.end, b.end)):
        assert np.array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(y, x, rtol=0, atol=ROUNDING * scale)
    np.testing.assert_allclose(b.fabric.link_bytes, a.fabric.link_bytes, rtol=1e-12)
    _close(events.summary, auto.summary, "summary")
    if events.requests is not None:
        for column in events.requests.columns:
            x, y = events.requests[column], auto.requests[column]
            if x.dtype.kind == "f":
                np.testing.assert_allclose(y.to_numpy(), x.to_numpy(), rtol=1e-9, err_msg=column)
            else:
                assert x.equals(y), column


def _close(x, y, where: str) -> None:
    """Two summaries alike: the same keys and texts, numbers within rounding."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for key in x:
            _close(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _close(u, v, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):  # (a straggler share sums differences of near-equal times)
        assert y == pytest.approx(x, rel=1e-9, abs=1e-10, nan_ok=True), where
    else:
        assert x == y, where


def steps_of(result) -> int:
    return result.raw.start.shape[0]


def test_a_dense_decode_runs_every_step_event_free_and_equals_the_event_loop(monkeypatch):
    events, auto = both_ways(monkeypatch, shrunk("deepseek-v3-decode-4x8-h800.yaml"))
    assert events.raw.meta["event_free_steps"] == 0
    assert auto.raw.meta["event_free_steps"] == steps_of(auto) == 3
    assert_same(events, auto)


def test_a_sparse_decode_runs_every_step_event_free_and_equals_the_event_loop_to_rounding(monkeypatch):
    """One token per GPU at EP32: each device sends to a few others, so every all-to-all is sparse;
    devices whose compute ties submit at the same moment (their waves join, whatever order the
    event loop runs them in)."""
    cfg = shrunk("deepseek-v3-decode-4x8-h800.yaml")
    cfg["workload"].update(batch_size=1, steps=3)
    events, auto = both_ways(monkeypatch, cfg)
    assert auto.raw.meta["event_free_steps"] == steps_of(auto) == 3
    assert not np.array_equal(events.raw.end, auto.raw.end, equal_nan=True)  # summed in another order
    assert_equal_to_rounding(events, auto)


def test_a_sparse_step_under_two_batch_overlap_hands_the_rest_of_the_run_to_the_event_loop(monkeypatch):
    """Two micro-batches' sparse waves interleave: from the first sparse step on the event loop
    runs, starting from the clocks the event-free steps left (44 tokens per GPU and micro-batch at
    EP32: steps 0 and 1 are dense, step 2 has a silent pair)."""
    cfg = shrunk("deepseek-v3-decode-4x8-h800.yaml")
    cfg["workload"].update(batch_size=88, steps=4)
    cfg.setdefault("policies", {})["overlap"] = "two_batch"
    events, auto = both_ways(monkeypatch, cfg)
    assert 0 < auto.raw.meta["event_free_steps"] < steps_of(auto)
    assert_same(events, auto)


# ---- waves the event loop runs before an earlier collective's last one ----------------------

DENSE_BYTES, LATE, EARLY_BYTES = 1e6, 5e-3, 1e10


def _clash_run(monkeypatch, within_step: bool):
    """Mixtral EP8 on one DGX H100, three hand-built steps with dense all-to-alls everywhere but
    two: in step 1 device 0's experts of MoE layer L run late and its combine sends only to
    device 1; in the next MoE layer (L + 1 of step 1, or layer 0 of step 2) device 2 sends 10 GB
    to device 1 and nobody else sends. Device 2 receives nothing from device 0, so that transfer
    starts milliseconds before device 0's combine, on device 1's inbound link: the event loop
    queues device 0's bytes behind it."""
    monkeypatch.setenv("MOESIM_ENGINE", "auto")
    sc = load_scenario(EXAMPLES / "mixtral-decode-8xh100.yaml")
    base = scenario_plan(sc, 0)
    n, moe = sc.num_devices, len(sc.model.moe_layers)
    dense = np.full((moe, n, n), DENSE_BYTES)
    dense[:, np.arange(n), np.arange(n)] = 0.0

    def plan(step: int, late_layer: int | None = None, early_layer: int | None = None):
        dispatch, combine = dense.copy(), dense.copy()
        expert = np.full_like(base.expert, 1e-4)
        if late_layer is not None:
            expert[late_layer, 0] = LATE
            combine[late_layer] = 0.0
            combine[late_layer, 0, 1] = combine[late_layer, 4, 5] = DENSE_BYTES
        if early_layer is not None:
            dispatch[early_layer] = 0.0
            dispatch[early_layer, 2, 1] = EARLY_BYTES
        return [replace(base, step=step, attention=np.full_like(base.attention, 1e-4), expert=expert,
                        traffic=replace(base.traffic, dispatch=[dispatch], combine=[combine]))]

    last = moe - 1
    steps = ([plan(0), plan(1, late_layer=5, early_layer=6), plan(2)] if within_step else
             [plan(0), plan(1, late_layer=last), plan(2, early_layer=0)])
    runs = []
    for engine in ("events", "auto"):
        monkeypatch.setenv("MOESIM_ENGINE", engine)
        runs.append(engine_for(sc, plans=iter(copy.deepcopy(steps))).run())
    return runs, (1, 5) if within_step else (1, last)


@pytest.mark.parametrize("within_step", [True, False], ids=["within-a-step", "across-steps"])
def test_a_wave_that_comes_before_an_earlier_collectives_last_hands_that_step_over(monkeypatch, within_step):
    """The event-free path costs collectives in program order; where the event loop would run a
    later collective's wave first it hands over at the step of the earlier one (across steps: it
    undoes the step it already ran), so the result is the event loop's, queueing included."""
    (events, auto), (step, layer) = _clash_run(monkeypatch, within_step)
    assert auto.meta["event_free_steps"] == 1
    comb = PHASES.index("combine")
    end = events.end[step, layer, 1, 0, comb]
    assert end > EARLY_BYTES / 500e9  # device 0's combine waited for device 2's 10 GB on device 1's link
    np.testing.assert_array_equal(auto.end, events.end)
    np.testing.assert_array_equal(auto.start, events.start)


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
    assert_equal_to_rounding(events, auto)


def test_an_unknown_engine_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MOESIM_ENGINE", "fast")
    with pytest.raises(ConfigError, match="MOESIM_ENGINE"):
        simulate(config_from_dict(shrunk("mixtral-decode-8xh100.yaml"), EXAMPLES))
