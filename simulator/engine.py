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

from moesim.simulator.network import Collective, Fabric
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import Planner, StepPlan

PHASES = ("attention", "tp_allreduce", "dense_ffn", "shared_expert", "dispatch", "expert",
          "straggler_wait", "combine")
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
COMPUTE_PHASES = ("attention", "dense_ffn", "shared_expert", "expert")
_ATT, _TP, _DENSE, _SHARED, _DISP, _EXP, _STRAG, _COMB = range(len(PHASES))


@dataclass
class EngineResult:
    """Raw timeline: start/end of every (step, layer, device, phase); nan where a phase did not run."""

    start: np.ndarray  # (steps, L, N, P)
    end: np.ndarray
    plans: list[StepPlan]
    fabric: Fabric
    meta: dict = field(default_factory=dict)


class Engine:
    def __init__(self, scenario: Scenario, progress: Callable[[int], None] | None = None):
        self.sc = scenario
        self.env = simpy.Environment()
        self.fabric = Fabric(scenario.routes)
        self.planner = Planner(scenario)
        self.progress = progress
        steps, L, n = scenario.steps, scenario.model.num_layers, scenario.num_devices
        self.start = np.full((steps, L, n, len(PHASES)), np.nan)
        self.end = np.full((steps, L, n, len(PHASES)), np.nan)
        self._plans: dict[int, StepPlan] = {}
        self._futures: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesim-plan")
        self._collectives: dict[tuple, Collective] = {}
        self._by_step: dict[int, list[tuple[Collective, Collective]]] = {}
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

    def _step_collectives(self, step: int, plan: StepPlan) -> list[tuple[Collective, Collective]]:
        """(dispatch, combine) of every MoE layer of a step, made when the first device needs them.

        A device entering step s has received step s-1's combines, so every device has left
        step s-2: its collectives are dropped then."""
        colls = self._by_step.get(step)
        if colls is None:
            colls = self._by_step[step] = [
                (Collective(self.env, self.fabric, plan.dispatch[m]), Collective(self.env, self.fabric, plan.combine[m]))
                for m in range(plan.dispatch.shape[0])
            ]
            self._by_step.pop(step - 2, None)
        return colls

    def _collective(self, key: tuple, matrix: Callable[[], np.ndarray], extra_latency: float = 0.0) -> Collective:
        coll = self._collectives.get(key)
        if coll is None:
            coll = self._collectives[key] = Collective(self.env, self.fabric, matrix(), extra_latency)
        return coll

    def _release(self, key: tuple, coll: Collective) -> None:
        if coll.consumed == self.sc.num_devices:
            self._collectives.pop(key, None)

    def _tp_allreduce(self, d: int, key: tuple, nbytes: float) -> Generator:
        coll = self._collective(key, lambda: self._tp_ring * nbytes, self._tp_extra_latency)
        coll.submit(d)
        yield from coll.inbound(d)
        self._release(key, coll)

    def _device(self, d: int) -> Generator:
        """One device's stream. Compute that directly follows a wait shares its wake-up
        (the wait fires when the bytes have arrived plus the compute time), so a MoE layer
        costs two SimPy events per device."""
        env, start, end = self.env, self.start, self.end
        overlap = self.sc.config.policies.overlap_shared_experts
        tp = self.sc.tp
        pending_attention = False  # the previous wait already ran this layer's attention
        for s in range(self.sc.steps):
            plan = self._plan(s)
            for layer, is_moe in enumerate(self._is_moe):
                st, en = start[s, layer, d], end[s, layer, d]
                if not pending_attention:
                    st[_ATT] = env.now
                    yield env.timeout(plan.attention[layer, d])
                en[_ATT] = st[_TP] = env.now
                pending_attention = False
                if tp > 1:
                    yield from self._tp_allreduce(d, (s, layer, "tp"), plan.tp_bytes)
                    en[_TP] = env.now
                if not is_moe:
                    st[_DENSE] = env.now
                    yield env.timeout(plan.dense_ffn[layer, d])
                    en[_DENSE] = env.now
                    if tp > 1:
                        yield from self._tp_allreduce(d, (s, layer, "tp_ffn"), plan.tp_bytes)
                        en[_TP] = env.now
                    continue
                m = self._moe_index[layer]
                disp, comb = self._step_collectives(s, plan)[m]
                disp.submit(d)
                busy_until = env.now
                if overlap:  # shared experts compute while the dispatch bytes travel
                    st[_SHARED] = env.now
                    busy_until = en[_SHARED] = env.now + plan.shared_expert[layer, d]
                expert = plan.expert[layer, d]
                yield from disp.inbound(d, not_before=busy_until, then=expert)
                st[_DISP] = busy_until
                en[_DISP] = st[_EXP] = disp.received_at(d, busy_until)
                en[_EXP] = st[_COMB] = env.now
                comb.submit(d)
                # the next layer's attention (if it follows directly) runs in the same wake-up
                nxt = self._next_attention(s, layer, d, plan)
                chain = nxt is not None and overlap
                yield from comb.inbound(d, not_before=env.now, then=nxt if chain else 0.0)
                en[_COMB] = comb.received_at(d, not_before=st[_COMB])
                if chain:
                    pending_attention = True
                    ns, nl = (s, layer + 1) if layer + 1 < len(self._is_moe) else (s + 1, 0)
                    start[ns, nl, d, _ATT] = en[_COMB]
                if not overlap:
                    st[_SHARED] = env.now
                    yield env.timeout(plan.shared_expert[layer, d])
                    en[_SHARED] = env.now
            if d == 0 and self.progress:
                self.progress(s + 1)

    def _next_attention(self, s: int, layer: int, d: int, plan: StepPlan) -> float | None:
        """Attention time of the layer that runs after (s, layer) on device d, if any."""
        if layer + 1 < len(self._is_moe):
            return float(plan.attention[layer + 1, d])
        if s + 1 < self.sc.steps:
            return float(self._plan(s + 1).attention[0, d])
        return None

    def run(self) -> EngineResult:
        for d in range(self.sc.num_devices):
            self.env.process(self._device(d))
        try:
            self.env.run()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        plans = [self._plans[s] for s in range(self.sc.steps)]
        self._split_straggler_wait(plans)
        return EngineResult(self.start, self.end, plans, self.fabric)

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
