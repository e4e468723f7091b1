"""Expert offloading at run time: per-device caches, copy engines, prefetching, host-CPU experts.

The engine asks, when a device's router has chosen a MoE layer's experts, what each of the
device's experts is waiting for: nothing (resident), a copy (a miss, or a prefetch still in
flight), or a host CPU job (a cold expert run on the CPU). Copies go through the copy engine of
the device's path to the tier (per device for host memory, per node for an SSD), so demand
fetches and prefetches queue on the same link and overlap with compute.

Each expert a layer asks for is counted once, by what it found when the router chose: an on-time
hit (resident, its copy landed), a late hit (a copy, issued earlier by a prefetch, still in
flight: the layer waits for it), or a miss (no copy in flight: the layer fetches it itself, or
runs it on the host CPU). The cache counts late hits as hits (the expert has a slot); the hit
rate reported is on-time hits only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import pandas as pd
import simpy

from moesim.errors import ConfigError
from moesim.simulator.offload.cache_warmup import warm_order
from moesim.simulator.offload.copy_engine import Copy, CopyEngine
from moesim.simulator.offload.expert_cache import LRU, CacheFullError, CachePolicy, ExpertCache, LayeredCache
from moesim.workloads.routing_statistics import ExpertStatistics, expert_statistics, statistics_window
from moesim.simulator.ops import act_dtype, ffn_flops_bytes, token_bytes
from moesim.simulator.offload.prefetch import Prefetcher
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import StepPlan


class OffloadRuntimeError(ConfigError):
    """A layer needs more experts at once than the cache (or its layer's share) can hold."""


@dataclass
class HostJob:
    device: int
    step: int
    moe_layer: int
    expert: int
    tokens: float
    start: float = float("nan")
    end: float = float("nan")


@dataclass
class LayerWait:
    """What one device's experts wait for in one layer, in execution order."""

    resident_time: float  # GEMM time of experts already in memory (run first)
    fetched: list[tuple[simpy.Event, float]] = field(default_factory=list)  # (copy landed, GEMM time)
    host: list[simpy.Event] = field(default_factory=list)  # host CPU experts returning


@dataclass
class DemandCounts:
    """How the experts the layers asked for were found, one count per (device, step, layer, expert)."""

    on_time: int = 0  # resident when the layer asked, its copy (if any) landed
    late: int = 0  # a copy issued earlier (by a prefetch) was still in flight: the layer waits for it
    fetched: int = 0  # a miss the layer fetched itself (demand copy)
    host: int = 0  # a miss run on the host CPU

    @property
    def misses(self) -> int:
        return self.fetched + self.host

    @property
    def total(self) -> int:
        return self.on_time + self.late + self.fetched + self.host


class OffloadManager:
    def __init__(self, sc: Scenario, env: simpy.Environment, cache_policy: CachePolicy = LRU,
                 prefetch: type[Prefetcher] = Prefetcher):
        """`cache_policy` and `prefetch` (a Prefetcher class) are the config's, from compose."""
        self.sc, self.env = sc, env
        setup = sc.offload
        assert setup is not None
        self.setup, self.cfg = setup, setup.config
        self.ep = sc.ep
        pl = sc.placement
        self.slot_expert, self.slot_device, self.slot_share = pl.slot_expert, pl.slot_device, pl.slot_share
        n_moe = len(sc.model.moe_layers)
        first, count, in_sample = statistics_window(sc.routing, sc.steps, self.cfg.stats_steps)
        self.stats: ExpertStatistics = expert_statistics(sc.routing, sc.moe_tokens, n_moe, count, first, in_sample)
        self.prefetcher = prefetch(self.cfg.prefetch, self.stats, sc.seed)
        nbytes = setup.expert_bytes
        self.key_bytes = lambda key: float(nbytes[key[0], key[1]])
        size = self.key_bytes if setup.by_bytes else None
        self.caches: list[ExpertCache | LayeredCache] = []
        layered = self.cfg.cache.scope == "layer"
        part = setup.capacity / n_moe if setup.by_bytes else float(int(setup.capacity // n_moe))
        for d in range(sc.num_devices):
            order = warm_order(self.stats.load, self.owned_all(d))
            pinned: frozenset = frozenset()
            if cache_policy.pins:
                if layered:  # the hottest of each layer, within that layer's share
                    pinned = frozenset().union(*(self._pinned([k for k in order if k[0] == m], size, part)
                                                 for m in range(n_moe)))
                else:
                    pinned = self._pinned(order, size, setup.capacity)
            try:
                if layered:
                    cache = LayeredCache(n_moe, setup.capacity, cache_policy, pinned, size=size)
                else:
                    cache = ExpertCache(setup.capacity, cache_policy, pinned, size=size)
            except ValueError as err:
                share = f" ({n_moe} MoE layers share it under cache.scope: layer)" if layered else ""
                raise ConfigError(f"{err}: the cache is {setup.capacity_text()} per device{share}",
                                  file=sc.source.path or "<config>", field="offload.cache.capacity") from None
            if self.cfg.cache.warm:
                cache.warm(order)
            self.caches.append(cache)
        tier = setup.tier
        per = setup.devices_per_engine
        self.engines = [CopyEngine(env, f"{tier.name}->device", tier.bandwidth, tier.latency, self.cfg.copy_engines)
                        for _ in range(-(-sc.num_devices // per))]
        self._engine_of = [self.engines[d // per] for d in range(sc.num_devices)]
        self._pending: list[dict[Hashable, Copy]] = [{} for _ in range(sc.num_devices)]
        self._engine_free = [0.0] * len(self.engines)
        self.host_jobs: list[HostJob] = []
        if setup.host_cost is not None:
            per_socket = setup.host.shared_by if setup.host else 1
            self._cpus = [simpy.Resource(env, 1) for _ in range(-(-sc.num_devices // per_socket))]
            self._cpu_of = [self._cpus[d // per_socket] for d in range(sc.num_devices)]
            self._cpu_free = [0.0] * len(self._cpus)
        self.late_prefetches = 0  # prefetch copies a layer found still in flight (promoted to demand)
        self.counts = DemandCounts()  # on-time hits, late hits and misses (accounting only)
        self.activation_bytes = 0.0
        m = sc.model
        self._token_bytes = token_bytes(m, act_dtype(m))

    # ---- which experts a device holds and needs ------------------------------------------
    def owned(self, d: int, m: int) -> np.ndarray:
        local = d % self.ep
        mask = (self.slot_device[m] == local) & (self.slot_share[m] > 0)
        return np.unique(self.slot_expert[m][mask])

    def owned_all(self, d: int) -> list[tuple[int, int]]:
        return [(m, int(e)) for m in range(self.slot_expert.shape[0]) for e in self.owned(d, m)]

    def needs(self, plan: StepPlan, d: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(experts, GEMM time, tokens) of the experts device `d` runs at MoE layer `m` this step."""
        g, local = divmod(d, self.ep)
        tokens, times = plan.slot_tokens[g, m], plan.slot_time[g, m]
        mask = (self.slot_device[m] == local) & (tokens > 0)
        experts = self.slot_expert[m][mask]
        uniq, inv = np.unique(experts, return_inverse=True)
        t = np.zeros(len(uniq))
        n = np.zeros(len(uniq))
        np.add.at(t, inv, times[mask])
        np.add.at(n, inv, tokens[mask])
        return uniq, t, n

    def _pinned(self, order: list, size, capacity: float) -> frozenset:
        """The hottest experts (of `order`, hottest first) filling `pinned_fraction` of `capacity`."""
        budget = capacity * self.cfg.cache.pinned_fraction
        out, used = [], 0.0
        for key in order:
            need = size(key) if size else 1.0
            if used + need > budget:
                break
            out.append(key)
            used += need
        return frozenset(out)

    # ---- demand and prefetch ---------------------------------------------------------------
    def demand(self, plan: StepPlan, d: int, m: int) -> LayerWait:
        """Look up layer `m`'s experts on device `d`, issue the copies and host jobs they need."""
        experts, times, tokens = self.needs(plan, d, m)
        keys = [(m, int(e)) for e in experts]
        cache, pending = self.caches[d], self._pending[d]
        host = self._host_choices(d, m, keys, tokens) if self.cfg.hybrid.cold_experts != "fetch" else set()
        try:
            misses = cache.access(keys, bypass=host)
        except CacheFullError as err:
            scope = " (split evenly over the MoE layers by cache.scope: layer)" if self.cfg.cache.scope == "layer" else ""
            raise OffloadRuntimeError(
                f"device {d} needs {len(keys)} experts at once in MoE layer {m} of step {plan.step}, but {err}. "
                f"The cache is {self.setup.capacity_text()} per device{scope}; raise offload.cache.capacity, "
                "quantize experts (precision.bits), use cache.scope: device, or lower the batch",
                file=self.sc.source.path or "<config>", field="offload.cache.capacity") from None
        self._drop_evicted(d)
        engine = self._engine_of[d]
        for key in misses:
            pending[key] = engine.request(key, d, self.key_bytes(key), "demand", plan.step)
        wait = LayerWait(0.0)
        counts, missed = self.counts, set(misses)
        for key, t, n in zip(keys, times, tokens):
            if key in host:
                counts.host += 1
                wait.host.append(self._host_job(d, plan.step, key, float(n)))
                continue
            copy = pending.get(key)
            in_flight = copy is not None and copy.end is None
            if key in missed:
                counts.fetched += 1
            elif in_flight:  # the cache counted a hit, but the copy has not landed
                counts.late += 1
            else:
                counts.on_time += 1
            if in_flight:
                if copy.kind == "prefetch":
                    self.late_prefetches += 1
                    engine.promote(copy)
                wait.fetched.append((copy.done, float(t)))
            else:
                pending.pop(key, None)
                wait.resident_time += float(t)
        return wait

    def prefetch(self, plan: StepPlan, d: int, m: int) -> None:
        """Copy in what the prefetcher expects at MoE layer m + lookahead (same step only)."""
        if not self.prefetcher.active:
            return
        target = m + self.cfg.prefetch.lookahead
        if target >= self.slot_expert.shape[0]:
            return
        true_next = self.needs(plan, d, target)[0]
        current = [(m, int(e)) for e in self.needs(plan, d, m)[0]]
        named = self.prefetcher.predict(d, plan.step, m, target, self.owned(d, target), true_next,
                                        plan.expert_tokens[m])
        fetched = self.caches[d].prefetch([(target, e) for e in named], protect=current)
        self._drop_evicted(d)
        engine = self._engine_of[d]
        for key in fetched:
            self._pending[d][key] = engine.request(key, d, self.key_bytes(key), "prefetch", plan.step)

    def _drop_evicted(self, d: int) -> None:
        """Evicted experts whose copy has not started are not copied after all."""
        cache, pending = self.caches[d], self._pending[d]
        evicted = cache.evicted
        for key in evicted:
            copy = pending.pop(key, None)
            if copy is not None and copy.start is None and not copy.meta.get("taken"):
                copy.cancelled = True
        evicted.clear()

    # ---- hybrid: cold experts on the host CPU ---------------------------------------------------
    def _host_time(self, key: tuple[int, int], tokens: float) -> float:
        """The CPU runs the expert from host memory; the tokens go down and come back over the link."""
        m = self.sc.model
        flops, mem = ffn_flops_bytes(m, tokens, m.moe.expert_intermediate_size, m.routed_expert_dtype,
                                     self.key_bytes(key))
        cpu = float(self.setup.host_cost.times("gemm", flops, mem, tokens, act_dtype(m)))
        link = self.setup.host
        return cpu + 2 * (link.latency + tokens * self._token_bytes / link.bandwidth)

    def _host_choices(self, d: int, m: int, keys: list, tokens: np.ndarray) -> set:
        """Misses to run on the host CPU: all of them ('host'), or those the CPU finishes first ('auto',
        Fiddler's rule, counting the work already queued on the link and on the CPU)."""
        mode = self.cfg.hybrid.cold_experts
        cache = self.caches[d]
        now = self.env.now
        out: set = set()
        e_idx = self.engines.index(self._engine_of[d])
        c_idx = self._cpus.index(self._cpu_of[d])
        link_free, cpu_free = max(now, self._engine_free[e_idx]), max(now, self._cpu_free[c_idx])
        engine = self._engine_of[d]
        for key, n in zip(keys, tokens):
            if key in cache:
                continue
            cpu_t = self._host_time(key, float(n))
            fetch_t = engine.transfer_time(self.key_bytes(key))
            if mode == "host" or cpu_free + cpu_t < link_free + fetch_t:
                out.add(key)
                cpu_free += cpu_t
            else:
                link_free += fetch_t
        self._engine_free[e_idx], self._cpu_free[c_idx] = link_free, cpu_free
        return out

    def _host_job(self, d: int, step: int, key: tuple[int, int], tokens: float) -> simpy.Event:
        job = HostJob(d, step, key[0], key[1], tokens)
        self.host_jobs.append(job)
        self.activation_bytes += 2 * tokens * self._token_bytes
        return self.env.process(self._run_host_job(d, job, self._host_time(key, tokens)))

    def _run_host_job(self, d: int, job: HostJob, duration: float):
        with self._cpu_of[d].request() as cpu:
            yield cpu
            job.start = self.env.now
            yield self.env.timeout(duration)
            job.end = self.env.now

    # ---- results ------------------------------------------------------------------------
    def copies_table(self) -> pd.DataFrame:
        """One row per copy: who asked, for which expert, when it was issued, started and landed."""
        moe_layers = self.sc.model.moe_layers
        rows = []
        for engine_id, engine in enumerate(self.engines):
            for c in engine.copies:
                m, e = c.key
                rows.append((c.device, c.step, moe_layers[m], m, e, c.kind, bool(c.meta.get("promoted")),
                             c.cancelled, c.nbytes, c.issued, c.start if c.start is not None else np.nan,
                             c.end if c.end is not None else np.nan, engine_id))
        return pd.DataFrame(rows, columns=["device", "step", "layer", "moe_layer", "expert", "kind", "promoted",
                                           "cancelled", "bytes", "issued_s", "start_s", "end_s", "engine"])

    def host_table(self) -> pd.DataFrame:
        moe_layers = self.sc.model.moe_layers
        return pd.DataFrame([(j.device, j.step, moe_layers[j.moe_layer], j.moe_layer, j.expert, j.tokens, j.start,
                              j.end) for j in self.host_jobs],
                            columns=["device", "step", "layer", "moe_layer", "expert", "tokens", "start_s", "end_s"])
