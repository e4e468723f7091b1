"""Per-request timeline of a serving run: a Gantt chart of queueing, prefill chunks and decode.

Drawn from the run directory's `requests.parquet` (arrival, first scheduled, TTFT, the ITL gaps,
replica) and `iterations.csv` (every scheduler iteration per replica, its prefill tokens), so
every bar is a simulated time:
- queueing: arrival to first scheduled (first admitted by its replica's scheduler);
- prefill chunks: from first scheduled to the first output token, one bar per iteration of the
  request's replica that ran prefill tokens in that span (with chunked prefill a long prompt
  spans several iterations); the tables do not record which requests shared an iteration's
  prefill tokens, so a chunk bar is an iteration of the replica during the request's prefill;
- decode: first output token to the last one emitted (up to the horizon for an unfinished
  request). A preempted request's re-queueing lies inside its prefill or decode bar.
In a disaggregated run the prefill chunks are the prefill pool's iterations (`pool = prefill`)
and the decode bar includes the KV transfer to the decode pool.

Rows are grouped by replica. At most `MAX_REQUESTS` requests are drawn: the first ones by
arrival after the warm-up (earlier ones only when too few follow it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import legend_outside, pyplot, save_figure
from moesim.reports.run_report import time_unit

TIMELINE_PNG = "run-serving-timeline.png"
MAX_REQUESTS = 48
KINDS = {  # kind -> (colour, legend label)
    "queue": ("#C8C8C8", "queueing (arrival to first scheduled)"),
    "prefill": ("#DD8452", "prefill chunk (an iteration of its replica with prefill tokens)"),
    "decode": ("#4C72B0", "decode (first to last output token)"),
}
BAR_COLUMNS = ["request_id", "replica", "kind", "start_s", "end_s"]


def chosen_requests(requests: pd.DataFrame, max_requests: int = MAX_REQUESTS) -> pd.DataFrame:
    """The requests drawn: by arrival (ties by id), the first `max_requests` from the first
    measured (non-warm-up) one on, moving the window earlier when fewer follow it."""
    t = requests.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)
    if len(t) <= max_requests:
        return t
    warm = t["warmup"].to_numpy(dtype=bool) if "warmup" in t else np.zeros(len(t), dtype=bool)
    first = int(np.argmax(~warm)) if (~warm).any() else 0
    first = min(first, len(t) - max_requests)
    return t.iloc[first:first + max_requests].reset_index(drop=True)


def _prefill_iterations(iterations: pd.DataFrame | None) -> pd.DataFrame:
    if iterations is None or not len(iterations):
        return pd.DataFrame(columns=["replica", "start_s", "end_s"])
    it = iterations[iterations["prefill_tokens"].to_numpy(dtype=float) > 0]
    if "pool" in it:
        it = it[it["pool"].astype(str) != "decode"]
    return it


def _horizon(requests: pd.DataFrame, iterations: pd.DataFrame | None) -> float:
    ends = [float(iterations["end_s"].max())] if iterations is not None and len(iterations) else []
    for col in ("finish_s", "arrival_s"):
        if col in requests and requests[col].notna().any():
            ends.append(float(requests[col].max()))
    return max(ends) if ends else 0.0


def timeline_bars(requests: pd.DataFrame, iterations: pd.DataFrame | None,
                  max_requests: int = MAX_REQUESTS) -> pd.DataFrame:
    """The bars of the timeline (BAR_COLUMNS), request by request in the order drawn (by replica,
    then arrival): its queueing bar (when it waited), its prefill chunks, its decode bar (when it
    emitted a second token)."""
    chosen = chosen_requests(requests, max_requests)
    chosen = chosen.sort_values(["replica", "arrival_s", "request_id"], kind="stable")
    chunks = _prefill_iterations(iterations)
    by_replica = {int(r): g.sort_values("start_s") for r, g in chunks.groupby("replica")} if len(chunks) else {}
    horizon = _horizon(requests, iterations)
    rows: list[tuple] = []
    for r in chosen.itertuples(index=False):
        rid, rep, arrival = int(r.request_id), int(r.replica), float(r.arrival_s)
        sched, ttft = float(r.first_scheduled_s), float(r.ttft_s)
        first_token = arrival + ttft if np.isfinite(ttft) else np.nan
        tol = 1e-12 * max(1.0, abs(horizon))
        queue_end = sched if np.isfinite(sched) else horizon
        if queue_end > arrival + tol:
            rows.append((rid, rep, "queue", arrival, queue_end))
        if np.isfinite(sched):
            end = first_token if np.isfinite(first_token) else horizon
            g = by_replica.get(rep)
            drawn = 0
            if g is not None:
                s, e = g["start_s"].to_numpy(dtype=float), g["end_s"].to_numpy(dtype=float)
                hit = (s < end - tol) & (e > sched + tol)
                for a, b in zip(np.maximum(s[hit], sched), np.minimum(e[hit], end)):
                    rows.append((rid, rep, "prefill", float(a), float(b)))
                    drawn += 1
            if not drawn and end > sched + tol:  # no iteration table rows for it: the span as one bar
                rows.append((rid, rep, "prefill", sched, end))
        gaps = np.asarray(r.itl_s if r.itl_s is not None else [], dtype=float)
        if np.isfinite(first_token) and gaps.size:
            rows.append((rid, rep, "decode", first_token, first_token + float(gaps.sum())))
    return pd.DataFrame(rows, columns=BAR_COLUMNS)


def request_timeline(requests: pd.DataFrame, iterations: pd.DataFrame | None, out_dir: str | Path,
                     name: str = TIMELINE_PNG, run_name: str = "serving run",
                     max_requests: int = MAX_REQUESTS) -> Path:
    """Write the Gantt chart of `timeline_bars` (one row per request, grouped by replica) to
    out_dir/name and return its path."""
    plt = pyplot()
    bars = timeline_bars(requests, iterations, max_requests)
    shown = chosen_requests(requests, max_requests).sort_values(["replica", "arrival_s", "request_id"],
                                                                kind="stable")
    n = len(shown)
    fig, ax = plt.subplots(figsize=(12.0, max(3.0, 1.4 + 0.22 * n)))
    row_of = {int(rid): i for i, rid in enumerate(shown["request_id"].tolist())}
    scale, unit = time_unit(float(bars["end_s"].max()) if len(bars) else 0.0)
    for kind, (color, label) in KINDS.items():
        b = bars[bars["kind"] == kind]
        if not len(b):
            continue
        y = b["request_id"].map(row_of).to_numpy(dtype=float)
        start = b["start_s"].to_numpy(dtype=float) * scale
        width = (b["end_s"] - b["start_s"]).to_numpy(dtype=float) * scale
        ax.barh(y, width, left=start, height=0.7, color=color, edgecolor="white" if kind == "prefill" else color,
                linewidth=0.6, label=label)
    reps = shown["replica"].to_numpy(dtype=int)
    for i in np.flatnonzero(np.diff(reps)) if n else []:
        ax.axhline(i + 0.5, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(n))
    warm = shown["warmup"].to_numpy(dtype=bool) if "warmup" in shown else np.zeros(n, dtype=bool)
    ax.set_yticklabels([f"replica {p}, request {q}" + (" (warm-up)" if w else "")
                        for p, q, w in zip(reps, shown["request_id"].tolist(), warm)], fontsize=7 if n > 24 else 8)
    ax.set_ylim(n - 0.5, -0.5)
    if not n:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("request (grouped by replica, by arrival)")
    total = len(requests)
    which = f"{n} of {total} requests" if n < total else f"all {total} requests"
    ax.set_title(f"{run_name}: per-request timeline, {which} (simulated)")
    ax.grid(True, axis="x", alpha=0.3)
    if len(bars):
        legend_outside(ax, fontsize="small")
    out = Path(out_dir) / name
    save_figure(fig, out)
    return out
