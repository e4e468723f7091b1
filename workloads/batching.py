"""Iteration-level continuous batching (Orca / vLLM style), pure and deterministic.

`ContinuousBatcher` is the scheduler of one replica, driven step by step by a simulation engine
that decides the times: `submit` requests as they arrive, `next_batch(now)` forms an iteration,
`commit(batch)` applies it when it ends. `schedule_iterations` runs it as a closed loop over a
request table (see `arrivals.generate_requests`) with a callback that times each iteration.

Policy (`SchedulerPolicy`), each iteration formed at time t with a budget of `max_batch_tokens`:

1. order MIXED: every running request that has finished its prefill decodes one token
   (admission order); then running requests whose prompt is only partly prefilled continue
   (chunked prefill); then arrived requests (arrival_s <= t) are admitted strictly FIFO by
   (arrival_s, request_id) while fewer than `max_running` run, budget is left and the KV rule
   allows; each gets min(remaining prompt, remaining budget) prompt tokens (with
   chunked_prefill=False only a whole prompt that fits the remaining budget is admitted, and the
   queue waits behind it). order PREFILL_FIRST: the prefill part of that rule alone (continuing
   chunks, then admissions) when it schedules anything, otherwise the decodes alone.
2. KV: kv_policy RESERVE admits a request only if the reserved tokens (prompt + output of every
   running request) plus its own prompt + output fit `kv_capacity_tokens`; it can never run out
   later. kv_policy PREEMPT counts the tokens actually cached; a request is admitted if its
   prompt fits next to what is cached (including this iteration's tokens so far); when the
   decodes of an iteration need more KV than is free, the most recently admitted running
   requests are preempted (recompute) until they fit: each frees its KV and goes back to the
   front of the waiting queue, and on readmission re-prefills its prompt plus the output tokens
   generated so far (keeping the count). An iteration that preempts admits nobody (as vLLM).
   A continuing prefill chunk is cut to the free KV.
3. `schedule_iterations`: the iteration lasts `iteration_time_fn(prefill_tokens, decode_tokens,
   sum_kv)` seconds, where sum_kv is the sum of kv_len over the batch; time advances by it. When
   nothing runs and nobody has arrived, time jumps to the next arrival (no iteration is recorded).

Token convention (as vLLM): the iteration that runs a request's last prefill chunk also emits
its first output token, so a request with `output_tokens = m` needs m - 1 decode iterations
and finishes at the end of its (m-1)-th decode (or of its last prefill chunk when m = 1).
kv_len is the number of the request's tokens already in the KV cache before the iteration:
the prompt tokens prefilled so far, or, for the j-th decode, prompt_tokens + j - 1 (the
output token fed in is cached during that decode). After a preemption the re-prefill of
prompt + g generated tokens emits token g + 1, and later decodes keep kv_len = prompt_tokens +
generated - 1. So a request caches at most prompt + output - 1 tokens (at its last decode).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from itertools import chain
from typing import Callable

import numpy as np
import pandas as pd

#: iteration_time_fn(prefill_tokens, decode_tokens, sum_kv) -> seconds
IterationTimeFn = Callable[[int, int, int], float]


@dataclass(frozen=True)
class IterationOrder:
    """In what order an iteration takes its two kinds of work: `form(decodes, prefills, items)`
    calls the scheduler's two fillers (each appends to `items`) as the order says."""

    name: str
    form: Callable[[Callable[[], None], Callable[[], None], list], None]


def _mixed(decodes: Callable[[], None], prefills: Callable[[], None], items: list) -> None:
    decodes()
    prefills()


def _prefill_first(decodes: Callable[[], None], prefills: Callable[[], None], items: list) -> None:
    prefills()
    if not items:
        decodes()


MIXED = IterationOrder("mixed", _mixed)
PREFILL_FIRST = IterationOrder("prefill_first", _prefill_first)


@dataclass(frozen=True)
class KvPolicy:
    """How admission counts KV: `preempt` counts the tokens actually cached and preempts when
    decodes run out; otherwise a request reserves its prompt + output at admission."""

    name: str
    preempt: bool

    def tokens_held(self, prompt, output):
        """KV tokens one request must find room for to run at all (numbers or arrays)."""
        return prompt + (1 if self.preempt else output)


RESERVE = KvPolicy("reserve", preempt=False)
PREEMPT = KvPolicy("preempt", preempt=True)


@dataclass(frozen=True)
class SchedulerPolicy:
    """How one replica forms iterations (see the module docstring)."""

    max_batch_tokens: int = 8192  # tokens per iteration (prefill chunk tokens + one per decode)
    max_running: int = 256        # sequences running at once
    order: IterationOrder = MIXED
    chunked_prefill: bool = True  # False: a prompt is admitted only if all of it fits the remaining budget
    kv_policy: KvPolicy = RESERVE

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_batch_tokens < self.max_running:
            raise ValueError(f"need 1 <= max_running <= max_batch_tokens (got max_running={self.max_running}, "
                             f"max_batch_tokens={self.max_batch_tokens}) so every running decode fits in an "
                             f"iteration")


