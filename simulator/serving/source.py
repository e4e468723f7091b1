"""The serving step source: requests arrive, each attention replica's scheduler forms an
iteration at the engine's clock, and the iteration becomes one step of the step pipeline.

Timing: an iteration is formed when the engine asks for its plan, i.e. when the first device
finishes the previous iteration; arrivals up to that moment are admitted. Token times are
taken afterwards from the simulated timeline: a token of iteration s on replica r is emitted
when the last device of r finishes s. The data-parallel replicas share the MoE layers, so an
iteration's all-to-all waits for the replica with the most work: that straggler is simulated,
not assumed. When no replica has work, the next step starts at the next arrival (`start_at`).
Closed loop: a user's next request arrives when its last one finished (the moment the next
iteration is formed) plus the think time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from moesim.errors import ConfigError
from moesim.simulator.serving.config import ServingConfig
from moesim.simulator.step_source import AttentionMix, StepInput
from moesim.workloads.arrivals import RequestsConfig, generate_requests, sample_lengths
from moesim.workloads.batching import BatchItem, ContinuousBatcher, SchedulerPolicy
from moesim.workloads.closed_loop import request_delays


#: simulated seconds past which float64 no longer resolves token times (spacing ~1e-7 s at 1e9 s)
MAX_SIM_TIME_S = 1e9


def check_time(t: float, config_file: str | None = None) -> float:
    """The simulated time `t`, or an error when it is past MAX_SIM_TIME_S: an answer there would be
    rounding noise (arrival rates are bounded on load; this catches what grows during the run)."""
    if t > MAX_SIM_TIME_S:
        raise ConfigError(f"simulated time reached {t:,.0f} s, past the {MAX_SIM_TIME_S:.0e} s where float64 seconds "
                          "stop resolving token times; the traffic spans too long (serving.arrivals.rate, "
                          "serving.num_requests, serving.think_time or the arrival file's arrival_s)",
                          file=config_file, field="serving")
    return t


@dataclass
class Iteration:
    """What one step ran on each replica (kept for the results: token times, batch and KV use)."""

    step: int
    formed_at: float
    batches: list[list[BatchItem]]
    kv_used: list[int]
    emitted: list[list[int]]  # per replica: requests that get an output token from this iteration


@dataclass
class ServingSource:
    """Yields one StepInput per iteration until every request has finished (or the horizon)."""

    cfg: ServingConfig
    requests: pd.DataFrame  # request_id (0..n-1), arrival_s (NaN: closed loop), prompt_tokens, output_tokens
    replicas: int
    tp: int
    kv_capacity_tokens: float
    policy: SchedulerPolicy = SchedulerPolicy()  # the config's scheduler (compose.scheduler_policy)
    clock: Callable[[], float] = lambda: 0.0
    interactive: bool = True  # iterations depend on simulated time: no building ahead
    config_file: str | None = None  # the scenario config, for errors found during the run
    iterations: list[Iteration] = field(default_factory=list)
    replica_of: dict[int, int] = field(default_factory=dict)
    first_scheduled: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.batchers = [ContinuousBatcher(self.policy, self.kv_capacity_tokens) for _ in range(self.replicas)]
        self._transferred = (self.requests["transferred"].to_numpy(dtype=bool) if "transferred" in self.requests
                             else np.zeros(len(self.requests), dtype=bool))
        self._ids = self.requests["request_id"].to_numpy(dtype=np.int64)  # by row (ids need not be 0..n-1)
        self._prompt = self.requests["prompt_tokens"].to_numpy(dtype=np.int64)
        self._output = self.requests["output_tokens"].to_numpy(dtype=np.int64)
        self._cached = (self.requests["cached_tokens"].to_numpy(dtype=np.int64) if "cached_tokens" in self.requests
                        else np.zeros(len(self.requests), dtype=np.int64))
        self.arrival = self.requests["arrival_s"].to_numpy(dtype=np.float64).copy()
        # closed loop: each request's delay after its user's previous reply (or t = 0), drawn up front
        self._delay = (self.requests["delay_s"].to_numpy(dtype=np.float64) if "delay_s" in self.requests
                       else np.zeros(len(self.requests)))
        self._pending: list[tuple[float, int]] = []  # (arrival, row) not yet routed to a replica, sorted
        self._next_request = 0  # closed loop: the next request (row) a user sends
        self._user_ready = 0  # closed loop: users whose request finished, about to send the next
        self._load = [0] * self.replicas  # requests routed to each replica and not finished
        self.finished: set[int] = set()

    def bind_clock(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    # ---- traffic ---------------------------------------------------------------------------
    def _send(self, count: int, at: float) -> None:
        """Closed loop: `count` users' replies came at `at`: each sends the next request its delay
        (think time, or start offset) later."""
        for _ in range(count):
            row = self._next_request
            if row < len(self.arrival):
                sent = at + float(self._delay[row])
                self.arrival[row] = sent
                bisect.insort(self._pending, (sent, row))
                self._next_request += 1

    def _route(self, now: float) -> None:
        """Requests that have arrived go to the replica with the fewest unfinished requests (ties:
        the lowest index), as a data-parallel router does on arrival."""
        k = 0
        while k < len(self._pending) and self._pending[k][0] <= now:
            arrival, row = self._pending[k]
            rid = int(self._ids[row])
            r = int(np.argmin(self._load))
            self._load[r] += 1
            self.replica_of[rid] = r
            self.batchers[r].submit(rid, arrival, int(self._prompt[row]), int(self._output[row]),
                                    bool(self._transferred[row]), int(self._cached[row]))
            k += 1
        del self._pending[:k]

    # ---- iterations ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StepInput]:
        if self.cfg.users is None:  # open loop: every arrival is known up front
            self._pending = sorted((float(a), row) for row, a in enumerate(self.arrival))
        else:
            self._send(min(self.cfg.users, len(self.arrival)), 0.0)
        step = 0
        horizon = self.cfg.horizon
        while True:
            now = check_time(self.clock(), self.config_file)
            self._send(self._user_ready, now)
            self._user_ready = 0
            if horizon is not None and now >= horizon:
                return
            self._route(now)
            batches = self._form(now)
            start_at = None
            if not any(batches):
                waits = [a for a in (b.next_arrival() for b in self.batchers) if a is not None]
                if self._pending:
                    waits.append(self._pending[0][0])
                if not waits:
                    return  # every request has finished
                start_at = check_time(max(min(waits), now), self.config_file)
                if horizon is not None and start_at >= horizon:
                    return
                self._route(start_at)
                batches = self._form(start_at)
            formed = start_at if start_at is not None else now
            for batch in batches:
                for item in batch:
                    self.first_scheduled.setdefault(item.request_id, formed)
            self.iterations.append(Iteration(step, formed, batches, [b.kv_used_tokens for b in self.batchers],
                                             [b.emitted(batch) for b, batch in zip(self.batchers, batches)]))
            yield self._input(step, batches, start_at)
            for r, (b, batch) in enumerate(zip(self.batchers, batches)):
                for rid in b.commit(batch):
                    self.finished.add(rid)
                    self._load[r] -= 1
                    self._user_ready += self.cfg.users is not None
            step += 1

    def _form(self, now: float) -> list[list[BatchItem]]:
        """Every replica's batch at `now`. Admissions that need no compute (a request whose KV was
        transferred from a prefill instance) are applied first, so the batch can decode them."""
        batches = [b.next_batch(now) for b in self.batchers]
        if not any(batches):
            for b, batch in zip(self.batchers, batches):
                b.commit(batch)
            batches = [b.next_batch(now) for b in self.batchers]
        return batches

    def _input(self, step: int, batches: list[list[BatchItem]], start_at: float | None) -> StepInput:
        """Per device: its replica's tokens split over the replica's tp ranks for the MoE layers,
        and the replica's attention work (heads split over tp by the cost model)."""
        mixes, tokens = [], []
        for batch in batches:
            chunks = [(i.tokens, i.kv_len) for i in batch if i.phase == "prefill"]
            decodes = [i.kv_len for i in batch if i.phase == "decode"]
            mix = AttentionMix.of(chunks, decodes)
            share, extra = divmod(mix.tokens, self.tp)  # as np.array_split: the first ranks take one more
            mixes += [mix] * self.tp
            tokens += [share + (k < extra) for k in range(self.tp)]
        return StepInput(step, "mixed", np.asarray(tokens, dtype=np.int64), 1, 0, attention=tuple(mixes),
                         start_at=start_at)


