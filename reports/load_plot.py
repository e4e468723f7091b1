"""Offered against achieved load of a sweep over serving load.

One point per finished point of the sweep, from its table (`sweep.csv` / `sweep.parquet`: the
columns offered_requests_per_s, achieved_requests_per_s, saturated and output_tokens_per_s that
summary.json's metrics.serving gives every serving point; see serving/results.offered_and_achieved):
- left, achieved requests/s against offered requests/s, with the line achieved = offered and the
  saturation threshold (achieved = 90% of offered): a deployment that keeps up sits on the line,
  a saturated one (red) falls under the threshold and stays flat as the offered load grows;
- right, when the table has it, output tokens/s against offered requests/s.
Every value is simulated. Points are labelled with the table's label column (the load, or the
sweep's axis values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import legend_below, legend_outside, pyplot, save_figure

LOAD_PNG = "offered_vs_achieved.png"
OFFERED, ACHIEVED, TOKENS = "offered_requests_per_s", "achieved_requests_per_s", "output_tokens_per_s"
SATURATION_SHARE = 0.9  # serving/results: achieved under 90% of offered is saturated


def load_points(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with both an offered and an achieved rate (finished points only, where the table
    has a status column), sorted by offered rate."""
    if OFFERED not in table or ACHIEVED not in table:
        return table.iloc[:0]
    t = table
    if "status" in t:
        t = t[t["status"] == "ok"]
    offered = pd.to_numeric(t[OFFERED], errors="coerce")
    achieved = pd.to_numeric(t[ACHIEVED], errors="coerce")
    t = t[np.isfinite(offered) & np.isfinite(achieved)]
    return t.sort_values(OFFERED, kind="stable")


LOAD_FIELDS = ("serving.arrivals.rate", "serving.users")  # config fields that set the offered load
SPREAD = 1.1  # offered rates spanning more than this factor make a sweep over load whatever its axes


def is_load_sweep(table: pd.DataFrame, axes: list[str] = ()) -> bool:
    """Whether a sweep varies the offered load: one of its axes sets it (LOAD_FIELDS), or its
    finished points' offered rates span more than SPREAD; at least two points either way."""
    pts = load_points(table)
    if len(pts) < 2:
        return False
    if any(a in LOAD_FIELDS for a in axes):
        return True
    off = pts[OFFERED].to_numpy(dtype=float)
    return bool(off.min() > 0 and off.max() / off.min() > SPREAD)


def offered_vs_achieved(table: pd.DataFrame, out_dir: str | Path, labels: list[str] | None = None,
                        name: str = LOAD_PNG, title: str = "load sweep") -> Path | None:
    """Write the plot (module docstring) and return its path; None when no row has both rates.
    `labels` name the table's rows (default: the `load` column, else the row number)."""
    if labels is None:
        labels = table["load"].astype(str).tolist() if "load" in table else [str(i) for i in range(len(table))]
    by_row = dict(zip(table.index, labels))
    pts = load_points(table)
    if not len(pts):
        return None
    plt = pyplot()
    tokens = TOKENS in pts and pd.to_numeric(pts[TOKENS], errors="coerce").notna().any()
    fig, axes = plt.subplots(1, 2 if tokens else 1, figsize=(13.0 if tokens else 8.0, 5.0), squeeze=False)
    ax = axes[0][0]
    off = pts[OFFERED].to_numpy(dtype=float)
    ach = pts[ACHIEVED].to_numpy(dtype=float)
    sat = (pd.to_numeric(pts["saturated"], errors="coerce").to_numpy(dtype=float) == 1.0
           if "saturated" in pts else np.zeros(len(pts), dtype=bool))
    top = float(max(off.max(), ach.max())) * 1.08 or 1.0
    ax.plot([0, top], [0, top], color="grey", ls="-", lw=1.0, label="achieved = offered")
    ax.plot([0, top], [0, SATURATION_SHARE * top], color="grey", ls=":", lw=1.0,
            label=f"saturation threshold ({SATURATION_SHARE:.0%} of offered)")
    ax.plot(off, ach, color="C0", lw=1.0)
    ax.scatter(off[~sat], ach[~sat], color="C0", zorder=3, label="kept up")
    if sat.any():
        ax.scatter(off[sat], ach[sat], color="#C44E52", zorder=3, label="saturated")
    for i, x, y in zip(pts.index, off, ach):
        ax.annotate(str(by_row.get(i, i)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("offered load (requests/s arriving)")
    ax.set_ylabel("achieved throughput (requests/s finished)")
    ax.set_title("offered against achieved requests/s (simulated)")
    ax.grid(True, alpha=0.3)
    legend_below(ax, ncol=2, offset=-0.14, fontsize="small")
    if tokens:
        right = axes[0][1]
        tok = pd.to_numeric(pts[TOKENS], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(tok)
        right.plot(off[ok], tok[ok], "o-", color="C2")
        if (sat & ok).any():
            right.scatter(off[sat & ok], tok[sat & ok], color="#C44E52", zorder=3, label="saturated")
            legend_outside(right, fontsize="small")
        right.set_xlim(0, top)
        right.set_ylim(0, float(np.nanmax(tok)) * 1.1 or 1.0)
        right.set_xlabel("offered load (requests/s arriving)")
        right.set_ylabel("output tokens/s (all GPUs)")
        right.set_title("output tokens/s against offered load (simulated)")
        right.grid(True, alpha=0.3)
    fig.suptitle(f"{title}: offered against achieved load (simulated)")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out
