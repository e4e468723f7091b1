"""The SimPy engine: one process per device replays each step's layers in time.

A device runs attention, hands its dispatch bytes to the network, runs its shared experts
while they travel, waits for its inbound tokens, runs its local experts, hands back the
combine bytes and waits for its own tokens to return. Nothing is a global barrier: a device
waits only for the devices that send to it, so the slowest expert device delays exactly those
whose tokens it holds. Events are per (step, layer, device, phase); routing and costs come
precomputed as arrays from the step planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import simpy

from moesim.errors import MoesimError
from moesim.simulator.network import Collective, Fabric
from moesim.simulator.offload.manager import LayerWait, OffloadManager
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import Planner, StepPlan

PHASES = ("attention", "tp_allreduce", "dense_ffn", "shared_expert", "dispatch", "offload_stall", "expert",
          "straggler_wait", "combine")
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
COMPUTE_PHASES = ("attention", "dense_ffn", "shared_expert", "expert")
_ATT, _TP, _DENSE, _SHARED, _DISP, _STALL, _EXP, _STRAG, _COMB = range(len(PHASES))


@dataclass
class StepCollectives:
    """A step's collectives: (dispatch, combine) per MoE layer; (attention, FFN) all-reduce per layer."""

    moe: list[tuple[Collective, Collective]]
    tp: list[tuple[Collective, Collective]]


@dataclass
class EngineResult:
    """Raw timeline: start/end of every (step, layer, device, phase); nan where a phase did not run."""

    start: np.ndarray  # (steps, L, N, P)
    end: np.ndarray
    plans: list[StepPlan]
    fabric: Fabric
    meta: dict = field(default_factory=dict)
    offload: OffloadManager | None = None  # caches, copies and host jobs of an offloading run


