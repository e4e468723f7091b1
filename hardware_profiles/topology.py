"""The cluster as a networkx graph: devices, switches, NICs, hosts; directed links.

Every physical link becomes two directed edges (one per direction) carrying that direction's
bandwidth, its latency, its link profile name and its class (nvlink, pcie, infiniband, ...).
Paths between devices are fewest-hop routes, which is how NVSwitch, rail-optimised IB and
PCIe trees route in practice.

Each edge also carries, per communication kernel kind, its floor, eff_max, half_bytes and where
they came from (`link_comm`: the cluster's measured values, else the link's defaults); `Routes.comm`
holds them as per-link arrays for the fabric (the form is in simulator/comm_cost.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import networkx as nx
import numpy as np

from moesim.errors import ConfigError
from moesim.hardware_profiles.loader import load_link
from moesim.hardware_profiles.schema import ClusterSpec, CommCost, CommKind, LinkSpec

COMM_KINDS: tuple[str, ...] = get_args(CommKind)


def link_comm(cluster: ClusterSpec, link: LinkSpec) -> dict[str, tuple[CommCost, str]]:
    """Each comm kind's cost on one link (efficiency filled in) and where it came from: the cluster's
    measured values first, then the link's datasheet defaults, else no floor at the link's efficiency."""
    out = {}
    for kind in COMM_KINDS:
        measured = cluster.collectives.get(kind, {}).get(link.name)  # type: ignore[call-overload]
        if not cluster.comm_floors:
            cost, source = CommCost(), "comm floors off (link efficiency only)"
        elif measured is not None:
            key = f"collectives.{kind}.{link.name}"
            cost, source = measured, cluster.sources.get(key, f"measured, cluster profile {cluster.name} {key}")
        elif kind in link.collectives:
            cost, source = link.collectives[kind], f"datasheet default ({link.name} collectives.{kind})"  # type: ignore[index]
        else:
            cost, source = CommCost(), f"no {kind} floor for {link.name} (link efficiency only)"
        out[kind] = (cost.model_copy(update={"efficiency": cost.efficiency or link.efficiency}), source)
    return out


def _check_measured_links(cluster: ClusterSpec) -> None:
    """Measured costs must name a link of the cluster profile (by the link profile's name)."""
    node = cluster.node
    named = [node.intra_node.link] + ([node.nic.link, node.nic.attach] if node.nic else []) \
        + [u.link for u in node.compute_units] + ([node.storage.link] if node.storage else [])
    names = {load_link(n).name for n in named}
    for kind, per_link in cluster.collectives.items():
        for name in per_link:
            if name not in names:
                raise ConfigError(f"cluster {cluster.name}: collectives.{kind} names link '{name}', which the cluster "
                                  f"does not use (its links: {', '.join(sorted(names))})",
                                  field=f"collectives.{kind}.{name}")


def build_topology(cluster: ClusterSpec, link_bandwidth_scale: float = 1.0) -> nx.DiGraph:
    """Build the directed topology graph of a cluster profile."""
    g = nx.DiGraph(name=cluster.name)
    node = cluster.node
    per = node.devices_per_node

    _check_measured_links(cluster)

    def connect(a: str, b: str, link: LinkSpec) -> None:
        bw = link.bandwidth * link_bandwidth_scale
        comm = link_comm(cluster, link)
        for u, v in ((a, b), (b, a)):
            g.add_edge(u, v, bandwidth=bw, efficiency=link.efficiency, latency=link.latency,
                       link=link.name, link_class=link.kind, comm=comm)

    intra = load_link(node.intra_node.link)
    if cluster.nodes > 1:
        g.add_node("net", kind="switch")
    for n in range(cluster.nodes):
        devs = [f"n{n}.d{j}" for j in range(per)]
        for j, name in enumerate(devs):
            g.add_node(name, kind="device", index=n * per + j, node=n, profile=node.device)
        if node.intra_node.topology == "switch" and per > 1:
            sw = f"n{n}.switch"
            g.add_node(sw, kind="switch", node=n)
            for name in devs:
                connect(name, sw, intra)
        elif node.intra_node.topology == "full_mesh":
            for a in range(per):
                for b in range(a + 1, per):
                    connect(devs[a], devs[b], intra)
        host = node.host_cpu
        if host:
            host_link = load_link(host.link)
            for h in range(host.count):
                g.add_node(f"n{n}.host{h}", kind="host", node=n, profile=host.device)
            for j, name in enumerate(devs):
                connect(name, f"n{n}.host{j * host.count // per}", host_link)
        if node.nic and cluster.nodes > 1:
            nic_link, attach = load_link(node.nic.link), load_link(node.nic.attach)
            for j, name in enumerate(devs):
                nic = f"n{n}.nic{j // node.nic.devices_per_nic}"
                if nic not in g:
                    g.add_node(nic, kind="nic", node=n)
                    connect(nic, "net", nic_link)
                connect(name, nic, attach)
    return g


@dataclass(frozen=True)
class LinkComm:
    """One comm kind's numbers per directed link (index as `Routes.link_names`)."""

    floor: np.ndarray  # seconds per kernel call (any group size without `floors`)
    efficiency: np.ndarray  # eff_max
    half_bytes: np.ndarray  # per-message bytes at half of eff_max
    source: list[str]
    floors: list[dict[int, float]] = field(default_factory=list)  # per link: floor by group size ({}: `floor`)
    combine_floor: np.ndarray | None = None  # per link: the combine kernel's floor (NaN: the dispatch floor)

    def floor_at(self, group: int, role: str = "dispatch") -> np.ndarray:
        """Per link: the floor of a kernel over a group of `group` GPUs (`role` combine: the combine
        kernel's own floor where the profile gives one). Between the sizes of `floors` linear in the
        group size, the nearest given size outside them."""
        out = self.floor.copy()
        for i, table in enumerate(self.floors):
            if table:
                sizes = np.fromiter(table, dtype=float)
                out[i] = float(np.interp(group, sizes, np.fromiter(table.values(), dtype=float)))
        if role == "combine" and self.combine_floor is not None:
            out = np.where(np.isnan(self.combine_floor), out, self.combine_floor)
        return out

    def charges(self) -> bool:
        """Whether this kind costs anything beyond bytes / (bandwidth x efficiency) on some link."""
        return bool((self.floor > 0).any() or (self.half_bytes > 0).any() or any(self.floors)
                    or (self.combine_floor is not None and (np.nan_to_num(self.combine_floor) > 0).any()))


@dataclass(frozen=True)
class Routes:
    """Device-to-device paths flattened into arrays the network fabric can index quickly.

    Links are numbered 0..num_links-1. For the ordered device pair p = src * N + dst, the
    links of its path are `pair_links[pair_ptr[p]:pair_ptr[p + 1]]`.
    """

    num_devices: int
    link_names: list[tuple[str, str]]
    link_bandwidth: np.ndarray  # achievable B/s per directed link (bandwidth x efficiency)
    link_class: list[str]
    pair_ptr: np.ndarray
    pair_links: np.ndarray
    pair_latency: np.ndarray  # (N, N) seconds, sum of link latencies on the path
    pair_hops: np.ndarray  # (N, N)
    pair_inter_node: np.ndarray  # (N, N) bool
    link_peak: np.ndarray | None = None  # B/s per directed link before efficiency
    comm: dict[str, LinkComm] = field(default_factory=dict)  # per comm kind (empty: no floors, link efficiency)

    def path_links(self, src: int, dst: int) -> np.ndarray:
        """The directed links of the path src -> dst (empty for a device to itself)."""
        p = src * self.num_devices + dst
        return self.pair_links[self.pair_ptr[p]:self.pair_ptr[p + 1]]

    def slowest_bandwidth(self, src: int, dst: int) -> float:
        """Achievable B/s of the slowest link on the path src -> dst (inf for a device to itself)."""
        links = self.path_links(src, dst)
        return float(self.link_bandwidth[links].min()) if links.size else float("inf")


def compute_routes(g: nx.DiGraph) -> Routes:
    devices = sorted((d for d, a in g.nodes(data=True) if a.get("kind") == "device"),
                     key=lambda d: g.nodes[d]["index"])
    n = len(devices)
    edges = list(g.edges)
    edge_index = {e: i for i, e in enumerate(edges)}
    ptr = [0]
    links: list[int] = []
    for s, src in enumerate(devices):
        paths = nx.single_source_shortest_path(g, src)
        for d, dst in enumerate(devices):
            if s != d:
                if dst not in paths:
                    raise ValueError(f"no path from {src} to {dst} in topology {g.graph.get('name')}")
                path = paths[dst]
                links.extend([edge_index[(u, v)] for u, v in zip(path[:-1], path[1:])])
            ptr.append(len(links))
    # per pair: its path's latency (summed hop by hop in path order), hops, and whether it leaves its node
    lens = np.diff(np.asarray(ptr, dtype=np.int64))
    per_link = np.array([g.edges[e]["latency"] for e in edges], dtype=float)[np.asarray(links, dtype=np.int64)]
    latency = np.zeros(n * n)
    sending = lens > 0
    if per_link.size:
        latency[sending] = np.add.reduceat(per_link, np.asarray(ptr[:-1], dtype=np.int64)[sending])
    latency = latency.reshape(n, n)
    hops = lens.reshape(n, n)
    node = np.array([g.nodes[d]["node"] for d in devices])
    inter = node[:, None] != node[None, :]
    bw = np.array([g.edges[e]["bandwidth"] * g.edges[e]["efficiency"] for e in edges])
    comm = {}
    if edges and all("comm" in g.edges[e] for e in edges):
        for kind in COMM_KINDS:
            vals = [g.edges[e]["comm"][kind] for e in edges]
            costs = [c for c, _ in vals]
            combine = np.array([np.nan if c.combine_floor is None else c.combine_floor for c in costs])
            comm[kind] = LinkComm(np.array([c.floor for c in costs]), np.array([c.efficiency for c in costs]),
                                  np.array([c.half_bytes for c in costs]), [src for _, src in vals],
                                  [dict(c.floors) for c in costs],
                                  None if np.isnan(combine).all() else combine)
    return Routes(
        num_devices=n,
        link_names=edges,
        link_bandwidth=bw,
        link_class=[g.edges[e]["link_class"] for e in edges],
        pair_ptr=np.asarray(ptr, dtype=np.int64),
        pair_links=np.asarray(links, dtype=np.int64),
        pair_latency=latency,
        pair_hops=hops,
        pair_inter_node=inter,
        link_peak=np.array([g.edges[e]["bandwidth"] for e in edges]),
        comm=comm,
    )
