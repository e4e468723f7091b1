"""Costs stage: every compute op of a step on the machine, as readable rows and the arrays the engine replays.

The non-expert ops of a device's layer (attention, router, shared expert, dense FFN, norms,
embedding and LM head) are costed once per distinct shape and cached; routed experts are
costed per expert copy, vectorised. The engine's per-(layer, device) times are sums of exactly
these rows, so the roofline and the tests read the numbers the engine used.

Each part of a layer runs on the compute unit `policies.units` names for it (`UnitChoice`): its
ops are costed with that unit's cost model, and a part off the accelerator pays the crossing of
its activations to the unit and back (`ComputeUnit.crossing`), once per layer; the part's rule
(simulator/unit_rules/: a named unit, fastest, threshold, co_process) picks each op's unit. Norms,
the embedding, the LM head and the router stay on the accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from moesim.simulator.cost_model import CostModel, OpCost
from moesim.simulator.expert_kernel import ExpertKernel
from moesim.simulator.expert_precision import ExpertPrecision
from moesim.simulator.machine import ComputeUnit, Machine
from moesim.simulator.moe_kernel_cost import FUSED, KernelForm
from moesim.simulator.ops import (
    LayerContext,
    Op,
    act_dtype,
    attention_ops,
    dense_ffn_op,
    model_edge_ops,
    norm_ops,
    router_op,
    shared_expert_op,
    token_bytes,
)
from moesim.simulator.step_source import AttentionMix
from moesim.simulator.unit_rules import UnitRule
from moesim.simulator.unit_rules.named import Named
from moesim.workloads.model_spec import ModelSpec


@dataclass(frozen=True)
class OpRow:
    """One op as costed: the op, where it ran (device or host CPU) and its cost."""

    op: Op
    unit: str
    cost: OpCost


@dataclass(frozen=True)
class Crossing:
    """Activations handed to a unit off the accelerator and back, once in a layer's part."""

    unit: str  # the unit's label (op rows)
    time: float


@dataclass(frozen=True)
class LayerOps:
    """The non-expert compute ops of one device's layer, by engine phase."""

    attention: tuple[OpRow, ...]  # attention, norms, router (+ embedding / LM head at the ends)
    dense_ffn: tuple[OpRow, ...]
    shared_expert: tuple[OpRow, ...]
    crossings: tuple[tuple[str, Crossing], ...] = ()  # (phase, crossing) of parts off the accelerator

    def time(self, rows: tuple[OpRow, ...]) -> float:
        return sum(r.cost.time for r in rows)

    def crossing_time(self, phase: str) -> float:
        return sum(c.time for p, c in self.crossings if p == phase)

    @property
    def attention_time(self) -> float:
        return self.time(self.attention) + self.crossing_time("attention")

    @property
    def dense_time(self) -> float:
        return self.time(self.dense_ffn) + self.crossing_time("dense_ffn")

    @property
    def shared_time(self) -> float:
        return self.time(self.shared_expert) + self.crossing_time("shared_expert")

    def unit_split(self, labels: tuple[str, ...]) -> np.ndarray:
        """(2, units, 3): seconds of attention, dense FFN and shared experts on each unit (`labels`
        in machine order), a hand-off counting on the unit it hands to (that unit waits for it);
        then the hand-offs alone."""
        out = np.zeros((2, len(labels), 3))
        index = {label: k for k, label in enumerate(labels)}
        for p, rows in enumerate((self.attention, self.dense_ffn, self.shared_expert)):
            for r in rows:
                out[0, index[r.unit], p] += r.cost.time
        for phase, c in self.crossings:
            k = ("attention", "dense_ffn", "shared_expert").index(phase)
            out[0, index[c.unit], k] += c.time
            out[1, index[c.unit], k] += c.time
        return out


@dataclass(frozen=True)
class UnitChoice:
    """Where each part of a layer runs."""

    attention: UnitRule
    dense_ffn: UnitRule
    shared_expert: UnitRule
    expert: UnitRule

    @classmethod
    def on(cls, unit: ComputeUnit) -> "UnitChoice":
        one = Named((unit,))
        return cls(one, one, one, one)


