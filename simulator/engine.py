"""The SimPy engine: one process per device replays each step's plans in time.

The engine pulls step plans (a list of micro-batch plans per step) from the step pipeline until
the step source is exhausted; it assumes no step count. How a device interleaves compute and
all-to-all within a step is the overlap schedule's business (`simulator/overlap/`): it writes
a step program (`simulator/program.py`) that the device interpreter (`simulator/interpreter.py`)
runs on every device, using the engine's collectives and recording phase times here.
Nothing is a global barrier: a device waits only for the devices that send to it (and for its
TP / MoE-TP group in an all-reduce), so the slowest expert device delays exactly those whose
tokens it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Generator, Iterable

import numpy as np
import simpy

from moesim import interrupts
from moesim.errors import MoesimError
from moesim.simulator import comm_cost
from moesim.simulator.allreduce import NCCL, AllReduceChoice, GroupAllReduce
from moesim.simulator.collectives import GroupCollective, make_collective, staged_pairs
from moesim.simulator.network import Fabric, sending_pairs
from moesim.simulator.offload.manager import LayerWait, OffloadManager
from moesim.simulator.interpreter import device_stream
from moesim.simulator.lockstep import Handover, program_fits, run_lockstep
from moesim.simulator.unit_streams import unit_device_stream
from moesim.simulator.plan_feed import plan_feed
from moesim.simulator.program import Program
from moesim.simulator.phases import EXP as _EXP, STRAG as _STRAG, COMB as _COMB, INFERENCE_PHASES, PHASE_INDEX
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import StepPlan, merge_microbatches
from moesim.simulator.traffic_totals import traffic_totals
from moesim.simulator.training.grad_sync import GradientSync


@dataclass
class StepCollectives:
    """One micro-batch's collectives in a step: (dispatch, combine) per MoE layer; (attention, FFN)
    all-reduce per layer under TP; the MoE-TP reduction per MoE layer."""

    moe: list[tuple]
    tp: list[tuple]
    moe_reduce: list
    # a training step's: the backward's (dispatch_bwd, combine_bwd) per MoE layer and TP pairs per layer,
    # (dense, expert) gradient reductions per bucket-closing layer, ZeRO's (dense, expert) parameter gathers
    moe_bwd: list[tuple] = field(default_factory=list)
    tp_bwd: list[tuple] = field(default_factory=list)
    grads: dict = field(default_factory=dict)
    gather: tuple = ()
    pp: dict = field(default_factory=dict)  # pipeline parallelism: {stage's last layer: (activations, gradients)}
    layer_gather: dict = field(default_factory=dict)  # ZeRO-3: {layer: (gather before forward, before backward)}


@dataclass
class EngineResult:
    """Raw timeline: start/end of every (step, layer, device, micro-batch, phase); nan where a phase did not run."""

    start: np.ndarray  # (steps, L, N, MB, P)
    end: np.ndarray
    plans: list[StepPlan]  # one per step (micro-batches merged)
    fabric: Fabric
    meta: dict = field(default_factory=dict)
    offload: OffloadManager | None = None  # caches, copies and host jobs of an offloading run
    microbatch_plans: list[list[StepPlan]] | None = None

    @property
    def durations(self) -> np.ndarray:
        """(steps, L, N, P) time in each phase, summed over micro-batches (0 where it did not run)."""
        dur = self.end - self.start
        return np.where(np.isnan(dur), 0.0, dur).sum(axis=3)


KEEP_FULL_PLANS = 8  # steps whose plans are kept whole after they ran (later ones: `Engine._release`)
CHECK_EVERY = 4096  # events between looks for a signal a SimPy process may have swallowed


def run_events(env: simpy.Environment) -> None:
    """`env.run()` that also stops within a few milliseconds of a signal: a KeyboardInterrupt raised
    inside a SimPy process becomes a failed event, which a waiting process may drop."""
    step = env.step
    try:
        while True:
            for _ in range(CHECK_EVERY):
                step()
            interrupts.check()
    except simpy.core.EmptySchedule:
        pass
    interrupts.check()


class Engine:
    """Replays plans in time: every device runs `program` (one step's instructions, built by the
    overlap schedule) on each step's plans. Composed by `compose.engine_for(scenario)`, which
    hands it everything it runs; tests pass hand-built plans and programs.

    `plans`: per-step lists of micro-batch plans. `comm_kind`: the dispatch algorithm's kernel kind
    (its floors). `source`: the step source behind the plans where it reads the engine's clock
    (serving). `ahead`: the plans may be built ahead in a forked child (the scenario's own
    pipeline, for `steps` steps). `cache`: the serving iteration cache that fed the plans, if any.
    `env` and `offload`: the SimPy environment and the offload manager living in it, where the
    scenario offloads (composed by `engine_for`)."""

    def __init__(self, scenario: Scenario, plans: Iterable[list[StepPlan]], program: Program, comm_kind: str,
                 *, source=None, cache=None, ahead: bool = False, steps: int | None = None,
                 progress: Callable[[int], None] | None = None, env: simpy.Environment | None = None,
                 offload: OffloadManager | None = None, allreduce: AllReduceChoice = NCCL):
        """`allreduce`: how TP and MoE-TP groups all-reduce (`policies.tp_allreduce`, from compose)."""
        self.sc = scenario
        self.env = env if env is not None else simpy.Environment()
        if (offload is None) != (scenario.offload is None):
            raise MoesimError("an offloading scenario's engine needs its offload manager (compose.engine_for builds "
                              "it), and only such a scenario's")
        self.offload = offload
        self.fabric = Fabric(scenario.routes)
        self.source = source
        self.cache = cache  # serving: replays iterations whose shape was simulated before
        self.interactive = hasattr(source, "bind_clock")  # the source forms steps at the simulated time
        self.lockstep_clock: float | None = None  # the event-free path's time (simulator/lockstep.py)
        self._array_times = False
        if self.interactive:
            source.bind_clock(self.now)
        self._feed = plan_feed(iter(plans), steps, self.interactive, ahead)
        try:
            self._set_up(scenario, progress, program, comm_kind, allreduce)
        except BaseException:  # an error or an interrupt here must not leave the feed's child running
            self._feed.close()
            raise

    def _set_up(self, scenario: Scenario, progress: Callable[[int], None] | None, program: Program,
                comm_kind: str, allreduce: AllReduceChoice) -> None:
        """Everything the engine holds besides its plan feed (split out so a failure closes the feed)."""
        self.program = program
        self.progress = progress
        L, n = scenario.model.num_layers, scenario.num_devices
        self.n_layers, self.n = L, n
        self.P = program.phases
        self.moe_layers = np.array(scenario.model.moe_layers, dtype=np.int64)
        self.moe_index = {layer: i for i, layer in enumerate(scenario.model.moe_layers)}
        self.is_moe = [scenario.model.is_moe_layer(layer) for layer in range(L)]
        self._plans: dict[int, list[StepPlan]] = {}
        self._merged: dict[int, StepPlan] = {}  # released steps' merged plans
        self._inter = scenario.routes.pair_inter_node
        self._times: dict[int, tuple[list[float], list[float]]] = {}
        self._step_lists: dict[tuple[int, int], tuple] = {}
        self._by_step: dict[tuple[int, int], StepCollectives] = {}
        self._pulled = 0
        self._ended: int | None = None
        self._at_step = [0] * scenario.num_devices  # the step each device is in
        self._forgotten = -1  # collectives and lists of steps up to this one are dropped
        self._barriers: dict[int, list] = {}
        self._step_t0: dict[int, float] = {}
        self._link_bytes_seen = 0.0
        self.microbatches = program.microbatches
        tp = scenario.tp
        self.tp = tp
        hop = scenario.routes.pair_latency[0, 1] if n > 1 else 0.0
        node_of = scenario.machine.node_of

        def one_node(size: int) -> bool:  # every group of `size` ranks inside one node (one NVLink domain)
            return bool((node_of.reshape(-1, size).min(axis=1) == node_of.reshape(-1, size).max(axis=1)).all())

        measured = comm_cost.has_floors(scenario.routes, "all_reduce")
        self._tp_ar = GroupAllReduce(allreduce, n, tp, hop, one_node(tp), measured) if tp > 1 else None
        mt = scenario.moe_tp
        self.moe_tp = mt
        # MoE-TP reduces with an all-reduce where tp >= moe_tp, else a reduce-scatter back to the DP ranks (NCCL)
        moe_choice = allreduce if tp >= mt else NCCL
        self._moe_ar = GroupAllReduce(moe_choice, n, mt, hop, one_node(mt), measured) if mt > 1 else None
        group = np.arange(n) // max(scenario.ep * scenario.moe_tp, 1)
        # serving: idle data-parallel ranks still run the MoE layers (SGLang's DP attention), so an
        # all-to-all synchronises its whole EP group, and the busiest rank is everyone's straggler
        self._group_pairs = (group[:, None] == group[None, :]) & ~np.eye(n, dtype=bool)
        # comm kernel costs (comm_cost): each collective's kind and every device's floor in it
        self._moe_kind = comm_kind
        self._single_ep = scenario.ep == 1
        # every device's kernel floor per comm kind (a step may run kernels of another kind: auto dispatch)
        self._floors: dict[tuple[str, str], list[float] | None] = {}
        self._tp_floor = comm_cost.kernel_floors(scenario.routes, "all_reduce", _group_pairs(n, tp)) if tp > 1 else None
        self._moe_tp_floor = comm_cost.kernel_floors(scenario.routes, "all_reduce", _group_pairs(n, mt)) if mt > 1 else None
        self._size = L * n * self.microbatches * self.P
        self._grad_sync = GradientSync(scenario.routes, n, tp, scenario.ep * mt, scenario.pp)
        first = self.plans(0)
        if first is not None and len(first) != self.microbatches:
            raise MoesimError(f"the plans of step 0 have {len(first)} micro-batches but the overlap program runs "
                              f"{self.microbatches}")
        # a stream per compute unit where micro-batches can overlap on different units (unit_streams.py)
        self.unit_streams = (first is not None and first[0].unit_time is not None and self.microbatches > 1
                             and self.offload is None)

    # ---- plans, pulled from the source ---------------------------------------------------
    def plans(self, step: int) -> list[StepPlan] | None:
        """The micro-batch plans of a step, or None past the last step. Later steps' plans are built
        meanwhile on the second core (`plan_feed`); plans depend only on (seed, step), so results
        do not change."""
        got = self._plans.get(step)
        if got is not None or (self._ended is not None and step >= self._ended):
            return got
        while self._pulled <= step:
            nxt = self._feed.next()
            if nxt is None:
                self._ended = self._pulled
                return None
            self._plans[self._pulled] = nxt
            self._alloc(self._pulled)
            self._pulled += 1
        return self._plans.get(step)

    def now(self) -> float:
        """The simulated time: the event loop's, or the event-free path's while it runs."""
        return self.env.now if self.lockstep_clock is None else self.lockstep_clock

    def _alloc(self, step: int) -> None:
        if self._array_times:  # the event-free path writes whole rows of devices at once
            self._times[step] = (np.full(self._size, np.nan), np.full(self._size, np.nan))
        else:
            self._times[step] = ([float("nan")] * self._size, [float("nan")] * self._size)

    def use_array_times(self, arrays: bool) -> None:
        """Allocate the timelines of steps pulled from now on as numpy arrays (the event-free path,
        which also converts those pulled before it started: none has run) or as lists."""
        self._array_times = arrays
        if arrays:
            for step, (st, en) in self._times.items():
                if isinstance(st, list):
                    self._times[step] = (np.asarray(st, dtype=float), np.asarray(en, dtype=float))

    def times(self, step: int) -> tuple[list[float], list[float]]:
        """Flat start/end lists of a step, indexed ((layer x N + device) x MB + microbatch) x P + phase."""
        return self._times[step]

    def _floor_of(self, kind: str, role: str = "dispatch"):
        """Every device's floor for the all-to-all kernels of `kind` as `role` (dispatch or combine:
        DeepEP's two kernels have floors of their own), computed once per (kind, role)."""
        key = (kind, role)
        if key not in self._floors:
            self._floors[key] = comm_cost.kernel_floors(self.sc.routes, kind, self._group_pairs, role)
        return self._floors[key]

    def collectives(self, step: int, mb: int = 0) -> StepCollectives:
        """Every collective of a step's micro-batch, made when the first device needs them; dropped
        two steps later (a device entering step s has every device's step s-2 combine behind it)."""
        key = (step, mb)
        colls = self._by_step.get(key)
        if colls is None:
            plan = self._plans[step][mb]
            tr = plan.traffic
            env, fabric = self.env, self.fabric
            dis = tr.dispatch
            com = tr.combine
            need_d, need_c = _pairs_of(dis), _pairs_of(com)
            if self.interactive:  # serving: every rank of an EP group enters each all-to-all (staged ones too)
                group = self._group_pairs
                if len(dis) == 1:
                    need_d = need_c = [group] * len(need_d)
                elif len(dis) == 2:  # each stage's own pairs still say which bytes travel where
                    need_d = [(first, fwd, group) for first, fwd, _ in need_d]
                    need_c = [(first, fwd, group) for first, fwd, _ in need_c]
            # an explicit kernel latency (policies.dispatch.kernel_latency) replaces the profile's floor
            kind, extra = tr.kind or self._moe_kind, tr.kernel_latency or 0.0
            floors = (self._floor_of(kind), self._floor_of(kind, "combine")) if tr.kernel_latency is None \
                else (None, None)
            skipped = tr.combine_skipped  # a combine that moves nothing launches no kernel: no floor, no wait
            # ep = 1 (MoE-TP alone): a layer whose bytes all stay on their devices runs no all-to-all at all;
            # with ep > 1 every rank launches the kernel (DeepEP, NCCL) whatever this layer's counts
            moves_d, moves_c = (_moves(dis), _moves(com)) if self._single_ep else ([True] * len(dis[0]),) * 2
            nobody = np.zeros((self.n, self.n), dtype=bool)

            def kernel(stages, m: int, need, moves: bool, floor, skip: bool = False):
                if skip:
                    return make_collective(env, fabric, [s[m] for s in stages], 0.0, nobody, kind, None)
                if not moves:  # every byte stays on its device: one idle stage, nobody waits
                    return make_collective(env, fabric, [stages[0][m]], 0.0, nobody, kind, None)
                return make_collective(env, fabric, [s[m] for s in stages], extra, need, kind, floor)

            moe = [(kernel(dis, m, need_d[m], moves_d[m], floors[0]),
                    kernel(com, m, need_c[m], moves_c[m], floors[1], skipped is not None and bool(skipped[m])))
                   for m in range(dis[0].shape[0])]
            tp = []
            if self._tp_ar is not None:
                groups = np.arange(self.n) // self.tp
                matrix, added, nccl = self._tp_ar.terms(plan.tp_bytes)
                floor = self._tp_floor if nccl else None
                tp = [tuple(GroupCollective(env, fabric, matrix, groups, added, "all_reduce", floor)
                            for _ in range(2))
                      for _ in self.is_moe]
            reduce = []
            if self._moe_ar is not None:
                groups = np.arange(self.n) // self.moe_tp
                matrix, added, nccl = self._moe_ar.terms(plan.moe_reduce_bytes)
                floor = self._moe_tp_floor if nccl else None
                reduce = [GroupCollective(env, fabric, matrix, groups, added, "all_reduce", floor)
                          for _ in range(len(moe))]
            colls = self._by_step[key] = StepCollectives(moe, tp, reduce)
            if plan.training is not None:  # the backward reruns the forward's all-to-alls with their bytes
                colls.moe_bwd = [(kernel(dis, m, need_d[m], moves_d[m], floors[0]),
                                  kernel(com, m, need_c[m], moves_c[m], floors[1],
                                         skipped is not None and bool(skipped[m])))
                                 for m in range(dis[0].shape[0])]
                if self._tp_ar is not None:
                    groups = np.arange(self.n) // self.tp
                    matrix, added, nccl = self._tp_ar.terms(plan.tp_bytes)
                    floor = self._tp_floor if nccl else None
                    colls.tp_bwd = [tuple(GroupCollective(env, fabric, matrix, groups, added, "all_reduce", floor)
                                          for _ in range(2)) for _ in self.is_moe]
                colls.grads, colls.gather = self._grad_sync.collectives(env, fabric, plan.training)
                colls.pp = self._grad_sync.pipeline(env, fabric, plan.training)
                colls.layer_gather = self._grad_sync.layer_gathers(env, fabric, plan.training)
            self._forget()
        return colls

    def lists(self, step: int, mb: int = 0) -> tuple[list, list, list, list]:
        """A step's per-device times as nested Python lists [device][layer] (fast scalar reads)."""
        key = (step, mb)
        lists = self._step_lists.get(key)
        if lists is None:
            plan = self.plans(step)[mb]
            lists = self._step_lists[key] = tuple(  # type: ignore[assignment]
                a.T.tolist() for a in (plan.attention, plan.dense_ffn, plan.shared_expert, plan.expert)
                + (plan.training.arrays() if plan.training is not None else ()))
            self._forget()
        return lists  # type: ignore[return-value]

    def step_done(self, d: int, step: int) -> None:
        self._at_step[d] = step + 1
        if d == 0 and self.progress:
            self.progress(step + 1)

    def iteration_barrier(self, step: int) -> Generator:
        """Serving: every rank ends an iteration before the next is formed (the data-parallel
        schedulers exchange their batch shapes each iteration, as SGLang's DP attention does)."""
        waiting = self._barriers.setdefault(step, [0, simpy.Event(self.env)])
        waiting[0] += 1
        if waiting[0] == self.n:
            self._iteration_end(step)
            self._barriers.pop(step)[1].succeed()
            return
        yield waiting[1]

    def begin_step(self, plans: list[StepPlan], step: int, d: int) -> Generator:
        """Before device `d` runs `step`: wait for the step's `start_at` (serving: idle until an
        arrival); a serving step replayed from a cached timeline is run here whole, and this
        returns True (the schedule moves on to the next step)."""
        inputs = plans[0].inputs
        start_at = inputs.start_at if inputs is not None else None
        if start_at is not None and start_at > self.env.now:
            yield self.env.timeout(start_at - self.env.now)
        if not self.interactive:
            return False
        self.step_started(step)
        replay = self.replay(step)
        if replay is None:
            return False
        yield self.env.timeout(replay.duration[d])
        self.step_done(d, step)
        yield from self.iteration_barrier(step)
        return True

    def step_started(self, step: int) -> None:
        """Serving: every device starts an iteration at the same moment (after the barrier)."""
        self._step_t0.setdefault(step, self.now())

    def replay(self, step: int):
        """Serving: the cached timeline this step replays, or None to simulate it."""
        return self.cache.replays.get(step) if self.cache is not None else None

    def _iteration_end(self, step: int) -> None:
        """Every device has finished `step`: fill a replayed step's timeline, or record a simulated one."""
        if self.cache is None:
            return
        t0 = self._step_t0.pop(step)
        st, en = self._times[step]
        hit = self.cache.replays.get(step)
        if hit is not None:  # arrays, not lists: nothing writes to a replayed step's times
            self._times[step] = (hit.start + t0, hit.end + t0)
            self.fabric.extra_bytes += hit.link_bytes
            return
        now = self.fabric.link_bytes - self.fabric.extra_bytes  # simulated bytes only: replays add their own
        shape = (self.n_layers, self.n, self.microbatches, self.P)
        # the cache keeps the plans as released (totals, not per-layer arrays): a replay simulates
        # nothing, and every reader of a released step reads these (traffic_totals.py)
        self.cache.record(step, [_released(p, self._inter) for p in self._plans[step]], st, en, t0, shape,
                          now - self._link_bytes_seen)
        self._link_bytes_seen = now

    def _forget(self) -> None:
        """Drop the collectives and lists of steps every device has left (two behind the slowest:
        its combine may still name the step before)."""
        low = min(self._at_step) - 2
        while self._forgotten < low:
            self._forgotten += 1
            for mb in range(self.microbatches):
                self._by_step.pop((self._forgotten, mb), None)
                self._step_lists.pop((self._forgotten, mb), None)
            if self._forgotten >= KEEP_FULL_PLANS:
                self._release(self._forgotten)

    def _release(self, step: int) -> None:
        """Keep only what the summary and tables read of a step every device has left: its traffic
        as totals (traffic_totals.py), not the per-slot arrays the step's costing used, its merged
        plan made now, and its timeline as arrays (a Python list of floats costs 4x)."""
        per_mb = self._plans[step]
        merged = merge_microbatches(per_mb)
        self._merged[step] = _released(merged, self._inter)
        if len(per_mb) > 1:
            self._plans[step] = [_released(p, self._inter) for p in per_mb]
        else:
            self._plans[step] = [self._merged[step]]
        st, en = self._times[step]
        if isinstance(st, list):
            self._times[step] = (np.asarray(st, dtype=float), np.asarray(en, dtype=float))

    def run_offloaded_experts(self, wait: LayerWait) -> Generator:
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
        if self._ended == 0:
            raise MoesimError("the step source yielded no steps: nothing to simulate")
        try:
            handover: Handover | None = Handover(0, [0.0] * self.n, False)
            if program_fits(self):
                handover = run_lockstep(self)
                self.lockstep_clock = None
            self.event_free_steps = handover.step if handover is not None else None  # None: every step
            if handover is not None:
                stream = unit_device_stream if self.unit_streams else device_stream
                for d in range(self.n):
                    self.env.process(stream(self, d, self.program, handover.step, handover.fused,
                                            handover.clocks[d]))
                run_events(self.env)
        except MoesimError as err:  # SimPy re-raises a process's error as a copy without its fields
            if isinstance(err.__cause__, MoesimError):
                raise err.__cause__ from None
            raise
        finally:
            self._feed.close()
        steps = self._ended if self._ended is not None else self._pulled
        shape = (steps, self.n_layers, self.n, self.microbatches, self.P)
        self.start = np.stack([np.asarray(self._times[s][0], dtype=float) for s in range(steps)]).reshape(shape)
        self.end = np.stack([np.asarray(self._times[s][1], dtype=float) for s in range(steps)]).reshape(shape)
        per_mb = [self._plans[s] for s in range(steps)]
        plans = [self._merged[s] if s in self._merged else merge_microbatches(p) for s, p in enumerate(per_mb)]
        self._merged = {}
        self._split_straggler_wait(per_mb)
        free = steps if self.event_free_steps is None else self.event_free_steps
        return EngineResult(self.start, self.end, plans, self.fabric, offload=self.offload, microbatch_plans=per_mb,
                            meta={"event_free_steps": free})

    def _split_straggler_wait(self, per_mb: list[list[StepPlan]]) -> None:
        """Split each combine wait into waiting for a slower peer's experts, then transfer (and in a
        training step's backward, each dispatch wait into waiting for the peers that send to the
        device to reach it, then transfer: the imbalance their recomputed experts carry).

        A device that finished its experts early waits in combine partly because a device
        holding its tokens is still computing (the straggler effect) and partly for the bytes
        themselves. The first part is the gap to the latest expert end among its senders.
        """
        moe = self.moe_layers
        if moe.size == 0:
            return
        # (experts, straggler wait, combine): the forward's, and a training step's backward's
        triples = [(_EXP, _STRAG, _COMB)]
        if self.P > len(INFERENCE_PHASES):
            triples.append(tuple(PHASE_INDEX[p] for p in ("expert_bwd", "straggler_wait_bwd", "combine_bwd")))
        for s, plans in enumerate(per_mb):  # a step at a time: (Lm, N, N) arrays, not (steps, Lm, N, N)
            all_start, all_end = self.start[s, moe], self.end[s, moe]  # (Lm, N, MB, P) copies
            for mb in range(self.microbatches):
                start, end = all_start[:, :, mb], all_end[:, :, mb]  # views
                senders = traffic_totals(plans[mb], self._inter).combine_senders()  # (Lm, src, dst)
                for exp, strag, comb in triples:
                    exp_end, comb_start, comb_end = end[..., exp], start[..., comb], end[..., comb]
                    peer_end = np.where(senders, exp_end[:, :, None], -np.inf).max(axis=1)  # (Lm, dst)
                    wait = np.clip(peer_end - comb_start, 0.0, comb_end - comb_start)
                    wait = np.where(np.isfinite(wait), wait, 0.0)
                    split = comb_start + wait
                    start[..., strag] = comb_start
                    end[..., strag] = split
                    start[..., comb] = split
                if len(triples) > 1:  # the backward's dispatch: waiting for slower peers to get there
                    disp, peer = PHASE_INDEX["dispatch_bwd"], PHASE_INDEX["peer_wait_bwd"]
                    d_start, d_end = start[..., disp], end[..., disp]
                    ready = np.where(np.transpose(senders, (0, 2, 1)), d_start[:, :, None], -np.inf).max(axis=1)
                    wait = np.clip(ready - d_start, 0.0, d_end - d_start)
                    wait = np.where(np.isfinite(wait), wait, 0.0)
                    start[..., peer] = d_start
                    end[..., peer] = d_start + wait
                    start[..., disp] = d_start + wait
            self.start[s, moe], self.end[s, moe] = all_start, all_end


