"""Simulated time of a measured op: expand it into the elementary ops the simulator costs, then sum.

A GEMM is one `gemm` op; a grouped GEMM one `gemm` per non-empty group (as the engine costs each
expert); a device copy one `copy` op. A whole MoE layer is composed the way the torch layer runs:
the router GEMM and its softmax/top-k passes, the permutation, per expert the gate, up and down
GEMMs, the SwiGLU elementwise passes and the unpermute; Python interpreter time between kernels
is not an op and is not predicted. A `fused_moe` (one fused MoE kernel path, as serving runs it) is
the engine's fused form (simulator/moe_kernel_cost.py): the layer floor, one grouped-GEMM launch,
per live expert its gate/up/down work at the `grouped_gemm` efficiency, and the token passes over
the m x top_k routed rows. Host<->device copies use the fitted link (or the datasheet link).

A row's `kernel` (validation/from_table.py) says which kernel family ran it: a fused_moe row of
family F is the engine's fused form of that family (its floor and passes from the profile's
`moe_kernels.F`, its GEMMs at kind `grouped_gemm.F`, as `KernelForm(family=F)` costs them); a
grouped_gemm row of kernel `grouped` (or a family) is one launch of the `grouped_gemm` (or
`grouped_gemm.F`) kind over its experts, of `per_expert` (or none) one `gemm` per expert, each
launched. A row's `quant` (fp8 scaling mode) selects the calibration's KIND@DTYPE/QUANT fits
where the calibration has them (`quant_cost`).

`expand` runs once per set of specs; a fit then re-costs the same `Elementary` arrays under every
trial efficiency (`predict_expanded`), so a 20k-row table fits in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.cost_model import CalibratedEfficiency, CostModel
from moesim.simulator.moe_kernel_cost import FUSED, KernelForm, MoeKernelCost, routed_rows
from moesim.validation.measure import OpSpec


@dataclass
class Elementary:
    """Flattened elementary ops of many measured ops; `owner[i]` says which measured op op i belongs
    to. `fused` rows (per live expert of a fused_moe) carry no launch each: their spec pays one
    grouped launch, the layer floor and the token passes over `fused_rows[spec]` routed rows."""

    kind: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray
    rows: np.ndarray
    owner: np.ndarray
    fused_rows: np.ndarray  # (specs,) routed rows of each fused_moe spec, NaN for other specs
    specs: int = 0
    hidden: np.ndarray | None = None  # (specs,) of fused_moe specs: hidden, intermediate (token passes)
    inter: np.ndarray | None = None
    kernel: str = ""  # the kernel family (or grouped / per_expert) every spec here ran with; "" the default
    launched: np.ndarray | None = None  # (specs,) grouped_gemm specs of one launch (kernel grouped or a family)
    _kinds: list | None = None

    @property
    def gemm_kind(self) -> str:
        """The op kind the experts' GEMMs are costed as (`KernelForm.kind`)."""
        return kernel_form(self.kernel).kind

    def by_kind(self) -> list[tuple[str, np.ndarray]]:
        """(kind, row indices) of every elementary kind, found once (a fit asks thousands of times)."""
        if self._kinds is None:
            self._kinds = [(str(k), np.flatnonzero(self.kind == k)) for k in np.unique(self.kind)]
        return self._kinds


def kernel_form(kernel: str) -> KernelForm:
    """The engine's kernel form of a table row's `kernel`: "" (or fused / triton_fused) the
    profile's fused kernel, `grouped` / `per_expert` those forms, any other name the profile's
    `moe_kernels` family of that name (floor, passes and GEMM kind `grouped_gemm.NAME`)."""
    if kernel in ("", "fused", "triton_fused"):
        return FUSED
    if kernel == "grouped":
        return KernelForm("grouped", grouped=True, floor_and_passes=False)
    if kernel == "per_expert":
        return KernelForm("per_expert", grouped=False, floor_and_passes=False)
    return KernelForm(kernel, grouped=True, floor_and_passes=True, family=kernel)


