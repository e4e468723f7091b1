"""Fit the cost model's efficiencies to measurements, robustly, with a physically shaped form.

Per op kind the simulator costs time = max(F_pad / (peak x e_c), B / (bw x e_m)) + overhead, and
calibration fits

    e_c(rows)  = c_max x rows / (rows + rows_half)     compute efficiency saturating in GEMM rows
    e_m(bytes) = m_max x bytes / (bytes + bytes_half)  memory efficiency saturating in bytes moved
    overhead   = a constant per op (kernel launch, framework dispatch)

Why this form: small-row GEMMs leave compute units idle and small transfers never reach full
bandwidth, and both effects fade as the op grows, so each efficiency rises monotonically to a
ceiling; the ceiling (not the last grid point) governs shapes beyond the grid, so the fit
extrapolates to the plateau instead of running off. The GEMM padding tile is chosen among powers
of two by the same fit (a CPU GEMM pads little, a tensor-core kernel to 64 rows).
The fit minimises soft-L1 residuals of log time (least_squares), so a few outliers (a
preempted rep, a cache effect) do not pull it and small and large ops weigh alike.
Host<->device copies are fitted as latency + bytes / bandwidth on the link.
"""

from __future__ import annotations

import itertools

from dataclasses import dataclass

import numpy as np

from moesim.hardware_profiles.schema import DeviceSpec, KindEfficiency, MoeKernelSpec
from moesim.simulator.cost_model import CalibratedEfficiency, CostModel, profile_efficiency
from moesim.validation.measure import OpSpec
from moesim.validation.predict import Elementary, expand, predict_expanded

MODEL_FORM = ("e_c(rows) = c_max*rows/(rows+rows_half); e_m(bytes) = m_max*bytes/(bytes+bytes_half); "
              "time = max(F_pad/(peak*e_c), B/(bw*e_m)) + overhead; links: latency + bytes/bandwidth")
_LO = np.array([0.01, -1.0, 0.01, 0.0, -8.0])  # c_max, log10 rows_half, m_max, log10 bytes_half, log10 overhead
_HI = np.array([1.0, 4.0, 1.0, 10.0, -1.0])  # efficiencies are fractions of the datasheet peak: at most 1
TILES = (1, 2, 4, 8, 16, 32, 64, 128)
# A weak prior pulls each compute ceiling toward the datasheet efficiency (one extra residual of this
# weight in log space): where the fitted token range never leaves the memory-bound regime the data
# cannot say what the ceiling is, and an unconstrained fit runs off with it (a 0.5x time error at
# 8k tokens, where the datasheet was within 12%); where the data do say, they outweigh it.
PRIOR_WEIGHT = 0.1
PASSES_PRIOR_WEIGHT = 0.03  # the token-pass scale: the rows say it where the experts stay weight-bound


@dataclass
class FitResult:
    kinds: dict[str, KindEfficiency]
    links: dict[str, dict[str, float]]
    gemm_tile: int  # the padding tile that fitted the GEMMs best
    moe_kernel: MoeKernelSpec | None = None  # the fused MoE layer's fitted floor (with the profile's passes)


def _kind_eff(theta: np.ndarray) -> KindEfficiency:
    return KindEfficiency(compute_max=float(theta[0]), rows_half=float(10 ** theta[1]), memory_max=float(theta[2]),
                          bytes_half=float(10 ** theta[3]), overhead=float(10 ** theta[4]))


def calibrated_cost(device: DeviceSpec, kinds: dict[str, KindEfficiency]) -> CostModel:
    return CostModel(device, CalibratedEfficiency(kinds, profile_efficiency(device)))


def _fit_kind(kind: str, specs: list[OpSpec], measured: np.ndarray, device: DeviceSpec, dtype: str, elem: int,
              kinds: dict[str, KindEfficiency]) -> tuple[KindEfficiency, float]:
    """The kind's parameters minimising robust log-time residuals; returns (fit, cost)."""
    ops = expand(specs, elem)  # once: the fit re-costs these arrays under every trial
    return _least_squares_kind(lambda trial: predict_expanded(ops, specs, calibrated_cost(device, {**kinds, kind: trial}),
                                                              dtype, elem), measured, device)


