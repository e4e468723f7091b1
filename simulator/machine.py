"""The hardware of a scenario, resolved once: devices and their cost models, links, routes, memory tiers.

Every `hardware.scale` what-if knob is applied here and nowhere else, so the engine, the
offloading path (host link, storage, host CPU) and the roofline all see the same scaled
numbers. Devices know their node and local rank, which hierarchical dispatch and local
replica choice need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.hardware_profiles import ClusterSpec, DeviceSpec, load_device
from moesim.hardware_profiles.memory_tiers import MemoryTier, memory_tiers
from moesim.hardware_profiles.topology import Routes, build_topology, compute_routes
from moesim.simulator.cost_model import CostModel


@dataclass(frozen=True)
class Scale:
    """What-if multipliers on the profile numbers (2.0 = twice as fast)."""

    flops: float = 1.0
    memory_bandwidth: float = 1.0
    link_bandwidth: float = 1.0


@dataclass(frozen=True)
class Machine:
    """A cluster with every number the simulation reads, scaled."""

    cluster: ClusterSpec
    device: DeviceSpec  # the accelerator profile (every device of the cluster runs it)
    cost: CostModel  # the accelerator's op cost, scaled
    routes: Routes  # device-to-device paths over the scaled topology
    tiers: dict[str, MemoryTier]  # device / host / storage, as one accelerator sees them
    host_device: DeviceSpec | None  # the host CPU profile, where the node has one
    host_cost: CostModel | None  # the host CPU's op cost, scaled
    scale: Scale

    @property
    def num_devices(self) -> int:
        return self.cluster.num_devices

    @property
    def devices_per_node(self) -> int:
        return self.cluster.node.devices_per_node

    @property
    def node_of(self) -> np.ndarray:
        """(N,) the node of every device."""
        return np.arange(self.num_devices) // self.devices_per_node

    @property
    def local_rank(self) -> np.ndarray:
        """(N,) every device's index within its node (DeepEP forwards to the same local rank)."""
        return np.arange(self.num_devices) % self.devices_per_node


def build_machine(cluster: ClusterSpec, scale: Scale = Scale()) -> Machine:
    """Resolve a cluster profile into a Machine with the what-if scale applied everywhere."""
    device = load_device(cluster.node.device)
    cost = CostModel(device, flops_scale=scale.flops, memory_bandwidth_scale=scale.memory_bandwidth)
    routes = compute_routes(build_topology(cluster, scale.link_bandwidth))
    tiers = {t.name: t for t in memory_tiers(cluster, scale.link_bandwidth, scale.memory_bandwidth)}
    host_device = host_cost = None
    if cluster.node.host is not None:
        host_device = load_device(cluster.node.host.device)
        host_cost = CostModel(host_device, flops_scale=scale.flops, memory_bandwidth_scale=scale.memory_bandwidth)
    return Machine(cluster, device, cost, routes, tiers, host_device, host_cost, scale)
