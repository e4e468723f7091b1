"""The serving iteration cache keys on the batch shape and the routing regime: an iteration never
replays a draw from a routing distribution that has since changed (drift, another load window),
stationary routing still replays, and what the cache did reaches summary.json and the terminal."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from moesim.simulator.compose import engine_for
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.simulator.serving.iteration_cache import IterationCache
from moesim.simulator.serving.outcome import serving_outcome
from moesim.workloads.load_matrix import LoadHistory
from moesim.workloads.load_matrix_routing import LoadMatrixRouting
from moesim.workloads.node_limited_routing import PerTokenRouting
from moesim.workloads.routing import STATIONARY, FixedRouting, routing_regime, uniform_routing, zipf_routing
from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting
from moesim.workloads.trace_routing import TraceRouting

from conftest import toy_file
from test_serving import serving_config

DRIFT = {"generator": "synthetic", "synthetic": {"drift": {"sigma": 0.3}}}


def scenario(tmp_path, routing: dict | None = None, **serving):
    cfg = serving_config(users=4, num_requests=12, **serving)
    if routing is not None:
        cfg["routing"] = routing
    return load_scenario(toy_file(tmp_path, cfg))


def engine_run(sc):
    engine = engine_for(sc)
    raw = engine.run()
    return engine, raw, serving_outcome(sc, raw, engine.source, cache=engine.cache)[2]


def load_cycle(tmp_path, steps_per_window: int = 3) -> dict:
    """Two load windows with opposite hot experts, replayed in turn (a routing that changes by step)."""
    np.save(tmp_path / "a.npy", np.array([[50, 10, 1, 1, 1, 1, 1, 1]] * 2, dtype=float))
    np.save(tmp_path / "b.npy", np.array([[1, 1, 1, 1, 1, 1, 10, 50]] * 2, dtype=float))
    return {"generator": "load_matrix", "loads": ["a.npy", "b.npy"], "window": "cycle",
            "steps_per_window": steps_per_window}


def test_each_routing_source_names_its_regime():
    pop = np.full((2, 8), 1 / 8)
    for stationary in (uniform_routing(8, 2, 2), zipf_routing(8, 2, 2, 1.2), PerTokenRouting(8, 2, pop),
                       FixedRouting(8, 2, np.full((2, 8), 1)), SyntheticRouting(RoutingModelConfig(), 8, 2, 2),
                       SyntheticRouting(RoutingModelConfig(batch_concentration=5.0, locality=0.3), 8, 2, 2)):
        assert {routing_regime(stationary, s) for s in range(5)} == {STATIONARY}, stationary
    drift = SyntheticRouting(RoutingModelConfig(drift={"sigma": 0.1}), 8, 2, 2)
    assert routing_regime(drift, 3) is None  # every step its own popularity
    history = LoadHistory(np.random.default_rng(0).random((3, 2, 8)), "shares", ("a", "b", "c"), ("npy",) * 3)
    assert routing_regime(LoadMatrixRouting(history, 2, "mean"), 7) == STATIONARY
    assert routing_regime(LoadMatrixRouting(history, 2, 1), 7) == STATIONARY
    cycle = LoadMatrixRouting(history, 2, "cycle", steps_per_window=2)
    regimes = [routing_regime(cycle, s) for s in range(8)]
    assert regimes[0] == regimes[1] != regimes[2] == regimes[3] != regimes[4]
    assert regimes[6] == regimes[0] and len(set(regimes)) == 3  # the windows come back each lap
    trace = SimpleNamespace(meta=SimpleNamespace(num_experts=8, top_k=2, source_kind="device", num_sources=2),
                            num_steps=4, path="t.parquet")
    assert routing_regime(TraceRouting(trace, 2), 1) is None
    looped = TraceRouting(trace, 2, repeat=True)
    assert routing_regime(looped, 1) == routing_regime(looped, 5) != routing_regime(looped, 2)
    assert routing_regime(object(), 0) is None  # an unknown source is never stood in for


def test_a_drifting_routing_is_never_replayed(tmp_path):
    """Every step of a drifting generator has its own popularity: nothing replays, and the run is
    exactly the full simulation (before, each shape replayed its first draw for ever)."""
    sc = scenario(tmp_path, DRIFT)
    engine, raw, summary = engine_run(sc)
    assert engine.cache.hits == 0 and not engine.cache.replays and not engine.cache.timelines
    cache = summary["iteration_cache"]
    assert cache["misses"] == cache["own_regime_iterations"] == raw.start.shape[0]
    assert cache["replayed_share"] == 0.0 and cache["regimes"] == 0
    full = simulate(scenario(tmp_path, DRIFT, iteration_cache=False))
    assert full.summary["serving"]["iteration_cache"] is None
    cached = simulate(sc)
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert cached.summary["serving"]["latency"][metric] == full.summary["serving"]["latency"][metric]


def test_iterations_of_one_shape_in_different_load_windows_are_not_replayed_from_each_other(tmp_path):
    sc = scenario(tmp_path, load_cycle(tmp_path))
    engine, raw, summary = engine_run(sc)
    window = sc.routing.window_at
    shapes = [IterationCache.shape(p.inputs) for p in raw.plans]
    crossing = [(a, b) for b in range(len(shapes)) for a in range(b)
                if shapes[a] == shapes[b] and window(a) != window(b)]
    assert crossing  # a shape-only key would have replayed these across windows
    assert engine.cache.hits > 0
    for step, hit in engine.cache.replays.items():
        recorded = hit.plans[0].step
        assert recorded < step and window(recorded) == window(step) and shapes[recorded] == shapes[step]
    assert summary["iteration_cache"]["regimes"] == 2


def test_stationary_routing_still_replays_and_counts_every_iteration(tmp_path):
    sc = scenario(tmp_path)
    engine, raw, summary = engine_run(sc)
    cache = summary["iteration_cache"]
    steps = raw.start.shape[0]
    assert cache["hits"] > cache["misses"] > 0  # fixed lengths: most iterations repeat a shape
    assert cache["hits"] + cache["misses"] == steps == summary["iterations"]
    assert cache["hits"] == len(engine.cache.replays) and cache["regimes"] == 1 and cache["own_regime_iterations"] == 0
    assert 0.0 < cache["replayed_share"] < 1.0
    assert cache["replayed_iteration_share"] == pytest.approx(cache["hits"] / steps)
    assert cache["key"] == "batch shape + routing regime"


def test_the_cache_summary_reaches_summary_json_and_the_terminal(tmp_path, capsys):
    from moesim.cli import main
    from moesim.reports.terminal import print_serving_summary

    path = toy_file(tmp_path, serving_config(users=4, num_requests=12))
    assert main(["simulate", str(path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 0
    cache = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]["serving"]["iteration_cache"]
    assert set(cache) >= {"key", "hits", "misses", "replayed_share"}
    assert 0.0 <= cache["replayed_share"] <= 1.0 and 0.0 <= cache["replayed_iteration_share"] <= 1.0
    assert f"{cache['hits']:,} / {cache['misses']:,}" in capsys.readouterr().out
    result = simulate(load_scenario(path))
    buf = io.StringIO()
    print_serving_summary(result, Console(file=buf, width=80, force_terminal=True, color_system=None))
    text = buf.getvalue()
    assert "iteration cache" in text and f"{cache['replayed_share']:.0%} of time replayed" in text
    assert max(len(line) for line in text.splitlines()) <= 80