def _least_squares_kind(predict_with, measured: np.ndarray, device: DeviceSpec) -> tuple[KindEfficiency, float]:
    """Fit one kind's efficiency robustly in log time; `predict_with(trial)` gives the predictions
    with that kind's trial parameters. A few starts: the landscape has plateaus."""
    from scipy.optimize import least_squares

    prior = np.log(device.efficiency.compute)

    def residuals(theta: np.ndarray) -> np.ndarray:
        fit = np.log(predict_with(_kind_eff(theta))) - np.log(measured)
        return np.append(fit, PRIOR_WEIGHT * (np.log(theta[0]) - prior))

    start = np.array([device.efficiency.compute, 1.0, device.efficiency.memory, 5.0, np.log10(device.overhead + 1e-7)])
    start = np.clip(start, _LO + 1e-6, _HI - 1e-6)
    best = None
    for rows_half0, bytes_half0 in ((1.0, 5.0), (2.0, 6.5), (0.0, 4.0)):
        x0 = start.copy()
        x0[1], x0[3] = rows_half0, bytes_half0
        res = least_squares(residuals, x0, bounds=(_LO, _HI), loss="soft_l1", f_scale=0.05, max_nfev=300)
        if best is None or res.cost < best.cost:
            best = res
    return _kind_eff(best.x), float(best.cost)


def _fit_link(specs: list[OpSpec], measured: np.ndarray) -> dict[str, float]:
    """latency + bytes / bandwidth, robustly in log time."""
    from scipy.optimize import least_squares

    b = np.array([s.nbytes for s in specs], dtype=float)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(10 ** theta[0] + b / 10 ** theta[1]) - np.log(measured)

    res = least_squares(residuals, np.array([-5.0, 10.0]), bounds=([-8, 6], [-2, 13]), loss="soft_l1", f_scale=0.05)
    return {"latency": float(10 ** res.x[0]), "bandwidth": float(10 ** res.x[1])}


def fit_profile(specs: list[OpSpec], measured: np.ndarray, device: DeviceSpec, dtype: str, elem: int) -> FitResult:
    """Fit every kind the `fit` split measured: one-row GEMMs (GEMV), GEMMs (plain and grouped,
    trying each padding tile and keeping the best), then copies, then host<->device links."""
    measured = np.asarray(measured, dtype=float)
    kinds: dict[str, KindEfficiency] = {}
    tile = device.gemm_tile
    single = [i for i, s in enumerate(specs) if s.kind == "gemm" and s.m == 1 and s.split == "fit"]
    if len(single) >= 2:  # one-row GEMMs run as GEMV kernels: their own fit (the tile does not apply)
        kinds["gemv"] = _fit_kind("gemv", [specs[i] for i in single], measured[single],
                                  device.model_copy(update={"gemm_tile": 1}), dtype, elem, kinds)[0]
    idx = [i for i, s in enumerate(specs) if s.kind in ("gemm", "grouped_gemm") and s.split == "fit"
           and not (s.kind == "gemm" and s.m == 1 and "gemv" in kinds)]
    if idx:
        best = None
        for t in TILES:
            trial = device.model_copy(update={"gemm_tile": t})
            fit, cost = _fit_kind("gemm", [specs[i] for i in idx], measured[idx], trial, dtype, elem, kinds)
            if best is None or cost < best[1] - 1e-12:
                best = (fit, cost, t)
        kinds["gemm"], tile = best[0], best[2]
    device = device.model_copy(update={"gemm_tile": tile})
    idx = [i for i, s in enumerate(specs) if s.kind == "copy" and s.split == "fit"]
    if idx:
        kinds["copy"] = _fit_kind("copy", [specs[i] for i in idx], measured[idx], device, dtype, elem, kinds)[0]
    links = {}
    for kind in ("h2d", "d2h"):
        idx = [i for i, s in enumerate(specs) if s.kind == kind and s.split == "fit"]
        if len(idx) >= 2:
            links[kind] = _fit_link([specs[i] for i in idx], measured[idx])
    moe_kernel = None
    idx = [i for i, s in enumerate(specs) if s.kind == "fused_moe" and s.split == "fit"]
    if len(idx) >= FUSED_PARAMS + 2:
        fused, moe_kernel = fit_fused([TableOp(specs[i], dtype, elem) for i in idx], measured[idx], device, kinds)
        kinds.update(fused)
    return FitResult(kinds, links, tile, moe_kernel)


