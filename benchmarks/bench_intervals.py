"""Whether the prediction intervals hold their stated coverage on measured rows (issue 26).

A calibrated profile keeps the held-out residuals of its fit, by op kind
(validation/residuals.py); an interval at level 80% spans their 10th to 90th percentiles
(simulator/prediction_interval.py, which propagates them through a step). Measured here, on the
project's own H100 tables (hardware_profiles/measurements, calibrated as
benchmarks/bench_calibration_tables.py does), per op row:

- leave-one-out: each held-out row's interval from the other held-out rows of its kind (the
  coverage a new row of a kind the calibration covered can expect);
- across splits: intervals from the random held-out rows, tested on the token-range slice left
  out and the end-to-end rows (extrapolation: expect less than the level).

Rows of kinds with fewer than 4 held-out residuals take the pooled residuals. Every figure is a
measurement of the model's error against silicon timings, not a model output.

Run:  python benchmarks/bench_intervals.py [--level 0.8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from moesim.hardware_profiles import profile_path
from moesim.validation.from_table import calibrate_from_table
from moesim.validation.residuals import AS_OP_KIND

MEASURED = profile_path("devices", "H100-SXM").parent.parent / "measurements" / "h100-2026-11-26"
FUSED = MEASURED.parent / "h100-2026-11-26-fused"
MIN_RESIDUALS = 4


def residual_table(cal):
    t = cal.table
    t = t[(t["split"] != "fit") & np.isfinite(t["sim_after_s"]) & (t["sim_after_s"] > 0)].copy()
    t["op_kind"] = t["kind"].map(lambda k: AS_OP_KIND.get(k, k))
    t["r"] = np.log(t["measured_s"] / t["sim_after_s"])
    return t


def inside(r: float, pool: np.ndarray, level: float) -> bool:
    tail = (1 - level) / 2
    lo, hi = np.quantile(pool, [tail, 1 - tail])
    return bool(lo <= r <= hi)


def coverage(t, level: float) -> tuple[dict, dict]:
    """(leave-one-out coverage by kind, random -> slice / e2e coverage by kind): (hits, n) each."""
    loo, cross = {}, {}
    pooled = t["r"].to_numpy()
    for kind, g in t.groupby("op_kind"):
        r = g["r"].to_numpy()
        hits = 0
        for i in range(len(r)):
            others = np.delete(r, i)
            pool = others if others.size >= MIN_RESIDUALS else np.delete(pooled, np.flatnonzero(pooled == r[i])[:1])
            hits += inside(r[i], pool, level)
        loo[kind] = (hits, len(r))
        train = g[g["split"] == "holdout_random"]["r"].to_numpy()
        test = g[g["split"] != "holdout_random"]["r"].to_numpy()
        if test.size:
            pool = train if train.size >= MIN_RESIDUALS else t[t["split"] == "holdout_random"]["r"].to_numpy()
            cross[kind] = (sum(inside(x, pool, level) for x in test), test.size)
    return loo, cross


def show(name: str, table: dict) -> None:
    hits, n = (sum(v[i] for v in table.values()) for i in (0, 1))
    parts = ", ".join(f"{k} {h}/{m}" for k, (h, m) in sorted(table.items()))
    print(f"  {name}: {hits / n:.0%} of {n} rows inside ({parts})" if n else f"  {name}: no rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=float, default=0.8)
    args = parser.parse_args()
    runs = {"bundled H100 calibration (real-shapes + ops.csv attention)": [MEASURED / "real-shapes.csv",
                                                                           (MEASURED / "ops.csv", ["attention"])],
            "ops.csv (bf16 + fp8 GEMMs, attention)": [MEASURED / "ops.csv"],
            "H100 GEMMs + fused MoE (one GPU session)": [FUSED / "measurements.csv"]}
    print(f"prediction intervals at level {args.level:.0%}: share of measured held-out rows inside (measured)")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, tables) in enumerate(runs.items()):
            cal = calibrate_from_table(tables, "H100-SXM", Path(tmp) / str(i), date="2026-11-26")
            t = residual_table(cal)
            loo, cross = coverage(t, args.level)
            print(f"\n== {name}: {len(t)} held-out rows")
            show("leave-one-out", loo)
            show("random split -> slice and e2e rows", cross)


if __name__ == "__main__":
    main()
