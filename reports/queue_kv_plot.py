"""Queue length and KV-cache use over time, per attention replica, of a serving run.

From the run directory's tables, every value simulated:
- queue length: requests of the replica that have arrived and not yet been first scheduled
  (`requests.parquet`: arrival_s, first_scheduled_s, replica), a step function exact at every
  arrival and admission; a preempted request waiting again is not counted (the table records
  only its first admission; `preemptions` says how often that happened);
- KV cache held: `iterations.csv`'s kv_used_tokens per iteration of the replica (from its start),
  zero where the whole deployment (or pool) is idle (`serving_plots.idle_starts`), with the
  replica's capacity (kv_capacity_tokens) drawn when use comes within sight of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import legend_outside, pyplot, save_figure
from moesim.reports.run_report import time_unit
from moesim.reports.serving_plots import idle_starts

QUEUE_KV_PNG = "run-serving-queue-kv.png"
MAX_LINES = 16
CAPACITY_IN_SIGHT = 0.25  # draw the capacity line when the peak use reaches this share of it


def _label(key: tuple) -> str:
    pool, replica = key
    return f"{pool} replica {replica}" if pool else f"replica {replica}"


def queue_length(requests: pd.DataFrame) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Per replica ((pool, replica), pool "" for a single pool): (times, queue length from each
    time on). +1 at each arrival, -1 at each first admission; a request never scheduled stays."""
    out: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    if not len(requests):
        return out
    for rep, g in requests.groupby("replica", sort=True):
        arrive = g["arrival_s"].to_numpy(dtype=float)
        sched = g["first_scheduled_s"].to_numpy(dtype=float)
        sched = sched[np.isfinite(sched)]
        t = np.concatenate([arrive, sched])
        d = np.concatenate([np.ones(arrive.size), -np.ones(sched.size)])
        order = np.lexsort((-d, t))  # at one instant, an arrival before its own admission
        times, steps = t[order], np.cumsum(d[order])
        keep = np.append(times[1:] != times[:-1], True)  # the level after every event at one instant
        out[("", int(rep))] = (np.concatenate([[0.0], times[keep]]), np.concatenate([[0.0], steps[keep]]))
    return out


def kv_use(iterations: pd.DataFrame | None) -> dict[tuple, tuple[np.ndarray, np.ndarray, float]]:
    """Per replica ((pool, replica)): (iteration start times, KV tokens held, capacity in tokens)."""
    out: dict[tuple, tuple[np.ndarray, np.ndarray, float]] = {}
    if iterations is None or not len(iterations):
        return out
    pooled = "pool" in iterations
    keys = ["pool", "replica"] if pooled else ["replica"]
    # where the whole deployment (or its pool) is idle, nothing is held
    idle = ({str(p): idle_starts(g) for p, g in iterations.groupby("pool")} if pooled
            else {"": idle_starts(iterations)})
    for key, g in iterations.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        pool, rep = (str(key[0]), int(key[1])) if len(key) == 2 else ("", int(key[0]))
        g = g.sort_values("start_s", kind="stable")
        cap = g["kv_capacity_tokens"].to_numpy(dtype=float)
        start = g["start_s"].to_numpy(dtype=float)
        zeros = idle[pool][idle[pool] >= start[0]]
        t = np.concatenate([start, zeros])
        order = np.argsort(t, kind="stable")
        used = np.concatenate([g["kv_used_tokens"].to_numpy(dtype=float), np.zeros(zeros.size)])[order]
        out[(pool, rep)] = (t[order], used,
                            float(np.nanmax(cap)) if cap.size and np.isfinite(cap).any() else float("nan"))
    return out


def queue_and_kv(requests: pd.DataFrame, iterations: pd.DataFrame | None, out_dir: str | Path,
                 name: str = QUEUE_KV_PNG, run_name: str = "serving run", max_lines: int = MAX_LINES) -> Path:
    """Queue length (top) and KV-cache tokens held (bottom) against simulated time, one line per
    replica (the first `max_lines`); returns the PNG's path."""
    plt = pyplot()
    queues, kv = queue_length(requests), kv_use(iterations)
    if iterations is not None and "pool" in iterations:  # disaggregated: requests name their prefill replica
        queues = {("prefill", rep): v for (_, rep), v in queues.items()}
    end = max([float(t[-1]) for t, _ in queues.values()] + [float(t[-1]) for t, _, _ in kv.values()] + [0.0])
    if iterations is not None and len(iterations):
        end = max(end, float(iterations["end_s"].max()))
    scale, unit = time_unit(end)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11.0, 6.5), sharex=True)
    for i, (key, (t, q)) in enumerate(list(queues.items())[:max_lines]):
        top.step(np.append(t, end) * scale, np.append(q, q[-1]), where="post", lw=1.0, color=f"C{i % 10}",
                 label=_label(key))
    peak_share, caps = 0.0, []
    for i, (key, (t, used, cap)) in enumerate(list(kv.items())[:max_lines]):
        bottom.step(np.append(t, end) * scale, np.append(used, used[-1]) if used.size else used, where="post",
                    lw=1.0, color=f"C{i % 10}", label=_label(key))
        if np.isfinite(cap) and cap > 0 and used.size:
            peak_share = max(peak_share, float(np.nanmax(used)) / cap)
            caps.append(cap)
    cap_note = ""
    if caps and peak_share >= CAPACITY_IN_SIGHT:
        for c in sorted(set(caps)):
            bottom.axhline(c, color="black", ls="--", lw=1.0)
        bottom.plot([], [], color="black", ls="--", lw=1.0, label="KV capacity")
    elif caps:
        cap_note = (f"; capacity {min(caps):,.0f}" + (f" to {max(caps):,.0f}" if max(caps) != min(caps) else "")
                    + f" tokens per replica, peak use {peak_share:.2%} of it")
    extra = lambda n: f" (first {max_lines} of {n} replicas)" if n > max_lines else ""  # noqa: E731
    top.set_ylabel("queue length (requests)")
    top.set_ylim(bottom=0)
    top.set_title(f"{run_name}: requests waiting for admission per replica (simulated){extra(len(queues))}")
    bottom.set_ylabel("KV cache held (tokens)")
    bottom.set_ylim(bottom=0)
    bottom.set_title(f"KV-cache use per replica (simulated){cap_note}{extra(len(kv))}", fontsize=10)
    bottom.set_xlabel(f"simulated time ({unit})")
    for ax, lines in ((top, queues), (bottom, kv)):
        ax.grid(True, alpha=0.3)
        if lines:
            legend_outside(ax, fontsize="small")
        else:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out