def quant_cost(cost: CostModel, quant: str) -> CostModel:
    """`cost` with a calibration's KIND@DTYPE/QUANT fits in place of its KIND@DTYPE ones (one
    fp8 scaling mode's own fit); `cost` itself where it has none for `quant`."""
    eff = cost.efficiency
    if not quant or not isinstance(eff, CalibratedEfficiency):
        return cost
    suffix = "/" + quant
    mine = {k[:-len(suffix)]: v for k, v in eff.kinds.items() if k.endswith(suffix)}
    if not mine:
        return cost
    return CostModel(cost.device, CalibratedEfficiency({**eff.kinds, **mine}, eff.fallback), cost.flops_scale,
                     cost.bandwidth / cost.device.memory.bandwidth)


def expand(specs: list[OpSpec], elem: int, weight_elem: float | None = None, kernel: str = "") -> Elementary:
    """The elementary ops of `specs` (operands of `elem` bytes; expert weights of `weight_elem`
    bytes when they differ, e.g. fp8 weights under bf16 activations), all run with `kernel`."""
    kind, flops, nbytes, rows, owner = [], [], [], [], []
    fused_rows = np.full(len(specs), np.nan)
    hidden, inter = np.zeros(len(specs)), np.zeros(len(specs))
    launched = np.zeros(len(specs), dtype=bool)
    welem = elem if weight_elem is None else weight_elem
    one_launch = kernel_form(kernel).grouped and kernel not in ("", "fused", "triton_fused")

    def gemm(i: int, m: float, k: int, n: int) -> None:
        if m > 0:
            kind.append("gemm")
            flops.append(2.0 * m * k * n)
            nbytes.append(float((m * k + k * n + m * n) * elem))
            rows.append(float(m))
            owner.append(i)

    def copy(i: int, b: float) -> None:
        kind.append("copy")
        flops.append(0.0)
        nbytes.append(float(b))
        rows.append(0.0)
        owner.append(i)

    for i, s in enumerate(specs):
        if s.kind == "gemm":
            gemm(i, s.m, s.k, s.n)
        elif s.kind in ("grouped_gemm", "grouped_gemm_triton") and one_launch:  # one grouped launch
            for c in s.counts:
                if c > 0:
                    kind.append("grouped")
                    flops.append(2.0 * c * s.k * s.n)
                    nbytes.append(float((c * s.k + s.k * s.n + c * s.n) * elem))
                    rows.append(float(c))
                    owner.append(i)
            launched[i] = any(c > 0 for c in s.counts)
        elif s.kind in ("grouped_gemm", "grouped_gemm_triton"):
            for c in s.counts:
                gemm(i, c, s.k, s.n)
        elif s.kind == "copy":
            copy(i, 2.0 * s.nbytes)
        elif s.kind == "fused_moe":  # the engine's expert op per live expert (ops.ffn_flops_bytes)
            for c in s.counts:
                if c > 0:
                    kind.append("fused")
                    flops.append(6.0 * c * s.k * s.n)
                    nbytes.append(3.0 * s.k * s.n * welem + c * (2 * s.k + 3 * s.n) * elem)
                    rows.append(float(c))
                    owner.append(i)
            fused_rows[i] = float(routed_rows(s.counts))  # the rows that reach the device, as the engine counts
            hidden[i], inter[i] = s.k, s.n
        elif s.kind == "moe_layer":  # the kernels the torch GroupedMoE forward launches, in order
            rows_routed = s.m * s.top_k
            gemm(i, s.m, s.k, s.experts)  # router logits
            for b in (2 * s.m * s.experts * 4, s.m * s.experts * 4, 2 * rows_routed * 4, 2 * rows_routed * 4):
                copy(i, b)  # softmax, top-k, renormalise (sum, divide)
            for b in (2 * rows_routed * 8, 2 * rows_routed * 8, 2 * rows_routed * 8):
                copy(i, b)  # argsort, bincount, row index
            copy(i, 2.0 * rows_routed * s.k * elem)  # permute: gather the routed rows
            live = [c for c in s.counts if c > 0]
            for width_in, width_out in ((s.k, s.n), (s.k, s.n), (s.n, s.k)):  # gate, up, down grouped GEMMs
                for c in live:
                    gemm(i, c, width_in, width_out)
                copy(i, 2.0 * rows_routed * width_out * elem)  # concatenating the groups' outputs
            copy(i, 2.0 * rows_routed * s.n * elem)  # silu(gate)
            copy(i, 3.0 * rows_routed * s.n * elem)  # * up
            copy(i, 2.0 * rows_routed * 8)  # inverse permutation
            copy(i, 2.0 * rows_routed * s.k * elem)  # unpermute: gather back
            copy(i, 2.0 * rows_routed * s.k * 4)  # weight by the gates (fp32)
            copy(i, (rows_routed + s.m) * s.k * 4)  # sum the k outputs
            copy(i, 2.0 * s.m * s.k * elem)  # cast back
        # h2d / d2h are costed from the link, not the device (see predict)
    return Elementary(np.array(kind), np.array(flops), np.array(nbytes), np.array(rows),
                      np.array(owner, dtype=int), fused_rows, len(specs), hidden, inter, kernel, launched)


