"""What a serving simulation measured: one row per request, and the aggregate summary.

A serving run hands over the requests (arrival, sizes, replica, when first scheduled, how often
preempted), the times every output token was emitted, one row per scheduler iteration and replica,
the horizon at which the simulation stopped, the deployment's GPU count, the warm-up share and the
service-level objectives. This module turns them into `requests.parquet` (`request_table`) and
`summary.json`'s serving part (`serving_summary`). The latency definitions follow vLLM's serving
benchmark (benchmarks/benchmark_serving.py) and the usual LLM-serving conventions:

- queue_s: first_scheduled_s - arrival_s, the wait before the scheduler first admitted the request;
- ttft_s (time to first token): first output token's time - arrival_s (queueing and prefill included);
- itl_s (inter-token latencies): the gaps between consecutive output tokens of one request;
- tpot_s (time per output token, first token excluded): (last - first token time) / (n - 1), the mean
  of the request's ITLs; undefined (NaN) for a request with a single token;
- e2e_s (end-to-end latency): last output token's time - arrival_s, for finished requests only.

Percentiles are numpy's default (linear interpolation between order statistics), as vLLM reports them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from moesim.json_io import finite

REQUEST_COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "replica", "first_scheduled_s",
                   "preemptions")
ITERATION_COLUMNS = ("iteration", "replica", "start_s", "end_s", "batch_sequences", "prefill_tokens",
                     "decode_tokens", "kv_used_tokens", "kv_capacity_tokens")
LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")
PERCENTILES = (50, 90, 99)


def _num(x: Any) -> float | None:
    """A finite Python float, or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def percentiles(values: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50, p90 and p99 of the finite values (NaN and infinities dropped); numpy's
    linear interpolation between order statistics. With no finite value: count 0, the rest None."""
    v = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
    qs = np.percentile(v, PERCENTILES)
    return {"count": int(v.size), "mean": float(v.mean()), **{f"p{q}": float(x) for q, x in zip(PERCENTILES, qs)}}


def warmup_count(n: int, warmup_share: float) -> int:
    """How many of `n` requests (the earliest arrivals) the warm-up share excludes: floor(share x n)."""
    return int(math.floor(warmup_share * n + 1e-9))


def request_table(requests: pd.DataFrame, token_times: Mapping[int, Sequence[float]], horizon_s: float,
                  warmup_share: float) -> pd.DataFrame:
    """One row per request (what goes to requests.parquet), in the input's row order.

    The input columns (request_id, arrival_s, prompt_tokens, output_tokens, replica,
    first_scheduled_s, preemptions) plus:
    queue_s, ttft_s, tpot_s, e2e_s, itl_s as the module docstring defines them (NaN where undefined;
    tpot_s and itl_s of an unfinished request cover the tokens it emitted before the horizon);
    tokens_emitted (output tokens emitted up to horizon_s; later times, which a correct simulation
    never hands over, are dropped); finished (every output token emitted); finish_s (time of the
    last output token, finished requests only); warmup (among the floor(warmup_share x N) earliest
    arrivals, ties broken by request_id; excluded from the statistics). The warm-up share asked for is
    kept in `table.attrs["warmup_share"]`.
    """
    missing = [c for c in REQUEST_COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(f"requests lacks column(s) {', '.join(missing)}")
    if not 0.0 <= float(warmup_share) < 1.0:
        raise ValueError(f"warmup_share must be in [0, 1), got {warmup_share}")
    t = requests.reset_index(drop=True).copy()
    if t["request_id"].duplicated().any():
        raise ValueError("requests has duplicate request_id values")
    n = len(t)
    arrival = t["arrival_s"].to_numpy(dtype=float)
    first_sched = t["first_scheduled_s"].to_numpy(dtype=float)
    wanted = t["output_tokens"].to_numpy(dtype=np.int64)
    ttft = np.full(n, np.nan)
    tpot = np.full(n, np.nan)
    e2e = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    emitted = np.zeros(n, dtype=np.int64)
    itl: list[list[float]] = []
    for i, rid in enumerate(t["request_id"].tolist()):
        times = np.asarray(token_times.get(rid, token_times.get(int(rid), ())), dtype=float)
        times = times[times <= horizon_s]
        if times.size > 1 and np.any(np.diff(times) < 0):
            raise ValueError(f"token times of request {rid} are not in time order")
        if times.size and times[0] < arrival[i]:
            raise ValueError(f"request {rid} emits a token at {times[0]} s before it arrives at {arrival[i]} s")
        emitted[i] = times.size
        gaps = np.diff(times)
        itl.append([float(g) for g in gaps])
        if times.size:
            ttft[i] = times[0] - arrival[i]
        if times.size > 1:
            tpot[i] = (times[-1] - times[0]) / (times.size - 1)
        if times.size and times.size >= wanted[i]:
            finish[i] = times[-1]
            e2e[i] = times[-1] - arrival[i]
    order = np.lexsort((t["request_id"].to_numpy(), arrival))  # by arrival, ties by request_id
    warm = np.zeros(n, dtype=bool)
    warm[order[:warmup_count(n, float(warmup_share))]] = True
    t["queue_s"] = first_sched - arrival
    t["ttft_s"] = ttft
    t["tpot_s"] = tpot
    t["e2e_s"] = e2e
    t["itl_s"] = pd.Series(itl, index=t.index, dtype=object)
    t["tokens_emitted"] = emitted
    t["finished"] = np.isfinite(finish)
    t["finish_s"] = finish
    t["warmup"] = warm
    t.attrs["warmup_share"] = float(warmup_share)
    return t


def tokens_between(table: pd.DataFrame, start: float, end: float) -> int:
    """Output tokens of every request in the table emitted in [start, end] (token times rebuilt from
    arrival, TTFT and the ITL gaps; a relative 1e-9 tolerance absorbs the rounding of that sum)."""
    tol = 1e-9 * max(1.0, abs(start), abs(end))
    count = 0
    for arrival, ttft, gaps in zip(table["arrival_s"].to_numpy(dtype=float), table["ttft_s"].to_numpy(dtype=float),
                                   table["itl_s"]):
        if not np.isfinite(ttft):
            continue
        first = arrival + ttft
        times = np.concatenate([[first], first + np.cumsum(np.asarray(gaps, dtype=float))])
        count += int(np.count_nonzero((times >= start - tol) & (times <= end + tol)))
    return count


def time_average_in_system(arrival: np.ndarray, leave: np.ndarray, start: float, end: float) -> float:
    """Mean over [start, end] of the number of requests in the system: each is present from its
    arrival to its `leave` time; the integral of that count is the summed overlap of each
    [arrival, leave) with [start, end]."""
    if not end > start:
        return float("nan")
    overlap = np.clip(np.minimum(leave, end) - np.maximum(arrival, start), 0.0, None)
    return float(overlap.sum() / (end - start))


SATURATED_BELOW = 0.9  # achieved under 90% of offered: the queue grows for as long as the load lasts
MIN_ARRIVALS_TO_TELL = 8


def offered_and_achieved(measured: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    """Offered load (measured arrivals per second) against achieved (finishes per second), and
    whether the deployment is saturated (achieved short of offered, or measured requests left
    unfinished at the horizon).

    Both rates are counted over the later three quarters of the measured arrival span (past the
    ramp-up); finishes over the same span shifted by the median e2e latency, so that a deployment
    that keeps up counts the same requests leaving as arriving, while one that cannot finishes
    them at its own service rate. With fewer than MIN_ARRIVALS_TO_TELL arrivals there the point
    is not judged (None)."""
    arrival = np.sort(measured["arrival_s"].to_numpy(dtype=float))
    unfinished = int((~measured["finished"].to_numpy(dtype=bool)).sum())
    out: dict[str, Any] = {"offered_requests_per_s": None, "achieved_requests_per_s": None, "achieved_share": None,
                           "saturated": True if unfinished else None, "measured_unfinished": unfinished}
    if arrival.size < 2:
        return out
    lo, hi = float(np.quantile(arrival, 0.25)), float(arrival[-1])
    n_arr = int(np.count_nonzero((arrival >= lo) & (arrival <= hi)))
    finish = table["finish_s"].to_numpy(dtype=float)
    finish = np.sort(finish[np.isfinite(finish)])
    done = measured[measured["finished"].to_numpy(dtype=bool)]
    if hi <= lo or n_arr < MIN_ARRIVALS_TO_TELL or not len(done) or not finish.size:
        return out
    shift = float(np.median(done["e2e_s"].to_numpy(dtype=float)))
    f_lo, f_hi = lo + shift, min(hi + shift, float(finish[-1]))
    offered = n_arr / (hi - lo)
    if f_hi <= f_lo:
        return {**out, "offered_requests_per_s": offered}
    achieved = int(np.count_nonzero((finish >= f_lo) & (finish <= f_hi))) / (f_hi - f_lo)
    share = achieved / offered
    return {**out, "offered_requests_per_s": offered, "achieved_requests_per_s": achieved, "achieved_share": share,
            "saturated": bool(unfinished or share < SATURATED_BELOW)}


def iteration_cache_summary(key: str, hits: int, misses: int, own_regime: int, regimes: int,
                            iteration_s: np.ndarray, replayed: np.ndarray) -> dict[str, Any]:
    """summary.json's `serving.iteration_cache`: what the iteration cache (simulator/serving/
    iteration_cache.py) replayed.

    key: what a timeline is kept under; hits / misses: iterations replayed / simulated in full
    (hits + misses = iterations fed to the engine); own_regime_iterations: the misses whose routing
    regime is their own (drift, a trace without repeat), which nothing can replay; regimes: the
    distinct routing regimes met otherwise (1 for stationary routing); replayed_iteration_share:
    hits / (hits + misses); replayed_share: replayed iteration seconds / all iteration seconds,
    an iteration lasting from its replica's first start to its last end (`iteration_s[s]`, with
    `replayed[s]` true where step s was replayed), None when no iteration time was simulated."""
    iteration_s = np.nan_to_num(np.asarray(iteration_s, dtype=float))
    replayed = np.asarray(replayed, dtype=bool)
    total = float(iteration_s.sum())
    fed = int(hits) + int(misses)
    return finite({
        "key": key,
        "hits": int(hits),
        "misses": int(misses),
        "own_regime_iterations": int(own_regime),
        "regimes": int(regimes),
        "replayed_iteration_share": int(hits) / fed if fed else None,
        "replayed_share": float(iteration_s[replayed].sum()) / total if total > 0 else None,
    })


def serving_summary(table: pd.DataFrame, iterations: pd.DataFrame, horizon_s: float, num_gpus: int,
                    slo: Mapping[str, float | None] | None) -> dict[str, Any]:
    """The aggregate numbers of a serving run, as strict JSON data (None wherever a number is undefined).

    Measured requests are those not in the warm-up. Latency statistics (`percentiles`: count, mean,
    p50, p90, p99) are over the measured finished requests, except ttft_s, which counts every
    measured request that emitted a first token; itl_s pools every gap of those requests.

    The measured window runs from the first measured arrival to the last measured finish. Over it:
    output_tokens_per_s counts every output token the deployment emitted in the window (warm-up and
    unfinished requests' tokens included), per GPU divides that by num_gpus; per_user is the mean over
    measured finished requests of 1 / tpot_s; requests_per_s is measured finished requests / window.
    Goodput counts the measured finished requests meeting every SLO given (ttft_s <= slo["ttft_s"],
    tpot_s <= slo["tpot_s"]; a one-token request has no TPOT and meets that limit), per second of the
    window and as a share of the measured finished requests. Batch and KV-cache statistics are over the
    (iteration, replica) rows starting inside the window (all rows when there is no window).
    Little's law: the time average over the window of the number of requests in the system (every
    request, from arrival to finish, or to the horizon when unfinished) against the measured arrival
    rate in the window x the mean measured e2e_s; in steady state the two agree.
    """
    slo = dict(slo or {})
    unknown = set(slo) - {"ttft_s", "tpot_s"}
    if unknown:
        raise ValueError(f"unknown SLO key(s) {', '.join(sorted(unknown))}; expected ttft_s and/or tpot_s")
    n = len(table)
    warm = table["warmup"].to_numpy(dtype=bool)
    finished = table["finished"].to_numpy(dtype=bool)
    measured = table[~warm]
    done = measured[measured["finished"].to_numpy(dtype=bool)]

    requests = {
        "total": n,
        "finished": int(finished.sum()),
        "unfinished": int(n - finished.sum()),
        "warmup_excluded": int(warm.sum()),
        "warmup_share": table.attrs.get("warmup_share", (warm.sum() / n) if n else 0.0),
        "warmup_share_excluded": (warm.sum() / n) if n else 0.0,
        "measured": len(measured),
        "measured_finished": len(done),
        "measured_unfinished": len(measured) - len(done),
    }

    pooled = [g for gaps in done["itl_s"] for g in gaps]
    latency = {
        "ttft_s": percentiles(measured["ttft_s"]),
        "tpot_s": percentiles(done["tpot_s"]),
        "itl_s": percentiles(pooled),
        "e2e_s": percentiles(done["e2e_s"]),
        "queue_s": percentiles(done["queue_s"]),
    }

    start = float(measured["arrival_s"].min()) if len(done) else None
    end = float(done["finish_s"].max()) if len(done) else None
    window = (end - start) if start is not None and end > start else None

    tokens_in_window = tokens_between(table, start, end) if window is not None else None
    tpot = done["tpot_s"].to_numpy(dtype=float)
    tpot = tpot[np.isfinite(tpot) & (tpot > 0)]
    throughput = {
        "window_start_s": start,
        "window_end_s": end,
        "window_s": window,
        "output_tokens_in_window": tokens_in_window,
        "output_tokens_per_s": tokens_in_window / window if window else None,
        "output_tokens_per_s_per_gpu": tokens_in_window / window / num_gpus if window and num_gpus else None,
        "output_tokens_per_s_per_user": float(np.mean(1.0 / tpot)) if tpot.size else None,
        "requests_per_s": len(done) / window if window else None,
    }

    good = np.ones(len(done), dtype=bool)
    if slo.get("ttft_s") is not None:
        good &= done["ttft_s"].to_numpy(dtype=float) <= float(slo["ttft_s"])
    if slo.get("tpot_s") is not None:
        d_tpot = done["tpot_s"].to_numpy(dtype=float)
        good &= np.isnan(d_tpot) | (d_tpot <= float(slo["tpot_s"]))
    goodput = {
        "slo": {"ttft_s": slo.get("ttft_s"), "tpot_s": slo.get("tpot_s")},
        "requests_meeting_slo": int(good.sum()),
        "requests_per_s": int(good.sum()) / window if window else None,
        "share": float(good.mean()) if len(done) else None,
    }

    it = iterations
    scope = "whole run"
    if window is not None and len(it):
        it = it[(it["start_s"] >= start) & (it["start_s"] <= end)]
        scope = "measured window"
    cap = it["kv_capacity_tokens"].to_numpy(dtype=float) if len(it) else np.empty(0)
    kv = np.divide(it["kv_used_tokens"].to_numpy(dtype=float), cap, out=np.full(cap.shape, np.nan),
                   where=cap > 0) if len(it) else np.empty(0)
    batch = {
        "scope": scope,
        "iterations": len(it),
        "mean_sequences": float(it["batch_sequences"].mean()) if len(it) else None,
        "max_sequences": int(it["batch_sequences"].max()) if len(it) else None,
        "mean_prefill_tokens": float(it["prefill_tokens"].mean()) if len(it) else None,
        "mean_decode_tokens": float(it["decode_tokens"].mean()) if len(it) else None,
        "kv_use_mean": float(np.nanmean(kv)) if np.isfinite(kv).any() else None,
        "kv_use_max": float(np.nanmax(kv)) if np.isfinite(kv).any() else None,
    }

    little: dict[str, Any] = {"mean_in_system": None, "arrival_rate_per_s": None, "mean_e2e_s": None,
                              "predicted_in_system": None, "ratio": None}
    if window is not None:
        arrival = table["arrival_s"].to_numpy(dtype=float)
        leave = np.where(finished, table["finish_s"].to_numpy(dtype=float), float(horizon_s))
        in_system = time_average_in_system(arrival, leave, start, end)
        m_arr = measured["arrival_s"].to_numpy(dtype=float)
        rate = int(np.count_nonzero((m_arr >= start) & (m_arr <= end))) / window
        mean_e2e = latency["e2e_s"]["mean"]
        predicted = rate * mean_e2e if mean_e2e is not None else None
        little = {"mean_in_system": in_system, "arrival_rate_per_s": rate, "mean_e2e_s": mean_e2e,
                  "predicted_in_system": predicted,
                  "ratio": in_system / predicted if predicted else None}

    return finite({
        "horizon_s": float(horizon_s),
        "num_gpus": int(num_gpus),
        "requests": requests,
        "latency": latency,
        "throughput": throughput,
        "goodput": goodput,
        "batch": batch,
        "littles_law": little,
        "load": offered_and_achieved(measured, table),
    })
