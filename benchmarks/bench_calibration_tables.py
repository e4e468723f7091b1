"""Calibrate from measured tables (no GPU): fit on part of the shipped H100 measurements and report
the held-out error per kind, against the datasheet profile's.

Three fits, each through `moesim.validation.from_table.calibrate_from_table`:
  real-shapes     `moesim calibrate`'s own table (its splits: random quarter, 1k..4k-token slice
                  and another model's shapes, MoE layers end to end)
  ops.csv         bf16 + fp8 GEMMs (top quarter of token counts, 4096..16384, left out entirely;
                  a random quarter of the rest) and SDPA attention
  bundled         real-shapes + ops.csv attention: how hardware_profiles/devices/h100-sxm-calibrated.yaml
                  is built (`--write` rewrites it and measurements/h100-2026-11-26/measurements.csv)

  H100 GEMMs + fused MoE
                  measurements/h100-2026-11-26-fused: this project's model-shaped GEMMs (Mixtral-8x7B,
                  DeepSeek-V3; fit <= 512 tokens, slice 1k..8k) and its Triton fused MoE layers
                  (1..8192 tokens, all experts and an EP8 slice), timed on an H100 in one session
  fused MoE only  the fused rows of that table alone (issue 17 point 10): fit the fused form on
                  <= 512 tokens, held out a random share and the 1k..8k-token range left out entirely

Usage: python benchmarks/bench_calibration_tables.py [--write]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moesim.hardware_profiles import profile_path
from moesim.validation.from_table import calibrate_from_table

MEASURED = profile_path("devices", "H100-SXM").parent.parent / "measurements" / "h100-2026-11-26"
FUSED = MEASURED.parent / "h100-2026-11-26-fused"


def per_kind(cal) -> None:
    t = cal.table
    held = t[t["split"] != "fit"]
    print(f"{'split':<15} {'kind':<20} {'dtype':<5} {'n':>3} {'datasheet MAPE':>15} {'calibrated MAPE':>16}")
    for (split, kind, dtype), g in held.groupby(["split", "kind", "dtype"], sort=True):
        meas = g["measured_s"].to_numpy()
        rel = np.abs(g["sim_before_s"].to_numpy() / meas - 1)
        before = rel[np.isfinite(rel)].mean() if np.isfinite(rel).any() else np.nan
        after = np.nanmean(np.abs(g["sim_after_s"].to_numpy() / meas - 1))
        b = "n/a (no link)" if np.isnan(before) else f"{before:.1%}"
        print(f"{split:<15} {kind:<20} {dtype:<5} {len(g):>3} {b:>15} {after:>16.1%}")
    val = cal.profile.calibration.validation
    print("overall held-out: " + ", ".join(f"{s} {val[f'{s}_mape_before']:.1%} -> {val[f'{s}_mape_after']:.1%}"
                                           for s in ("holdout_random", "holdout_slice", "e2e")
                                           if f"{s}_mape_after" in val))


def write_bundled(cal) -> None:
    """The bundled profile and its measurements.csv from the `bundled` fit."""
    from moesim.validation.calibrate import write_profile

    shutil.copy(cal.out_dir / "measurements.csv", MEASURED / "measurements.csv")
    spec = cal.profile.calibration.model_copy(update={
        "measurements": "../measurements/h100-2026-11-26/measurements.csv",
        "versions": {**cal.profile.calibration.versions, "driver": "580.159.04"}})
    profile = cal.profile.model_copy(update={"calibration": spec, "notes": cal.profile.notes + (
        " Fitted by moesim.validation.from_table.calibrate_from_table from measurements/h100-2026-11-26 "
        "(real-shapes.csv: bf16 GEMMs, grouped GEMMs, MoE layers, copies; ops.csv: SDPA attention rows); "
        "see PROVENANCE.md there.")})
    cited = "measured: calibrate_from_table on hardware_profiles/measurements/h100-2026-11-26 (see PROVENANCE.md there)"

    def numbers(data: dict, prefix: str):  # every number of the calibration section gets a source line
        for key, value in data.items():
            if isinstance(value, dict):
                yield from numbers(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)) or (isinstance(value, str) and value[:1].isdigit()):
                yield f"{prefix}{key}"

    sources = {**profile.sources, **{k: cited for k in numbers(spec.model_dump(mode="json", exclude_none=True),
                                                              "calibration.")}}
    profile = profile.model_copy(update={"sources": sources})
    path = MEASURED.parent.parent / "devices" / "h100-sxm-calibrated.yaml"
    write_profile(profile, path)
    path.write_text(path.read_text().replace(
        "# Written by `moesim calibrate`: the datasheet profile plus fitted efficiencies.",
        "# The H100-SXM datasheet profile plus efficiencies fitted to H100 measurements of 2026-11-26\n"
        "# (hardware_profiles/measurements/h100-2026-11-26/PROVENANCE.md; rebuilt by "
        "benchmarks/bench_calibration_tables.py --write)."))
    print("wrote", path, "and", MEASURED / "measurements.csv")


def main() -> None:
    write = "--write" in sys.argv
    runs = {"real-shapes (moesim calibrate's table)": [MEASURED / "real-shapes.csv"],
            "ops.csv (bf16 + fp8 GEMMs, attention)": [MEASURED / "ops.csv"],
            "bundled (real-shapes + ops.csv attention)": [MEASURED / "real-shapes.csv",
                                                          (MEASURED / "ops.csv", ["attention"])],
            "H100 GEMMs + fused MoE (one GPU session)": [FUSED / "measurements.csv"],
            "fused MoE only (issue 17 point 10)": [(FUSED / "measurements.csv", ["fused_moe"])]}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, tables) in enumerate(runs.items()):
            t0 = time.perf_counter()
            cal = calibrate_from_table(tables, "H100-SXM", Path(tmp) / str(i), date="2026-11-26")
            took = time.perf_counter() - t0
            print(f"\n== {name}: {len(cal.table)} rows, gemm tile {cal.profile.gemm_tile}, fitted in {took:.1f} s")
            if cal.profile.calibration.moe_kernel is not None:
                print(f"fused MoE floor {cal.profile.calibration.moe_kernel.layer_floor * 1e6:.1f} us")
            per_kind(cal)
            if write and i == 2:
                write_bundled(cal)


if __name__ == "__main__":
    main()