def request_table(cfg: ServingConfig, seed: int, base_dir) -> pd.DataFrame:
    """The requests of a run: open loop from the arrival process; closed loop with lengths drawn
    the same way and arrival times left to the simulation (NaN until a user sends them); with
    prefix caching, the tokens of each prompt found cached (`cached_tokens`)."""
    return with_prefix_cache(_requests(cfg, seed, base_dir), cfg)


def with_prefix_cache(requests: pd.DataFrame, cfg: ServingConfig) -> pd.DataFrame:
    """The table with `cached_tokens`: round(hit_rate x prompt), at most prompt - 1 (no column
    without prefix caching)."""
    if cfg.prefix_cache is None:
        return requests
    prompt = requests["prompt_tokens"].to_numpy(dtype=np.int64)
    cached = np.minimum(np.rint(cfg.prefix_cache.hit_rate * prompt).astype(np.int64), prompt - 1)
    return requests.assign(cached_tokens=cached)


def _requests(cfg: ServingConfig, seed: int, base_dir) -> pd.DataFrame:
    if cfg.arrivals is not None:
        req = RequestsConfig(arrivals=cfg.arrivals, prompt_tokens=cfg.prompt_tokens, output_tokens=cfg.output_tokens,
                             num_requests=cfg.num_requests, duration=cfg.duration)
        return generate_requests(req, seed, base_dir)
    n = int(cfg.num_requests)
    _, prompt_ss, output_ss, delay_ss = np.random.SeedSequence(int(seed)).spawn(4)
    return pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.full(n, np.nan),
        "prompt_tokens": sample_lengths(cfg.prompt_tokens, np.random.default_rng(prompt_ss), n),
        "output_tokens": sample_lengths(cfg.output_tokens, np.random.default_rng(output_ss), n),
        "delay_s": request_delays(n, int(cfg.users), cfg.think_time, cfg.ramp_up, cfg.ramp, delay_ss),
    })