# --- Fitting from a table of ops in several dtypes, with attention (validation/from_table.py) ---

@dataclass(frozen=True)
class TableOp:
    """One measured op of an external table: an OpSpec in its own dtype, or an attention core
    (kind "attention") with its FLOPs, bytes and rows counted as the engine counts them (ops.py)."""

    spec: OpSpec
    dtype: str = "bf16"  # simulator dtype: bf16 | fp16 | fp8 | fp32 ...
    elem: int = 2  # bytes per element of this op's operands
    flops: float = 0.0  # attention only
    nbytes: float = 0.0  # attention only
    weight_elem: float | None = None  # bytes per expert weight where they differ (fp8 weights, bf16 compute)


class PreparedOps:
    """TableOps expanded once into the simulator's elementary ops, grouped by (dtype, operand bytes,
    weight bytes): a fit re-costs these arrays under each trial efficiency instead of re-expanding
    every spec (hours on a 20k-row fused-MoE table; seconds this way)."""

    def __init__(self, ops: list[TableOp]):
        self.n = len(ops)
        self.groups: list[tuple[np.ndarray, list[OpSpec], Elementary, str, int]] = []
        by: dict[tuple, list[int]] = {}
        attn: list[int] = []
        for i, op in enumerate(ops):
            if op.spec.kind == "attention":
                attn.append(i)
            else:
                by.setdefault((op.dtype, op.elem, op.weight_elem), []).append(i)
        for (dtype, elem, welem), idx in by.items():
            specs = [ops[i].spec for i in idx]
            self.groups.append((np.array(idx), specs, expand(specs, elem, welem), dtype, elem))
        self.attention: list[tuple[np.ndarray, str, np.ndarray, np.ndarray, np.ndarray]] = []
        for dtype in dict.fromkeys(ops[i].dtype for i in attn):
            idx = [i for i in attn if ops[i].dtype == dtype]
            self.attention.append((np.array(idx), dtype, np.array([ops[i].flops for i in idx]),
                                   np.array([ops[i].nbytes for i in idx]), np.array([float(ops[i].spec.m) for i in idx])))

    def subset(self, ops: list[TableOp], idx: list[int]) -> "PreparedOps":
        return PreparedOps([ops[i] for i in idx])

    def predict(self, cost: CostModel, links: dict[str, dict[str, float]] | None = None) -> np.ndarray:
        out = np.full(self.n, np.nan)
        for idx, specs, elementary, dtype, elem in self.groups:
            out[idx] = predict_expanded(elementary, specs, cost, dtype, elem, links)
        for idx, dtype, flops, nbytes, rows in self.attention:
            out[idx] = cost.times("attention", flops, nbytes, rows, dtype)
        return out


def predict_ops(ops: list[TableOp] | PreparedOps, cost: CostModel,
                links: dict[str, dict[str, float]] | None = None) -> np.ndarray:
    """Simulated seconds of every op: OpSpecs by `predict`, grouped by dtype; attention cores as one
    engine `attention` op each."""
    prepared = ops if isinstance(ops, PreparedOps) else PreparedOps(ops)
    return prepared.predict(cost, links)


def _fit_kind_ops(kind: str, ops: list[TableOp], measured: np.ndarray, device: DeviceSpec,
                  kinds: dict[str, KindEfficiency]) -> tuple[KindEfficiency, float]:
    """`_fit_kind` over TableOps (mixed dtypes, attention): same form, starts and loss, the ops
    expanded once."""
    prepared = PreparedOps(ops)
    return _least_squares_kind(lambda trial: prepared.predict(calibrated_cost(device, {**kinds, kind: trial})),
                               measured, device)


MIN_ROWS_PER_DTYPE = 8  # a dtype's GEMMs get their own fit (gemm@fp8) with at least this many fit rows


