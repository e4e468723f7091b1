"""TTFT against prompt length of a serving run: one point per request, the TTFT SLO as a line.

From `requests.parquet` (prompt_tokens, ttft_s, warmup, replica): measured requests in colour,
warm-up requests as hollow grey points, requests that never emitted a first token left out (and
counted in the title). The SLO is summary.json's `serving.goodput.slo.ttft_s` where the config
set one: a dashed line when it lies within SLO_IN_SIGHT times the largest TTFT, else named in the
title (a line far above would squash every point against the axis). TTFT includes queueing, so points above the trend of their prompt length waited. The x
axis is the whole prompt, a prefix found cached included. Every value is simulated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import legend_outside, pyplot, save_figure
from moesim.reports.run_report import time_unit

TTFT_PNG = "run-serving-ttft-vs-prompt.png"
LOG_DECADES = 2.0  # TTFTs spanning more decades get a log y axis
SLO_IN_SIGHT = 3.0  # the SLO line is drawn when it is at most this many times the largest TTFT


def ttft_slo(summary: dict | None) -> float | None:
    """The TTFT SLO in seconds from summary.json (metrics.serving.goodput.slo.ttft_s), or None."""
    slo = ((((summary or {}).get("metrics") or {}).get("serving") or {}).get("goodput") or {}).get("slo") or {}
    v = slo.get("ttft_s")
    return float(v) if v is not None and math.isfinite(float(v)) else None


def ttft_vs_prompt(requests: pd.DataFrame, out_dir: str | Path, slo_ttft_s: float | None = None,
                   name: str = TTFT_PNG, run_name: str = "serving run") -> Path:
    """Scatter of TTFT against prompt tokens, one point per request with a first token; the SLO
    as a dashed horizontal line when given. Returns the PNG's path."""
    plt = pyplot()
    ttft = requests["ttft_s"].to_numpy(dtype=float)
    has = np.isfinite(ttft)
    warm = requests["warmup"].to_numpy(dtype=bool) if "warmup" in requests else np.zeros(len(requests), dtype=bool)
    prompt = requests["prompt_tokens"].to_numpy(dtype=float)
    peak = float(ttft[has].max()) if has.any() else 0.0
    # the SLO line is drawn when it lies near the data; far above it, it would squash every point
    slo_drawn = bool(slo_ttft_s) and (peak == 0.0 or slo_ttft_s <= SLO_IN_SIGHT * peak)
    top = max(peak, slo_ttft_s) if slo_drawn else peak
    scale, unit = time_unit(top)
    fig, ax = plt.subplots(figsize=(10.0, 5.0))
    measured = has & ~warm
    if measured.any():
        met = measured & (ttft <= slo_ttft_s) if slo_ttft_s else measured
        ax.scatter(prompt[met], ttft[met] * scale, s=14, color="C0", label=f"measured ({int(met.sum())})"
                   if not slo_ttft_s else f"measured, within the SLO ({int(met.sum())})")
        if slo_ttft_s and (measured & ~met).any():
            miss = measured & ~met
            ax.scatter(prompt[miss], ttft[miss] * scale, s=14, color="#C44E52",
                       label=f"measured, over the SLO ({int(miss.sum())})")
    if (has & warm).any():
        ax.scatter(prompt[has & warm], ttft[has & warm] * scale, s=14, facecolors="none", edgecolors="grey",
                   label=f"warm-up, not in the statistics ({int((has & warm).sum())})")
    if slo_drawn:
        ax.axhline(slo_ttft_s * scale, color="black", ls="--", lw=1.2, label=f"TTFT SLO {slo_ttft_s * scale:.4g} {unit}")
    v = ttft[has]
    log = v.size > 1 and v.min() > 0 and math.log10(v.max() / v.min()) > LOG_DECADES
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0, top=top * scale * 1.08 if top > 0 else 1.0)
    if not has.any():
        ax.text(0.5, 0.5, "no request emitted a first token", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel(f"TTFT ({unit}{', log scale' if log else ''}; queueing and prefill)")
    left = int((~has).sum())
    above = (f"; TTFT SLO {slo_ttft_s * scale:.4g} {unit}, over {SLO_IN_SIGHT:g}x every TTFT, off the scale"
             if slo_ttft_s and not slo_drawn else "")
    ax.set_title(f"{run_name}: time to first token against prompt length (simulated){above}"
                 + (f"; {left} request(s) without a first token not shown" if left else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    if has.any() or slo_drawn:
        legend_outside(ax, fontsize="small")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out
