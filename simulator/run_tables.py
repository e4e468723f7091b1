"""Per-run tables a report draws from: device traffic, link use, expert time per device and layer.

All simulated: bytes come from the step plans' dispatch/combine matrices and the fabric's link
counters, times from the plans' expert costs and the timeline's makespan.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.simulator.metrics import SimResult


def traffic_table(result: SimResult) -> pd.DataFrame:
    """(src, dst) all-to-all payload summed over the run: dispatch and combine bytes, off-device only."""
    plans = result.raw.plans
    n = result.scenario.num_devices
    dispatch = sum((p.dispatch.sum(axis=0) for p in plans), np.zeros((n, n)))
    combine = sum((p.combine.sum(axis=0) for p in plans), np.zeros((n, n)))
    np.fill_diagonal(dispatch, 0.0)
    np.fill_diagonal(combine, 0.0)
    src, dst = np.nonzero((dispatch + combine) > 0)
    inter = result.scenario.routes.pair_inter_node
    return pd.DataFrame({"src": src, "dst": dst, "dispatch_bytes": dispatch[src, dst],
                         "combine_bytes": combine[src, dst], "inter_node": inter[src, dst]})


def link_table(result: SimResult) -> pd.DataFrame:
    """Every directed link that carried bytes: endpoints, class, bytes and busy share of the run."""
    routes = result.scenario.routes
    carried = result.raw.fabric.link_bytes
    makespan = float(result.summary["makespan_s"])
    rows = []
    for i in np.flatnonzero(carried > 0):
        a, b = routes.link_names[i]
        busy = carried[i] / routes.link_bandwidth[i]
        rows.append((a, b, routes.link_class[i], float(carried[i]), float(routes.link_bandwidth[i]), busy,
                     busy / makespan if makespan > 0 else 0.0))
    return pd.DataFrame(rows, columns=["from", "to", "class", "bytes", "bandwidth_bytes_per_s", "busy_s",
                                       "utilization"])


def expert_time_table(result: SimResult) -> pd.DataFrame:
    """(MoE layer, device): mean modelled routed-expert time and computed rows per step."""
    moe = np.array(result.scenario.model.moe_layers, dtype=np.int64)
    plans = result.raw.plans
    if moe.size == 0:
        return pd.DataFrame(columns=["layer", "device", "expert_time_s", "rows"])
    exp = np.mean([p.expert[moe] for p in plans], axis=0)  # (Lm, N)
    rows = np.mean([p.rows_computed for p in plans], axis=0)
    layer, dev = np.meshgrid(moe, np.arange(exp.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "device": dev.ravel(), "expert_time_s": exp.ravel(),
                         "rows": rows.ravel()})