def fit_table_ops(ops: list[TableOp], measured: np.ndarray, device: DeviceSpec) -> FitResult:
    """`fit_profile` for a table of ops in several dtypes, with attention cores and fused MoE layers.
    With one dtype, no attention and no fused layers it is `fit_profile` itself (same result as
    `moesim calibrate` on that table). Otherwise: GEMV (one-row GEMMs of every dtype); GEMMs and
    grouped GEMMs with one shared curve trying each padding tile, then, for every dtype with enough
    rows, its own curve (`gemm@fp8`: fp8 GEMMs reach another share of their peak than bf16 ones);
    copies, links, `attention`; last the fused MoE layers (`fit_fused`)."""
    measured = np.asarray(measured, dtype=float)
    kinds_of = {(op.dtype, op.elem) for op in ops if op.spec.kind != "attention"}
    simple = not any(op.spec.kind in ("attention", "fused_moe") or op.weight_elem is not None for op in ops)
    if len(kinds_of) <= 1 and simple:
        dtype, elem = next(iter(kinds_of)) if kinds_of else ("bf16", 2)
        return fit_profile([op.spec for op in ops], measured, device, dtype, elem)

    def sel(pred) -> list[int]:
        return [i for i, op in enumerate(ops) if op.spec.split == "fit" and pred(op)]

    kinds: dict[str, KindEfficiency] = {}
    tile = device.gemm_tile
    single = sel(lambda op: op.spec.kind == "gemm" and op.spec.m == 1)
    if len(single) >= 2:
        kinds["gemv"] = _fit_kind_ops("gemv", [ops[i] for i in single], measured[single],
                                      device.model_copy(update={"gemm_tile": 1}), kinds)[0]

    def is_gemm(op: TableOp) -> bool:
        s = op.spec
        return s.kind in ("gemm", "grouped_gemm") and not (s.kind == "gemm" and s.m == 1 and "gemv" in kinds)

    idx = sel(is_gemm)
    if idx:
        best = None
        for t in TILES:
            trial = device.model_copy(update={"gemm_tile": t})
            fit, cost = _fit_kind_ops("gemm", [ops[i] for i in idx], measured[idx], trial, kinds)
            if best is None or cost < best[1] - 1e-12:
                best = (fit, cost, t)
        kinds["gemm"], tile = best[0], best[2]
    device = device.model_copy(update={"gemm_tile": tile})
    dtypes = dict.fromkeys(ops[i].dtype for i in idx)
    if len(dtypes) > 1:
        for dtype in dtypes:
            mine = [i for i in idx if ops[i].dtype == dtype]
            if len(mine) >= MIN_ROWS_PER_DTYPE:
                kinds[f"gemm@{dtype}"] = _fit_kind_ops(f"gemm@{dtype}", [ops[i] for i in mine], measured[mine],
                                                       device, kinds)[0]
    for kind, least in (("copy", 1), ("attention", 3)):
        idx = sel(lambda op, kind=kind: op.spec.kind == kind)
        if len(idx) >= least:
            kinds[kind] = _fit_kind_ops(kind, [ops[i] for i in idx], measured[idx], device, kinds)[0]
    links = {}
    for kind in ("h2d", "d2h"):
        idx = sel(lambda op, kind=kind: op.spec.kind == kind)
        if len(idx) >= 2:
            links[kind] = _fit_link([ops[i].spec for i in idx], measured[idx])
    moe_kernel = None
    idx = sel(lambda op: op.spec.kind == "fused_moe")
    if len(idx) >= FUSED_PARAMS + 2:
        fused_kinds, moe_kernel = fit_fused([ops[i] for i in idx], measured[idx], device, kinds)
        kinds.update(fused_kinds)
    return FitResult(kinds, links, tile, moe_kernel)


# --- The fused MoE layer (simulator/moe_kernel_cost.py) ---

FUSED_NFEV = 60  # per start: converged starts take 30-40; a start that wanders is cut off (it never won)
FUSED_PARAMS = 5  # log10 floor, log10 token-pass scale, and per dtype the grouped GEMM's c_max, log10 rows_half, m_max
MAX_HIDDEN_PASSES, MAX_INTERMEDIATE_PASSES = 8.0, 12.0  # physical bounds on a routed row's passes outside the GEMMs
FUSED_FORM = ("fused MoE layer = floor + grouped launch + sum_e max(F_e/(peak*c_max*rows/(rows+rows_half)), "
              "B_e/(bw*m_max)) + rows*s*(hidden_passes*H + intermediate_passes*I)*act_bytes/(bw*e_copy), "
              "s the fitted token-pass scale")