class StepCosts:
    """Costs a step's ops on a machine for one model and parallelism."""

    def __init__(self, model: ModelSpec, machine: Machine, tp: int, precision: ExpertPrecision, *,
                 expert_kernel: KernelForm = FUSED, small_ops: bool = False, moe_tp: int = 1,
                 units: UnitChoice | None = None, every_token_logits: bool = False):
        """`every_token_logits`: the LM head runs over every token (training: every token is a
        target), not only each sequence's last (inference)."""
        self.model, self.machine, self.tp, self.moe_tp = model, machine, tp, moe_tp
        self.every_token_logits = every_token_logits
        self.cost: CostModel = machine.cost
        self.units = units or UnitChoice.on(machine.accelerator)
        self.expert_kernel = expert_kernel
        self.small_ops = small_ops
        self.precision = precision
        # the routed experts on each candidate unit (one, or every unit under auto)
        self.experts = tuple(ExpertKernel(model, u, expert_kernel, precision, moe_tp) for u in self.units.expert.units)
        self.expert_rule = self.units.expert  # which of `experts` computes each expert copy
        self.unit_labels = tuple(u.label for u in machine.units.values())
        parts = (self.units.attention, self.units.dense_ffn, self.units.shared_expert, self.units.expert)
        # whether any part may run off the accelerator: then plans say how much ran on each unit
        self.splits_units = any(not u.is_accelerator for p in parts for u in p.units)
        self.expert_dtype = self.experts[0].dtype
        self.moe_kernel = self.experts[0].moe_kernel

    # ---- non-expert ops -----------------------------------------------------------------
    def _row(self, op: Op, cost: CostModel | None = None, unit: str = "device") -> OpRow:
        cost = cost or self.cost
        return OpRow(op, unit, cost.op_cost(op))

    def _on_units(self, phase: str, rule: UnitRule, make_ops, tokens: float
                  ) -> tuple[list[OpRow], list[tuple[str, Crossing]]]:
        """A part's ops on the units its rule picks (simulator/unit_rules/), a unit off the
        accelerator paying its activations' hand-off; `make_ops(dtypes)` builds the ops."""
        activation = tokens * token_bytes(self.model, act_dtype(self.model))

        def rows_on(unit: ComputeUnit) -> list[OpRow]:
            return [self._row(op, unit.cost, unit.label) for op in make_ops(unit.cost.dtypes)]

        def handoff(unit: ComputeUnit) -> list[tuple[str, Crossing]]:
            return [] if unit.is_accelerator else [(phase, Crossing(unit.label, unit.crossing(activation)))]

        return rule.part(rows_on, handoff)

    @lru_cache(maxsize=4096)
    def layer_ops(self, layer_kind: tuple, batch: float, seq_len: int, kv_len: int, phase: str,
                  moe_tokens: float) -> LayerOps:
        """Ops of one device's layer for a layer kind (representative layer, is MoE, first, last)."""
        m = self.model
        layer, is_moe, first, last = layer_kind
        ctx = LayerContext(phase, batch, seq_len, kv_len, self.tp)
        u = self.units
        att, crossings = self._on_units("attention", u.attention, lambda dt: attention_ops(m, layer, ctx, dt),
                                        ctx.attn_tokens)
        if self.small_ops:
            att += [self._row(op) for op in norm_ops(m, ctx.attn_tokens, self.cost.dtypes)]
            logits = ctx.attn_tokens if self.every_token_logits else batch
            att += [self._row(op) for op in model_edge_ops(m, ctx.attn_tokens, self.tp, first, last, logits,
                                                             self.cost.dtypes)]
        dense: list[OpRow] = []
        shared: list[OpRow] = []
        if is_moe:
            att.append(self._row(router_op(m, float(moe_tokens))))
            if shared_expert_op(m, float(moe_tokens), self.cost.dtypes) is not None:
                shared, more = self._on_units("shared_expert", u.shared_expert,
                                              lambda dt: [shared_expert_op(m, float(moe_tokens), dt)], float(moe_tokens))
                crossings += more
        else:
            dense, more = self._on_units("dense_ffn", u.dense_ffn,
                                         lambda dt: [dense_ffn_op(m, ctx.attn_tokens, self.tp, dt)], ctx.attn_tokens)
            crossings += more
        return LayerOps(tuple(att), tuple(dense), tuple(shared), tuple(crossings))

    #: ops of a mixed iteration's attention that depend on the prefill / decode split, not just tokens
    _SPLIT_OPS = ("attn_core", "attn_absorb", "kv_up")

    @lru_cache(maxsize=4096)
    def mixed_layer_ops(self, layer_kind: tuple, mix: "AttentionMix", moe_tokens: float) -> LayerOps:
        """Ops of one device's layer in a serving iteration that mixes prefill chunks and decodes.

        Projections, norms, router and FFNs run once over all the iteration's tokens (one weight
        read); the attention core (and MLA's absorb / kv_up) is costed per part: the decodes over
        their mean context, the prefill chunks as causal prefills with the same number of (query,
        key) pairs as the chunks over their cached context (`AttentionMix`)."""
        base = self.layer_ops(layer_kind, mix.tokens, 1, 0, "decode", moe_tokens)
        att = [r for r in base.attention if r.op.name not in self._SPLIT_OPS]
        if mix.prefill_batch:
            part = self.layer_ops(layer_kind, mix.prefill_batch, mix.prefill_seq, 0, "prefill", 0)
            att += [r for r in part.attention if r.op.name in self._SPLIT_OPS]
        if mix.decode_batch:
            part = self.layer_ops(layer_kind, mix.decode_batch, 1, mix.decode_kv, "decode", 0)
            att += [r for r in part.attention if r.op.name in self._SPLIT_OPS]
        return LayerOps(tuple(att), base.dense_ffn, base.shared_expert, base.crossings)

    # ---- routed experts -----------------------------------------------------------------
    def expert_terms(self, slot_tokens: np.ndarray, slot_expert: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(FLOPs, bytes, time without launch overhead, launch overhead) of every expert copy on
        the first expert unit (`ExpertKernel.terms`)."""
        return self.experts[0].terms(slot_tokens, slot_expert)

    def expert_time(self, slot_tokens: np.ndarray, slot_expert: np.ndarray) -> np.ndarray:
        """(Lm, J) GEMM time of every expert copy as the per-expert kernel runs it (with its launch)."""
        _, _, work, overhead = self.expert_terms(slot_tokens, slot_expert)
        return work + overhead
