"""Iteration-level continuous batching (Orca / vLLM style), pure and deterministic.

Given a request table (see `arrivals.generate_requests`), decide which tokens of which requests
run in each engine iteration, so a serving simulation can cost the iterations and a trace
generator can attribute tokens to requests. Policy, each iteration starting at time t:

1. Every running request that has finished its prefill decodes one token (admission order).
2. Running requests whose prompt is only partly prefilled continue (chunked prefill), then
   arrived requests (arrival_s <= t) are admitted strictly FIFO by arrival while fewer than
   `max_running` run and token budget is left; each gets min(remaining prompt, remaining budget)
   prompt tokens. The budget per iteration is `max_batch_tokens`.
3. The iteration lasts `iteration_time_fn(prefill_tokens, decode_tokens, sum_kv)` seconds, where
   sum_kv is the sum of kv_len over the batch; time advances by it. When nothing runs and
   nobody has arrived, time jumps to the next arrival (no iteration is recorded).

Token convention (as vLLM): the iteration that runs a request's last prefill chunk also emits
its first output token, so a request with `output_tokens = m` needs m - 1 decode iterations
and finishes at the end of its (m-1)-th decode (or of its last prefill chunk when m = 1).
kv_len is the number of the request's tokens already in the KV cache before the iteration:
the prompt tokens prefilled so far, or, for the j-th decode, prompt_tokens + j - 1 (the
output token fed in is cached during that decode).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import pandas as pd

#: iteration_time_fn(prefill_tokens, decode_tokens, sum_kv) -> seconds
IterationTimeFn = Callable[[int, int, int], float]


def schedule_iterations(requests_df: pd.DataFrame, max_batch_tokens: int, max_running: int,
                        iteration_time_fn: IterationTimeFn) -> pd.DataFrame:
    """One row per (iteration, request): iteration, start_s, end_s, request_id, phase
    ("prefill"/"decode"), tokens, kv_len. Runs until every request has finished."""
    if max_running < 1 or max_batch_tokens < max_running:
        raise ValueError(f"need 1 <= max_running <= max_batch_tokens (got max_running={max_running}, "
                         f"max_batch_tokens={max_batch_tokens}) so every running decode fits in an iteration")
    req = requests_df.sort_values(["arrival_s", "request_id"], kind="stable")
    ids = req["request_id"].to_numpy(dtype=np.int64)
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    prompt = req["prompt_tokens"].to_numpy(dtype=np.int64)
    output = req["output_tokens"].to_numpy(dtype=np.int64)
    if len(ids) and (prompt.min() < 1 or output.min() < 1):
        raise ValueError("prompt_tokens and output_tokens must be >= 1")

    waiting = deque(range(len(ids)))  # indices into the sorted arrays, FIFO by arrival
    running: list[int] = []           # admission order
    prefilled = np.zeros(len(ids), dtype=np.int64)
    generated = np.zeros(len(ids), dtype=np.int64)  # output tokens emitted so far
    cols: dict[str, list] = {k: [] for k in ("iteration", "start_s", "end_s", "request_id", "phase",
                                             "tokens", "kv_len")}
    t, it = 0.0, 0
    while waiting or running:
        if not running and arrival[waiting[0]] > t:
            t = float(arrival[waiting[0]])
        batch: list[tuple[int, str, int, int]] = []  # (index, phase, tokens, kv_len)
        budget = max_batch_tokens
        for r in running:
            if prefilled[r] == prompt[r]:
                batch.append((r, "decode", 1, int(prompt[r] + generated[r] - 1)))
                budget -= 1
        for r in running:
            if prefilled[r] < prompt[r] and budget > 0:
                chunk = int(min(prompt[r] - prefilled[r], budget))
                batch.append((r, "prefill", chunk, int(prefilled[r])))
                budget -= chunk
        while waiting and budget > 0 and len(running) < max_running and arrival[waiting[0]] <= t:
            r = waiting.popleft()
            running.append(r)
            chunk = int(min(prompt[r], budget))
            batch.append((r, "prefill", chunk, 0))
            budget -= chunk

        prefill_tokens = sum(b[2] for b in batch if b[1] == "prefill")
        decode_tokens = sum(b[2] for b in batch if b[1] == "decode")
        dt = float(iteration_time_fn(prefill_tokens, decode_tokens, sum(b[3] for b in batch)))
        if not np.isfinite(dt) or dt < 0:
            raise ValueError(f"iteration_time_fn returned {dt!r} for iteration {it}; need a finite time >= 0")
        for r, phase, tokens, kv in batch:
            cols["iteration"].append(it)
            cols["start_s"].append(t)
            cols["end_s"].append(t + dt)
            cols["request_id"].append(int(ids[r]))
            cols["phase"].append(phase)
            cols["tokens"].append(tokens)
            cols["kv_len"].append(kv)
            if phase == "prefill":
                prefilled[r] += tokens
                if prefilled[r] == prompt[r]:
                    generated[r] = 1  # the last prefill chunk emits the first output token
            else:
                generated[r] += 1
        running = [r for r in running if not (prefilled[r] == prompt[r] and generated[r] >= output[r])]
        t += dt
        it += 1

    out = pd.DataFrame(cols)
    return out.astype({"iteration": "int64", "start_s": "float64", "end_s": "float64", "request_id": "int64",
                       "tokens": "int64", "kv_len": "int64"})


def request_metrics(schedule_df: pd.DataFrame, requests_df: pd.DataFrame) -> pd.DataFrame:
    """Per request: first_token_s (end of the iteration with its last prefill chunk), finish_s,
    ttft_s = first_token_s - arrival_s, tpot_s = mean gap between its output tokens
    ((finish_s - first_token_s) / (output_tokens - 1); NaN for one output token),
    e2e_s = finish_s - arrival_s, and queue_s = start of its first prefill - arrival_s."""
    s = schedule_df
    pre = s[s["phase"] == "prefill"].groupby("request_id")
    first_token = pre["end_s"].max()
    started = pre["start_s"].min()
    finish = s.groupby("request_id")["end_s"].max()
    out = requests_df[["request_id", "arrival_s", "prompt_tokens", "output_tokens"]].copy()
    rid = out["request_id"]
    out["queue_s"] = rid.map(started).to_numpy(dtype=np.float64) - out["arrival_s"].to_numpy()
    out["first_token_s"] = rid.map(first_token).astype("float64")
    out["finish_s"] = rid.map(finish).astype("float64")
    out["ttft_s"] = out["first_token_s"] - out["arrival_s"]
    gaps = (out["output_tokens"] - 1).where(out["output_tokens"] > 1)
    out["tpot_s"] = (out["finish_s"] - out["first_token_s"]) / gaps
    out["e2e_s"] = out["finish_s"] - out["arrival_s"]
    return out.reset_index(drop=True)
