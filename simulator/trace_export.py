"""Chrome trace event export (opens in Perfetto or chrome://tracing).

One process per device, with a compute track and a communication track; each (step, layer,
phase) is a complete ("X") event with microsecond timestamps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.simulator.engine import COMPUTE_PHASES

_TRACKS = {"compute": 0, "communication": 1}


def chrome_trace(phases: pd.DataFrame, max_step: int, device_name: str) -> dict[str, Any]:
    """Trace events for the steps below `max_step`."""
    rows = phases[(phases["step"] < max_step) & (phases["duration_s"] > 0)]
    events: list[dict[str, Any]] = []
    for dev in np.unique(phases["device"]):
        events.append({"name": "process_name", "ph": "M", "pid": int(dev), "tid": 0,
                       "args": {"name": f"{device_name} {dev}"}})
        for track, tid in _TRACKS.items():
            events.append({"name": "thread_name", "ph": "M", "pid": int(dev), "tid": tid, "args": {"name": track}})
    is_compute = rows["phase"].astype(str).isin(COMPUTE_PHASES).to_numpy()
    for (step, layer, dev, phase, start, dur), comp in zip(
        rows[["step", "layer", "device", "phase", "start_s", "duration_s"]].itertuples(index=False, name=None),
        is_compute,
    ):
        events.append({
            "name": str(phase), "cat": "compute" if comp else "communication", "ph": "X",
            "ts": round(start * 1e6, 4), "dur": round(dur * 1e6, 4), "pid": int(dev), "tid": 0 if comp else 1,
            "args": {"step": int(step), "layer": int(layer)},
        })
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"generator": "moesim"}}


def write_chrome_trace(phases: pd.DataFrame, path: str | Path, max_step: int, device_name: str) -> None:
    Path(path).write_text(json.dumps(chrome_trace(phases, max_step, device_name)))
