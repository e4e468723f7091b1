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
from moesim.validation.predict import Elementary, expand, kernel_form, predict_expanded, quant_cost

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
    moe_kernels: dict[str, MoeKernelSpec] | None = None  # per kernel family (a table's `kernel` column): its fit


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
    kernel: str = ""  # kernel family it ran with (a profile moe_kernels name, grouped, per_expert; "" the default)
    quant: str = ""  # fp8 scaling mode (per_tensor, per_channel, block); part of the fit key with the dtype


class PreparedOps:
    """TableOps expanded once into the simulator's elementary ops, grouped by (dtype, operand bytes,
    weight bytes, kernel, quant): a fit re-costs these arrays under each trial efficiency instead of
    re-expanding every spec (hours on a 20k-row fused-MoE table; seconds this way)."""

    def __init__(self, ops: list[TableOp]):
        self.n = len(ops)
        self.groups: list[tuple[np.ndarray, list[OpSpec], Elementary, str, int, str]] = []
        by: dict[tuple, list[int]] = {}
        attn: list[int] = []
        for i, op in enumerate(ops):
            if op.spec.kind == "attention":
                attn.append(i)
            else:
                by.setdefault((op.dtype, op.elem, op.weight_elem, op.kernel, op.quant), []).append(i)
        for (dtype, elem, welem, kernel, quant), idx in by.items():
            specs = [ops[i].spec for i in idx]
            self.groups.append((np.array(idx), specs, expand(specs, elem, welem, kernel), dtype, elem, quant))
        self.attention: list[tuple[np.ndarray, str, np.ndarray, np.ndarray, np.ndarray]] = []
        for dtype in dict.fromkeys(ops[i].dtype for i in attn):
            idx = [i for i in attn if ops[i].dtype == dtype]
            self.attention.append((np.array(idx), dtype, np.array([ops[i].flops for i in idx]),
                                   np.array([ops[i].nbytes for i in idx]), np.array([float(ops[i].spec.m) for i in idx])))

    def subset(self, ops: list[TableOp], idx: list[int]) -> "PreparedOps":
        return PreparedOps([ops[i] for i in idx])

    def predict(self, cost: CostModel, links: dict[str, dict[str, float]] | None = None) -> np.ndarray:
        out = np.full(self.n, np.nan)
        for idx, specs, elementary, dtype, elem, quant in self.groups:
            out[idx] = predict_expanded(elementary, specs, quant_cost(cost, quant), dtype, elem, links)
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
    simple = not any(op.spec.kind in ("attention", "fused_moe") or op.weight_elem is not None or op.kernel
                     or op.quant for op in ops)
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

    def is_gemm(op: TableOp) -> bool:  # grouped GEMMs of one launch (a kernel family's) fit with their family
        s = op.spec
        return s.kind in ("gemm", "grouped_gemm") and not (s.kind == "gemm" and s.m == 1 and "gemv" in kinds) \
            and not (s.kind == "grouped_gemm" and op.kernel not in ("", "per_expert"))

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
    quants = {d: dict.fromkeys(ops[i].quant for i in idx if ops[i].dtype == d) for d in dtypes}
    if len(dtypes) > 1 or any(len(q) > 1 for q in quants.values()):
        for dtype in dtypes:
            mine = [i for i in idx if ops[i].dtype == dtype]
            if len(mine) >= MIN_ROWS_PER_DTYPE and len(dtypes) > 1:
                kinds[f"gemm@{dtype}"] = _fit_kind_ops(f"gemm@{dtype}", [ops[i] for i in mine], measured[mine],
                                                       device, kinds)[0]
            for quant in quants[dtype] if len(quants[dtype]) > 1 else ():  # each fp8 scaling mode its own
                own = [i for i in mine if ops[i].quant == quant]
                if quant and len(own) >= MIN_ROWS_PER_DTYPE:
                    key = f"gemm@{dtype}/{quant}"
                    kinds[key] = _fit_kind_ops(key, [ops[i] for i in own], measured[own], device, kinds)[0]
    for kind, least in (("copy", 1), ("attention", 3)):
        idx = sel(lambda op, kind=kind: op.spec.kind == kind)
        if len(idx) >= least:
            kinds[kind] = _fit_kind_ops(kind, [ops[i] for i in idx], measured[idx], device, kinds)[0]
    links = {}
    for kind in ("h2d", "d2h"):
        idx = sel(lambda op, kind=kind: op.spec.kind == kind)
        if len(idx) >= 2:
            links[kind] = _fit_link([ops[i].spec for i in idx], measured[idx])
    moe_kernel, families = _fit_families(ops, measured, sel, device, kinds)
    return FitResult(kinds, links, tile, moe_kernel, families)


