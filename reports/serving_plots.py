"""Plots of a serving run (`requests.parquet`, the iteration table, `summary.json`'s serving part)
and of a load sweep: latency CDFs, batch size and KV-cache use over time, throughput against latency.

Every function writes one PNG into `out_dir` and returns its path. They read the tables and
summaries as data and never import the simulator. Legends sit outside the plotting area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.reports.cdf_axes import fit_cdf_axis
from moesim.reports.html_page import legend_outside, pyplot, save_figure

LATENCY_PANELS = (
    ("ttft_s", "TTFT (time to first token)"),
    ("tpot_s", "TPOT (time per output token after the first)"),
    ("itl_s", "ITL (gap between consecutive output tokens)"),
    ("e2e_s", "E2E (arrival to last output token)"),
)


def _unit(max_seconds: float) -> tuple[float, str]:
    """Scale and unit for times up to `max_seconds`: seconds from 10 s on, else milliseconds."""
    return (1.0, "s") if max_seconds >= 10.0 else (1e3, "ms")


def measured_latencies(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The samples each latency statistic is taken over: non-warm-up requests; TTFT of every one
    that emitted a first token, TPOT/E2E of the finished ones, and every ITL gap of those pooled."""
    measured = table[~table["warmup"].to_numpy(dtype=bool)]
    done = measured[measured["finished"].to_numpy(dtype=bool)]

    def finite(values) -> np.ndarray:
        v = np.asarray(values, dtype=float).ravel()
        return v[np.isfinite(v)]

    return {
        "ttft_s": finite(measured["ttft_s"]),
        "tpot_s": finite(done["tpot_s"]),
        "itl_s": finite([g for gaps in done["itl_s"] for g in gaps]),
        "e2e_s": finite(done["e2e_s"]),
    }