@dataclass(frozen=True)
class BatchItem:
    """One request's share of an iteration."""

    request_id: int
    phase: str   # "prefill" | "decode"
    tokens: int  # chunk tokens, or 1 for a decode
    kv_len: int  # tokens of this request already in the KV cache before this iteration


class _Request:
    __slots__ = ("id", "arrival", "prompt", "output", "target", "prefilled", "generated", "transferred", "prefix")

    def __init__(self, rid: int, arrival: float, prompt: int, output: int, transferred: bool = False,
                 prefix: int = 0) -> None:
        self.id, self.arrival, self.prompt, self.output = rid, arrival, prompt, output
        self.target = prompt   # tokens to prefill: prompt, or prompt + generated after a preemption
        self.prefix = prefix   # prompt tokens found in the prefix cache: their KV is reused, not computed
        self.prefilled = prompt if transferred else prefix     # of target, in this admission
        self.generated = 1 if transferred else 0     # output tokens emitted so far
        self.transferred = transferred  # prefilled elsewhere (disaggregation): its KV and first token arrive

    def cached(self) -> int:
        """Tokens in the KV cache now (between iterations)."""
        if self.prefilled < self.target:
            return self.prefilled
        return self.prompt + self.generated - 1


class _Plan:
    __slots__ = ("items", "admitted", "victims")

    def __init__(self, items: list[BatchItem], admitted: list[_Request], victims: list[_Request]) -> None:
        self.items, self.admitted, self.victims = items, admitted, victims


