"""The step pipeline: step input -> routing -> capacity -> replica split -> dispatch -> costs -> StepPlan.

Each stage is a small object passed in (`StepPipeline` holds them; nothing is looked up by
name here). A `StepPlan` is one rendition of a step: the arrays the engine replays and the
op rows (op, unit, FLOPs, bytes, time, bound) the roofline, the reports and the tests read.
No Python loop runs per token or per expert; the engine only sees (layer, device) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from moesim.simulator.capacity import CapacityPolicy
from moesim.simulator.dispatch import DispatchAlgorithm, DispatchLayout, TokenIds, Traffic
from moesim.simulator.ops import act_dtype, tp_allreduce_bytes
from moesim.simulator.plan_rows import plan_op_rows
from moesim.simulator.replica_split import ReplicaSplit
from moesim.simulator.step_costs import LayerOps, StepCosts
from moesim.simulator.step_source import StepInput, split_microbatches
from moesim.simulator.traffic_totals import TrafficTotals, merge_totals
from moesim.simulator.training.work import TrainingWork
from moesim.simulator.unit_rules import ExpertOptions
from moesim.units import dtype_bytes
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.routing import RoutingSource, RoutingStep



@dataclass
class StepPlan:
    """Work of one step (or one micro-batch of it). Arrays indexed [layer, device] cover all layers;
    [moe_layer, ...] cover the MoE layers only (`moe_index` of the pipeline maps them)."""

    step: int
    attention: np.ndarray  # (L, N) attention + norms + router compute time
    dense_ffn: np.ndarray  # (L, N) dense FFN time (dense layers only)
    shared_expert: np.ndarray  # (L, N)
    expert: np.ndarray  # (L, N) routed-expert time on each device
    tp_bytes: float  # ring all-reduce bytes per rank, per attention/FFN all-reduce
    traffic: Traffic  # dispatch / combine bytes by stage (Lm, N, N)
    rows_routed: np.ndarray  # (L_moe,) (token, expert) assignments routed
    rows_dropped: np.ndarray  # (L_moe,) assignments dropped for capacity
    rows_computed: np.ndarray  # (L_moe, N) assignments each device's experts computed
    experts_active: np.ndarray  # (L_moe, N) distinct local experts with at least one token
    expert_tokens: np.ndarray  # (L_moe, E) assignments each expert computed, summed over EP groups
    slot_tokens: np.ndarray | None = None  # (groups, L_moe, slots) tokens of each expert copy
    slot_time: np.ndarray | None = None  # (groups, L_moe, slots) GEMM time of each expert copy
    moe_reduce_bytes: float = 0.0  # MoE-TP: all-reduce bytes per rank after each MoE block
    inputs: StepInput | None = None
    layer_ops: list[list[LayerOps]] | None = None  # [layer][device] the non-expert ops costed
    microbatch: int = 0
    slot_unit: np.ndarray | None = None  # (groups, L_moe, J) which candidate expert unit computed each copy
    # (parts, units, L, N) seconds of attention, dense FFN, shared and routed experts on each unit (in
    # machine order) where a part may run off the accelerator; None: everything on the accelerator
    unit_time: np.ndarray | None = None
    handoff: np.ndarray | None = None  # (parts, units, L, N) of unit_time: the activations' hand-offs to the unit
    training: "TrainingWork | None" = None  # a training step's backward, gradient and optimizer work

    @property
    def dispatch(self) -> np.ndarray:
        """(Lm, N, N) dispatch bytes over all stages."""
        return self.traffic.total("dispatch")

    @property
    def combine(self) -> np.ndarray:
        return self.traffic.total("combine")


def split_counts(counts: np.ndarray, part_tokens: list[np.ndarray]) -> list[np.ndarray]:
    """Split counts[l, s, e] into parts, each source's rows in proportion to the part's tokens:
    every expert's count is split by largest remainder, so each part's rows sum exactly to its
    share and no part gets more of an expert than the whole had."""
    remaining = counts.astype(np.int64).copy()
    left = np.sum([np.asarray(t, dtype=np.int64) for t in part_tokens], axis=0).astype(float)
    out = []
    for tokens in part_tokens[:-1]:
        t = np.asarray(tokens, dtype=float)
        frac = np.divide(t, left, out=np.zeros_like(t), where=left > 0)[None, :, None]
        target = np.rint(remaining.sum(axis=2) * frac[:, :, 0]).astype(np.int64)  # (L, S)
        exact = remaining * frac
        part = np.floor(exact).astype(np.int64)
        short = target - part.sum(axis=2)
        order = np.argsort(-(exact - part), axis=2, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[2])[None, None, :], axis=2)
        part += rank < short[:, :, None]
        out.append(part)
        remaining -= part
        left -= t
    out.append(remaining)
    return out


def split_routed(routed: RoutingStep, part_tokens: list[np.ndarray]) -> list[RoutingStep] | None:
    """A step routed token by token, split into parts: part i takes, at each source, the next
    part_tokens[i][s] of its tokens with their expert ids, and its counts are those tokens' own.
    A source's tokens are drawn alike, so which of them a part takes changes no distribution;
    keeping the ids keeps what a deduplicating dispatch sends exact (node limits included) where
    splitting counts would fall back to the independence estimate. None where the step has no
    per-token ids in source order."""
    ids, src = routed.token_experts, routed.token_source
    if ids is None or src is None or any(e is None for e in ids):
        return None
    Lm, sources, E = routed.counts.shape
    parts = [np.asarray(t, dtype=np.int64) for t in part_tokens]
    total = np.sum(parts, axis=0)
    src = np.asarray(src, dtype=np.int64)
    if total.size != sources or src.size != int(total.sum()) or \
            not np.array_equal(src, np.repeat(np.arange(sources, dtype=np.int64), total)):
        return None
    rank = np.arange(src.size) - np.repeat(np.cumsum(total) - total, total)  # position within its source
    bounds = np.cumsum(parts, axis=0)  # (parts, sources): end of each part's run at each source
    part_of = (rank[None, :] >= bounds[:, src]).sum(axis=0)  # which part takes each token
    out = []
    for i in range(len(parts)):
        take = np.flatnonzero(part_of == i)
        s = src[take]
        experts = [np.ascontiguousarray(e[take]) for e in ids]
        offset = (s * E)[:, None]
        counts = np.stack([np.bincount((e + offset).ravel(), minlength=sources * E) for e in experts])
        counts = counts.reshape(Lm, sources, E)
        out.append(RoutingStep(counts=counts, token_experts=experts, token_source=s))
    return out


def merge_microbatches(plans: list[StepPlan]) -> StepPlan:
    """One plan standing for a step's micro-batches: times and bytes add up (for per-step metrics)."""
    if len(plans) == 1:
        return plans[0]
    first = plans[0]

    def add(name: str) -> np.ndarray | None:  # (None where released plans dropped the array)
        if getattr(first, name) is None:
            return None
        return sum((getattr(p, name) for p in plans[1:]), getattr(first, name).copy())

    if isinstance(first.traffic, TrafficTotals):  # released plans (a serving iteration replayed from the cache)
        traffic = merge_totals([p.traffic for p in plans])
    else:
        stages_d = [sum(p.traffic.dispatch[i] for p in plans) for i in range(len(first.traffic.dispatch))]
        stages_c = [sum(p.traffic.combine[i] for p in plans) for i in range(len(first.traffic.combine))]
        residency = None if first.traffic.residency is None else sum(p.traffic.residency for p in plans)
        skipped = None if first.traffic.combine_skipped is None else \
            np.logical_and.reduce([p.traffic.combine_skipped for p in plans])
        traffic = Traffic(stages_d, stages_c, first.traffic.kernel_latency, residency=residency,
                          combine_skipped=skipped, kind=first.traffic.kind)
    return StepPlan(
        step=first.step, attention=add("attention"), dense_ffn=add("dense_ffn"), shared_expert=add("shared_expert"),
        expert=add("expert"), tp_bytes=sum(p.tp_bytes for p in plans),
        traffic=traffic,
        rows_routed=add("rows_routed"), rows_dropped=add("rows_dropped"), rows_computed=add("rows_computed"),
        experts_active=np.maximum.reduce([p.experts_active for p in plans]), expert_tokens=add("expert_tokens"),
        slot_tokens=add("slot_tokens"), slot_time=add("slot_time"),
        moe_reduce_bytes=sum(p.moe_reduce_bytes for p in plans), inputs=first.inputs,
        slot_unit=first.slot_unit, unit_time=None if first.unit_time is None else add("unit_time"),
        handoff=None if first.handoff is None else add("handoff"))  # slot_unit: the first micro-batch's


