"""A serving run's results in the layout of vLLM's serving benchmark JSON, so a simulated run and a
measured `vllm bench serve` run can be compared field by field.

vLLM's benchmark (`vllm/benchmarks/serve.py`, before that `benchmarks/benchmark_serving.py`) with
`--save-result --save-detailed` writes one JSON object: the setup (date, backend, label, model_id,
tokenizer_id, num_prompts), the traffic (request_rate, burstiness, max_concurrency), the totals
(duration, completed, failed, total_input_tokens, total_output_tokens, request_throughput,
request_goodput, output_throughput, total_token_throughput, max_output_tokens_per_s,
max_concurrent_requests), the per-request lists (input_lens, output_lens, ttfts, itls,
generated_texts, errors) and, for each metric of `--percentile-metrics`, mean_/median_/std_ and
p{P}_{metric}_ms for each percentile of `--metric-percentiles`. `vllm_result` fills the same keys
from a run directory's requests.parquet and summary.json with vLLM's definitions (vllm/benchmarks/
serve.py `calculate_metrics` and `benchmark`, at commit def9ce85ba1079af970a58ed3d42dd861ae35d58):

- the requests are the measured ones (the warm-up share left out, as vLLM leaves its
  `--num-warmups` requests out), in arrival order; a request is completed when it emitted every
  output token before the simulation's horizon, else failed (its error says so);
- duration: first measured arrival to the last measured finish (the horizon when one is unfinished);
- ttfts, itls (seconds), input_lens, output_lens per request (a failed request: output length 0,
  its TTFT 0.0 when it emitted nothing, as vLLM's defaults); the statistics are over completed
  requests: TTFT and E2EL per request, TPOT = (E2EL - TTFT) / (output - 1) for outputs of more
  than one token, ITL pooled over every gap; mean, median, std (population) and percentiles
  (numpy's linear interpolation) in milliseconds, 0 for an empty list (vLLM's `np.mean(x or 0)`);
- throughputs: completed requests, output tokens, and input + output tokens of completed
  requests, per second of the duration; goodput: completed requests meeting every SLO of
  `serving.slo` (TTFT and TPOT; a one-token request's TPOT counts as 0) per second, None without
  SLOs (vLLM's `--goodput` unset);
- max_output_tokens_per_s and max_concurrent_requests: the busiest 1-second bucket from the
  first arrival, as vLLM counts them;
- request_rate, burstiness, max_concurrency: an open loop's Poisson rate (burstiness 1) or gamma
  (burstiness = 1 / cv^2, vLLM's gamma shape), a closed loop as vLLM's `--max-concurrency users`
  at request rate inf (think time and ramp-up have no vLLM counterpart and are noted), a
  replayed arrival file as None;
- generated_texts: one null per request: a simulation generates no text.

The `moesim` key says the file is simulated and what moesim could not fill; `vllm_diff` lines up
a measured and a simulated file field by field.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: the backend (and endpoint_type) a simulated file names, so it is never taken for a measurement
BACKEND = "moesim-simulated"
METRICS = ("ttft", "tpot", "itl", "e2el")  # vLLM's --percentile-metrics names
PERCENTILES = (99.0,)  # vLLM's --metric-percentiles default
#: the keys vLLM writes before the per-metric statistics, in its order (vllm/benchmarks/serve.py)
SETUP_KEYS = ("date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
              "request_rate", "burstiness", "max_concurrency")
RESULT_KEYS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
               "request_goodput", "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
               "itls", "generated_texts", "errors", "max_output_tokens_per_s", "max_concurrent_requests")
PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")
NOTE_KEY = "moesim"


def percentile_word(p: float) -> str:
    """How vLLM names a percentile in a key: 99 -> '99', 99.9 -> '99.9'."""
    return str(int(p)) if int(p) == p else str(p)


def metric_keys(metrics: Sequence[str] = METRICS, percentiles: Sequence[float] = PERCENTILES) -> list[str]:
    """The statistic keys vLLM writes for the selected metrics and percentiles, in its order."""
    keys = []
    for m in metrics:
        keys += [f"mean_{m}_ms", f"median_{m}_ms", f"std_{m}_ms"]
        keys += [f"p{percentile_word(p)}_{m}_ms" for p in percentiles]
    return keys


def _stats(name: str, values: Iterable[float], percentiles: Sequence[float]) -> dict[str, float]:
    """mean/median/std/percentiles of `values` (seconds) in ms, vLLM's way (0 for none)."""
    v = [float(x) for x in values]
    v = v or [0.0]  # vLLM: np.mean(x or 0)
    out = {f"mean_{name}_ms": float(np.mean(v)) * 1000, f"median_{name}_ms": float(np.median(v)) * 1000,
           f"std_{name}_ms": float(np.std(v)) * 1000}
    for p in percentiles:
        out[f"p{percentile_word(p)}_{name}_ms"] = float(np.percentile(v, p)) * 1000
    return out


