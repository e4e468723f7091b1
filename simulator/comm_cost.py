"""Communication kernel costs: a floor per kernel call and an efficiency that saturates in message size.

Form. A kernel of kind k (`all_to_all`: direct and dedup dispatch/combine; `hierarchical`: DeepEP
normal; `low_latency`: DeepEP low-latency; `all_reduce`: the TP / MoE-TP ring) costs every device
of its group a fixed floor f_k once per call (launch, synchronisation, signalling), whatever it
carries. A flow of b bytes (one peer message of the call) occupies each link of its path for

    b / (bandwidth x eff(b)),   eff(b) = eff_max x b / (b + half_bytes)
    = (b + half_bytes) / (bandwidth x eff_max)

so a message of half_bytes reaches half of eff_max, large ones approach it, and the per-message
overhead is half_bytes of link time: many small messages (high EP degrees, decode) are slower
than one large one of the same total. Both stay inside the FIFO fabric (`network.Fabric`): the
half_bytes term is added to each (flow, link) entry's work, the floor delays when a device's
flows enter the fabric and when it may leave the kernel. One 2-device transfer therefore takes

    floor + path latency + (b + half_bytes) / (bandwidth x eff_max)        (`transfer_time`)

Where the numbers come from (`hardware_profiles/topology.link_comm`), the first that applies:
the cluster profile's `collectives` (measured, e.g. fitted from nccl-tests), the link profile's
`collectives` (datasheet defaults, each with a source), else floor 0, half_bytes 0 and the link's
efficiency, which is moesim before issue 17 (as is every link of a cluster with `comm_floors: false`).
A device's floor is the largest floor of the links on the paths to the peers of its group.
"""

from __future__ import annotations

import numpy as np

from moesim.hardware_profiles.topology import Routes

def efficiency(message_bytes, eff_max, half_bytes) -> np.ndarray:
    """eff(b) = eff_max x b / (b + half_bytes): the fraction of link bandwidth a b-byte message reaches."""
    b = np.asarray(message_bytes, dtype=float)
    half = np.asarray(half_bytes, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(half > 0, b / (b + half), 1.0)
    return eff_max * np.where(b > 0, frac, 0.0)


def link_seconds(message_bytes, bandwidth, eff_max, half_bytes) -> np.ndarray:
    """Seconds one link needs for a message: (b + half_bytes) / (bandwidth x eff_max); 0 for no bytes."""
    b = np.asarray(message_bytes, dtype=float)
    return np.where(b > 0, (b + half_bytes) / (bandwidth * eff_max), 0.0)


def transfer_time(message_bytes, bandwidth, eff_max, half_bytes, floor, latency=0.0) -> np.ndarray:
    """One message over one link, alone: floor + latency + bytes / (bandwidth x eff(bytes))."""
    return floor + latency + link_seconds(message_bytes, bandwidth, eff_max, half_bytes)


def pair_floor(routes: Routes, kind: str, group: int = 0, role: str = "dispatch") -> np.ndarray:
    """(N, N) the largest floor of a kind on each device-to-device path (0 on the diagonal), for a
    kernel over `group` GPUs (0: the profile's default floor) as its `role` (dispatch or combine)."""
    n = routes.num_devices
    out = np.zeros(n * n)
    comm = routes.comm.get(kind)
    if comm is not None and routes.pair_links.size:
        per_link = comm.floor_at(group, role) if group else comm.floor
        pair = np.repeat(np.arange(n * n), np.diff(routes.pair_ptr))
        np.maximum.at(out, pair, per_link[routes.pair_links])
    return out.reshape(n, n)


def device_floors(routes: Routes, kind: str, pairs: np.ndarray, role: str = "dispatch") -> np.ndarray:
    """(N,) each device's floor for a kernel over `pairs` (N, N bool: the peers of its group) as its
    `role`: the largest floor, at its group's size (peers + itself), on the paths to and from its
    peers; 0 for a device without peers."""
    pairs = np.asarray(pairs, dtype=bool)
    sizes = pairs.sum(axis=1) + 1
    out = np.zeros(routes.num_devices)
    for size in np.unique(sizes[sizes > 1]):
        rows = sizes == size
        pf = np.where(pairs, pair_floor(routes, kind, int(size), role), 0.0)
        both = np.maximum(pf.max(axis=1), pf.max(axis=0))
        out[rows] = both[rows]
    return out


def kernel_floors(routes: Routes, kind: str, pairs: np.ndarray, role: str = "dispatch") -> list[float] | None:
    """Every device's kernel floor of a kind over its group's pairs as `role`, as a list (None: the
    kind charges nothing beyond bandwidth x efficiency, so collectives skip the floor)."""
    if not has_floors(routes, kind):
        return None
    return device_floors(routes, kind, pairs, role).tolist()


def has_floors(routes: Routes, kind: str) -> bool:
    """Whether a kind charges anything beyond bytes / (bandwidth x efficiency)."""
    comm = routes.comm.get(kind)
    return comm is not None and comm.charges()


def provenance(routes: Routes, kind: str, pairs: np.ndarray | None = None) -> str:
    """Where a kind's comm cost comes from on the links its pairs cross (every link when None):
    "fitted from nccl-tests FILE", "datasheet default (LINK collectives.KIND)", ... joined by "; "."""
    comm = routes.comm.get(kind)
    if comm is None:
        return "link profiles (bandwidth x efficiency)"
    if pairs is None:
        links = np.arange(len(comm.source))
    else:
        n = routes.num_devices
        pair = np.repeat(np.arange(n * n), np.diff(routes.pair_ptr))
        links = np.unique(routes.pair_links[np.asarray(pairs, dtype=bool).ravel()[pair]])
    sources = list(dict.fromkeys(comm.source[i] for i in links))
    known = [x for x in sources if not x.startswith("no ")]
    return "; ".join(known or sources) or "link profiles (bandwidth x efficiency)"


def injection_time(routes: Routes, kind: str, src: int, sent: np.ndarray, floor: float | None = None,
                   group: int = 0, role: str = "dispatch") -> float:
    """A lower bound on a device's part of a kernel: its floor (`floor`, else the largest on its paths
    for a kernel over `group` GPUs as `role`), the longest path latency, and every message's seconds
    on the slowest link of its path, in turn (the fabric adds contention). `sent`: (N,) bytes to
    each device (its own entry is ignored)."""
    comm = routes.comm.get(kind)
    link_floor = None if comm is None else (comm.floor_at(group, role) if group else comm.floor)
    total, latency, worst_floor = 0.0, 0.0, 0.0
    for dst in np.flatnonzero(sent > 0):
        if dst == src:
            continue
        links = routes.path_links(src, int(dst))
        if comm is None or routes.link_peak is None:
            secs = sent[dst] / routes.link_bandwidth[links]
        else:
            secs = link_seconds(sent[dst], routes.link_peak[links], comm.efficiency[links], comm.half_bytes[links])
            worst_floor = max(worst_floor, float(link_floor[links].max()))
        total += float(np.max(secs))
        latency = max(latency, float(routes.pair_latency[src, dst]))
    return total + latency + (worst_floor if floor is None else floor)