def family_of(op: TableOp) -> str | None:
    """The kernel family whose fit an op joins: "" the profile's fused kernel (fused_moe rows of no
    kernel, grouped_gemm rows of one `grouped` launch), a moe_kernels name; None: not a family's op."""
    if op.spec.kind == "fused_moe":
        return "" if op.kernel in ("", "fused", "triton_fused", "grouped") else op.kernel
    if op.spec.kind == "grouped_gemm" and op.kernel not in ("", "per_expert"):
        return "" if op.kernel in ("fused", "triton_fused", "grouped") else op.kernel
    return None


def _fit_families(ops: list[TableOp], measured: np.ndarray, sel, device: DeviceSpec,
                  kinds: dict[str, KindEfficiency]) -> tuple[MoeKernelSpec | None, dict[str, MoeKernelSpec]]:
    """Each kernel family's own fit, in place into `kinds`: with enough fused_moe rows the fused
    form (`fit_fused`, the family's grouped-launch GEMM rows with them); with only grouped GEMMs
    of one launch their GEMM efficiency per dtype (and quant). Returns (the default family's fitted
    floor and passes or None, {family: its fitted moe_kernels entry})."""
    moe_kernel, families = None, {}
    for family in dict.fromkeys(family_of(op) for op in ops if family_of(op) is not None):
        idx = sel(lambda op, f=family: family_of(op) == f)
        fused = [i for i in idx if ops[i].spec.kind == "fused_moe"]
        if len(fused) >= FUSED_PARAMS + 2:
            fitted, spec = fit_fused([ops[i] for i in idx], measured[idx], device, kinds, family)
            kinds.update(fitted)
            if family:
                families[family] = spec
            else:
                moe_kernel = spec
        elif len(fused) < len(idx):
            grouped = [i for i in idx if ops[i].spec.kind != "fused_moe"]
            keys = group_keys(kernel_form(family).kind, [(ops[i].dtype, ops[i].quant) for i in grouped])
            for pair, key in keys.items():
                rows = [i for i in grouped if (ops[i].dtype, ops[i].quant) == pair]
                if len(rows) >= 3:
                    kinds[key] = _fit_kind_ops(key, [ops[i] for i in rows], measured[rows], device, kinds)[0]
    return moe_kernel, families


