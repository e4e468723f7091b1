"""Chrome trace event export (opens in Perfetto or chrome://tracing).

One process per device, with a compute track and a communication track; each (step, layer,
phase) is a complete ("X") event with microsecond timestamps. Offloading runs add a track of
expert copies into the device (from issue to landing, with the transfer itself as its own span)
and one of experts run on the host CPU for the device. A part of a layer that ran on a unit beside
the accelerator adds its activations' hand-off on a track of its own: to the unit as the part
starts, back as it ends (each half of the part's hand-off time, `StepPlan.handoff`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim import json_io
from moesim.simulator.phases import COMPUTE_PHASES

_TRACKS = {"compute": 0, "communication": 1, "expert copies": 2, "host CPU experts": 3, "unit hand-offs": 4}
_PARTS = ("attention", "dense_ffn", "shared_expert", "expert")  # StepPlan.unit_time / handoff order


def chrome_trace(phases: pd.DataFrame, max_step: int, device_name: str, copies: pd.DataFrame | None = None,
                 host_jobs: pd.DataFrame | None = None, handoffs: list[list[np.ndarray | None]] | None = None,
                 unit_labels: tuple[str, ...] = ()) -> dict[str, Any]:
    """Trace events for the steps below `max_step`; `handoffs[step][microbatch]` is that plan's
    (parts, units, layers, devices) hand-off seconds (None: nothing ran off the accelerator)."""
    rows = phases[(phases["step"] < max_step) & (phases["duration_s"] > 0)]
    events: list[dict[str, Any]] = []
    for dev in np.unique(phases["device"]):
        events.append({"name": "process_name", "ph": "M", "pid": int(dev), "tid": 0,
                       "args": {"name": f"{device_name} {dev}"}})
        for track, tid in _TRACKS.items():
            events.append({"name": "thread_name", "ph": "M", "pid": int(dev), "tid": tid, "args": {"name": track}})
    is_compute = rows["phase"].astype(str).isin(COMPUTE_PHASES).to_numpy()
    # two-batch overlap: spans are named by micro-batch, so the interleaving reads off the tracks
    mb = rows["microbatch"].to_numpy() if "microbatch" in rows else np.full(len(rows), -1)
    for (step, layer, dev, phase, start, dur), comp, m in zip(
        rows[["step", "layer", "device", "phase", "start_s", "duration_s"]].itertuples(index=False, name=None),
        is_compute, mb,
    ):
        args = {"step": int(step), "layer": int(layer)}
        if m >= 0:
            args["microbatch"] = int(m)
        events.append({
            "name": f"{phase} mb{m}" if m >= 0 else str(phase), "cat": "compute" if comp else "communication",
            "ph": "X", "ts": round(start * 1e6, 4), "dur": round(dur * 1e6, 4), "pid": int(dev),
            "tid": 0 if comp else 1, "args": args,
        })
    if handoffs is not None:
        events += _handoff_events(rows, handoffs, unit_labels)
    if copies is not None:
        events += _copy_events(copies[(copies["step"] < max_step) & copies["end_s"].notna()])
    if host_jobs is not None:
        for row in host_jobs[host_jobs["step"] < max_step].itertuples(index=False):
            events.append({"name": f"expert {row.expert} on host", "cat": "host", "ph": "X",
                           "ts": round(row.start_s * 1e6, 4), "dur": round((row.end_s - row.start_s) * 1e6, 4),
                           "pid": int(row.device), "tid": _TRACKS["host CPU experts"],
                           "args": {"step": int(row.step), "layer": int(row.layer), "tokens": float(row.tokens)}})
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"generator": "moesim"}}


def _handoff_events(rows: pd.DataFrame, handoffs: list[list[np.ndarray | None]],
                    labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each part's hand-off to the unit that ran it, as two spans around the part's own span."""
    out = []
    parts = rows[rows["phase"].astype(str).isin(_PARTS)]
    mbs = parts["microbatch"].to_numpy() if "microbatch" in parts else np.zeros(len(parts), dtype=np.int64)
    for (step, layer, dev, phase, start, dur), m in zip(
            parts[["step", "layer", "device", "phase", "start_s", "duration_s"]].itertuples(index=False, name=None),
            mbs):
        plans = handoffs[int(step)] if int(step) < len(handoffs) else []
        h = plans[max(int(m), 0)] if max(int(m), 0) < len(plans) else None
        if h is None:
            continue
        for u, seconds in enumerate(h[_PARTS.index(str(phase)), :, int(layer), int(dev)].tolist()):
            if seconds <= 0:
                continue
            half = seconds / 2
            for name, ts in ((f"to {labels[u]}", start), (f"back from {labels[u]}", start + dur - half)):
                out.append({"name": f"{phase} {name}", "cat": "hand-off", "ph": "X", "ts": round(ts * 1e6, 4),
                            "dur": round(half * 1e6, 4), "pid": int(dev), "tid": _TRACKS["unit hand-offs"],
                            "args": {"step": int(step), "layer": int(layer), "unit": labels[u]}})
    return out


def _copy_events(copies: pd.DataFrame) -> list[dict[str, Any]]:
    """Each copy as its transfer span on the device's copy track; the args say when it was issued."""
    out = []
    for row in copies.itertuples(index=False):
        out.append({"name": f"{row.kind} L{row.layer} E{row.expert}", "cat": "copy", "ph": "X",
                    "ts": round(row.start_s * 1e6, 4), "dur": round((row.end_s - row.start_s) * 1e6, 4),
                    "pid": int(row.device), "tid": _TRACKS["expert copies"],
                    "args": {"step": int(row.step), "layer": int(row.layer), "expert": int(row.expert),
                             "bytes": float(row.bytes), "issued_us": round(row.issued_s * 1e6, 4),
                             "promoted": bool(row.promoted)}})
    return out


def write_chrome_trace(phases: pd.DataFrame, path: str | Path, max_step: int, device_name: str,
                       copies: pd.DataFrame | None = None, host_jobs: pd.DataFrame | None = None,
                       handoffs: list[list[np.ndarray | None]] | None = None, unit_labels: tuple[str, ...] = ()) -> None:
    json_io.write(path, chrome_trace(phases, max_step, device_name, copies, host_jobs, handoffs, unit_labels))
