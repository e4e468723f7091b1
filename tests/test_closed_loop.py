"""A closed loop that behaves like traffic (issue 26): users start on a ramp or at random phases,
think times come from distributions, a run in lockstep is detected and said, and the iteration
cache stays within a bound on a desynchronised run."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from moesim.simulator.compose import scheduler_policy
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate
from moesim.simulator.serving.config import ServingConfig
from moesim.simulator.serving.lockstep import lockstep
from moesim.simulator.serving.source import ServingSource, request_table
from moesim.workloads.closed_loop import ExponentialThink, request_delays

from conftest import EXAMPLES, example_config
from test_serving import drive


def _closed(**extra) -> ServingConfig:
    return ServingConfig(users=4, num_requests=8, prompt_tokens={"dist": "fixed", "value": 2},
                         output_tokens={"dist": "fixed", "value": 2},
                         scheduler={"max_batch_tokens": 64, "max_running": 8}, **extra)


def _first_arrivals(cfg: ServingConfig) -> list[float]:
    requests = request_table(cfg, seed=0, base_dir=".")
    source = ServingSource(cfg, requests, replicas=1, tp=1, kv_capacity_tokens=1e6, policy=scheduler_policy(cfg))
    drive(source, 0.1)
    return source.arrival.tolist()


def test_an_even_ramp_starts_user_i_at_i_ramp_over_users():
    """4 users over 2 s: the first requests go at 0, 0.5, 1 and 1.5 s (hand computed); each
    user's next request follows its reply by the think time."""
    arrivals = _first_arrivals(_closed(ramp_up=2.0, think_time=0.25))
    assert arrivals[:4] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    # one iteration of 0.1 s prefills a request and emits its first token, the next decodes the
    # second: the user at 0 s has its reply at 0.2 s and sends again at 0.45 s
    assert arrivals[4] == pytest.approx(0.45)
    assert (np.diff(sorted(arrivals)) >= 0).all() and not np.isnan(arrivals).any()


def test_all_users_at_once_is_the_default_and_unchanged():
    assert _first_arrivals(_closed())[:4] == [0.0] * 4


def test_random_phases_and_drawn_think_times_are_deterministic_and_keep_the_lengths():
    """Random start phases lie in [0, ramp_up); exponential think times have their mean; the
    same seed gives the same delays; the lengths are those of a loop without them."""
    ss = np.random.SeedSequence(7)
    delays = request_delays(20_000, 100, ExponentialThink(dist="exponential", mean=2.0), 10.0, "random", ss)
    assert ((delays[:100] >= 0) & (delays[:100] < 10.0)).all() and np.ptp(delays[:100]) > 5.0
    assert delays[100:].mean() == pytest.approx(2.0, rel=0.03)
    again = request_delays(20_000, 100, ExponentialThink(dist="exponential", mean=2.0), 10.0, "random",
                           np.random.SeedSequence(7))
    np.testing.assert_array_equal(delays, again)
    plain, shaped = (request_table(c, 0, ".") for c in (_closed(), _closed(ramp_up=3.0, ramp="random",
                                                                           think_time={"dist": "exponential",
                                                                                       "mean": 1.0})))
    pd.testing.assert_series_equal(plain.prompt_tokens, shaped.prompt_tokens)
    pd.testing.assert_series_equal(plain.output_tokens, shaped.output_tokens)


def _frame(shapes: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"iteration": range(len(shapes)), "prefill_tokens": [p for p, _ in shapes],
                         "decode_tokens": [d for _, d in shapes]})


def test_lockstep_is_one_shape_most_of_the_time_with_no_mixing():
    waves = ([(64, 0)] + [(0, 8)] * 31) * 4  # 4 waves: all prefill together, then the same decode batch
    verdict = lockstep(_frame(waves), replicas=1)
    assert verdict["lockstep"] and verdict["top_shape_share"] == pytest.approx(124 / 128)
    assert "ramp_up" in verdict["warning"]
    rng = np.random.default_rng(0)
    traffic = [(int(rng.integers(0, 3)) * 16, int(rng.integers(1, 9))) for _ in range(128)]
    assert not lockstep(_frame(traffic), replicas=1)["lockstep"]
    assert not lockstep(_frame(waves[:10]), replicas=1)["lockstep"]  # too few iterations to say