def predict_expanded(ops: Elementary, specs: list[OpSpec], cost: CostModel, dtype: str, elem: int,
                     links: dict[str, dict[str, float]] | None = None) -> np.ndarray:
    """`predict` on specs already expanded (the fit's inner loop)."""
    out = np.zeros(ops.specs)
    gemm_kind = ops.gemm_kind
    for kind, sel in ops.by_kind():
        if kind in ("fused", "grouped"):  # the experts of one grouped launch: their work, no launch each
            c, m, _ = cost.terms(gemm_kind, ops.flops[sel], ops.nbytes[sel], ops.rows[sel], dtype)
            t = np.maximum(c, m)
        else:
            t = cost.times(str(kind), ops.flops[sel], ops.nbytes[sel], ops.rows[sel], dtype)
        out += np.bincount(ops.owner[sel], weights=t, minlength=ops.specs)
    fused = np.flatnonzero(np.isfinite(ops.fused_rows))
    if fused.size:
        out[fused] += fused_fixed(cost, ops.fused_rows[fused], ops.hidden[fused], ops.inter[fused], dtype,
                                  kernel_form(ops.kernel))
    if ops.launched is not None and ops.launched.any():
        out[ops.launched] += cost.overhead(gemm_kind, dtype)
    for i, s in enumerate(specs):
        if s.kind in ("h2d", "d2h"):
            link = (links or {}).get(s.kind)
            out[i] = link["latency"] + s.nbytes / link["bandwidth"] if link else np.nan
    return out


def fused_fixed(cost: CostModel, rows: np.ndarray, hidden: np.ndarray, inter: np.ndarray, dtype: str,
                form: KernelForm = FUSED) -> np.ndarray:
    """Everything of a fused MoE layer but its experts' work: the floor, one grouped-GEMM launch and
    the token passes over `rows` routed rows (the engine's `MoeKernelCost` of `form`, over arrays
    of shapes)."""
    act = dtype if dtype in ("bf16", "fp16", "fp32") else "bf16"  # fp8 GEMMs: 16-bit activations between them
    kernel = MoeKernelCost(cost, form, hidden, inter, 4 if act == "fp32" else 2, act)
    return kernel.fixed_and_tokens(rows) + kernel.launch(np.ones_like(rows), dtype)


def predict(specs: list[OpSpec], cost: CostModel, dtype: str, elem: int,
            links: dict[str, dict[str, float]] | None = None, weight_elem: float | None = None,
            kernel: str = "") -> np.ndarray:
    """Simulated seconds of every spec under `cost` (NaN where it cannot say, e.g. an unfitted link)."""
    return predict_expanded(expand(specs, elem, weight_elem, kernel), specs, cost, dtype, elem, links)
