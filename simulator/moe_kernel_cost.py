"""Where a device's MoE layer is costed as the kernels that run it (the fused-MoE cost form).

Serving systems (vLLM/SGLang fused_moe, DeepEP + grouped GEMM, TensorRT-LLM) run a device's part of
an MoE layer as a handful of kernels whatever its experts and tokens, so its time is

    t(layer, device) = floor + launch + sum_e max(F_e / (peak x e_c), B_e / (bw x e_m)) + R x b_row / (bw x e_t)

- floor: a fixed per-layer cost (routing top-k, expert alignment, the kernels' launches and
  synchronisation), paid by every device of the EP group in every MoE layer, with or without rows;
- the grouped GEMM: each local expert's gate/up/down work at the `grouped_gemm` efficiency (its own
  compute efficiency per dtype, e.g. fp8 MoE kernels far below fp8 peak), launched once;
- the token term: R routed rows arrive, and outside the GEMMs each is gathered into expert order,
  passed through SiLU-and-multiply and reduced with its gate weight:
  b_row = (hidden_passes x hidden + intermediate_passes x intermediate) x activation bytes,
  at the memory efficiency of kind `moe_tokens`.

`policies.expert_kernel` picks the form (`KernelForm`, named in compose.EXPERT_KERNEL_FORMS): `fused`
(all of the above), `grouped` (one launch, no floor or token term: the earlier model) or
`per_expert` (one launch per expert, a plain `gemm` each: the legacy model). A calibration may carry a fitted `moe_kernel` (floor and passes) that replaces the profile's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.hardware_profiles.schema import MoeKernelSpec
from moesim.simulator.cost_model import CostModel
from moesim.simulator.ops import Op


@dataclass(frozen=True)
class KernelForm:
    """How a device's routed experts of a layer launch: as one grouped GEMM (else one plain GEMM
    per expert, each its own launch), and whether the per-layer floor and token passes are paid."""

    name: str
    grouped: bool
    floor_and_passes: bool
    family: str | None = None  # the device profile's moe_kernels entry; None: its moe_kernel (Triton fused)

    @property
    def kind(self) -> str:
        """The op kind its GEMMs are costed as: a family's own grouped GEMM, the fused one, or a plain GEMM."""
        if not self.grouped:
            return "gemm"
        return "grouped_gemm" if self.family is None else f"grouped_gemm.{self.family}"

    def spec(self, device) -> MoeKernelSpec:
        """The device's floor and passes for this form (a family's entry; else its moe_kernel, or
        the calibration's fit of it)."""
        if self.family is not None:
            if self.family not in device.moe_kernels:
                have = ", ".join(device.moe_kernels) or "none"
                raise KeyError(f"device {device.name} has no moe_kernels.{self.family} entry (its families: {have})")
            return device.moe_kernels[self.family]
        cal = device.calibration
        return cal.moe_kernel if cal is not None and cal.moe_kernel is not None else device.moe_kernel


FUSED = KernelForm("fused", grouped=True, floor_and_passes=True)
CUTLASS_GROUPED = KernelForm("cutlass_grouped", grouped=True, floor_and_passes=True, family="cutlass_grouped")
DEEPGEMM_CONTIGUOUS = KernelForm("deepgemm_contiguous", grouped=True, floor_and_passes=True,
                                 family="deepgemm_contiguous")
DEEPGEMM_MASKED = KernelForm("deepgemm_masked", grouped=True, floor_and_passes=True, family="deepgemm_masked")
GROUPED = KernelForm("grouped", grouped=True, floor_and_passes=False)
PER_EXPERT = KernelForm("per_expert", grouped=False, floor_and_passes=False)


def routed_rows(counts) -> np.ndarray | float:
    """Rows (token, expert) that reach a device: the sum of its local experts' token counts (last
    axis). The token passes are charged on these, in a table fit (`validation/predict.py`) and in
    the engine (`device_rows`, the same count per device of an EP group)."""
    return np.asarray(counts, dtype=float).sum(axis=-1)


def device_rows(slot_tokens: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """(Lm, ep) `routed_rows` of every device: the tokens of the expert copies it holds
    (`onehot[l, j, d]`: device d holds copy j)."""
    return np.einsum("lj,ljd->ld", slot_tokens, onehot)


class MoeKernelCost:
    """Costs the routed-expert part of one device's MoE layer under one kernel form."""

    def __init__(self, cost: CostModel, form: KernelForm, hidden: float | np.ndarray,
                 intermediate: float | np.ndarray, act_bytes: float, act_dtype: str):
        """hidden / intermediate may be arrays (one layer shape per routed-row count: calibration)."""
        self.cost, self.form = cost, form
        self.act_dtype = act_dtype
        self.spec: MoeKernelSpec = form.spec(cost.device)
        self.row_bytes = (self.spec.hidden_passes * hidden + self.spec.intermediate_passes * intermediate) * act_bytes

    @property
    def gemm_kind(self) -> str:
        """The op kind the experts' GEMMs are costed as: one grouped GEMM, or a plain GEMM each."""
        return self.form.kind

    @property
    def floor(self) -> float:
        """Fixed cost of one MoE layer on a device (0 outside the fused form)."""
        return self.spec.layer_floor if self.form.floor_and_passes else 0.0

    def launch(self, active: np.ndarray, dtype: str) -> np.ndarray:
        """Launch overhead of a device's experts: one per active expert (per_expert), else one per
        device that runs any expert."""
        per_op = self.cost.overhead(self.gemm_kind, dtype)
        if not self.form.grouped:
            return active * per_op
        return np.where(active > 0, per_op, 0.0)

    def token_bytes(self, rows: np.ndarray | float) -> np.ndarray:
        """Bytes the routed rows move outside the GEMMs (0 outside the fused form)."""
        scale = self.row_bytes if self.form.floor_and_passes else 0.0
        return np.asarray(rows, dtype=float) * scale

    def token_time(self, rows: np.ndarray | float) -> np.ndarray:
        """Time of the gather, activation and weighted-reduce passes over `rows` routed rows."""
        nbytes = self.token_bytes(rows)
        return self.cost.times("moe_tokens", np.zeros_like(nbytes), nbytes, np.asarray(rows, dtype=float),
                               self.act_dtype)

    def ops(self, rows: float) -> list[Op]:
        """The form's ops beside the GEMMs, as readable rows: the floor and the token passes."""
        if not self.form.floor_and_passes:
            return []
        return [Op("moe_floor", "floor", "expert", 0.0, 0.0, 0.0, self.act_dtype, fixed=self.floor),
                Op("moe_token_passes", "moe_tokens", "expert", 0.0, float(self.token_bytes(rows)), float(rows),
                   self.act_dtype)]

    def fixed_and_tokens(self, rows: np.ndarray) -> np.ndarray:
        """Per device: floor + token term (everything of the form but the GEMMs and their launch)."""
        return self.floor + self.token_time(rows)

    def provenance(self) -> str:
        """Where the floor and the per-row passes come from."""
        if self.form.family is not None:
            return f"datasheet (moe_kernels.{self.form.family})"
        cal = self.cost.device.calibration
        if cal is not None and cal.moe_kernel is not None:
            return "calibrated fit (moe_kernel)"
        return "datasheet (moe_kernel)"