class ContinuousBatcher:
    """The continuous-batching scheduler of one replica, driven by the caller's clock.

    Per iteration: `next_batch(now)` plans (it changes no request's progress and may be called
    again), `emitted(batch)` tells who gets a token, `commit(batch)` applies the plan of the last
    `next_batch` (admissions, preemptions, progress) and returns the requests that finished.
    Costs O(running + admitted) per call, plus O(log n) per request to queue it.
    """

    def __init__(self, policy: SchedulerPolicy, kv_capacity_tokens: float = float("inf")) -> None:
        if not (kv_capacity_tokens > 0):  # also rejects NaN
            raise ValueError(f"kv_capacity_tokens must be > 0, got {kv_capacity_tokens!r}")
        self.policy = policy
        self.kv_capacity_tokens = kv_capacity_tokens
        self._preempt = policy.kv_policy.preempt
        self._reqs: dict[int, _Request] = {}
        self._front: deque[_Request] = deque()  # preempted, to be readmitted first
        self._ready: deque[_Request] = deque()  # sorted by (arrival, id); every _future key is larger
        self._future: list[tuple[float, int, _Request]] = []  # heap by (arrival, id)
        self._running: list[_Request] = []      # admission order
        self._kv = 0                            # reserve: reserved tokens; preempt: cached tokens
        self._preemptions: dict[int, int] = {}
        self._plan: _Plan | None = None

    # ---- requests --------------------------------------------------------------------------
    def submit(self, request_id: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
               transferred: bool = False, cached_tokens: int = 0) -> None:
        """Queue a request. `transferred`: it was prefilled on another instance (prefill/decode
        disaggregation): it arrives with its prompt's KV and first token, is admitted without a
        prefill chunk and decodes from the next iteration on (it needs output_tokens >= 2).
        `cached_tokens`: the prompt's prefix found in the prefix cache (at most prompt - 1: the last
        token is always computed, for its logits): its prefill starts after them, attending to them."""
        rid, p, m = int(request_id), int(prompt_tokens), int(output_tokens)
        c = int(cached_tokens)
        if not 0 <= c < max(p, 1):
            raise ValueError(f"request {rid}: cached_tokens must be in [0, prompt_tokens - 1] (got {c} of {p})")
        if transferred and m < 2:
            raise ValueError(f"request {rid}: a transferred request needs output_tokens >= 2 (got {m}); its first "
                             "token came with the prefill")
        if rid in self._reqs:
            raise ValueError(f"request {rid} was already submitted")
        if not math.isfinite(arrival_s):
            raise ValueError(f"request {rid}: arrival_s must be finite, got {arrival_s!r}")
        if p < 1 or m < 1:
            raise ValueError(f"request {rid}: prompt_tokens and output_tokens must be >= 1 (got {p}, {m})")
        cap = self.kv_capacity_tokens
        if self._preempt:
            # it caches prompt + output - 1 tokens at its last decode; alone and short of that it would
            # preempt itself for ever
            if p + m - 1 > cap:
                raise ValueError(f"request {rid} can never finish: it needs prompt_tokens + output_tokens - 1 = "
                                 f"{p} + {m} - 1 = {p + m - 1} KV tokens > kv_capacity_tokens = {cap}")
        elif p + m > cap:
            raise ValueError(f"request {rid} can never run: prompt_tokens + output_tokens = {p} + {m} = {p + m} "
                             f"> kv_capacity_tokens = {cap}")
        if not self.policy.chunked_prefill:
            longest = p + m - 1 if self._preempt else p  # a re-prefill after preemption is longer
            if longest > self.policy.max_batch_tokens:
                raise ValueError(f"request {rid} can never run without chunked prefill: a prefill of {longest} "
                                 f"tokens > max_batch_tokens = {self.policy.max_batch_tokens}")
        r = _Request(rid, float(arrival_s), p, m, transferred, 0 if transferred else c)
        self._reqs[rid] = r
        key = (r.arrival, rid)
        ready = self._ready
        if ready and key < (ready[-1].arrival, ready[-1].id):  # submitted out of order, behind arrived ones
            i = len(ready) - 1
            while i > 0 and key < (ready[i - 1].arrival, ready[i - 1].id):
                i -= 1
            ready.insert(i, r)
        else:
            heapq.heappush(self._future, (r.arrival, rid, r))

    def next_arrival(self) -> float | None:
        """The earliest arrival among waiting requests, None if none wait."""
        best = min((r.arrival for r in self._front), default=None)
        for a in (self._ready[0].arrival if self._ready else None, self._future[0][0] if self._future else None):
            if a is not None and (best is None or a < best):
                best = a
        return best

    # ---- iterations ------------------------------------------------------------------------
    def next_batch(self, now: float) -> list[BatchItem]:
        """The iteration formed at `now` (empty when nothing can run); commit it when it ends."""
        future, ready = self._future, self._ready
        while future and future[0][0] <= now:
            ready.append(heapq.heappop(future)[2])
        pol, cap, preempt = self.policy, self.kv_capacity_tokens, self._preempt
        running = self._running
        items: list[BatchItem] = []
        admitted: list[_Request] = []
        victims: list[_Request] = []
        budget = pol.max_batch_tokens
        kv = self._kv  # reserve: reserved incl. this iteration's admissions; preempt: cached incl. its tokens

        def decodes() -> None:
            nonlocal budget, kv
            active = running
            if preempt:
                need = sum(1 for r in running if r.prefilled == r.target)
                k = len(running)
                while k > 0 and need > cap - kv:
                    k -= 1
                    v = running[k]
                    victims.append(v)
                    kv -= v.cached()
                    need -= v.prefilled == v.target
                kv += need
                active = running[:k] if victims else running
            for r in active:
                if r.prefilled == r.target:
                    items.append(BatchItem(r.id, "decode", 1, r.prompt + r.generated - 1))
                    budget -= 1

        def prefills() -> None:
            nonlocal budget, kv
            n = len(running) - len(victims)
            for r in running[:n] if victims else running:
                if r.prefilled < r.target and budget > 0:
                    chunk = min(r.target - r.prefilled, budget)
                    if preempt:
                        free = cap - kv
                        if free < chunk:
                            chunk = int(free)  # cut to the free KV (decodes of this iteration came first)
                            if chunk <= 0:
                                continue
                        kv += chunk
                    items.append(BatchItem(r.id, "prefill", chunk, r.prefilled))
                    budget -= chunk
            if victims:
                return
            for r in chain(self._front, ready):
                if budget <= 0 or n >= pol.max_running or r.arrival > now:
                    break
                if preempt:
                    if kv + r.target > cap:
                        break
                elif kv + r.prompt + r.output > cap:
                    break
                if r.transferred and r.prefilled == r.target:  # KV already here: join without a prefill
                    admitted.append(r)
                    n += 1
                    kv += r.cached() if preempt else r.prompt + r.output
                    continue
                if not pol.chunked_prefill and r.target > budget:
                    break
                chunk = min(r.target - r.prefilled, budget)  # after the cached prefix, which it attends to
                items.append(BatchItem(r.id, "prefill", chunk, r.prefilled))
                admitted.append(r)
                budget -= chunk
                n += 1
                kv += r.prefilled + chunk if preempt else r.prompt + r.output

        pol.order.form(decodes, prefills, items)
        self._plan = _Plan(items, admitted, victims)
        return list(items)

    def commit(self, batch: list[BatchItem]) -> list[int]:
        """Apply the iteration planned by the last `next_batch` (pass the batch it returned);
        returns the request ids that finished in it (their KV is freed)."""
        plan = self._plan
        if plan is None:
            if batch:
                raise ValueError("commit() without a planned batch: call next_batch() first")
            return []
        items = plan.items
        if len(batch) != len(items) or any(a is not b and a != b for a, b in zip(batch, items)):
            raise ValueError("commit() takes the batch returned by the last next_batch()")
        self._plan = None
        running, preempt = self._running, self._preempt
        for v in plan.victims:  # most recent first: each goes ahead of the one before at the front
            assert running[-1] is v
            running.pop()
            self._kv -= v.cached()
            v.target = v.prompt + v.generated
            v.prefilled = v.prefix  # the prefix cache still holds its shared prefix
            self._front.appendleft(v)
            self._preemptions[v.id] = self._preemptions.get(v.id, 0) + 1
        for r in plan.admitted:
            for q in (self._front, self._ready):
                if q and q[0] is r:
                    q.popleft()
                    break
            else:  # a request submitted since the plan went ahead of it
                (self._front if r in self._front else self._ready).remove(r)
            running.append(r)
            if not preempt:
                self._kv += r.prompt + r.output
            elif r.transferred and r.prefilled == r.target:  # its KV arrived with it (no prefill item)
                self._kv += r.cached()
            elif r.prefix:  # its cached prefix's KV (the chunk's tokens are added with the items below)
                self._kv += r.prefix
        finished: list[int] = []
        for item in items:
            r = self._reqs[item.request_id]
            if item.phase == "prefill":
                r.prefilled += item.tokens
                if r.prefilled == r.target:
                    r.generated += 1
            else:
                r.generated += 1
            if preempt:
                self._kv += item.tokens
            if r.prefilled == r.target and r.generated >= r.output:
                finished.append(r.id)
                self._kv -= r.cached() if preempt else r.prompt + r.output
        if finished:
            self._running = [r for r in running if not (r.prefilled == r.target and r.generated >= r.output)]
        return finished

    def emitted(self, batch: list[BatchItem]) -> list[int]:
        """Request ids that get an output token from `batch` (call before or right after its commit)."""
        reqs = self._reqs
        return [i.request_id for i in batch
                if i.phase == "decode" or i.kv_len + i.tokens == reqs[i.request_id].target]

    def preemptions(self) -> dict[int, int]:
        """request_id -> times preempted (requests never preempted are absent)."""
        return dict(self._preemptions)

    @property
    def kv_used_tokens(self) -> int:
        """After the last commit: reserve: prompt + output of every running request; preempt: tokens cached."""
        return self._kv

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._front) + len(self._ready) + len(self._future)

    @property
    def done(self) -> bool:
        return not self._running and self.waiting == 0