def _peaks(starts: np.ndarray, ttfts: np.ndarray, itls: Sequence[Sequence[float]],
           e2els: np.ndarray) -> tuple[float, int]:
    """vLLM's max_output_tokens_per_s and max_concurrent_requests over completed requests: output
    tokens and requests in flight per 1-second bucket from the first start, their maxima."""
    if not starts.size:
        return 0.0, 0
    t0 = float(starts.min())
    buckets = int(np.ceil(float((starts + e2els).max()) - t0)) + 1
    tokens = np.zeros(buckets)
    concurrent = np.zeros(buckets)
    for start, ttft, gaps, e2el in zip(starts, ttfts, itls, e2els):
        times = start + ttft + np.concatenate([[0.0], np.cumsum(np.asarray(gaps, dtype=float))])
        b = (times - t0).astype(np.int64)
        b = b[(b >= 0) & (b < buckets)]
        np.add.at(tokens, b, 1)
        concurrent[int(start - t0):int(start + e2el - t0) + 1] += 1
    return float(tokens.max()), int(concurrent.max())


def _traffic(serving: Mapping[str, Any]) -> tuple[Any, float | None, int | None, list[str]]:
    """(request_rate, burstiness, max_concurrency, notes) of the config's serving section."""
    notes = []
    users = serving.get("users")
    if users is not None:
        think, ramp = serving.get("think_time"), serving.get("ramp_up")
        if think not in (None, 0, 0.0) or ramp not in (None, 0, 0.0):
            notes.append("closed loop with think time or ramp-up: vLLM's --max-concurrency sends the next request "
                         "at once, so request_rate inf / max_concurrency only approximates this traffic")
        return "inf", 1.0, int(users), notes
    arrivals = serving.get("arrivals") or {}
    process = arrivals.get("process")
    if process == "poisson":
        return float(arrivals["rate"]), 1.0, None, notes
    if process == "gamma":
        return float(arrivals["rate"]), 1.0 / float(arrivals["cv"]) ** 2, None, notes
    notes.append(f"arrival process {process!r} (replayed times) has no vLLM request_rate: request_rate and "
                 "burstiness are null")
    return None, None, None, notes