def _mixtral_closed(**extra) -> dict:
    cfg = example_config("serving-mixtral-8xh100.yaml")
    sv = cfg["serving"]
    sv.pop("arrivals")
    sv.pop("duration", None)
    sv.update({"users": 8, "num_requests": 48, "prompt_tokens": {"dist": "fixed", "value": 256},
               "output_tokens": {"dist": "fixed", "value": 32}, **extra})
    cfg["outputs"] = {"trace_steps": 0}
    return cfg


DESYNC = {"ramp_up": "0.5 s", "ramp": "random", "think_time": {"dist": "exponential", "mean": "50 ms"},
          "prompt_tokens": {"dist": "lognormal", "mean": 256, "std": 128, "min": 16, "max": 1024},
          "output_tokens": {"dist": "lognormal", "mean": 32, "std": 16, "min": 4, "max": 128}}


def test_a_closed_loop_in_lockstep_is_said_and_traffic_is_not():
    """Eight users with fixed lengths from t = 0: ITL p50 = p99 and the summary says lockstep
    (with the warning); started at random phases with drawn lengths and think times: ITL p99
    well above p50 (prefills interleave decodes), not lockstep."""
    lock = simulate(config_from_dict(_mixtral_closed(), EXAMPLES)).summary["serving"]
    assert lock["traffic"]["lockstep"] and lock["traffic"]["warning"]
    itl = lock["latency"]["itl_s"]
    assert itl["p99"] == pytest.approx(itl["p50"], rel=0.05)
    free = simulate(config_from_dict(_mixtral_closed(**copy.deepcopy(DESYNC)), EXAMPLES)).summary["serving"]
    assert not free["traffic"]["lockstep"] and "warning" not in free["traffic"]
    assert free["traffic"]["mixed_iteration_share"] > 0.1


@pytest.mark.slow  # two full serving runs of a desynchronised loop (~11 s)
def test_the_iteration_cache_stays_within_half_a_percent_on_a_desynchronised_loop():
    """With desynchronised users most iterations still replay a cached shape; the headline
    figures stay within 0.5% of simulating every iteration (measured: <= 0.05%)."""
    runs = {}
    for cache in (True, False):
        cfg = _mixtral_closed(**copy.deepcopy(DESYNC), iteration_cache=cache)
        runs[cache] = simulate(config_from_dict(cfg, EXAMPLES)).summary["serving"]
    cached, full = runs[True], runs[False]
    assert cached["iteration_cache"]["replayed_iteration_share"] > 0.3
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        for q in ("p50", "p90"):
            assert cached["latency"][metric][q] == pytest.approx(full["latency"][metric][q], rel=5e-3), (metric, q)
    assert cached["throughput"]["output_tokens_per_s"] == pytest.approx(full["throughput"]["output_tokens_per_s"],
                                                                       rel=5e-3)


def test_prefix_caching_skips_the_cached_prefill_and_shortens_ttft():
    """Half of every prompt cached: the iterations prefill exactly the uncached tokens (summed over
    requests), the summary says so, and TTFT falls against the same traffic without the cache."""
    from conftest import shrink_serving

    runs = {}
    for hit in (None, 0.5):
        cfg = shrink_serving(example_config("serving-mixtral-8xh100.yaml"), requests=12, output_tokens=4)
        cfg["serving"]["prompt_tokens"] = {"dist": "uniform", "low": 200, "high": 600}
        if hit is not None:
            cfg["serving"]["prefix_cache"] = {"hit_rate": hit}
        runs[hit] = simulate(config_from_dict(cfg, EXAMPLES))
    cached = runs[0.5]
    req = cached.requests
    want = int((req.prompt_tokens - np.minimum(np.rint(0.5 * req.prompt_tokens), req.prompt_tokens - 1)).sum())
    assert int(cached.iterations.prefill_tokens.sum()) == want
    pc = cached.summary["serving"]["prefix_cache"]
    assert pc["cached_tokens"] == int(req.prompt_tokens.sum()) - want and 0.45 < pc["cached_share"] < 0.55
    assert "prefix_cache" not in runs[None].summary["serving"]
    ttft = [r.summary["serving"]["latency"]["ttft_s"]["p50"] for r in (runs[None], cached)]
    assert ttft[1] < ttft[0]
