"""The one op-cost function (DESIGN.md "Op cost"), shared by the engine and roofline reports.

    time = max(F_padded / (peak_d x eff_c), B / (bw_d x eff_m)) + overhead_d

F_padded pads a GEMM's token dimension up to the device's tile (a 3-token expert GEMM runs a
full 64-row tile), which is why small token counts run at low efficiency. The efficiencies
come from an `Efficiency` object: constants from the device profile by default, or the models
`moesim calibrate` fitted (saturating in GEMM rows and bytes, with a per-kind launch overhead)
when the profile carries a `calibration` section. Everything is vectorised over numpy arrays so the engine can cost thousands of
expert GEMMs per step in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from moesim.hardware_profiles.schema import DeviceSpec
from moesim.simulator.ops import Op


class Efficiency(Protocol):
    """Achievable fractions of peak compute and memory bandwidth for an op kind, dtype and shape."""

    def compute(self, kind: str, rows: np.ndarray, dtype: str = "bf16") -> np.ndarray | float: ...

    def memory(self, kind: str, nbytes: np.ndarray, dtype: str = "bf16") -> np.ndarray | float: ...


#: kinds launched inside another op's fixed cost (the fused MoE layer's token passes: its floor)
NO_LAUNCH_KINDS = ("moe_tokens",)

#: kinds costed like a GEMM, and the kind each falls back to when a calibration did not fit it
FALLBACK_KIND = {"grouped_gemm": "gemm", "gemv": "gemm"}


def base_kind(kind: str) -> str:
    """A kernel family's op kind (grouped_gemm.deepgemm_masked) as the kind it refines (grouped_gemm)."""
    return kind.split(".", 1)[0]


def fit_keys(kind: str, dtype: str) -> tuple[str, ...]:
    """The calibration keys that may hold an op's fit, most specific first: KIND@DTYPE, KIND, then
    the same for the kind it falls back to (grouped_gemm -> gemm), then any GEMM fit."""
    keys = [f"{kind}@{dtype}", kind]
    if base_kind(kind) != kind:  # a kernel family: then the kind it refines
        kind = base_kind(kind)
        keys += [f"{kind}@{dtype}", kind]
    parent = FALLBACK_KIND.get(kind)
    if parent:
        keys += [f"{parent}@{dtype}", parent]
    if "gemm" not in keys:
        keys += [f"gemm@{dtype}", "gemm"]
    return tuple(keys)


@dataclass(frozen=True)
class ProfileEfficiency:
    """The device profile's default efficiencies, independent of shape (before calibration); a
    grouped GEMM may have its own compute efficiency per dtype (`moe_kernel.compute`)."""

    compute_eff: float
    memory_eff: float
    grouped_compute: tuple[tuple[str, str, float], ...] = ()  # (kind, dtype, efficiency) of grouped GEMMs
    gemv_memory_eff: float | None = None  # single-row GEMMs' weight read (None: memory_eff)

    def compute(self, kind: str, rows: np.ndarray, dtype: str = "bf16") -> float:
        if base_kind(kind) == "grouped_gemm":  # a kernel family's own, else the fused kernel's, else GEMM's
            table = {(k, d): e for k, d, e in self.grouped_compute}
            return table.get((kind, dtype), self.compute_eff if kind != "grouped_gemm" else
                             table.get(("grouped_gemm", dtype), self.compute_eff))
        return self.compute_eff

    def memory(self, kind: str, nbytes: np.ndarray, dtype: str = "bf16") -> float:
        return self.memory_eff

    def family_dtypes(self) -> set[tuple[str, str]]:
        """(kind, dtype) pairs a kernel family's profile entry gives a compute efficiency for."""
        return {(k, d) for k, d, _ in self.grouped_compute if k != "grouped_gemm"}