class Engine:
    def __init__(self, scenario: Scenario, progress: Callable[[int], None] | None = None):
        self.sc = scenario
        self.env = simpy.Environment()
        self.fabric = Fabric(scenario.routes)
        self.planner = Planner(scenario)
        self.progress = progress
        steps, L, n = scenario.steps, scenario.model.num_layers, scenario.num_devices
        self._shape = (steps, L, n, len(PHASES))
        self._plans: dict[int, StepPlan] = {}
        self._step_lists: dict[int, tuple] = {}
        size = steps * L * n * len(PHASES)
        self._st: list[float] = [float("nan")] * size
        self._en: list[float] = [float("nan")] * size
        self._futures: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesim-plan")
        self._by_step: dict[int, StepCollectives] = {}
        self._moe_index = self.planner.moe_index
        self._is_moe = [scenario.model.is_moe_layer(layer) for layer in range(L)]
        tp = scenario.tp
        # ring all-reduce within each TP group: rank r sends to rank r+1
        self._tp_ring = None
        if tp > 1:
            ring = np.zeros((n, n))
            for r in range(n):
                base = (r // tp) * tp
                ring[r, base + (r - base + 1) % tp] = 1.0
            self._tp_ring = ring
            hop = scenario.routes.pair_latency[0, 1] if n > 1 else 0.0
            self._tp_extra_latency = (2 * (tp - 1) - 1) * hop
        self._done_steps = 0
        self.offload = OffloadManager(scenario, self.env) if scenario.offload is not None else None

    def _plan(self, step: int) -> StepPlan:
        """The plan of a step; the next step's plan is built in a worker thread meanwhile
        (numpy releases the GIL, so routing sampling overlaps the event loop on a second core).
        Plans depend only on (seed, step), so this does not change results."""
        plan = self._plans.get(step)
        if plan is None:
            future = self._futures.pop(step, None)
            plan = future.result() if future else self.planner.plan(step)
            self._plans[step] = plan
            nxt = step + 1
            if nxt < self.sc.steps and nxt not in self._plans and nxt not in self._futures:
                self._futures[nxt] = self._pool.submit(self.planner.plan, nxt)
        return plan

    def _step_collectives(self, step: int, plan: StepPlan) -> "StepCollectives":
        """Every collective of a step, made when the first device needs them.

        A device entering step s has received step s-1's combines, so every device has left
        step s-2: its collectives are dropped then."""
        colls = self._by_step.get(step)
        if colls is None:
            colls = self._by_step[step] = StepCollectives(
                moe=[(Collective(self.env, self.fabric, plan.dispatch[m]),
                      Collective(self.env, self.fabric, plan.combine[m]))
                     for m in range(plan.dispatch.shape[0])],
                tp=[(Collective(self.env, self.fabric, self._tp_ring * plan.tp_bytes, self._tp_extra_latency),
                     Collective(self.env, self.fabric, self._tp_ring * plan.tp_bytes, self._tp_extra_latency))
                    for _ in self._is_moe] if self._tp_ring is not None else [],
            )
            self._by_step.pop(step - 2, None)
        return colls

    @staticmethod
    def _all_reduce(d: int, coll: Collective) -> Generator:
        """Ring all-reduce within the TP group: hand over this rank's bytes, wait for the neighbour's."""
        coll.submit(d)
        yield from coll.inbound(d)

    def _lists(self, step: int) -> tuple[list, list, list, list]:
        """A step's per-device times as nested Python lists [device][layer] (fast scalar reads)."""
        lists = self._step_lists.get(step)
        if lists is None:
            plan = self._plan(step)
            lists = self._step_lists[step] = tuple(  # type: ignore[assignment]
                a.T.tolist() for a in (plan.attention, plan.dense_ffn, plan.shared_expert, plan.expert))
            self._step_lists.pop(step - 2, None)
        return lists  # type: ignore[return-value]

    def _device(self, d: int) -> Generator:
        """One device's stream. Compute that directly follows a wait shares its wake-up
        (the wait fires when the bytes have arrived plus the compute time), so a MoE layer
        costs two SimPy events per device. Times are recorded into flat Python lists indexed
        ((step x L + layer) x N + device) x P + phase: the hot loop touches no numpy scalars."""
        env, st, en = self.env, self._st, self._en
        overlap = self.sc.config.policies.overlap_shared_experts
        tp = self.sc.tp
        n_layers, n, P = len(self._is_moe), self.sc.num_devices, len(PHASES)
        steps = self.sc.steps
        pending_attention = False  # the previous wait already ran this layer's attention
        for s in range(steps):
            plan = self._plan(s)
            att, dense, shared, expert = (x[d] for x in self._lists(s))
            colls = self._step_collectives(s, plan)
            for layer, is_moe in enumerate(self._is_moe):
                i = ((s * n_layers + layer) * n + d) * P
                if not pending_attention:
                    st[i + _ATT] = env.now
                    yield env.timeout(att[layer])
                en[i + _ATT] = env.now
                pending_attention = False
                if tp > 1:
                    st[i + _TP] = env.now
                    yield from self._all_reduce(d, colls.tp[layer][0])
                    en[i + _TP] = env.now
                if not is_moe:
                    st[i + _DENSE] = env.now
                    yield env.timeout(dense[layer])
                    en[i + _DENSE] = env.now
                    if tp > 1:
                        yield from self._all_reduce(d, colls.tp[layer][1])
                        en[i + _TP] = env.now
                    continue
                m = self._moe_index[layer]
                disp, comb = colls.moe[m]
                disp.submit(d)
                wait = None
                if self.offload is not None:  # the router has chosen: look up the cache, start copies
                    wait = self.offload.demand(plan, d, m)
                    self.offload.prefetch(plan, d, m)
                    if not wait.fetched and not wait.host:
                        wait = None  # every expert resident: exactly the no-offload timeline
                now = env.now
                busy_until = now
                if overlap:  # shared experts compute while the dispatch bytes travel
                    st[i + _SHARED] = now
                    busy_until = en[i + _SHARED] = now + shared[layer]
                if wait is None:
                    yield from disp.inbound(d, not_before=busy_until, then=expert[layer])
                    now = env.now
                    st[i + _DISP] = busy_until
                    en[i + _DISP] = st[i + _EXP] = disp.received_at(d, busy_until)
                else:
                    yield from disp.inbound(d, not_before=busy_until)
                    st[i + _DISP] = busy_until
                    ready = en[i + _DISP] = st[i + _STALL] = env.now
                    stall = yield from self._run_offloaded_experts(wait)
                    now = env.now
                    en[i + _STALL] = st[i + _EXP] = ready + stall
                en[i + _EXP] = st[i + _COMB] = now
                comb.submit(d)
                # the next layer's attention (if it follows directly) runs in the same wake-up
                if layer + 1 < n_layers:
                    nxt, j = att[layer + 1], i + n * P
                elif s + 1 < steps:
                    nxt, j = self._lists(s + 1)[0][d][0], (((s + 1) * n_layers) * n + d) * P
                else:
                    nxt = None
                chain = nxt is not None and overlap
                yield from comb.inbound(d, not_before=now, then=nxt if chain else 0.0)
                en[i + _COMB] = done = comb.received_at(d, not_before=now)
                if chain:
                    pending_attention = True
                    st[j + _ATT] = done
                if not overlap:
                    st[i + _SHARED] = env.now
                    yield env.timeout(shared[layer])
                    en[i + _SHARED] = env.now
            if d == 0 and self.progress:
                self.progress(s + 1)

    def _run_offloaded_experts(self, wait: LayerWait) -> Generator:
        """Run resident experts first, then each fetched expert as its copy lands, then collect the
        host CPU's experts. Returns the time spent waiting (the stall); the timeline shows it as
        one offload_stall span before the expert span, with the same total."""
        env = self.env
        stall = 0.0
        if wait.resident_time:
            yield env.timeout(wait.resident_time)
        for landed, gemm in wait.fetched:
            if not landed.processed:
                t = env.now
                yield landed
                stall += env.now - t
            yield env.timeout(gemm)
        for job in wait.host:
            if not job.processed:
                t = env.now
                yield job
                stall += env.now - t
        return stall

    def run(self) -> EngineResult:
        for d in range(self.sc.num_devices):
            self.env.process(self._device(d))
        try:
            self.env.run()
        except MoesimError as err:  # SimPy re-raises a process's error as a copy without its fields
            if isinstance(err.__cause__, MoesimError):
                raise err.__cause__ from None
            raise
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.start = np.array(self._st, dtype=float).reshape(self._shape)
        self.end = np.array(self._en, dtype=float).reshape(self._shape)
        plans = [self._plans[s] for s in range(self.sc.steps)]
        self._split_straggler_wait(plans)
        return EngineResult(self.start, self.end, plans, self.fabric, offload=self.offload)

    def _split_straggler_wait(self, plans: list[StepPlan]) -> None:
        """Split each combine wait into waiting for a slower peer's experts, then transfer.

        A device that finished its experts early waits in combine partly because a device
        holding its tokens is still computing (the straggler effect) and partly for the bytes
        themselves. The first part is the gap to the latest expert end among its senders.
        """
        moe = self.planner.moe_layers
        if moe.size == 0:
            return
        start, end = self.start[:, moe], self.end[:, moe]  # (S, Lm, N, P) copies
        exp_end, comb_start, comb_end = end[..., _EXP], start[..., _COMB], end[..., _COMB]
        senders = np.stack([p.combine > 0 for p in plans])  # (S, Lm, src, dst)
        peer_end = np.where(senders, exp_end[:, :, :, None], -np.inf).max(axis=2)  # (S, Lm, dst)
        wait = np.clip(peer_end - comb_start, 0.0, comb_end - comb_start)
        wait = np.where(np.isfinite(wait), wait, 0.0)
        split = comb_start + wait
        start[..., _STRAG] = comb_start
        end[..., _STRAG] = split
        start[..., _COMB] = split
        self.start[:, moe], self.end[:, moe] = start, end
