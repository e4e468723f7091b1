"""Serving mode on the engine: a hand-calculated schedule with known iteration times, conservation
of requests and tokens, Little's law on a steady open loop, latency that never falls with load,
KV admission within capacity, determinism, and a deployment too small for one request refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.simulator.compose import scheduler_policy
from moesim.simulator.serving.source import ServingSource
from moesim.simulator.serving.config import ServingConfig

from conftest import toy_file


def serving_config(**serving) -> dict:
    base = {"prompt_tokens": {"dist": "fixed", "value": 64}, "output_tokens": {"dist": "fixed", "value": 8},
            "num_requests": 24, "warmup": 0.0, "arrivals": {"process": "poisson", "rate": 200.0}}
    base.update(serving)
    if "users" in serving:
        base.pop("arrivals")
    return {"name": "toy-serving", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
            "parallelism": {"ep": 4, "tp": 1, "dp": 4}, "routing": {"generator": "uniform"},
            "serving": base, "outputs": {"trace_steps": 0}, "seed": 3}


def run(tmp_path, **serving):
    return simulate(load_scenario(toy_file(tmp_path, serving_config(**serving))))


def drive(source: ServingSource, iteration_time: float) -> list[tuple[int, float, float]]:
    """Replay a serving source with a fixed iteration time (as an engine with known costs would):
    returns (step, start, end) and leaves the token times to the caller."""
    t = 0.0
    steps = []
    source.bind_clock(lambda: t)
    for inp in source:
        start = max(t, inp.start_at or t)
        steps.append((inp.step, start, start + iteration_time))
        t = start + iteration_time
    return steps


def test_hand_calculated_schedule_gives_exact_ttft_and_itl():
    """One replica, budget 4 tokens a step, iteration time 1 s. Request 0 (prompt 3, output 2)
    arrives at 0, request 1 (prompt 2, output 2) at 0.5. Step 0 [0, 1]: r0 prefills 3 and
    emits its first token at 1; r1 has not arrived. Step 1 [1, 2]: r0 decodes (token 2, done
    at 2), r1 prefills 2 (first token at 2). Step 2 [2, 3]: r1 decodes (done at 3).
    TTFT: r0 1.0, r1 1.5; ITL: r0 [1.0], r1 [1.0]; E2E: r0 2.0, r1 2.5."""
    import pandas as pd

    cfg = ServingConfig(arrivals={"process": "poisson", "rate": 1.0}, prompt_tokens={"dist": "fixed", "value": 1},
                        output_tokens={"dist": "fixed", "value": 1}, num_requests=2,
                        scheduler={"max_batch_tokens": 4, "max_running": 4})
    requests = pd.DataFrame({"request_id": [0, 1], "arrival_s": [0.0, 0.5], "prompt_tokens": [3, 2],
                             "output_tokens": [2, 2]})
    source = ServingSource(cfg, requests, replicas=1, tp=1, kv_capacity_tokens=1000.0, policy=scheduler_policy(cfg))
    steps = drive(source, 1.0)
    assert [(s, a, b) for s, a, b in steps] == [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, 3.0)]
    times: dict[int, list[float]] = {}
    for it in source.iterations:
        for rid in it.emitted[0]:
            times.setdefault(rid, []).append(steps[it.step][2])
    assert times == {0: [1.0, 2.0], 1: [2.0, 3.0]}
    assert source.first_scheduled == {0: 0.0, 1: 1.0}


def test_idle_replicas_wait_for_the_next_arrival():
    import pandas as pd

    cfg = ServingConfig(arrivals={"process": "poisson", "rate": 1.0}, prompt_tokens={"dist": "fixed", "value": 1},
                        output_tokens={"dist": "fixed", "value": 1}, num_requests=2)
    requests = pd.DataFrame({"request_id": [0, 1], "arrival_s": [0.0, 10.0], "prompt_tokens": [4, 4],
                             "output_tokens": [1, 1]})
    source = ServingSource(cfg, requests, replicas=2, tp=1, kv_capacity_tokens=100.0, policy=scheduler_policy(cfg))
    steps = drive(source, 1.0)
    assert steps == [(0, 0.0, 1.0), (1, 10.0, 11.0)]  # nothing runs between 1 s and the arrival at 10 s


def test_every_request_finishes_with_all_its_tokens(tmp_path):
    r = run(tmp_path)
    req = r.requests
    assert len(req) == 24 and req["finished"].all()
    assert (req["tokens_emitted"] == req["output_tokens"]).all()
    assert (req["ttft_s"] > 0).all() and (req["e2e_s"] >= req["ttft_s"]).all()
    it = r.iterations
    # prefilled tokens over all iterations = the prompts (no preemption under reserve)
    assert it["prefill_tokens"].sum() == req["prompt_tokens"].sum()
    assert it["decode_tokens"].sum() == (req["output_tokens"] - 1).sum()
    assert (it["kv_used_tokens"] <= it["kv_capacity_tokens"]).all()


def test_closed_loop_keeps_at_most_users_in_the_system(tmp_path):
    r = run(tmp_path, users=3, num_requests=12)
    req = r.requests.sort_values("arrival_s")
    assert req["finished"].all()
    events = sorted([(a, 1) for a in req["arrival_s"]] + [(f, -1) for f in req["finish_s"]], key=lambda e: (e[0], e[1]))
    in_system = np.cumsum([e[1] for e in events])
    assert in_system.max() <= 3


def test_latency_never_falls_as_load_rises(tmp_path):
    e2e = []
    for rate in (20.0, 200.0, 2000.0):
        r = run(tmp_path, arrivals={"process": "poisson", "rate": rate})
        e2e.append(r.summary["serving"]["latency"]["e2e_s"]["mean"])
    # (requests that never overlap take the same time at any rate: equal to rounding, which is
    # absolute, ~1e-14 s per all-to-all wave: network.Fabric._fifo)
    assert e2e[0] <= e2e[1] + 1e-12 and e2e[1] <= e2e[2] + 1e-12, e2e
    assert e2e[2] > e2e[0] * 1.01  # and at 2000 req/s they queue


def test_littles_law_holds_on_a_steady_open_loop(tmp_path):
    r = run(tmp_path, num_requests=120, arrivals={"process": "poisson", "rate": 100.0}, warmup=0.1)
    little = r.summary["serving"]["littles_law"]
    assert little["ratio"] == pytest.approx(1.0, abs=0.25)


def test_serving_is_deterministic(tmp_path):
    a = run(tmp_path).requests
    b = run(tmp_path).requests
    assert a[["ttft_s", "e2e_s"]].equals(b[["ttft_s", "e2e_s"]])


def test_a_deployment_that_cannot_hold_one_request_is_refused(tmp_path):
    cfg = serving_config(prompt_tokens={"dist": "fixed", "value": 50_000_000})
    with pytest.raises(ConfigError, match="cannot hold its weights plus one request's KV cache"):
        simulate(load_scenario(toy_file(tmp_path, cfg)))


def test_iteration_cache_replays_repeated_shapes_and_agrees_with_the_full_simulation(tmp_path):
    """Fixed lengths: most iterations repeat a shape. Replayed iterations reuse one routing draw,
    so results differ from simulating each only through routing noise (well under 5% here)."""
    from moesim.simulator.compose import engine_for
    from moesim.simulator.serving.outcome import serving_outcome

    cached = run(tmp_path, users=4, num_requests=12)
    full = run(tmp_path, users=4, num_requests=12, iteration_cache=False)
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        a = cached.summary["serving"]["latency"][metric]["mean"]
        b = full.summary["serving"]["latency"][metric]["mean"]
        assert a == pytest.approx(b, rel=0.05), metric
    sc = load_scenario(toy_file(tmp_path, serving_config(users=4, num_requests=12)))
    engine = engine_for(sc)
    raw = engine.run()
    assert engine.cache.hits > engine.cache.misses  # most iterations replayed
    table, iterations, _ = serving_outcome(sc, raw, engine.source)
    assert table["finished"].all() and (iterations["end_s"] > iterations["start_s"]).all()


def test_two_batch_overlap_serves_every_request(tmp_path):
    """Mixed iterations split into two micro-batches (sequences dealt evenly) still conserve
    requests and tokens, and the iteration cache replays both micro-batches."""
    cfg = serving_config()
    cfg["policies"] = {"overlap": "two_batch"}
    r = simulate(load_scenario(toy_file(tmp_path, cfg)))
    req = r.requests
    assert req["finished"].all() and (req["tokens_emitted"] == req["output_tokens"]).all()
    assert r.iterations["prefill_tokens"].sum() == req["prompt_tokens"].sum()
    assert r.raw.start.shape[3] == 2  # two micro-batches in the timeline


def test_shortcut_overlap_serves_every_request_and_hides_dispatch_behind_attention(tmp_path):
    """Every schedule runs on the one interpreter, which owns the serving hooks, so the shortcut
    schedule serves too (before issue 25 it had no serving path): requests and tokens are
    conserved, and its first iteration (the same batch as without overlap) is no slower."""
    runs = {}
    for overlap in ("none", "shortcut"):
        cfg = serving_config()
        cfg["policies"] = {"overlap": overlap}
        runs[overlap] = r = simulate(load_scenario(toy_file(tmp_path, cfg)))
        req = r.requests
        assert req["finished"].all() and (req["tokens_emitted"] == req["output_tokens"]).all()
    first = {k: float(np.nanmax(r.raw.end[0]) - np.nanmin(r.raw.start[0])) for k, r in runs.items()}
    assert first["shortcut"] <= first["none"] * (1 + 1e-12)


def test_attention_mix_splits_sequences_evenly():
    from moesim.simulator.step_source import AttentionMix

    mix = AttentionMix.of([(64, 0), (32, 100), (16, 0)], [100, 200, 300])
    a, b = mix.split(2)
    assert (a.prefill_batch, b.prefill_batch, a.decode_batch, b.decode_batch) == (2, 1, 2, 1)
    assert a.prefill_tokens + b.prefill_tokens == mix.prefill_tokens and a.decode_kv == mix.decode_kv == 208


def disaggregated_config(**serving) -> dict:
    cfg = serving_config(**serving)
    cfg["serving"]["disaggregation"] = {"prefill": {"nodes": 1, "ep": 2, "dp": 2}, "decode": {"nodes": 1, "ep": 2, "dp": 2}}
    return cfg


def test_disaggregated_serving_joins_prefill_transfer_and_decode(tmp_path):
    """Prefill pool emits the first token, the prompt's KV crosses the network (latency + bytes /
    bandwidth, by hand below), the decode pool generates the rest: every token accounted for."""
    from moesim.simulator.memory import kv_bytes_per_token

    sc = load_scenario(toy_file(tmp_path, disaggregated_config()))
    r = simulate(sc)
    req = r.requests
    assert req["finished"].all() and (req["tokens_emitted"] == req["output_tokens"]).all()
    per_token = sum(kv_bytes_per_token(sc.model, layer, 1) for layer in range(sc.model.num_layers))
    routes = sc.routes
    p = 0 * routes.num_devices + 2  # first GPU of the prefill pool -> first of the decode pool
    bw = routes.link_bandwidth[routes.pair_links[routes.pair_ptr[p]:routes.pair_ptr[p + 1]]].min()
    expected = routes.pair_latency[0, 2] + 64 * per_token / bw
    assert req["kv_transfer_s"].to_numpy() == pytest.approx(expected)
    gaps = req["itl_s"].iloc[0]
    assert gaps[0] >= expected  # the second token waits for the transfer
    split = r.summary["serving"]["disaggregation"]
    assert split["prefill"]["gpus"] == 2 and split["decode"]["gpus"] == 2
    assert set(r.iterations["pool"]) == {"prefill", "decode"}


def test_disaggregation_refuses_a_closed_loop_and_too_many_nodes(tmp_path):
    cfg = disaggregated_config(users=2)
    with pytest.raises(ConfigError, match="open loop"):
        load_scenario(toy_file(tmp_path, cfg))
    cfg = disaggregated_config()
    cfg["serving"]["disaggregation"]["decode"]["nodes"] = 2
    with pytest.raises(ConfigError, match="exceed"):
        simulate(load_scenario(toy_file(tmp_path, cfg)))


def test_load_sweep_runs_every_point_and_writes_one_report(tmp_path, capsys):
    from moesim.cli import main

    path = toy_file(tmp_path, serving_config())
    out = tmp_path / "sweep"
    assert main(["simulate", str(path), "--load", "50,500,5000", "--out", str(out), "--progress", "none"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(["rate=50-per-s", "rate=500-per-s",
                                                                          "rate=5000-per-s"])
    assert (out / "report.html").exists()
    printed = capsys.readouterr().out
    assert "load sweep" in printed and "rate=5000/s" in printed
    capsys.readouterr()
    assert main(["simulate", str(path), "--load", "0,4", "--out", str(tmp_path / "bad")]) == 2
    assert "--load" in capsys.readouterr().err


def test_load_sweep_is_a_cached_sweep(tmp_path, monkeypatch):
    """--load runs on the sweep library: a rerun, or a wider list sharing points, simulates only
    the points it has not run before (their rows and run directories come from the sweep cache),
    and the folders are the same as a fresh run's."""
    import json

    from moesim.cli import main
    from moesim.studies import sweep as sweep_mod

    path = toy_file(tmp_path, serving_config())
    calls = []
    real = sweep_mod.simulate_point
    monkeypatch.setattr(sweep_mod, "simulate_point", lambda *a: calls.append(a[1]) or real(*a))
    assert main(["simulate", str(path), "--load", "50,500", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert len(calls) == 2
    assert main(["simulate", str(path), "--load", "50,500,5000", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert len(calls) == 3 and calls[-1][-1].startswith("serving.arrivals.rate=5000")
    for name in ("rate=50-per-s", "rate=500-per-s"):
        a, b = (json.loads((tmp_path / d / name / "summary.json").read_text()) for d in ("a", "b"))
        assert a["metrics"] == b["metrics"]
    info = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert info["finished"] == ["rate=50/s", "rate=500/s", "rate=5000/s"] and info["failed"] == {}


def test_replayed_iterations_count_their_link_bytes_once(tmp_path):
    """A replayed iteration adds the bytes its recorded one moved, once. They used to compound (a
    recorded iteration's delta included the replays before it), reaching 1e26 bytes on the Mixtral
    serving example; with and without the cache the link bytes now agree up to routing noise."""
    from conftest import example_config, shrink_serving, write_config

    moved = {}
    for cache in (True, False):
        cfg = shrink_serving(example_config("serving-mixtral-8xh100.yaml"), requests=8, output_tokens=16)
        cfg["serving"]["iteration_cache"] = cache
        moved[cache] = simulate(write_config(tmp_path, cfg, f"c{cache}.yaml")).summary["bytes_by_link_class"]
    assert moved[True]["nvlink"] == pytest.approx(moved[False]["nvlink"], rel=0.05)


@pytest.mark.parametrize("kind", ["open", "closed", "disaggregated"])
def test_serving_summary_has_no_fixed_batch_keys_at_top_level(tmp_path, kind, toy_config):
    """A serving run's summary.json answers in request terms (metrics.serving); the fixed-batch
    headline keys, computed over scheduler iterations and easy to take for TPOT, are not at its
    top level. The iteration durations are under serving.iteration_latency_s (each pool's under
    serving.disaggregation when the pools iterate apart)."""
    from moesim.simulator.run import write_run_dir
    from moesim.simulator.serving.outcome import FIXED_BATCH_KEYS

    cfg = {"open": lambda: serving_config(num_requests=6), "closed": lambda: serving_config(users=2, num_requests=4),
           "disaggregated": lambda: disaggregated_config(num_requests=4)}[kind]()
    result = simulate(load_scenario(toy_file(tmp_path, cfg)))
    summary = result.summary
    assert FIXED_BATCH_KEYS == ("step_latency_s", "tokens_per_step", "throughput_tokens_per_s",
                                "time_per_output_token_s")
    assert not set(FIXED_BATCH_KEYS) & set(summary), sorted(summary)
    assert "throughput_tokens_per_s" not in (summary.get("error_bar") or {})
    sv = summary["serving"]
    assert sv["latency"]["tpot_s"]["count"] > 0 and sv["throughput"]["output_tokens_per_s"] > 0
    if kind == "disaggregated":
        assert sv["iteration_latency_s"] is None
        pools = [sv["disaggregation"][p]["iteration_latency_s"] for p in ("prefill", "decode")]
    else:
        pools = [sv["iteration_latency_s"]]
    for lat in pools:
        assert set(lat) == {"mean", "p50", "p99", "max"} and 0 < lat["mean"] <= lat["max"]
    written = json.loads((write_run_dir(result, tmp_path / "run") / "summary.json").read_text())["metrics"]
    assert not set(FIXED_BATCH_KEYS) & set(written)
    (tmp_path / "fixed").mkdir()
    fixed = simulate(load_scenario(toy_file(tmp_path / "fixed", toy_config))).summary
    assert set(FIXED_BATCH_KEYS) <= set(fixed)  # a fixed-batch run keeps them


def test_a_run_directory_without_its_phase_table(tmp_path):
    """outputs.phases: none skips phases.parquet (a serving run's largest table); the run directory
    is still complete, and the per-request and per-iteration tables stay."""
    from moesim.cli import main
    from moesim.simulator.run import check_run_dir

    cfg = serving_config()
    cfg["outputs"] = {"phases": "none", "trace_steps": 0}
    path = toy_file(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["simulate", str(path), "--out", str(out), "--quiet"]) == 0
    assert not (out / "phases.parquet").exists()
    assert (out / "requests.parquet").exists() and (out / "iterations.csv").exists()
    assert check_run_dir(out) == out  # complete: `moesim report` reads it (and says the phase figures are absent)