def schedule_iterations(requests_df: pd.DataFrame, max_batch_tokens: int, max_running: int,
                        iteration_time_fn: IterationTimeFn) -> pd.DataFrame:
    """One row per (iteration, request): iteration, start_s, end_s, request_id, phase
    ("prefill"/"decode"), tokens, kv_len. Runs until every request has finished (mixed order,
    chunked prefill, unlimited KV)."""
    batcher = ContinuousBatcher(SchedulerPolicy(int(max_batch_tokens), int(max_running)))
    req = requests_df.sort_values(["arrival_s", "request_id"], kind="stable")
    for rid, a, p, m in zip(req["request_id"].to_numpy(dtype=np.int64), req["arrival_s"].to_numpy(dtype=np.float64),
                            req["prompt_tokens"].to_numpy(dtype=np.int64),
                            req["output_tokens"].to_numpy(dtype=np.int64)):
        batcher.submit(int(rid), float(a), int(p), int(m))
    cols: dict[str, list] = {k: [] for k in ("iteration", "start_s", "end_s", "request_id", "phase",
                                             "tokens", "kv_len")}
    t, it = 0.0, 0
    while not batcher.done:
        batch = batcher.next_batch(t)
        if not batch:
            nxt = batcher.next_arrival()
            if nxt is None or nxt <= t:
                raise RuntimeError(f"the scheduler stalled at t={t} with {batcher.running} running and "
                                   f"{batcher.waiting} waiting")
            t = nxt
            continue
        prefill_tokens = sum(b.tokens for b in batch if b.phase == "prefill")
        decode_tokens = sum(b.tokens for b in batch if b.phase == "decode")
        dt = float(iteration_time_fn(prefill_tokens, decode_tokens, sum(b.kv_len for b in batch)))
        if not np.isfinite(dt) or dt < 0:
            raise ValueError(f"iteration_time_fn returned {dt!r} for iteration {it}; need a finite time >= 0")
        for b in batch:
            cols["iteration"].append(it)
            cols["start_s"].append(t)
            cols["end_s"].append(t + dt)
            cols["request_id"].append(b.request_id)
            cols["phase"].append(b.phase)
            cols["tokens"].append(b.tokens)
            cols["kv_len"].append(b.kv_len)
        batcher.commit(batch)
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
