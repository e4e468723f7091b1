"""Per-step work, computed vectorised before the engine replays it in time.

For one step: routing counts -> capacity (keep/drop) -> per-expert loads -> placement ->
(a) each device's routed-expert time (sum over its local experts of grouped-GEMM time at that
expert's token count), and (b) the dispatch traffic matrix between devices. Attention, shared
expert and dense FFN times come from the same cost function. No Python loop runs per token or
per expert; the engine only sees (layer, device) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from moesim.simulator.ops import (
    LayerContext,
    attention_ops,
    dense_ffn_op,
    ffn_flops_bytes,
    gemm_dtype,
    act_dtype,
    router_op,
    shared_expert_op,
    token_bytes,
    tp_allreduce_bytes,
)
from moesim.simulator.scenario import Scenario


@dataclass
class StepPlan:
    """Work of one step. Arrays indexed [layer, device] cover all layers; [moe_layer, ...]
    cover the MoE layers only (see `moe_index`)."""

    step: int
    attention: np.ndarray  # (L, N) attention + router compute time
    dense_ffn: np.ndarray  # (L, N) dense FFN time (dense layers only)
    shared_expert: np.ndarray  # (L, N)
    expert: np.ndarray  # (L, N) routed-expert time on each device
    tp_bytes: float  # ring all-reduce bytes per rank, per all-reduce
    dispatch: np.ndarray  # (L_moe, N, N) bytes from device to device
    combine: np.ndarray  # (L_moe, N, N)
    rows_routed: np.ndarray  # (L_moe,) (token, expert) assignments routed
    rows_dropped: np.ndarray  # (L_moe,) assignments dropped for capacity
    rows_computed: np.ndarray  # (L_moe, N) assignments each device's experts computed
    experts_active: np.ndarray  # (L_moe, N) distinct local experts with at least one token
    expert_tokens: np.ndarray  # (L_moe, E) assignments each expert computed, summed over EP groups
    slot_tokens: np.ndarray | None = None  # (groups, L_moe, slots) tokens of each expert copy (offloading only)
    slot_time: np.ndarray | None = None  # (groups, L_moe, slots) GEMM time of each expert copy (offloading only)


def apply_capacity(counts: np.ndarray, capacity: int | None) -> np.ndarray:
    """Keep at most `capacity` assignments per expert (counts[l, s, e] over one EP group).

    Kept assignments are split over sources by cumulative integer rounding, so per-expert
    totals are exact and the survivors are spread in proportion to what each source sent.
    """
    if capacity is None:
        return counts
    load = counts.sum(axis=1, keepdims=True)  # (L, 1, E)
    kept = np.minimum(load, capacity)
    cum = np.cumsum(counts, axis=1)
    safe = np.maximum(load, 1)
    upto = (cum * kept) // safe
    prev = np.concatenate([np.zeros_like(upto[:, :1]), upto[:, :-1]], axis=1)
    return upto - prev


class Planner:
    """Builds StepPlans for a scenario; caches what does not change between steps."""

    def __init__(self, scenario: Scenario):
        self.sc = scenario
        m = scenario.model
        self.moe_layers = np.array(m.moe_layers, dtype=np.int64)
        self.moe_index = {layer: i for i, layer in enumerate(m.moe_layers)}
        pol = scenario.config.policies
        self.dispatch_bytes = token_bytes(m, pol.dispatch_dtype)
        self.combine_bytes = token_bytes(m, pol.combine_dtype)
        wl = scenario.config.workload
        self.phase = wl.phase
        tokens_group = scenario.moe_tokens.reshape(-1, scenario.ep).sum(axis=1)
        if pol.capacity_factor is not None and pol.overflow == "drop":  # "keep" runs overflow anyway
            cap = np.ceil(pol.capacity_factor * tokens_group * m.moe.top_k / m.moe.num_experts)
            self.capacity = cap.astype(np.int64)
        else:
            self.capacity = None
        self.tp_bytes = tp_allreduce_bytes(m, scenario.batch_per_replica * (wl.seq_len if wl.phase == "prefill" else 1),
                                           scenario.tp)
        cost = scenario.cost
        dt = cost.dtypes
        tokens = scenario.moe_tokens
        shared = shared_expert_op(m, 1.0, dt)
        self.shared_time = np.zeros(scenario.num_devices)
        if shared is not None:
            flops, mem = ffn_flops_bytes(m, tokens, m.shared_size * m.moe.num_shared_experts, m.weight_dtype)
            self.shared_time = cost.times("gemm", flops, mem, tokens, shared.dtype)
        router = [router_op(m, float(t)) for t in tokens]
        self.router_time = np.array([cost.op_time(op) for op in router])
        pl = scenario.placement
        self.onehot = np.zeros((pl.num_layers, pl.slot_device.shape[1], scenario.ep))
        np.put_along_axis(self.onehot, pl.slot_device[:, :, None], 1.0, axis=2)
        self.identity_slots = bool(pl.slot_expert.shape[1] == m.moe.num_experts
                                   and (pl.slot_expert == np.arange(m.moe.num_experts)).all()
                                   and (pl.slot_share == 1.0).all())
        self.expert_dtype = gemm_dtype(m.routed_expert_dtype, dt, act_dtype(m))
        prec = scenario.precision
        lidx = np.arange(pl.num_layers)[:, None]
        self.slot_weight_bytes = prec.expert_bytes()[lidx, pl.slot_expert]  # (Lm, J)
        # quantized experts are weight-only: dequantized and computed in the activation dtype
        self.slot_quantized = prec.quantized[lidx, pl.slot_expert] if not prec.uniform_native else None
        self.keep_slots = scenario.offload is not None
        self.attention_on_host = scenario.offload is not None and scenario.offload.config.hybrid.attention == "host"

    @lru_cache(maxsize=64)
    def _attention_time(self, layer_kind: tuple, kv_len: int) -> tuple[float, float]:
        """(attention time, dense FFN time) of one device for a layer kind at a context length."""
        sc, m = self.sc, self.sc.model
        layer, is_moe = layer_kind
        wl = sc.config.workload
        ctx = LayerContext(self.phase, sc.batch_per_replica, wl.seq_len if self.phase == "prefill" else 1,
                           kv_len, sc.tp, int(sc.moe_tokens.max()))
        if self.attention_on_host:
            att = self._host_attention_time(layer, ctx)
        else:
            att = sum(sc.cost.op_time(op) for op in attention_ops(m, layer, ctx, sc.cost.dtypes))
        dense = 0.0 if is_moe else sc.cost.op_time(dense_ffn_op(m, ctx.attn_tokens, sc.tp, sc.cost.dtypes))
        return att, dense

    def _host_attention_time(self, layer: int, ctx: LayerContext) -> float:
        """Attention on the host CPU with the KV cache in host memory (MoE-Lens / Fiddler style):
        the CPU's cost model, plus the layer input going down and the output coming back."""
        off, m = self.sc.offload, self.sc.model
        host = off.host_cost
        compute = sum(host.op_time(op) for op in attention_ops(m, layer, ctx, host.dtypes))
        crossing = ctx.attn_tokens * token_bytes(m, act_dtype(m))
        return compute + 2 * (off.host.latency + crossing / off.host.bandwidth)

    def _layer_kind(self, layer: int) -> tuple:
        att = self.sc.model.attention
        every = getattr(att, "sliding_window_every", 0)
        windowed = bool(getattr(att, "sliding_window", None) and every and layer % every == 0)
        # a representative layer index with the same window flag keeps the cache small
        return (0 if windowed or not every else 1, self.sc.model.is_moe_layer(layer))

    def plan(self, step: int) -> StepPlan:
        sc, m = self.sc, self.sc.model
        n, L = sc.num_devices, m.num_layers
        kv_len = (sc.config.workload.kv_len or 0) + step
        attention = np.zeros((L, n))
        dense = np.zeros((L, n))
        for layer in range(L):
            kind = self._layer_kind(layer)
            a, d = self._attention_time(kind, kv_len if self.phase == "decode" else 0)
            attention[layer] = a
            dense[layer] = d
        moe = self.moe_layers
        attention[moe] += self.router_time
        shared = np.zeros((L, n))
        shared[moe] = self.shared_time

        routing = sc.routing.step(step, sc.moe_tokens, len(moe))
        counts = routing.counts  # (Lm, N, E)
        Lm, ep = len(moe), sc.ep
        pl = sc.placement
        expert_time = np.zeros((L, n))
        dispatch = np.zeros((Lm, n, n))
        rows_dropped = np.zeros(Lm, dtype=np.int64)
        rows_computed = np.zeros((Lm, n))
        active = np.zeros((Lm, n), dtype=np.int64)
        expert_tokens = np.zeros((Lm, m.moe.num_experts), dtype=np.int64)
        onehot, identity = self.onehot, self.identity_slots
        lidx = np.arange(Lm)[:, None]
        kept_tokens: list[np.ndarray] = []
        kept_time: list[np.ndarray] = []
        for g in range(n // ep):
            devs = slice(g * ep, (g + 1) * ep)
            c = counts[:, devs, :]
            cap = None if self.capacity is None else int(self.capacity[g])
            kept = apply_capacity(c, cap)
            rows_dropped += (c.sum(axis=(1, 2)) - kept.sum(axis=(1, 2)))
            expert_tokens += kept.sum(axis=1)
            load = kept.sum(axis=1).astype(float)  # (Lm, E)
            slot_tokens = load[lidx, pl.slot_expert] * pl.slot_share  # (Lm, J)
            flops, mem = ffn_flops_bytes(m, slot_tokens, m.moe.expert_intermediate_size, m.routed_expert_dtype,
                                         self.slot_weight_bytes)
            slot_time = sc.cost.times("gemm", flops, mem, slot_tokens, self.expert_dtype)
            if self.slot_quantized is not None:
                dequant = sc.cost.times("gemm", flops, mem, slot_tokens, act_dtype(m))
                slot_time = np.where(self.slot_quantized, dequant, slot_time)
            if self.keep_slots:
                kept_tokens.append(slot_tokens)
                kept_time.append(slot_time)
            expert_time[moe, devs] = np.einsum("lj,ljd->ld", slot_time, onehot)
            rows_computed[:, devs] = np.einsum("lj,ljd->ld", slot_tokens, onehot)
            active[:, devs] = np.einsum("lj,ljd->ld", (slot_tokens > 0).astype(float), onehot).astype(np.int64)
            if identity:  # slot j holds expert j with all of its tokens
                sent = kept.astype(float)
            else:
                sent = np.take_along_axis(kept, pl.slot_expert[:, None, :], axis=2) * pl.slot_share[:, None, :]
            dispatch[:, devs, devs] = np.matmul(sent, onehot)  # rows (token, expert) from src to dst
        rows_routed = counts.sum(axis=(1, 2))
        return StepPlan(
            step=step, attention=attention, dense_ffn=dense, shared_expert=shared, expert=expert_time,
            tp_bytes=self.tp_bytes,
            dispatch=dispatch * self.dispatch_bytes,
            combine=np.transpose(dispatch, (0, 2, 1)) * self.combine_bytes,
            rows_routed=rows_routed, rows_dropped=rows_dropped, rows_computed=rows_computed,
            experts_active=active, expert_tokens=expert_tokens,
            slot_tokens=np.stack(kept_tokens) if self.keep_slots else None,
            slot_time=np.stack(kept_time) if self.keep_slots else None,
        )