def vllm_result(requests: pd.DataFrame, summary: Mapping[str, Any], *, date: str | None = None,
                metrics: Sequence[str] = METRICS, percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    """The vLLM serving-benchmark JSON object of a serving run (module docstring): `requests` is
    the run's requests.parquet, `summary` its summary.json. `date` defaults to now, in vLLM's
    %Y%m%d-%H%M%S form."""
    from moesim.errors import MoesimError

    metrics_of = summary.get("metrics") or {}
    serving_summary = metrics_of.get("serving")
    config = summary.get("config") or {}
    if not isinstance(serving_summary, dict) or not isinstance(config.get("serving"), dict):
        raise MoesimError("the vLLM benchmark layout is for a serving run (a config with a serving: section); this "
                          "run is a fixed batch")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; vLLM's are {', '.join(METRICS)}")
    horizon = float(serving_summary.get("horizon_s") or 0.0)
    table = requests[~requests["warmup"].to_numpy(dtype=bool)]
    table = table.iloc[np.lexsort((table["request_id"].to_numpy(), table["arrival_s"].to_numpy(dtype=float)))]
    sent = np.isfinite(table["arrival_s"].to_numpy(dtype=float))  # a closed loop's unsent requests have none
    done = table["finished"].to_numpy(dtype=bool) & sent
    arrival = table["arrival_s"].to_numpy(dtype=float)
    ttft = table["ttft_s"].to_numpy(dtype=float)
    e2e = table["e2e_s"].to_numpy(dtype=float)
    prompt = table["prompt_tokens"].to_numpy(dtype=np.int64)
    emitted = table["tokens_emitted"].to_numpy(dtype=np.int64)
    itls = [[float(g) for g in (gaps if gaps is not None else [])] for gaps in table["itl_s"]]

    output_lens = np.where(done, emitted, 0)
    errors = ["" if d else ("moesim: never sent before the simulation's horizon" if not s else
                            f"moesim: unfinished at the simulation's horizon ({horizon:.6g} s): "
                            f"{int(n)} of {int(w)} output tokens")
              for d, s, n, w in zip(done, sent, emitted, table["output_tokens"].to_numpy(dtype=np.int64))]
    ends = np.where(done, arrival + np.nan_to_num(e2e), horizon)
    duration = float(ends[sent].max() - arrival[sent].min()) if sent.any() else 0.0

    d_ttft, d_e2e, d_out = ttft[done], e2e[done], output_lens[done]
    tpots = [(l - t) / (n - 1) for l, t, n in zip(d_e2e, d_ttft, d_out) if n > 1]
    pooled = [g for gaps, d in zip(itls, done) if d for g in gaps]
    total_input = int(prompt[done].sum())
    total_output = int(d_out.sum())

    slo = ((serving_summary.get("goodput") or {}).get("slo") or {})
    slo = {k: v for k, v in slo.items() if v is not None}
    goodput = None
    if slo:
        all_tpot = np.array([(l - t) / (n - 1) if n > 1 else 0.0 for l, t, n in zip(d_e2e, d_ttft, d_out)])
        good = np.ones(len(d_ttft), dtype=bool)
        if "ttft_s" in slo:
            good &= d_ttft <= float(slo["ttft_s"])
        if "tpot_s" in slo:
            good &= all_tpot <= float(slo["tpot_s"])
        goodput = int(good.sum()) / duration if duration > 0 else 0.0
    peak_tokens, peak_requests = _peaks(arrival[done], d_ttft, [g for g, d in zip(itls, done) if d], d_e2e)

    rate, burstiness, concurrency, notes = _traffic(config["serving"])
    resolved = summary.get("resolved") or {}
    model = resolved.get("model") or config.get("model")
    per_second = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    out: dict[str, Any] = {
        "date": date or datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": BACKEND, "backend": BACKEND, "label": summary.get("name"),
        "model_id": model, "tokenizer_id": model, "num_prompts": int(len(table)),
        "request_rate": rate, "burstiness": burstiness, "max_concurrency": concurrency,
        "duration": duration, "completed": int(done.sum()), "failed": int(len(table) - done.sum()),
        "total_input_tokens": total_input, "total_output_tokens": total_output,
        "request_throughput": per_second(int(done.sum())), "request_goodput": goodput,
        "output_throughput": per_second(total_output), "total_token_throughput": per_second(total_input + total_output),
        "input_lens": [int(x) for x in prompt], "output_lens": [int(x) for x in output_lens],
        "ttfts": [float(t) if math.isfinite(t) else 0.0 for t in ttft], "itls": itls,
        "generated_texts": [None] * len(table), "errors": errors,
        "max_output_tokens_per_s": peak_tokens, "max_concurrent_requests": peak_requests,
    }
    values = {"ttft": d_ttft, "tpot": tpots, "itl": pooled, "e2el": d_e2e}
    for m in metrics:
        out.update(_stats(m, values[m], percentiles))
    flags = (f"--save-result --save-detailed --percentile-metrics {','.join(metrics)} --metric-percentiles "
             f"{','.join(percentile_word(p) for p in percentiles)}")
    if slo:
        flags += " --goodput " + " ".join(f"{k[:-2]}:{float(v) * 1000:g}" for k, v in slo.items())
    if concurrency is not None:
        flags += f" --max-concurrency {concurrency}"
    out[NOTE_KEY] = {
        "simulated": True,
        "note": "Simulated by moesim, not measured: every number is a model output. Laid out as vLLM's serving "
                "benchmark JSON (vllm/benchmarks/serve.py) for a field-by-field comparison with a measured run.",
        "moesim_version": summary.get("moesim_version"), "scenario": summary.get("name"),
        "config_file": summary.get("config_file"), "seed": summary.get("seed"),
        "vllm_flags": flags,
        "not_known": {"generated_texts": "a simulation generates no text: one null per request"},
        "warmup_excluded": int(requests["warmup"].to_numpy(dtype=bool).sum()),
        "slo_s": slo or None,
        "traffic_notes": notes,
        "definitions": "vLLM's (vllm/benchmarks/serve.py calculate_metrics): statistics over completed requests, "
                       "ITL pooled; summary.json's metrics.serving follows moesim's own window and warm-up rules "
                       "(simulator/serving/results.py), so the two can differ slightly",
    }
    return out


def vllm_result_from_run(run_dir) -> dict[str, Any]:
    """`vllm_result` of a run directory written by `moesim simulate` (a serving run)."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return vllm_result(pd.read_parquet(run_dir / "requests.parquet"), summary)


def vllm_diff(measured: Mapping[str, Any], simulated: Mapping[str, Any]) -> pd.DataFrame:
    """Two vLLM benchmark JSON objects (say a measured run and a simulated one) side by side: one
    row per scalar field either has (per-request lists and moesim's note left out), with both
    values, simulated - measured and simulated / measured - 1 where both are numbers; `only_in`
    names the side a field is missing from."""
    skip = set(PER_REQUEST_KEYS) | {NOTE_KEY}
    keys = [k for k in measured if k not in skip] + [k for k in simulated if k not in skip and k not in measured]
    rows = []
    for k in keys:
        a, b = measured.get(k), simulated.get(k)
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        rows.append({"field": k, "measured": a, "simulated": b,
                     "difference": b - a if numbers else None,
                     "relative": (b / a - 1) if numbers and a else None,
                     "only_in": "measured" if k not in simulated else "simulated" if k not in measured else ""})
    return pd.DataFrame(rows, columns=["field", "measured", "simulated", "difference", "relative", "only_in"])
