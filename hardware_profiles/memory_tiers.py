"""The memory hierarchy one accelerator sees: its own memory, host memory, storage.

Expert offloading keeps weights on a slower tier and copies them in on demand. Each tier says
how much it holds for this device, how fast bytes reach the device from it (the slowest link on
the path, at its achievable efficiency) and after what latency, and how many devices share
that path (their copies queue on it in the engine).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.hardware_profiles.loader import load_device, load_link
from moesim.hardware_profiles.schema import ClusterSpec


@dataclass(frozen=True)
class MemoryTier:
    name: str  # "device" | "host" | "storage"
    capacity: float  # bytes this device can use on the tier
    bandwidth: float  # achievable bytes/s from the tier into the device
    latency: float  # seconds before the first byte arrives
    shared_by: int  # devices whose copies share the tier's path
    path: tuple[str, ...]  # link (or memory) profiles a copy crosses
    link_classes: tuple[str, ...] = ()  # the kinds of the links among them (bytes by link class count copies)


def memory_tiers(cluster: ClusterSpec, link_scale: float = 1.0, memory_scale: float = 1.0) -> list[MemoryTier]:
    """Tiers of one device of the cluster, fastest first (host and storage only where the node has them).

    `link_scale` multiplies every link's bandwidth (host link, storage) and `memory_scale` every
    memory's (device and host DRAM): the `hardware.scale` what-if knobs."""
    node = cluster.node
    dev = load_device(node.device)
    tiers = [MemoryTier("device", dev.memory.capacity, dev.memory.bandwidth * dev.efficiency.memory * memory_scale,
                        0.0, 1,
                        (f"{dev.name} memory",))]
    host = node.host_cpu
    if host is None:  # a unified-memory SoC (e.g. Jetson): storage reads land in device memory
        if node.storage is not None:
            disk = load_link(node.storage.link)
            tiers.append(MemoryTier("storage", node.storage.capacity / node.devices_per_node,
                                    disk.bandwidth * disk.efficiency * link_scale, disk.latency, node.devices_per_node,
                                    (disk.name,), (disk.kind,)))
        return tiers
    host_cpu = load_device(host.device)
    host_link = load_link(host.link)
    per_socket = -(-node.devices_per_node // host.count)
    link_bw = host_link.bandwidth * host_link.efficiency * link_scale
    dram_share = host_cpu.memory.bandwidth * host_cpu.efficiency.memory * memory_scale / per_socket
    tiers.append(MemoryTier("host", host_cpu.memory.capacity * host.count / node.devices_per_node,
                            min(link_bw, dram_share), host_link.latency, per_socket,
                            (f"{host_cpu.name} memory", host_link.name), (host_link.kind,)))
    if node.storage is not None:
        disk = load_link(node.storage.link)
        tiers.append(MemoryTier("storage", node.storage.capacity / node.devices_per_node,
                                min(disk.bandwidth * disk.efficiency * link_scale, link_bw), disk.latency + host_link.latency,
                                node.devices_per_node, (disk.name, host_link.name), (disk.kind, host_link.kind)))
    return tiers