@dataclass(frozen=True)
class CalibratedEfficiency:
    """Efficiencies fitted by `moesim calibrate`: saturating in GEMM rows and in bytes moved, per op
    kind (and dtype, where fitted apart: `fit_keys`); kinds the calibration did not measure use
    its GEMM fit, else the profile's constants."""

    kinds: dict  # kind or kind@dtype -> KindEfficiency
    fallback: ProfileEfficiency

    def _fit(self, kind: str, dtype: str = "bf16"):
        for key in fit_keys(kind, dtype):
            if key in self.kinds:
                return self.kinds[key]
        return None

    def fitted_key(self, kind: str, dtype: str = "bf16") -> str | None:
        """Which calibration entry costs this kind in this dtype (None: the profile's constants)."""
        return next((k for k in fit_keys(kind, dtype) if k in self.kinds), None)

    @staticmethod
    def _saturating(size: np.ndarray, ceiling: float, half: float) -> np.ndarray:
        x = np.maximum(np.asarray(size, dtype=float), 1.0)
        return ceiling * x / (x + half)

    def compute(self, kind: str, rows: np.ndarray, dtype: str = "bf16") -> np.ndarray | float:
        if base_kind(kind) != kind and (kind, dtype) in self.fallback.family_dtypes():
            return self.fallback.compute(kind, rows, dtype)  # a family's own figure beats a fit of other kernels
        fit = self._fit(kind, dtype)
        return self.fallback.compute(kind, rows, dtype) if fit is None else \
            self._saturating(rows, fit.compute_max, fit.rows_half)

    def memory(self, kind: str, nbytes: np.ndarray, dtype: str = "bf16") -> np.ndarray | float:
        fit = self._fit(kind, dtype)
        return self.fallback.memory(kind, nbytes, dtype) if fit is None else \
            self._saturating(nbytes, fit.memory_max, fit.bytes_half)

    def overhead(self, kind: str, default: float, dtype: str = "bf16") -> float:
        fit = self._fit(kind, dtype)
        return default if fit is None else fit.overhead


@dataclass(frozen=True)
class OpCost:
    """The cost of one op, with the terms that explain it (a roofline row)."""

    time: float
    compute_time: float
    memory_time: float
    overhead: float
    bound: str  # "compute" | "memory" | "overhead" | "none"