def latency_cdfs(table: pd.DataFrame, out_dir: str | Path, name: str = "latency_cdf.png",
                 run_name: str = "serving run") -> Path:
    """Empirical CDFs of TTFT, TPOT, ITL and E2E over the measured requests, one panel each, with
    the p50 and p99 marked; each x axis runs over its samples' own range (`cdf_axes.cdf_range`)."""
    plt = pyplot()
    samples = measured_latencies(table)
    fig, axes = plt.subplots(2, 2, figsize=(12.0, 7.5))
    for ax, (key, label) in zip(axes.ravel(), LATENCY_PANELS):
        v = np.sort(samples[key])
        if v.size == 0:
            ax.text(0.5, 0.5, "no measured samples", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(f"{label.split(' ')[0]} (s)")
        else:
            scale, unit = _unit(float(v.max()))
            x = v * scale
            y = np.arange(1, v.size + 1) / v.size
            ax.step(x, y, where="post", color="C0", label=f"{v.size} samples")
            for q, style in ((50, "--"), (99, ":")):
                p = float(np.percentile(x, q))
                ax.axvline(p, color="grey", ls=style, lw=1.2, label=f"p{q} {p:.4g} {unit}")
            log = fit_cdf_axis(ax, x)[2]  # the data's own range (reports/cdf_axes.py), not from 0
            ax.set_xlabel(f"{label.split(' ')[0]} ({unit}{', log scale' if log else ''})")
            legend_outside(ax, fontsize="small")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("share of samples at or below")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{run_name}: latency distributions (simulated, warm-up excluded)")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out


def idle_starts(iterations: pd.DataFrame) -> np.ndarray:
    """Times at which the whole deployment falls idle: the end of every stretch of back-to-back
    iterations (over all replicas) that the next iteration does not start right after, and the end of
    the last one. A replica waiting at the iteration barrier for a slower one is not idle."""
    if not len(iterations):
        return np.zeros(0)
    order = np.argsort(iterations["start_s"].to_numpy(dtype=float), kind="stable")
    start = iterations["start_s"].to_numpy(dtype=float)[order]
    reach = np.maximum.accumulate(iterations["end_s"].to_numpy(dtype=float)[order])  # busy until, so far
    tol = 1e-9 * np.maximum(1.0, np.abs(reach[:-1]))
    gap = start[1:] > reach[:-1] + tol
    return np.append(reach[:-1][gap], reach[-1])


def batch_and_kv(iterations: pd.DataFrame, out_dir: str | Path, name: str = "batch_kv.png",
                 run_name: str = "serving run", max_lines: int = 16) -> Path:
    """Batch size (sequences per iteration) and KV-cache use (share of capacity) against time, one
    line per attention replica (the first `max_lines` replicas drawn when there are more). Both lines
    drop to zero where the whole deployment is idle (`idle_starts`) until the next iteration starts."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11.0, 6.5), sharex=True)
    reps = sorted(iterations["replica"].unique().tolist()) if len(iterations) else []
    scale, unit = _unit(float(iterations["end_s"].max()) if len(iterations) else 0.0)
    peak_kv = 0.0
    idle = idle_starts(iterations)
    for r in reps[:max_lines]:
        g = iterations[iterations["replica"] == r].sort_values("start_s")
        start = g["start_s"].to_numpy(dtype=float)
        cap = g["kv_capacity_tokens"].to_numpy(dtype=float)
        kv = np.divide(g["kv_used_tokens"].to_numpy(dtype=float), cap, out=np.full(cap.shape, np.nan),
                       where=cap > 0) * 100.0
        zeros = idle[idle >= start[0]] if len(start) else idle[:0]
        x = np.concatenate([start, zeros]) * scale
        order = np.argsort(x, kind="stable")
        batch = np.concatenate([g["batch_sequences"].to_numpy(dtype=float), np.zeros(zeros.size)])[order]
        top.step(x[order], batch, where="post", lw=1.0, label=f"replica {r}")
        bottom.step(x[order], np.concatenate([kv, np.zeros(zeros.size)])[order], where="post", lw=1.0,
                    label=f"replica {r}")
        if np.isfinite(kv).any():
            peak_kv = max(peak_kv, float(np.nanmax(kv)))
    if not reps:
        top.text(0.5, 0.5, "no iterations", ha="center", va="center", transform=top.transAxes)
    extra = f" (first {max_lines} of {len(reps)} replicas)" if len(reps) > max_lines else ""
    top.set_ylabel("batch size (sequences)")
    top.set_ylim(bottom=0)
    top.set_title(f"{run_name}: sequences per scheduler iteration (simulated){extra}")
    bottom.set_ylabel("KV cache in use (% of capacity)")
    # the whole capacity when use gets near it, else room above the peak (a tiny use stays visible)
    bottom.set_ylim(0, 105 if peak_kv > 50 else max(peak_kv * 1.25, 1e-3))
    bottom.set_xlabel(f"simulated time ({unit}, iteration start)")
    bottom.set_title(f"KV-cache use per replica (simulated){extra}")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        if reps:
            legend_outside(ax, fontsize="small")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out


def _get(summary: Mapping[str, Any], *keys: str) -> float | None:
    v: Any = summary
    for k in keys:
        if not isinstance(v, Mapping) or v.get(k) is None:
            return None
        v = v[k]
    return float(v)


def throughput_latency(points: Sequence[tuple[str, Mapping[str, Any]]], out_dir: str | Path,
                       name: str = "throughput_latency.png", title: str = "load sweep") -> Path:
    """A load sweep: output tokens/s per GPU against TPOT (left) and TTFT (right), p50 and p99 of
    each, one point per (label, serving summary) in the given order; points whose numbers are
    missing are skipped."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13.0, 5.0))
    for ax, (key, label) in zip(axes, (("tpot_s", "TPOT"), ("ttft_s", "TTFT"))):
        rows = []
        for lab, s in points:
            tput = _get(s, "throughput", "output_tokens_per_s_per_gpu")
            p50, p99 = _get(s, "latency", key, "p50"), _get(s, "latency", key, "p99")
            if tput is not None and (p50 is not None or p99 is not None):
                rows.append((lab, tput, p50, p99))
        if not rows:
            ax.text(0.5, 0.5, "no points with numbers", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(f"{label} (ms)")
        else:
            lat = [v for r in rows for v in r[2:] if v is not None]
            scale, unit = _unit(max(lat))
            for col, q, marker, style in ((2, "p50", "o", "-"), (3, "p99", "s", "--")):
                pts = [(r[col] * scale, r[1]) for r in rows if r[col] is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker=marker, ls=style, label=f"{q} {label}")
            for lab, tput, p50, p99 in rows:
                x = (p50 if p50 is not None else p99) * scale
                ax.annotate(str(lab), (x, tput), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xlabel(f"{label} ({unit})")
            ax.set_xlim(left=0)
            legend_outside(ax, fontsize="small")
        ax.set_ylim(bottom=0, top=max([r[1] for r in rows], default=1.0) * 1.1 or 1.0)  # room for the labels
        ax.set_ylabel("output tokens/s per GPU")
        ax.set_title(f"throughput vs {label} (simulated)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{title}: throughput against latency (simulated, warm-up excluded)")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out


def write_serving_plots(table: pd.DataFrame, iterations: pd.DataFrame, out_dir: str | Path,
                        run_name: str = "serving run") -> list[Path]:
    """The plots of one serving run: latency CDFs, then batch size and KV-cache use."""
    return [latency_cdfs(table, out_dir, run_name=run_name), batch_and_kv(iterations, out_dir, run_name=run_name)]
