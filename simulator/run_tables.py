"""Per-run tables a report draws from: device traffic, link use, expert time per device and layer.

All simulated: bytes come from the step plans' dispatch/combine matrices and the fabric's link
counters, times from the plans' expert costs and the timeline's makespan.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.simulator.metrics import SimResult
from moesim.simulator.traffic_totals import traffic_totals


def traffic_table(result: SimResult) -> pd.DataFrame:
    """(src, dst) all-to-all payload summed over the run: dispatch and combine bytes, off-device only."""
    n = result.scenario.num_devices
    inter = result.scenario.routes.pair_inter_node
    totals = [traffic_totals(p, inter) for p in result.raw.plans]
    dispatch = sum((t.pair_bytes["dispatch"] for t in totals), np.zeros((n, n)))
    combine = sum((t.pair_bytes["combine"] for t in totals), np.zeros((n, n)))
    np.fill_diagonal(dispatch, 0.0)
    np.fill_diagonal(combine, 0.0)
    src, dst = np.nonzero((dispatch + combine) > 0)
    return pd.DataFrame({"src": src, "dst": dst, "dispatch_bytes": dispatch[src, dst],
                         "combine_bytes": combine[src, dst], "inter_node": inter[src, dst]})


LINK_COLUMNS = ["from", "to", "class", "source", "bytes", "bandwidth_bytes_per_s", "busy_s", "utilization"]
COLLECTIVE = "collective"  # fabric traffic: dispatch, combine and all-reduce between devices
OFFLOAD_COPY = "offload copy"  # expert weights copied from the offload tier into a device
HOST_ACTIVATIONS = "host expert activations"  # tokens to and from experts run on the host CPU


def link_table(result: SimResult) -> pd.DataFrame:
    """Every directed link that carried bytes: endpoints, class, source, bytes and busy share of the run.

    `source` says what moved the bytes: "collective" (the fabric's all-to-all and all-reduce between
    devices), "offload copy" (expert weights copied from the offload tier into each device, one row
    per device and link class of the tier's path; on a host tier the same host link as the fabric's
    host row) or "host expert activations" (tokens sent to experts run on the host CPU and back).
    The rows of one physical link are listed per source, so summing `bytes` by class gives the
    summary's bytes_by_link_class: everything a link class moved. An offload row's bandwidth is the
    copy path's achievable rate (its slowest link), the rate its copies were timed at.
    """
    routes = result.scenario.routes
    carried = result.raw.fabric.link_bytes
    makespan = float(result.summary["makespan_s"])

    def row(a: str, b: str, cls: str, source: str, nbytes: float, bandwidth: float) -> tuple:
        busy = nbytes / bandwidth if bandwidth > 0 else 0.0
        return (a, b, cls, source, float(nbytes), float(bandwidth), busy, busy / makespan if makespan > 0 else 0.0)

    rows = []
    for i in np.flatnonzero(carried > 0):
        a, b = routes.link_names[i]
        rows.append(row(a, b, routes.link_class[i], COLLECTIVE, carried[i], routes.link_bandwidth[i]))
    rows += offload_link_rows(result, row)
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def _device_names(result: SimResult) -> list[str]:
    """Topology names of the devices, in device order (n<node>.d<index>)."""
    per = int(result.scenario.cluster.node.devices_per_node)
    return [f"n{d // per}.d{d % per}" for d in range(result.scenario.num_devices)]


def offload_link_rows(result: SimResult, row) -> list[tuple]:
    """Rows of the bytes an offloading run moved per device: landed (not cancelled) expert copies on
    every link class of the tier's path (a storage tier behind the host: the SSD and the host link),
    and the activations of experts run on the host CPU on the host link's classes. Summed by class
    they equal the summary's bytes_by_link_class share of the offloading."""
    off = result.raw.offload
    if off is None:
        return []
    setup = off.setup
    names = _device_names(result)
    per = int(result.scenario.cluster.node.devices_per_node)
    routes = result.scenario.routes
    # the host link of each device in the topology (n<node>.host<h> -> device), where there is one
    host_link = {b: (a, routes.link_class[i]) for i, (a, b) in enumerate(routes.link_names)
                 if ".host" in a and b in names}

    def source_of(d: int, cls: str, tier_name: str) -> str:
        dev = names[d]
        if dev in host_link and host_link[dev][1] == cls:
            return host_link[dev][0]  # the host link's far end: n<node>.host<h>
        return f"n{d // per}.{tier_name}"

    rows = []
    copies = off.copies_table()
    moved = copies[~copies["cancelled"].astype(bool) & copies["end_s"].notna()]
    tier = setup.tier
    if len(moved):
        for d, nbytes in moved.groupby("device")["bytes"].sum().items():
            for cls in tier.link_classes or ("offload",):
                rows.append(row(source_of(int(d), cls, tier.name), names[int(d)], cls, OFFLOAD_COPY, float(nbytes),
                                tier.bandwidth))
    host = off.host_table()
    if setup.host is not None and len(host) and off.activation_bytes > 0 and host["tokens"].sum() > 0:
        share = host.groupby("device")["tokens"].sum() / host["tokens"].sum()  # activations follow tokens
        for d, s in share.items():
            for cls in setup.host.link_classes or ("offload",):
                rows.append(row(source_of(int(d), cls, "host"), names[int(d)], cls, HOST_ACTIVATIONS,
                                float(s * off.activation_bytes), setup.host.bandwidth))
    return rows


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
