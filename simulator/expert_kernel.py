"""A device's routed experts of one MoE layer on one compute unit, as its MoE kernel runs them.

Each expert copy is costed on the unit's roofline at its token count (weight-only quantized
formats compute in the activation dtype); the kernel form adds its launches and, for `fused`,
the per-layer floor and the token passes (`moe_kernel_cost`). A unit off the accelerator also
takes the device's routed rows over and back (`ComputeUnit.crossing`). With several candidate
units the part's rule (simulator/unit_rules/) says which unit computes each copy; a device's
units then run at once, each costing only its copies (`device_time(on=..., present=...)`).
"""

from __future__ import annotations

import numpy as np

from moesim.simulator.expert_precision import ExpertPrecision
from moesim.simulator.machine import ComputeUnit
from moesim.simulator.moe_kernel_cost import KernelForm, MoeKernelCost, device_rows
from moesim.simulator.ops import act_dtype, ffn_flops_bytes, gemm_dtype, token_bytes
from moesim.units import dtype_bytes
from moesim.workloads.model_spec import ModelSpec


class ExpertKernel:
    """The routed experts of a device's layer on `unit` under kernel form `form`."""

    def __init__(self, model: ModelSpec, unit: ComputeUnit, form: KernelForm, precision: ExpertPrecision,
                 moe_tp: int):
        m = model
        self.model, self.unit, self.form, self.moe_tp = model, unit, form, moe_tp
        self.cost = unit.cost
        self.dtype = m.expert_compute_dtype or gemm_dtype(m.routed_expert_dtype, self.cost.dtypes, act_dtype(m))
        self.moe_kernel = MoeKernelCost(self.cost, form, m.hidden_size, m.moe.expert_intermediate_size / moe_tp,
                                        dtype_bytes(act_dtype(m)), act_dtype(m))
        self.weight_bytes = precision.expert_bytes() / moe_tp  # (Lm, E) bytes of one shard of each expert
        self.quantized = precision.quantized if not precision.uniform_native else None

    def terms(self, slot_tokens: np.ndarray, slot_expert: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(FLOPs, bytes, time without launch overhead, launch overhead) of every expert copy
        (Lm, J) at its token count; each copy computes its shard (1/moe_tp of the intermediate)."""
        m = self.model
        lidx = np.arange(slot_expert.shape[0])[:, None]
        wbytes = self.weight_bytes[lidx, slot_expert]
        flops, mem = ffn_flops_bytes(m, slot_tokens, m.moe.expert_intermediate_size / self.moe_tp,
                                     m.routed_expert_dtype, wbytes)
        kind = self.moe_kernel.gemm_kind
        c, b, o = self.cost.terms(kind, flops, mem, slot_tokens, self.dtype)
        work = np.maximum(c, b)
        if self.quantized is not None:  # weight-only formats compute in the activation dtype
            cq, bq, oq = self.cost.terms(kind, flops, mem, slot_tokens, act_dtype(m))
            q = self.quantized[lidx, slot_expert]
            work, o = np.where(q, np.maximum(cq, bq), work), np.where(q, oq, o)
        return flops, mem, work, o

    def launch(self, active: np.ndarray) -> np.ndarray:
        """Launch overhead of a device's routed experts: one per active expert (per_expert), or one
        per device that runs any expert (grouped and fused: one grouped-GEMM kernel)."""
        return self.moe_kernel.launch(active, self.dtype)

    def crossing(self, rows: np.ndarray) -> np.ndarray:
        """Seconds a device's routed rows take to the unit and back (0 on the accelerator, and
        where no row arrives)."""
        if self.unit.is_accelerator:
            return np.zeros_like(rows, dtype=float)
        nbytes = rows * token_bytes(self.model, act_dtype(self.model))
        return np.where(rows > 0, self.unit.crossing(nbytes), 0.0)

    def total(self, work: np.ndarray, busy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Seconds the unit spends on a device's experts: `work` the copies' summed GEMM time
        (their launches in it for per_expert), `busy` copies with rows, `rows` routed rows; the
        grouped launch and the fused form's floor and token passes added, then the hand-off."""
        total = work
        if self.form.grouped:
            total = total + self.launch(busy)
            if self.form.floor_and_passes:
                total += self.moe_kernel.fixed_and_tokens(rows)
        return total if self.unit.is_accelerator else total + self.crossing(rows)

    def device_time(self, slot_tokens: np.ndarray, slot_expert: np.ndarray, onehot: np.ndarray,
                    on: np.ndarray | None = None, present: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """((Lm, ep) time of each device's experts per layer, its hand-off included; (Lm, J) time
        charged to each copy; (Lm, ep) the hand-off alone); `onehot[l, j, d]` says which device of
        the group holds copy j. With `on` (Lm, J) only those copies run here, and only devices
        `present` (Lm, ep) spend anything (the others' layers do not touch this unit)."""
        _, _, work, overhead = self.terms(slot_tokens, slot_expert)
        slot_time = work if self.form.grouped else work + overhead
        charged, tokens = (slot_time, slot_tokens) if on is None else (slot_time * on, slot_tokens * on)
        rows = device_rows(tokens, onehot)
        busy = np.einsum("lj,ljd->ld", (tokens > 0).astype(float), onehot) if self.form.grouped else None
        total = self.total(np.einsum("lj,ljd->ld", charged, onehot), busy, rows)
        handoff = self.crossing(rows)
        if present is not None:
            total, handoff = np.where(present, total, 0.0), np.where(present, handoff, 0.0)
        return total, slot_time, handoff