@dataclass
class StepPipeline:
    """The stages of a step, composed. Build one with `pipeline_for(scenario)` or by hand."""

    model: ModelSpec
    num_devices: int
    tp: int
    ep: int
    routing: RoutingSource
    capacity: CapacityPolicy
    replicas: ReplicaSplit
    dispatch: DispatchAlgorithm
    costs: StepCosts
    layout: DispatchLayout  # at the level of MoE-TP shard groups (devices when moe_tp = 1)
    moe_tp: int = 1
    microbatches: int = 1

    def __post_init__(self) -> None:
        m = self.model
        self.moe_layers = np.array(m.moe_layers, dtype=np.int64)
        self.moe_index = {layer: i for i, layer in enumerate(m.moe_layers)}
        pl = self.replicas.placement
        self.onehot = np.zeros((pl.num_layers, pl.slot_device.shape[1], self.ep))
        np.put_along_axis(self.onehot, pl.slot_device[:, :, None], 1.0, axis=2)
        self.identity_slots = self.replicas.identity and self.replicas.weights is None
        self._kinds = [self._layer_kind(layer) for layer in range(m.num_layers)]
        self._distinct_kinds = list(dict.fromkeys(self._kinds))  # a handful: layers share their costs
        self._kind_of_layer = np.array([self._distinct_kinds.index(k) for k in self._kinds], dtype=np.int64)

    def _layer_kind(self, layer: int) -> tuple:
        att = self.model.attention
        every = getattr(att, "sliding_window_every", 0)
        windowed = bool(getattr(att, "sliding_window", None) and every and layer % every == 0)
        edges = self.costs.small_ops
        # a representative layer index with the same window flag keeps the cost cache small
        return (0 if windowed or not every else 1, self.model.is_moe_layer(layer),
                edges and layer == 0, edges and layer == self.model.num_layers - 1)

    # ---- the stages in order -----------------------------------------------------------
    def plans(self, source: Iterable[StepInput]) -> Iterator[list[StepPlan]]:
        """The micro-batch plans of every step the source yields, in order. A step is routed once;
        its micro-batches split each device's rows in proportion to their tokens."""
        for inp in source:
            yield self.step_plans(inp)

    def step_plans(self, inp: StepInput) -> list[StepPlan]:
        """The micro-batch plans of one step input."""
        if self.microbatches == 1:
            return [self.plan(inp)]
        parts = split_microbatches(inp, self.microbatches)
        routed = self.routing.step(inp.step, np.asarray(inp.moe_tokens, dtype=np.int64), len(self.moe_layers))
        tokens = [p.moe_tokens for p in parts]
        by_token = split_routed(routed, tokens)
        if by_token is not None:  # per-token ids: each micro-batch takes its own tokens, ids and all
            return [self.plan(p, r.counts, whole=inp, routed=r) for p, r in zip(parts, by_token)]
        shares = split_counts(routed.counts, tokens)
        return [self.plan(p, c, whole=inp) for p, c in zip(parts, shares)]

    def plan(self, inp: StepInput, counts: np.ndarray | None = None, whole: StepInput | None = None,
             routed: RoutingStep | None = None) -> StepPlan:
        """The plan of one step input (routed here unless its counts[l, s, e] are given, with their
        per-token ids in `routed` where known); `whole`: the step a micro-batch is part of (an
        algorithm that picks its kernels per step reads it)."""
        m, n, L = self.model, self.num_devices, self.model.num_layers
        moe = self.moe_layers
        tokens = np.asarray(inp.moe_tokens, dtype=np.int64)
        if counts is None:
            routed = self.routing.step(inp.step, tokens, len(moe))
            counts = routed.counts  # (Lm, N, E)
        if moe.size:  # a trace decides each device's real tokens: attention is sized from them
            tokens = counts[0].sum(axis=1) // m.moe.top_k if counts.shape[1] == n else tokens
        layer_ops, attention, dense, shared, unit_time = self._compute(inp, tokens)
        (expert, rows_computed, active, expert_tokens, rows_dropped, slot_tokens, slot_time, traffic, slot_unit,
         unit_busy, unit_handoff) = self._moe(counts, tokens, routed, whole or inp)
        if traffic.residency is not None:  # tokens move between layers (exflow): compute follows them
            attention, dense, shared = (follow_residency(a, tokens, traffic.residency, moe)
                                        for a in (attention, dense, shared))
            if unit_time is not None:
                unit_time = np.stack([[[follow_residency(u, tokens, traffic.residency, moe) for u in part]
                                       for part in kind] for kind in unit_time])
        full = np.zeros((L, n))
        full[moe] = expert
        handoff = None
        if unit_time is not None:  # (parts, units, L, n): the experts' seconds on each unit
            index = {label: k for k, label in enumerate(self.costs.unit_labels)}
            experts, crossed = np.zeros((len(index), L, n)), np.zeros((len(index), L, n))
            for i, kernel in enumerate(self.costs.experts):
                experts[index[kernel.unit.label]][moe] += unit_busy[i]
                crossed[index[kernel.unit.label]][moe] += unit_handoff[i]
            handoff = np.concatenate([unit_time[1], crossed[None]])
            unit_time = np.concatenate([unit_time[0], experts[None]])
        replica_tokens = tokens.reshape(-1, self.tp).sum(axis=1).max() if tokens.size else 0
        ab = dtype_bytes(act_dtype(m))
        reduce_bytes = 0.0
        if self.moe_tp > 1:
            group_tokens = float(tokens.reshape(-1, self.moe_tp).sum(axis=1).max())
            factor = 2.0 if self.tp >= self.moe_tp else 1.0  # all-reduce, or reduce-scatter back to DP ranks
            reduce_bytes = factor * (self.moe_tp - 1) / self.moe_tp * group_tokens * m.hidden_size * ab
        return StepPlan(
            step=inp.step, attention=attention, dense_ffn=dense, shared_expert=shared, expert=full,
            tp_bytes=tp_allreduce_bytes(m, float(replica_tokens), self.tp), traffic=traffic,
            rows_routed=counts.sum(axis=(1, 2)), rows_dropped=rows_dropped, rows_computed=rows_computed,
            experts_active=active, expert_tokens=expert_tokens, slot_tokens=slot_tokens, slot_time=slot_time,
            moe_reduce_bytes=reduce_bytes, inputs=inp, layer_ops=layer_ops, microbatch=inp.microbatch,
            slot_unit=slot_unit, unit_time=unit_time, handoff=handoff)

    def _compute(self, inp: StepInput, tokens: np.ndarray):
        """Non-expert compute of every (layer, device), from the step's own tokens."""
        n, L = self.num_devices, self.model.num_layers
        replica = tokens.reshape(-1, self.tp).sum(axis=1)  # tokens of each attention replica
        batch_of = np.repeat(replica, self.tp) / max(inp.seq_len, 1)
        moe_tokens = tokens if self.moe_tp == 1 else np.repeat(tokens.reshape(-1, self.moe_tp).sum(axis=1),
                                                                 self.moe_tp)
        if inp.attention is not None:  # a serving iteration: each device's own mix of prefill and decode
            keys = [(mix, float(t)) for mix, t in zip(inp.attention, moe_tokens)]
        else:
            keys = [(float(b), float(t)) for b, t in zip(batch_of, moe_tokens)]
        distinct = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # devices usually share one key
        which = np.array([distinct[k] for k in keys], dtype=np.int64)
        ops_of = {}  # (kind, key): LayerOps, costed once per distinct pair
        kinds = self._distinct_kinds
        times = np.empty((len(kinds), len(distinct), 3))
        labels = self.costs.unit_labels
        splits = np.empty((len(kinds), len(distinct), 2, len(labels), 3)) if self.costs.splits_units else None
        for i, kind in enumerate(kinds):
            for (b, t), j in distinct.items():
                if inp.attention is not None:
                    o = self.costs.mixed_layer_ops(kind, b, t)
                else:
                    o = self.costs.layer_ops(kind, b if b != int(b) else int(b), inp.seq_len, inp.kv_len, inp.phase, t)
                ops_of[kind, (b, t)] = o
                times[i, j] = (o.attention_time, o.dense_time, o.shared_time)
                if splits is not None:
                    splits[i, j] = o.unit_split(labels)
        per_kind = {kind: [ops_of[kind, k] for k in keys] for kind in kinds}
        layer_ops = [per_kind[kind] for kind in self._kinds]
        per_device = times[self._kind_of_layer][:, which]  # (L, n, 3)
        attention, dense, shared = (np.ascontiguousarray(per_device[..., k]) for k in range(3))
        # (2, parts, units, L, n): seconds on each unit, then the hand-offs among them
        unit_time = None if splits is None else np.ascontiguousarray(
            splits[self._kind_of_layer][:, which].transpose(2, 4, 3, 0, 1))
        return layer_ops, attention.reshape(L, n), dense.reshape(L, n), shared.reshape(L, n), unit_time

    def _moe(self, counts: np.ndarray, tokens: np.ndarray, routed: RoutingStep | None = None,
             inp: StepInput | None = None):
        """Capacity, replica split, expert costs and dispatch of every MoE layer (vectorised)."""
        ep, mt = self.ep, self.moe_tp
        n = self.num_devices
        Lm, E = len(self.moe_layers), self.model.moe.num_experts
        pl = self.replicas.placement
        if mt > 1:  # MoE-TP: a shard group's devices hold the same tokens and split every expert
            counts = counts.reshape(Lm, n // mt, mt, E).sum(axis=2)
            tokens = tokens.reshape(-1, mt).sum(axis=1)
        ns = counts.shape[1]
        groups = ns // ep
        expert_time = np.zeros((Lm, ns))
        costs = self.costs
        K = len(costs.experts)
        unit_busy = np.zeros((K, Lm, ns))  # each expert unit's seconds on each device's layer
        unit_handoff = np.zeros((K, Lm, ns))  # of which the routed rows' hand-off to it and back
        slot_units: list[np.ndarray] = []  # per group, (Lm, J): the unit computing each copy
        rows_dropped = np.zeros(Lm, dtype=np.int64)
        rows_computed = np.zeros((Lm, ns))
        active = np.zeros((Lm, ns), dtype=np.int64)
        expert_tokens = np.zeros((Lm, E), dtype=np.int64)
        device_rows = np.zeros((Lm, ns, ns))
        onehot = self.onehot
        all_rows = np.zeros((groups, Lm, ep, pl.slot_expert.shape[1]))
        kept_tokens, kept_time = [], []
        for g in range(groups):
            devs = slice(g * ep, (g + 1) * ep)
            c = counts[:, devs, :]
            kept = self.capacity(c, int(tokens[devs].sum()))
            rows_dropped += (c.sum(axis=(1, 2)) - kept.sum(axis=(1, 2)))
            expert_tokens += kept.sum(axis=1)
            sent = kept.astype(float) if self.identity_slots else self.replicas(kept)
            all_rows[g] = sent
            slot_tokens = self.replicas.slot_tokens(kept, sent)
            if len(costs.experts) == 1:
                times, slot_time, handoff = costs.experts[0].device_time(slot_tokens, pl.slot_expert, onehot)
                on_units = times[None]
                handoffs = handoff[None]
            else:  # each expert copy on the unit the rule picks; a device's units run at once
                split = costs.expert_rule.experts(ExpertOptions(costs.experts, slot_tokens, pl.slot_expert, onehot))
                runs = [k.device_time(slot_tokens, pl.slot_expert, onehot, split.slot_unit == i, split.present[i])
                        for i, k in enumerate(costs.experts)]
                on_units = np.stack([total for total, _, _ in runs])  # (K, Lm, ep)
                handoffs = np.stack([h for _, _, h in runs])
                times = on_units.max(axis=0)
                slot_time = np.take_along_axis(np.stack([t for _, t, _ in runs]), split.slot_unit[None], axis=0)[0]
                slot_units.append(split.slot_unit)
            if costs.splits_units:
                unit_busy[:, :, devs] = on_units
                unit_handoff[:, :, devs] = handoffs
            expert_time[:, devs] = times
            kept_tokens.append(slot_tokens)
            kept_time.append(slot_time)
            rows_computed[:, devs] = np.einsum("lj,ljd->ld", slot_tokens, onehot)
            active[:, devs] = np.einsum("lj,ljd->ld", (slot_tokens > 0).astype(float), onehot).astype(np.int64)
            device_rows[:, devs, devs] = np.matmul(sent, onehot)  # rows (token, expert) from src to dst
        args = (device_rows, all_rows, pl.slot_device, tokens, self.layout, self._token_ids(routed, rows_dropped))
        by_step = getattr(self.dispatch, "traffic", None)  # an algorithm that picks its kernels per step
        traffic = by_step(inp, *args) if by_step is not None and inp is not None else self.dispatch(*args)
        if mt > 1:
            traffic = _expand_shards(traffic, mt, self.tp, tokens, self.layout)
            expert_time = np.repeat(expert_time, mt, axis=1)
            unit_busy = np.repeat(unit_busy, mt, axis=2)
            unit_handoff = np.repeat(unit_handoff, mt, axis=2)
            rows_computed = np.repeat(rows_computed, mt, axis=1) / mt
            active = np.repeat(active, mt, axis=1)
        return (expert_time, rows_computed, active, expert_tokens, rows_dropped, np.stack(kept_tokens),
                np.stack(kept_time), traffic, np.stack(slot_units) if slot_units else None, unit_busy, unit_handoff)

    def _token_ids(self, routed: RoutingStep | None, rows_dropped: np.ndarray) -> TokenIds | None:
        """The step's per-token expert ids for dispatch, where they say exactly where every row
        goes: drawn per token, nothing dropped for capacity, one copy of each expert."""
        if routed is None or routed.token_experts is None or rows_dropped.any() or not self.identity_slots:
            return None
        source = np.asarray(routed.token_source, dtype=np.int64) // self.moe_tp  # MoE-TP: the shard group
        return TokenIds(routed.token_experts, source)

    # ---- readable rows -----------------------------------------------------------------
    def op_rows(self, plan: StepPlan, layer: int | None = None, device: int | None = None) -> pd.DataFrame:
        """Readable rows of every op of `plan` (one layer / one device where given), as this pipeline
        costed them: compute ops with their cost, routed experts per expert copy, all-to-all bytes
        per device. The plan is plain data; the pipeline that built it knows its costs."""
        if plan.layer_ops is None:
            raise ValueError("this plan was built by hand: it has no op rows")
        return plan_op_rows(self, plan, layer, device)


def _expand_shards(traffic: Traffic, mt: int, tp: int, group_tokens: np.ndarray, layout: DispatchLayout) -> Traffic:
    """Shard-group traffic onto devices: shard a of a group talks to shard a of another (each
    holds the group's tokens and 1/mt of every expert). With data-parallel attention (tp < mt)
    the group first all-gathers its members' tokens, which dispatch carries too."""
    if traffic.residency is not None or traffic.combine_skipped is not None:
        raise ValueError("tokens that move between layers (exflow dispatch) are not simulated with moe_tp > 1")
    eye = np.eye(mt)

    def expand(stages: list[np.ndarray]) -> list[np.ndarray]:
        return [np.stack([np.kron(s[layer], eye) for layer in range(s.shape[0])]) for s in stages]

    dispatch, combine = expand(traffic.dispatch), expand(traffic.combine)
    if tp < mt:
        per_device = np.repeat(group_tokens / mt, mt)  # tokens each member brings (even split)
        gather = np.kron(np.eye(group_tokens.size), np.ones((mt, mt)) - eye) * per_device[:, None]
        dispatch[0] = dispatch[0] + gather[None] * layout.dispatch_bytes
    return Traffic(dispatch, combine, traffic.kernel_latency)


def follow_residency(times: np.ndarray, tokens: np.ndarray, residency: np.ndarray, moe_layers: np.ndarray) -> np.ndarray:
    """(L, N) per-token compute moved to where the tokens are (exflow: tokens stay on their
    expert's device between MoE layers).

    `residency[i]` (Lm, N) is the tokens on each device when MoE layer i's attention runs. Layers
    up to and including the first MoE layer run at the sources (unchanged); MoE layer i and the
    dense layers between MoE layers i-1 and i run where MoE layer i-1 left the tokens
    (residency[i]); layers after the last MoE layer run at the sources again (the last combine
    returns every token home). A row is rescaled as time[l, d] x resident[d] / tokens[d], or the
    layer's mean time per token x resident[d] on a device without tokens of its own."""
    out = times.copy()
    if moe_layers.size < 2:
        return out
    tokens = np.asarray(tokens, dtype=float)
    layers = np.arange(moe_layers[0] + 1, moe_layers[-1] + 1)
    which = np.searchsorted(moe_layers, layers, side="left")  # the MoE layer at or after each layer
    res = residency[which]  # (len(layers), N)
    t = times[layers]
    mean = t.sum(axis=1, keepdims=True) / max(tokens.sum(), 1.0)
    per_token = np.where(tokens > 0, t / np.where(tokens > 0, tokens, 1.0), mean)
    out[layers] = per_token * res
    return out