class CostModel:
    """Costs ops on one device profile, with optional what-if scaling of its peaks."""

    def __init__(self, device: DeviceSpec, efficiency: Efficiency | None = None,
                 flops_scale: float = 1.0, memory_bandwidth_scale: float = 1.0):
        self.device = device
        profile = profile_efficiency(device)
        if efficiency is None and device.calibration is not None:
            efficiency = CalibratedEfficiency(device.calibration.kinds, profile)
        self.efficiency = efficiency or profile
        self.flops_scale = flops_scale
        self.bandwidth = device.memory.bandwidth * memory_bandwidth_scale

    @property
    def dtypes(self) -> set[str]:
        return set(self.device.compute)

    def peak(self, dtype: str) -> float:
        return self.device.peak_flops(dtype) * self.flops_scale

    def terms(self, kind: str, flops, nbytes, rows=0.0, dtype: str = "bf16"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(compute time, memory time, overhead) arrays; ops with no work cost nothing. With a
        calibration that fitted single-row GEMMs apart (libraries run them as GEMV), rows <= 1
        use that fit."""
        flops = np.asarray(flops, dtype=float)
        nbytes = np.asarray(nbytes, dtype=float)
        rows = np.asarray(rows, dtype=float)
        eff = self.efficiency
        if base_kind(kind) in ("gemm", "grouped_gemm") and isinstance(eff, CalibratedEfficiency) and \
                eff.fitted_key("gemv", dtype) in ("gemv", f"gemv@{dtype}"):
            single = rows <= 1
            if single.any():
                gemv = self._terms("gemv", flops, nbytes, rows, dtype)
                gemm = self._terms(kind, flops, nbytes, rows, dtype)
                return tuple(np.where(single, a, b) for a, b in zip(gemv, gemm))  # type: ignore[return-value]
        terms = self._terms(kind, flops, nbytes, rows, dtype)
        gemv = self._gemv_default(kind, dtype)
        if gemv is not None and (rows <= 1).any():  # a single-row GEMM streams its weights at the GEMV figure
            compute, memory, overhead = terms
            return compute, np.where(rows <= 1, nbytes / (self.bandwidth * gemv), memory), overhead
        return terms

    def _gemv_default(self, kind: str, dtype: str) -> float | None:
        """The profile's GEMV memory efficiency where it applies: a GEMM kind no calibration fitted."""
        eff = self.efficiency
        profile = eff.fallback if isinstance(eff, CalibratedEfficiency) else eff
        if base_kind(kind) not in ("gemm", "grouped_gemm") or getattr(profile, "gemv_memory_eff", None) is None:
            return None
        if isinstance(eff, CalibratedEfficiency) and eff.fitted_key(kind, dtype) is not None:
            return None
        return profile.gemv_memory_eff

    def _terms(self, kind: str, flops: np.ndarray, nbytes: np.ndarray, rows: np.ndarray, dtype: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tile = self.device.gemm_tile
        if kind in ("gemm", "grouped_gemm"):
            padded_rows = np.ceil(rows / tile) * tile
            scale = np.divide(padded_rows, rows, out=np.ones_like(rows * flops), where=rows > 0)
            flops = flops * scale
        compute = flops / (self.peak(dtype) * self.efficiency.compute(kind, rows, dtype))
        memory = nbytes / (self.bandwidth * self.efficiency.memory(kind, nbytes, dtype))
        busy = (flops > 0) | (nbytes > 0)
        overhead = np.where(busy, self.overhead(kind, dtype), 0.0)
        return compute, memory, overhead

    def overhead(self, kind: str, dtype: str = "bf16") -> float:
        """Launch overhead of one kernel of this kind (the calibrated one where the profile has it);
        none for the fused MoE layer's token passes, whose launches its floor holds."""
        if kind in NO_LAUNCH_KINDS:
            return 0.0
        eff = self.efficiency
        return eff.overhead(kind, self.device.overhead, dtype) if hasattr(eff, "overhead") else self.device.overhead

    def speed_of_light(self, flops, nbytes, dtype: str = "bf16") -> np.ndarray:
        """The roofline bound: max(FLOPs / peak, bytes / bandwidth) at 100% efficiency, no overhead."""
        return np.maximum(np.asarray(flops, dtype=float) / self.peak(dtype),
                          np.asarray(nbytes, dtype=float) / self.bandwidth)

    def provenance(self, kind: str, dtype: str = "bf16") -> str:
        """Where an op kind's cost comes from: the profile's datasheet constants, or a calibrated
        fit (with the held-out error the calibration reported)."""
        cal = self.device.calibration
        if cal is None:
            return "datasheet"
        fitted = next((k for k in fit_keys(kind, dtype) if k in cal.kinds), None)
        if fitted is None:
            return "datasheet (not calibrated for this kind)"
        mape = held_out_mape(cal.validation)
        return f"calibrated fit ({fitted}" + (f", held-out MAPE {mape:.1%})" if mape is not None else ")")

    def times(self, kind: str, flops, nbytes, rows=0.0, dtype: str = "bf16") -> np.ndarray:
        """Vectorised op time: max(compute, memory) + overhead, elementwise."""
        compute, memory, overhead = self.terms(kind, flops, nbytes, rows, dtype)
        return np.maximum(compute, memory) + overhead

    def op_cost(self, op: Op) -> OpCost:
        """Cost of one compute op with its explanation (comm ops are costed by the fabric)."""
        if op.kind == "comm":
            raise ValueError(f"{op.name} is communication; the network fabric costs it")
        c, m, o = (float(x) for x in self.terms(op.kind, op.flops, op.bytes, op.rows, op.dtype))
        o += op.fixed
        if c == m == o == 0.0:
            bound = "none"
        elif max(c, m) < o:
            bound = "overhead"
        else:
            bound = "compute" if c >= m else "memory"
        return OpCost(max(c, m) + o, c, m, o, bound)


def profile_efficiency(device: DeviceSpec) -> ProfileEfficiency:
    """The datasheet efficiencies of a device profile (GEMM, memory, grouped GEMM per dtype)."""
    grouped = [("grouped_gemm", d, e) for d, e in device.moe_kernel.compute.items()]
    grouped += [(f"grouped_gemm.{family}", d, e) for family, spec in device.moe_kernels.items()
                for d, e in spec.compute.items()]
    return ProfileEfficiency(device.efficiency.compute, device.efficiency.memory, tuple(sorted(grouped)),
                             device.efficiency.gemv_memory)


def held_out_mape(validation: dict[str, float]) -> float | None:
    """The worst held-out MAPE after calibration a profile's `calibration.validation` reports
    (random, slice and end-to-end splits), or None if it reports none."""
    after = [v for k, v in validation.items() if k.endswith("_mape_after") and not k.startswith("fit")]
    return max(after) if after else None