def group_keys(kind: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The calibration key of each (dtype, quant) fit group: KIND@DTYPE, or KIND@DTYPE/QUANT where
    that dtype's rows come in several quant modes (rows of no quant keep KIND@DTYPE)."""
    quants: dict[str, set[str]] = {}
    for dtype, quant in pairs:
        quants.setdefault(dtype, set()).add(quant)
    return {(d, q): f"{kind}@{d}/{q}" if q and len(quants[d]) > 1 else f"{kind}@{d}" for d, q in dict.fromkeys(pairs)}


# --- The fused MoE layer (simulator/moe_kernel_cost.py) ---

FUSED_NFEV = 60  # per start: converged starts take 30-40; a start that wanders is cut off (it never won)
FUSED_PARAMS = 5  # log10 floor, log10 token-pass scale, and per dtype the grouped GEMM's c_max, log10 rows_half, m_max
MAX_HIDDEN_PASSES, MAX_INTERMEDIATE_PASSES = 8.0, 12.0  # physical bounds on a routed row's passes outside the GEMMs
FUSED_FORM = ("fused MoE layer = floor + grouped launch + sum_e max(F_e/(peak*c_max*rows/(rows+rows_half)), "
              "B_e/(bw*m_max)) + rows*s*(hidden_passes*H + intermediate_passes*I)*act_bytes/(bw*e_copy), "
              "s the fitted token-pass scale")


def fit_fused(ops: list[TableOp], measured: np.ndarray, device: DeviceSpec, kinds: dict[str, KindEfficiency],
              family: str = "") -> tuple[dict[str, KindEfficiency], MoeKernelSpec]:
    """Fit the fused MoE layer's form to measured fused layers of one kernel family (`family`: a
    profile `moe_kernels` name; "" the profile's fused kernel, `moe_kernel`): the device's layer
    floor, the token passes' coefficient (a scale s on the family's hidden and intermediate passes
    per routed row, bounded by 0 and MAX_*_PASSES: kernels differ 5-10x in it), and per dtype (and
    fp8 quant mode, where the rows have several: `group_keys`) the family's grouped GEMM's compute
    ceiling (at most 1), half-saturation rows and memory ceiling (the GEMM fits already in `kinds`
    stay as they are). The passes stream memory like a device copy, at the fitted copy efficiency
    (else the datasheet's). A weak prior holds s near 1 and each compute ceiling near the
    datasheet where the rows cannot tell them apart (both grow with the routed rows). The grouped
    launch is folded into the floor (both are paid once per layer). Robust log-time least squares
    over arrays expanded once. A family's fitted entry drops the profile's `compute` figures of the
    dtypes fitted here, so the engine reads the fit (`grouped_gemm.FAMILY@DTYPE`) and not them."""
    from scipy.optimize import least_squares

    prepared = PreparedOps(ops)
    gemm_kind = kernel_form(family).kind
    keys = group_keys(gemm_kind, [(op.dtype, op.quant) for op in ops])
    groups = list(keys)
    fitted_keys = list(dict.fromkeys(keys.values()))
    base = device.moe_kernels[family] if family else device.moe_kernel
    gemm_fit = kinds.get("gemm")
    bytes_half = gemm_fit.bytes_half if gemm_fit is not None else 0.0
    copy = kinds.get("copy")
    tokens = KindEfficiency(compute_max=1.0, rows_half=0.0, bytes_half=copy.bytes_half if copy else 0.0,
                            memory_max=copy.memory_max if copy else device.efficiency.memory, overhead=0.0)
    dtypes = {d for d, _ in groups}
    own = {d: e for d, e in base.compute.items() if d not in dtypes} if family else base.compute

    def unpack(theta: np.ndarray) -> tuple[dict[str, KindEfficiency], MoeKernelSpec]:
        fitted = {"moe_tokens": tokens}
        for j, key in enumerate(fitted_keys):
            c_max, log_half, m_max = theta[2 + 3 * j: 5 + 3 * j]
            fitted[key] = KindEfficiency(compute_max=float(c_max), rows_half=float(10 ** log_half),
                                         memory_max=float(m_max), bytes_half=bytes_half, overhead=0.0)
        for dtype in dtypes:  # several quant modes, none plain: the engine's KIND@DTYPE is the commonest's
            plain = f"{gemm_kind}@{dtype}"
            if plain not in fitted:
                common = max((q for d, q in groups if d == dtype), key=lambda q: sum(
                    op.dtype == dtype and op.quant == q for op in ops))
                fitted[plain] = fitted[keys[(dtype, common)]]
        scale = float(10 ** theta[1])
        spec = base.model_copy(update={"layer_floor": float(10 ** theta[0]),
                                       "hidden_passes": base.hidden_passes * scale,
                                       "intermediate_passes": base.intermediate_passes * scale, "compute": own})
        return fitted, spec

    def trial_device(spec: MoeKernelSpec) -> DeviceSpec:
        if family:
            return device.model_copy(update={"moe_kernels": {**device.moe_kernels, family: spec}, "calibration": None})
        return device.model_copy(update={"moe_kernel": spec, "calibration": None})

    def predict_with(theta: np.ndarray) -> np.ndarray:
        fitted, spec = unpack(theta)
        return prepared.predict(calibrated_cost(trial_device(spec), {**kinds, **fitted}))

    datasheet = profile_efficiency(device)
    prior = np.log([datasheet.compute(gemm_kind, np.ones(1), next(d for (d, _), k in keys.items() if k == key))
                    for key in fitted_keys])

    def residuals(theta: np.ndarray) -> np.ndarray:
        fit = np.log(predict_with(theta)) - np.log(measured)
        return np.concatenate([fit, PRIOR_WEIGHT * (np.log(theta[2::3]) - prior),
                               [PASSES_PRIOR_WEIGHT * np.log(10 ** theta[1])]])

    passes = max(base.hidden_passes / MAX_HIDDEN_PASSES, base.intermediate_passes / MAX_INTERMEDIATE_PASSES)
    top = np.log10(1.0 / passes) if passes > 0 else 0.0  # the scale that reaches a physical bound
    n = len(fitted_keys)
    lo = [-7.0, -2.0] + [0.01, -1.0, 0.01] * n
    hi = [-2.0, top] + [1.0, 4.0, 1.0] * n
    best = None
    for (floor0, half0), scale0 in itertools.product(((-4.7, 1.5), (-4.3, 2.5), (-5.0, 0.0)), (0.0, 0.5)):
        x0 = np.array([floor0, scale0] + [device.efficiency.compute, half0, device.efficiency.memory] * n)
        x0 = np.clip(x0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)
        res = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05, max_nfev=FUSED_NFEV)
        if best is None or res.cost < best.cost:
            best = res
    return unpack(best.x)