def _moves(stages: list[np.ndarray]) -> list[bool]:
    """Per MoE layer, whether a dispatch or combine sends any byte off its own device."""
    off = sum(s.sum(axis=(1, 2)) - np.einsum("lii->l", s) for s in stages)
    return (off > 0).tolist()


def _pairs_of(stages: list[np.ndarray]) -> list:
    """Per MoE layer, the sending pairs of a dispatch or combine (computed for all layers at once)."""
    if len(stages) == 1:
        return list(sending_pairs(stages[0]))
    if len(stages) == 2:
        first_in, forwards, need = staged_pairs(stages[0], stages[1])
        return list(zip(first_in, forwards, need))
    return [None] * stages[0].shape[0]


def _group_pairs(n: int, size: int) -> np.ndarray:
    """(N, N) pairs of distinct devices within contiguous groups of `size`."""
    group = np.arange(n) // size
    return (group[:, None] == group[None, :]) & ~np.eye(n, dtype=bool)


def _released(plan: StepPlan, inter: np.ndarray) -> StepPlan:
    """A finished step's plan without the arrays only its simulation read: its traffic reduced to
    totals, no per-slot tokens, times or op lists."""
    return replace(plan, traffic=traffic_totals(plan, inter), slot_tokens=None, slot_time=None,
                   expert_tokens=None, layer_ops=None)
