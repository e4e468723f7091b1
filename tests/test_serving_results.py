"""Serving results: the per-request table, the strict-JSON summary and the serving plots, on hand cases."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from moesim.reports.serving_plots import batch_and_kv, latency_cdfs, throughput_latency, write_serving_plots
from moesim.simulator.serving.results import percentiles, request_table, serving_summary

PNG = b"\x89PNG\r\n\x1a\n"


def _requests(rows: list[tuple]) -> pd.DataFrame:
    """rows: (request_id, arrival_s, output_tokens, first_scheduled_s); prompt 100, replica id % 2."""
    return pd.DataFrame({
        "request_id": [r[0] for r in rows],
        "arrival_s": [float(r[1]) for r in rows],
        "prompt_tokens": [100] * len(rows),
        "output_tokens": [r[2] for r in rows],
        "replica": [r[0] % 2 for r in rows],
        "first_scheduled_s": [float(r[3]) for r in rows],
        "preemptions": [0] * len(rows),
    })


def _iterations(rows: list[tuple]) -> pd.DataFrame:
    """rows: (start_s, batch_sequences, kv_used_tokens); capacity 100, replica 0, 0.1 s long."""
    return pd.DataFrame({
        "iteration": list(range(len(rows))),
        "replica": [0] * len(rows),
        "start_s": [float(r[0]) for r in rows],
        "end_s": [float(r[0]) + 0.1 for r in rows],
        "batch_sequences": [r[1] for r in rows],
        "prefill_tokens": [0] * len(rows),
        "decode_tokens": [r[1] for r in rows],
        "kv_used_tokens": [r[2] for r in rows],
        "kv_capacity_tokens": [100] * len(rows),
    })


NO_ITERATIONS = _iterations([])


def _hand():
    # request 0 arrives at 0, scheduled at 0.5, tokens at 1.0, 1.5, 2.5
    # request 1 arrives at 1, scheduled at 1.0, tokens at 1.25, 2.0
    req = _requests([(0, 0.0, 3, 0.5), (1, 1.0, 2, 1.0)])
    times = {0: [1.0, 1.5, 2.5], 1: [1.25, 2.0]}
    return request_table(req, times, horizon_s=10.0, warmup_share=0.0)


def test_hand_case_request_metrics_and_pooled_percentiles():
    t = _hand().set_index("request_id")
    assert t.loc[0, "queue_s"] == 0.5 and t.loc[1, "queue_s"] == 0.0
    assert t.loc[0, "ttft_s"] == 1.0 and t.loc[1, "ttft_s"] == 0.25
    assert t.loc[0, "itl_s"] == [0.5, 1.0] and t.loc[1, "itl_s"] == [0.75]
    assert t.loc[0, "tpot_s"] == 0.75 and t.loc[1, "tpot_s"] == 0.75
    assert t.loc[0, "e2e_s"] == 2.5 and t.loc[1, "e2e_s"] == 1.0
    assert t["tokens_emitted"].tolist() == [3, 2]
    assert t["finished"].tolist() == [True, True] and t["warmup"].tolist() == [False, False]

    iters = _iterations([(0.0, 1, 10), (1.0, 2, 30), (2.0, 3, 50), (3.0, 9, 100)])  # the last starts after the window
    s = serving_summary(_hand(), iters, horizon_s=10.0, num_gpus=2, slo={})
    # pooled ITLs [0.5, 1.0, 0.75] -> sorted [0.5, 0.75, 1.0]; linear interpolation at ranks 1, 1.8, 1.98
    itl = s["latency"]["itl_s"]
    assert itl["count"] == 3 and itl["mean"] == pytest.approx(0.75, abs=1e-12)
    assert itl["p50"] == pytest.approx(0.75, abs=1e-12)
    assert itl["p90"] == pytest.approx(0.95, abs=1e-12)
    assert itl["p99"] == pytest.approx(0.995, abs=1e-12)
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx({"count": 4, "mean": 2.5, "p50": 2.5, "p90": 3.7,
                                                                "p99": 3.97})
    assert s["latency"]["ttft_s"]["mean"] == pytest.approx(0.625)
    assert s["latency"]["e2e_s"]["p50"] == pytest.approx(1.75)
    assert s["latency"]["queue_s"]["mean"] == pytest.approx(0.25)
    tp = s["throughput"]
    assert (tp["window_start_s"], tp["window_end_s"], tp["window_s"]) == (0.0, 2.5, 2.5)
    assert tp["output_tokens_in_window"] == 5
    assert tp["output_tokens_per_s"] == pytest.approx(2.0)
    assert tp["output_tokens_per_s_per_gpu"] == pytest.approx(1.0)
    assert tp["output_tokens_per_s_per_user"] == pytest.approx(4.0 / 3.0)
    assert tp["requests_per_s"] == pytest.approx(0.8)
    b = s["batch"]
    assert b["scope"] == "measured window" and b["iterations"] == 3
    assert b["mean_sequences"] == pytest.approx(2.0) and b["max_sequences"] == 3
    assert b["kv_use_mean"] == pytest.approx(0.3) and b["kv_use_max"] == pytest.approx(0.5)


def test_unfinished_request_counts_ttft_but_not_e2e_or_tpot():
    req = _requests([(0, 0.0, 3, 0.0), (1, 1.0, 2, 1.0), (2, 2.0, 4, 2.5), (3, 3.0, 2, math.nan)])
    # request 2 emits 2 of its 4 tokens before the horizon; request 3 is never scheduled
    times = {0: [1.0, 1.5, 2.5], 1: [1.25, 2.0], 2: [3.0, 3.5, 9.0]}
    t = request_table(req, times, horizon_s=4.0, warmup_share=0.0).set_index("request_id")
    assert t.loc[2, "tokens_emitted"] == 2 and not t.loc[2, "finished"]  # the token at 9 s is past the horizon
    assert t.loc[2, "ttft_s"] == 1.0 and math.isnan(t.loc[2, "e2e_s"])
    assert t.loc[3, "tokens_emitted"] == 0 and math.isnan(t.loc[3, "ttft_s"]) and math.isnan(t.loc[3, "queue_s"])
    s = serving_summary(t.reset_index(), NO_ITERATIONS, horizon_s=4.0, num_gpus=1, slo={})
    assert s["requests"]["total"] == 4 and s["requests"]["finished"] == 2 and s["requests"]["unfinished"] == 2
    lat = s["latency"]
    assert lat["ttft_s"]["count"] == 3 and lat["ttft_s"]["mean"] == pytest.approx((1.0 + 0.25 + 1.0) / 3)
    assert lat["e2e_s"]["count"] == 2 and lat["tpot_s"]["count"] == 2 and lat["itl_s"]["count"] == 3
    assert lat["tpot_s"]["p99"] == pytest.approx(0.75)  # the unfinished request's 0.5 s gap is left out


def test_warmup_excludes_the_earliest_arrivals_by_share():
    arrivals = [5.0, 0.0, 8.0, 1.0, 9.0, 2.0, 7.0, 3.0, 6.0, 4.0]  # request ids 0..9 in shuffled arrival order
    req = _requests([(i, a, 2, a) for i, a in enumerate(arrivals)])
    # warm-up requests (arrivals 0, 1, 2) take 10 s to their first token, the others 0.5 s
    times = {i: ([a + 10.0, a + 10.5] if a < 3 else [a + 0.5, a + 1.0]) for i, a in enumerate(arrivals)}
    t = request_table(req, times, horizon_s=100.0, warmup_share=0.3)
    assert sorted(t.loc[t["warmup"], "arrival_s"]) == [0.0, 1.0, 2.0]
    s = serving_summary(t, NO_ITERATIONS, horizon_s=100.0, num_gpus=1, slo={})
    r = s["requests"]
    assert r["warmup_excluded"] == 3 and r["warmup_share"] == 0.3 and r["measured"] == 7
    assert s["latency"]["ttft_s"]["count"] == 7 and s["latency"]["ttft_s"]["p99"] == pytest.approx(0.5)
    assert s["throughput"]["window_start_s"] == 3.0
    # floor of the share: 0.25 x 10 -> 2 requests
    assert int(request_table(req, times, 100.0, 0.25)["warmup"].sum()) == 2


def test_goodput_counts_requests_meeting_every_slo():
    # (ttft, tpot): ok/ok, ttft too slow, tpot too slow, both exactly at the limits (binary-exact values)
    cases = [(0.125, 0.03125), (0.5, 0.03125), (0.125, 0.125), (0.25, 0.0625)]
    req = _requests([(i, 0.0, 3, 0.0) for i in range(len(cases))])
    times = {i: [ttft, ttft + tpot, ttft + 2 * tpot] for i, (ttft, tpot) in enumerate(cases)}
    t = request_table(req, times, horizon_s=10.0, warmup_share=0.0)
    s = serving_summary(t, NO_ITERATIONS, 10.0, 1, {"ttft_s": 0.25, "tpot_s": 0.0625})
    window = s["throughput"]["window_s"]
    assert window == pytest.approx(0.5 + 2 * 0.03125)
    assert s["goodput"]["requests_meeting_slo"] == 2
    assert s["goodput"]["share"] == pytest.approx(0.5)
    assert s["goodput"]["requests_per_s"] == pytest.approx(2 / window)
    assert serving_summary(t, NO_ITERATIONS, 10.0, 1, {"ttft_s": 0.25})["goodput"]["requests_meeting_slo"] == 3
    assert serving_summary(t, NO_ITERATIONS, 10.0, 1, {"tpot_s": 0.0625})["goodput"]["requests_meeting_slo"] == 3
    assert serving_summary(t, NO_ITERATIONS, 10.0, 1, {})["goodput"]["requests_meeting_slo"] == 4


@pytest.mark.parametrize("case", ["no requests", "all warm-up", "nothing finished"])
def test_summary_is_strict_json_even_when_empty(case):
    if case == "no requests":
        t = request_table(_requests([]), {}, 10.0, 0.0)
    elif case == "all warm-up":
        t = request_table(_requests([(0, 0.0, 1, 0.0)]), {0: [0.5]}, 10.0, 0.0)
        t["warmup"] = True
    else:
        t = request_table(_requests([(0, 0.0, 5, 0.0), (1, 1.0, 5, math.nan)]), {0: [0.5]}, 10.0, 0.0)
    s = serving_summary(t, NO_ITERATIONS, 10.0, 8, {"ttft_s": 1.0, "tpot_s": 0.1})
    text = json.dumps(s, allow_nan=False)
    assert "NaN" not in text
    assert s["throughput"]["output_tokens_per_s"] is None and s["latency"]["e2e_s"]["p99"] is None
    assert s["goodput"]["share"] is None and s["littles_law"]["mean_in_system"] is None


def test_littles_law_time_average_matches_hand_value():
    # W (warm-up) in [0, 2], A [1, 5], B [2, 4], C [3, 7]; D arrives at 6 and is unfinished at the horizon (9)
    req = _requests([(0, 0.0, 2, 0.0), (1, 1.0, 2, 1.0), (2, 2.0, 2, 2.0), (3, 3.0, 2, 3.0), (4, 6.0, 3, 6.0)])
    times = {0: [1.0, 2.0], 1: [2.0, 5.0], 2: [3.0, 4.0], 3: [4.0, 7.0], 4: [6.5]}
    t = request_table(req, times, horizon_s=9.0, warmup_share=0.2)
    assert t["warmup"].tolist() == [True, False, False, False, False]
    s = serving_summary(t, NO_ITERATIONS, horizon_s=9.0, num_gpus=1, slo={})
    little = s["littles_law"]
    # window [1, 7]; time in system inside it: W 1 + A 4 + B 2 + C 4 + D 1 = 12 -> 12 / 6 = 2
    assert little["mean_in_system"] == pytest.approx(2.0)
    # arrivals A..D in the window: 4 / 6 per s; mean e2e of A, B, C = 10 / 3 s
    assert little["arrival_rate_per_s"] == pytest.approx(4 / 6)
    assert little["mean_e2e_s"] == pytest.approx(10 / 3)
    assert little["predicted_in_system"] == pytest.approx(20 / 9)
    assert little["ratio"] == pytest.approx(2.0 / (20 / 9))


def test_table_survives_parquet(tmp_path):
    t = _hand()
    t.to_parquet(tmp_path / "requests.parquet")
    back = pd.read_parquet(tmp_path / "requests.parquet")
    assert [list(x) for x in back["itl_s"]] == [[0.5, 1.0], [0.75]]
    assert (serving_summary(back, NO_ITERATIONS, 10.0, 1, {})["latency"]
            == serving_summary(t, NO_ITERATIONS, 10.0, 1, {})["latency"])


def _png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG


def test_plots_write_png(tmp_path):
    t = _hand()
    iters = pd.concat([_iterations([(0.0, 1, 10), (1.0, 2, 30), (2.0, 3, 50)]),
                       _iterations([(0.5, 2, 20), (1.5, 1, 40)]).assign(replica=1)], ignore_index=True)
    _png(latency_cdfs(t, tmp_path))
    _png(batch_and_kv(iters, tmp_path))
    s = serving_summary(t, iters, 10.0, 2, {})
    slower = json.loads(json.dumps(s))
    slower["throughput"]["output_tokens_per_s_per_gpu"] *= 1.5
    slower["latency"]["tpot_s"]["p99"] *= 2
    _png(throughput_latency([("1 req/s", s), ("2 req/s", slower)], tmp_path))
    (tmp_path / "run").mkdir()
    paths = write_serving_plots(t, iters, tmp_path / "run")
    assert len(paths) == 2
    for p in paths:
        _png(p)
    # empty inputs still give a figure
    empty = request_table(_requests([]), {}, 1.0, 0.0)
    _png(latency_cdfs(empty, tmp_path, name="empty_cdf.png"))
    _png(batch_and_kv(NO_ITERATIONS, tmp_path, name="empty_kv.png"))
    _png(throughput_latency([], tmp_path, name="empty_sweep.png"))
