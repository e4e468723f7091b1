"""Simulated-versus-measured error: per op kind and split, before and after calibration.

APE = |simulated - measured| / measured. Reported: MAPE, median and p90 APE, and signed bias (mean
of (simulated - measured) / measured: positive = the simulator is pessimistic), next to the
noise floor, the median run-to-run spread of the measurements themselves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def error_stats(sim: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(sim) & np.isfinite(meas) & (meas > 0)
    rel = (sim[ok] - meas[ok]) / meas[ok]
    if not rel.size:
        return {"n": 0, "mape": np.nan, "median_ape": np.nan, "p90_ape": np.nan, "bias": np.nan}
    ape = np.abs(rel)
    return {"n": int(rel.size), "mape": float(ape.mean()), "median_ape": float(np.median(ape)),
            "p90_ape": float(np.percentile(ape, 90)), "bias": float(rel.mean())}


def error_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per (split, kind) and per split overall: error before and after, and the noise floor.

    `df` needs columns split, kind, measured_s, spread, sim_before_s, sim_after_s."""
    rows = []
    groups = [((split, kind), g) for (split, kind), g in df.groupby(["split", "kind"], sort=False)]
    groups += [((split, "all"), g) for split, g in df.groupby("split", sort=False)]
    for (split, kind), g in groups:
        before = error_stats(g["sim_before_s"].to_numpy(), g["measured_s"].to_numpy())
        after = error_stats(g["sim_after_s"].to_numpy(), g["measured_s"].to_numpy())
        rows.append({"split": split, "kind": kind, "n": after["n"],
                     **{f"before_{k}": v for k, v in before.items() if k != "n"},
                     **{f"after_{k}": v for k, v in after.items() if k != "n"},
                     "noise_floor": float(g["spread"].median())})
    return pd.DataFrame(rows)
