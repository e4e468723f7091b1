"""Plots and files of `moesim trace stats --out DIR`: load heatmap, imbalance, affinity, drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moesim.reports.html_page import legend_outside, pyplot as _pyplot, save_figure
from moesim.workloads.trace_stats import TraceStats, TraceTally, shares


def plot_load_heatmap(t: TraceTally, path: Path) -> None:
    """Expert load per MoE layer, as a multiple of the uniform share: a diverging scale centred on 1
    (white = the uniform share, red = hotter, blue = colder), so balanced routing reads as white."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    rel = shares(t.layer_counts) * t.meta.num_experts
    half = max(float(np.nanmax(np.abs(rel - 1.0))) if rel.size else 0.0, 0.05)
    fig, ax = plt.subplots(figsize=(min(16, max(6.0, 4 + t.meta.num_experts / 16)),
                                    min(12, max(3.5, 2 + t.meta.num_moe_layers / 6))))
    im = ax.imshow(rel, aspect="auto", cmap="RdBu_r", norm=Normalize(1.0 - half, 1.0 + half), interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer (trace index)")
    ax.set_title("expert load / uniform share (measured from the trace)")
    fig.colorbar(im, ax=ax, label="load / mean load (1 = uniform)")
    save_figure(fig, path)


def plot_imbalance(stats: TraceStats, path: Path) -> None:
    plt = _pyplot()
    df = stats.layers
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(df["moe_layer"], df["max_over_mean"], marker="o", label="max / mean (whole trace)")
    ax.plot(df["moe_layer"], df["step_max_over_mean"], marker=".", label="max / mean (per step, averaged)")
    ax.plot(df["moe_layer"], df["cv"], marker="s", label="coefficient of variation")
    ax.axhline(1.0, color="grey", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("MoE layer (trace index)")
    ax.set_ylabel("imbalance (1 = balanced for max/mean, 0 for CV)")
    ax.set_title("load imbalance per layer (measured from the trace)")
    legend_outside(ax, fontsize="small")
    save_figure(fig, path)


def plot_affinity(t: TraceTally, layer: int, path: Path) -> None:
    """P(expert at layer+1 | expert at layer), rows in expert order."""
    plt = _pyplot()
    cond = shares(t.transitions[layer])
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cond, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel(f"expert at MoE layer {layer + 1}")
    ax.set_ylabel(f"expert at MoE layer {layer}")
    ax.set_title("P(next expert | expert), measured")
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def plot_drift(stats: TraceStats, t: TraceTally, path: Path) -> None:
    """Distance of each step's popularity from the trace mean, and the hot experts' shares."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    per_step = stats.steps.groupby("step")["tv_from_mean"].mean()
    a.plot(per_step.index, per_step.to_numpy(), marker=".")
    a.axhline(float(np.mean(stats.layers["sampling_tv"])) / np.sqrt(2), color="grey", ls="--",
              label="expected from sampling alone")
    a.set_xlabel("step")
    a.set_ylabel("TV distance to the mean popularity")
    a.set_title("popularity drift (mean over layers)")
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
    x = shares(t.step_counts[:, 0, :])
    hot = np.argsort(-x.mean(axis=0))[:8]
    for e in hot:
        b.plot(t.step_ids, x[:, e], label=f"expert {e}")
    b.set_xlabel("step")
    b.set_ylabel("share of assignments")
    b.set_title("hottest experts of MoE layer 0 over steps")
    legend_outside(b, fontsize=7)
    save_figure(fig, path)


def write_stats_dir(stats: TraceStats, t: TraceTally, out: Path) -> list[Path]:
    """stats.json, layers.csv, pairs.csv, steps.csv and the plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "stats.json", out / "layers.csv", out / "pairs.csv", out / "steps.csv"]
    files[0].write_text(json.dumps(stats.summary, indent=2))
    stats.layers.to_csv(files[1], index=False)
    stats.pairs.to_csv(files[2], index=False)
    stats.steps.to_csv(files[3], index=False)
    plots = {"load_heatmap.png": lambda p: plot_load_heatmap(t, p),
             "imbalance.png": lambda p: plot_imbalance(stats, p)}
    L = t.meta.num_moe_layers
    if L > 1:
        for layer in sorted({0, (L - 1) // 2, L - 2}):
            plots[f"affinity_layer{layer}_to_{layer + 1}.png"] = lambda p, layer=layer: plot_affinity(t, layer, p)
    if len(t.step_ids) > 1:
        plots["drift.png"] = lambda p: plot_drift(stats, t, p)
    for name, draw in plots.items():
        draw(out / name)
        files.append(out / name)
    return files
