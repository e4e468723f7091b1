"""After a serving run: token times from the simulated timeline, the request and iteration
tables, and the serving summary (`results.py` defines the metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.simulator.engine import EngineResult
from moesim.simulator.scenario import Scenario
from moesim.simulator.serving.iteration_cache import IterationCache
from moesim.simulator.serving.results import iteration_cache_summary, request_table, serving_summary
from moesim.simulator.serving.lockstep import lockstep
from moesim.simulator.serving.setup import rank_memory
from moesim.simulator.serving.source import ServingSource


def replica_step_times(raw: EngineResult, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, replicas) start and end of every step on every replica: the first of its ranks to
    start and the last to finish (a token is out when the replica's last rank is done)."""
    steps, n = raw.start.shape[0], raw.start.shape[2]
    with np.errstate(all="ignore"):
        start = np.nanmin(raw.start.transpose(0, 2, 1, 3, 4).reshape(steps, n, -1), axis=2)
        end = np.nanmax(raw.end.transpose(0, 2, 1, 3, 4).reshape(steps, n, -1), axis=2)
    return start.reshape(steps, n // tp, tp).min(axis=2), end.reshape(steps, n // tp, tp).max(axis=2)


def serving_outcome(sc: Scenario, raw: EngineResult, source: ServingSource,
                    cache: IterationCache | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(requests table, iterations table, summary) of a finished serving run. `cache`: the run's
    iteration cache; the summary's `iteration_cache` is None when the run had none."""
    cfg = sc.config.serving
    start, end = replica_step_times(raw, sc.tp)
    token_times: dict[int, list[float]] = {}
    rows = []
    cap = source.kv_capacity_tokens
    for it in source.iterations:
        s = it.step
        if s >= end.shape[0]:
            break
        for r, batch in enumerate(it.batches):
            for rid in it.emitted[r]:
                token_times.setdefault(rid, []).append(float(end[s, r]))
            prefill = sum(i.tokens for i in batch if i.phase == "prefill")
            decode = sum(i.tokens for i in batch if i.phase == "decode")
            rows.append((s, r, float(start[s, r]), float(end[s, r]), len(batch), prefill, decode, it.kv_used[r], cap))
    iterations = pd.DataFrame(rows, columns=["iteration", "replica", "start_s", "end_s", "batch_sequences",
                                             "prefill_tokens", "decode_tokens", "kv_used_tokens",
                                             "kv_capacity_tokens"])
    req = source.requests[["request_id", "prompt_tokens", "output_tokens"]].copy()
    req.insert(1, "arrival_s", source.arrival)
    req["replica"] = req["request_id"].map(source.replica_of).fillna(-1).astype("int64")
    req["first_scheduled_s"] = req["request_id"].map(source.first_scheduled).astype("float64")
    preempted: dict[int, int] = {}
    for b in source.batchers:
        preempted.update(b.preemptions())
    req["preemptions"] = req["request_id"].map(preempted).fillna(0).astype("int64")
    horizon = float(np.nanmax(end)) if end.size else 0.0
    table = request_table(req, token_times, horizon, cfg.warmup)
    slo = {"ttft_s": cfg.slo.ttft, "tpot_s": cfg.slo.tpot}
    summary = serving_summary(table, iterations, horizon, sc.num_devices, slo)
    summary["memory_per_rank_bytes"] = rank_memory(sc).as_dict()
    summary["replicas"] = len(source.batchers)
    summary["iterations"] = len(source.iterations)
    summary["iteration_cache"] = cache_outcome(cache, start, end)
    summary["traffic"] = lockstep(iterations, len(source.batchers))
    if "cached_tokens" in source.requests:  # prefix caching: the prompt tokens whose prefill was skipped
        cached, prompt = (int(source.requests[c].sum()) for c in ("cached_tokens", "prompt_tokens"))
        summary["prefix_cache"] = {"hit_rate": cfg.prefix_cache.hit_rate if cfg.prefix_cache else None,
                                   "prompt_tokens": prompt, "cached_tokens": cached,
                                   "cached_share": cached / prompt if prompt else 0.0,
                                   "source": "model (each prompt's cached prefix: round(hit_rate x prompt), "
                                             "at most prompt - 1)"}
    return table, iterations, summary


#: summary.json keys of a fixed-batch run that a serving run leaves out: they are computed over scheduler
#: iterations and the stand-in workload a serving config resolves with (one decode token per replica), so
#: `time_per_output_token_s` would read as TPOT and `throughput_tokens_per_s` as the output rate, and
#: neither is. A serving run's numbers are under `serving`; the iteration durations under
#: `serving.iteration_latency_s`.
FIXED_BATCH_KEYS = ("step_latency_s", "tokens_per_step", "throughput_tokens_per_s", "time_per_output_token_s")


def drop_fixed_batch_keys(summary: dict) -> dict | None:
    """Take FIXED_BATCH_KEYS out of a serving run's summary (in place) and return what
    `serving.iteration_latency_s` keeps: mean, p50, p99 and max seconds of a scheduler iteration
    (first rank's start to last rank's end). The error bar keeps its interval on the mean
    iteration (`step_latency_s`, which the run report reads) and loses the one on the stand-in
    throughput."""
    latency = summary.get("step_latency_s")
    for key in FIXED_BATCH_KEYS:
        summary.pop(key, None)
    bar = summary.get("error_bar")
    if isinstance(bar, dict):
        bar.pop("throughput_tokens_per_s", None)
        if bar.get("step_latency_s") is not None:
            bar["applies_to"] = "step_latency_s: the mean scheduler iteration (serving.iteration_latency_s)"
    return latency


def cache_outcome(cache: IterationCache | None, start: np.ndarray, end: np.ndarray) -> dict | None:
    """The iteration cache's part of the summary from the (steps, replicas) step times, None without one."""
    if cache is None:
        return None
    steps = start.shape[0]
    seconds = np.fmax.reduce(end, axis=1) - np.fmin.reduce(start, axis=1) if steps else np.empty(0)  # NaN-blind
    replayed = np.zeros(steps, dtype=bool)
    replayed[[s for s in cache.replays if s < steps]] = True
    return iteration_cache_summary(cache.KEY, cache.hits, cache.misses, cache.own_regime, len(cache.regimes),
                                   seconds, replayed)