def fit_fused(ops: list[TableOp], measured: np.ndarray, device: DeviceSpec, kinds: dict[str, KindEfficiency]
              ) -> tuple[dict[str, KindEfficiency], MoeKernelSpec]:
    """Fit the fused MoE layer's form to measured fused layers: the device's layer floor, the
    token passes' coefficient (a scale s on the profile's hidden and intermediate passes per routed
    row, bounded by 0 and MAX_*_PASSES: kernels differ 5-10x in it), and per dtype the grouped
    GEMM's compute ceiling (at most 1), half-saturation rows and memory ceiling (the GEMM fits
    already in `kinds` stay as they are). The passes stream memory like a device copy, at the
    fitted copy efficiency (else the datasheet's). A weak prior holds s near 1 and each compute
    ceiling near the datasheet where the rows cannot tell them apart (both grow with the routed
    rows). The grouped launch is folded into the floor (both are paid once per layer). Robust
    log-time least squares over arrays expanded once."""
    from scipy.optimize import least_squares

    prepared = PreparedOps(ops)
    dtypes = list(dict.fromkeys(op.dtype for op in ops))
    base = device.moe_kernel
    gemm_fit = kinds.get("gemm")
    bytes_half = gemm_fit.bytes_half if gemm_fit is not None else 0.0
    copy = kinds.get("copy")
    tokens = KindEfficiency(compute_max=1.0, rows_half=0.0, bytes_half=copy.bytes_half if copy else 0.0,
                            memory_max=copy.memory_max if copy else device.efficiency.memory, overhead=0.0)

    def unpack(theta: np.ndarray) -> tuple[dict[str, KindEfficiency], MoeKernelSpec]:
        fitted = {"moe_tokens": tokens}
        for j, dtype in enumerate(dtypes):
            c_max, log_half, m_max = theta[2 + 3 * j: 5 + 3 * j]
            fitted[f"grouped_gemm@{dtype}"] = KindEfficiency(compute_max=float(c_max), rows_half=float(10 ** log_half),
                                                             memory_max=float(m_max), bytes_half=bytes_half,
                                                             overhead=0.0)
        scale = float(10 ** theta[1])
        spec = device.moe_kernel.model_copy(update={"layer_floor": float(10 ** theta[0]),
                                                    "hidden_passes": base.hidden_passes * scale,
                                                    "intermediate_passes": base.intermediate_passes * scale})
        return fitted, spec

    def predict_with(theta: np.ndarray) -> np.ndarray:
        fitted, spec = unpack(theta)
        trial = device.model_copy(update={"moe_kernel": spec, "calibration": None})
        return prepared.predict(calibrated_cost(trial, {**kinds, **fitted}))

    prior = np.log([profile_efficiency(device).compute("grouped_gemm", np.ones(1), d) for d in dtypes])

    def residuals(theta: np.ndarray) -> np.ndarray:
        fit = np.log(predict_with(theta)) - np.log(measured)
        return np.concatenate([fit, PRIOR_WEIGHT * (np.log(theta[2::3]) - prior),
                               [PASSES_PRIOR_WEIGHT * np.log(10 ** theta[1])]])

    passes = max(base.hidden_passes / MAX_HIDDEN_PASSES, base.intermediate_passes / MAX_INTERMEDIATE_PASSES)
    top = np.log10(1.0 / passes) if passes > 0 else 0.0  # the scale that reaches a physical bound
    lo = [-7.0, -2.0] + [0.01, -1.0, 0.01] * len(dtypes)
    hi = [-2.0, top] + [1.0, 4.0, 1.0] * len(dtypes)
    best = None
    for (floor0, half0), scale0 in itertools.product(((-4.7, 1.5), (-4.3, 2.5), (-5.0, 0.0)), (0.0, 0.5)):
        x0 = np.array([floor0, scale0] + [device.efficiency.compute, half0, device.efficiency.memory] * len(dtypes))
        x0 = np.clip(x0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)
        res = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05, max_nfev=FUSED_NFEV)
        if best is None or res.cost < best.cost:
            best = res
    return unpack(best.x)
