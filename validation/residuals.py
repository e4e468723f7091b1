"""Held-out residuals of a calibration, by op kind: what a prediction interval is built from.

A residual is log(measured / predicted) of one held-out row after the fit (the random and slice
held-out splits and end-to-end rows; never the fit split, whose residuals flatter the fit). The
table's kinds become the simulator's op kinds (a Triton grouped GEMM or a fused MoE layer costs
as `grouped_gemm`; `moe_layer` rows are end-to-end composites and are kept apart as `e2e`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: a table's op kind -> the simulator op kind whose cost its residual describes
AS_OP_KIND = {"grouped_gemm_triton": "grouped_gemm", "fused_moe": "grouped_gemm", "moe_layer": "e2e"}
MAX_PER_KIND = 400  # residuals kept per kind in the profile (evenly thinned beyond)


def held_out_residuals(table: pd.DataFrame) -> dict[str, list[float]]:
    """kind -> log(measured / predicted after the fit) of the table's held-out rows (columns
    kind, split, measured_s, sim_after_s), rounded to 1e-5."""
    held = table[(table["split"] != "fit") & np.isfinite(table["sim_after_s"]) & (table["sim_after_s"] > 0)
                 & (table["measured_s"] > 0)]
    out: dict[str, list[float]] = {}
    for kind, g in held.groupby(held["kind"].map(lambda k: AS_OP_KIND.get(k, k)), sort=True):
        r = np.log(g["measured_s"].to_numpy(dtype=float) / g["sim_after_s"].to_numpy(dtype=float))
        if r.size > MAX_PER_KIND:
            r = np.sort(r)[np.linspace(0, r.size - 1, MAX_PER_KIND).round().astype(int)]
        out[str(kind)] = [round(float(x), 5) for x in r]
    return out
