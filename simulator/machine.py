"""The hardware of a scenario, resolved once: devices and their cost models, links, routes, memory tiers.

A node is a set of compute units (`ComputeUnit`): its accelerators (the unit `accelerator`) and
the units beside them (a Logic-PIM, the host CPU, an NPU; the cluster profile's `node.units`,
with `node.host` as the host unit), each with its own device profile, scaled cost model and
memory, and the link an accelerator reaches it by. Every `hardware.scale` what-if knob is
applied here and nowhere else, so the engine, the offloading path (host link, storage, host
CPU), every unit and the roofline see the same scaled numbers. Devices know their node and
local rank, which hierarchical dispatch and local replica choice need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.hardware_profiles import ClusterSpec, DeviceSpec, load_device, load_link
from moesim.hardware_profiles.memory_tiers import MemoryTier, memory_tiers
from moesim.hardware_profiles.schema import ACCELERATOR, HOST
from moesim.hardware_profiles.topology import Routes, build_topology, compute_routes
from moesim.simulator.cost_model import CostModel


@dataclass(frozen=True)
class Scale:
    """What-if multipliers on the profile numbers (2.0 = twice as fast)."""

    flops: float = 1.0
    memory_bandwidth: float = 1.0
    link_bandwidth: float = 1.0


@dataclass(frozen=True)
class ComputeUnit:
    """One kind of compute unit of a node, as one accelerator sees it.

    `latency` / `bandwidth`: an activation's way from the accelerator to the unit (one direction,
    scaled): the slower of the link and the unit's memory share where the unit has its own
    memory; `memory_capacity`: the bytes of its own memory one accelerator's share holds (None:
    it computes on the accelerator's memory); `shared_by`: accelerators per unit."""

    name: str
    label: str  # how op rows name it ("device" for the accelerator, "host CPU" for the host)
    device: DeviceSpec
    cost: CostModel
    latency: float
    bandwidth: float
    memory_capacity: float | None
    shared_by: int

    @property
    def is_accelerator(self) -> bool:
        return self.name == ACCELERATOR

    def crossing(self, nbytes):
        """Seconds to hand `nbytes` (a number or an array) of activations to the unit and take the
        result back: 2 x (latency + bytes / bandwidth); 0 on the accelerator."""
        if self.is_accelerator:
            return 0.0 * nbytes
        return 2 * (self.latency + nbytes / self.bandwidth)


@dataclass(frozen=True)
class Machine:
    """A cluster with every number the simulation reads, scaled."""

    cluster: ClusterSpec
    units: dict[str, ComputeUnit]  # the accelerator first, then the node's other units by name
    routes: Routes  # device-to-device paths over the scaled topology
    tiers: dict[str, MemoryTier]  # device / host / storage, as one accelerator sees them
    scale: Scale

    @property
    def accelerator(self) -> ComputeUnit:
        return self.units[ACCELERATOR]

    @property
    def device(self) -> DeviceSpec:
        """The accelerator profile (every device of the cluster runs it)."""
        return self.accelerator.device

    @property
    def cost(self) -> CostModel:
        """The accelerator's op cost, scaled."""
        return self.accelerator.cost

    @property
    def host(self) -> ComputeUnit | None:
        return self.units.get(HOST)

    @property
    def host_device(self) -> DeviceSpec | None:
        """The host CPU profile, where the node has one."""
        return self.host.device if self.host else None

    @property
    def host_cost(self) -> CostModel | None:
        """The host CPU's op cost, scaled."""
        return self.host.cost if self.host else None

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
    node = cluster.node
    device = load_device(node.device)

    def cost_of(spec: DeviceSpec) -> CostModel:
        return CostModel(spec, flops_scale=scale.flops, memory_bandwidth_scale=scale.memory_bandwidth)

    units = {ACCELERATOR: ComputeUnit(ACCELERATOR, "device", device, cost_of(device), 0.0, float("inf"), None, 1)}
    for spec in node.compute_units:
        unit_device, link = load_device(spec.device), load_link(spec.link)
        shared_by = -(-node.devices_per_node // node.unit_count(spec))
        bandwidth = link.bandwidth * link.efficiency * scale.link_bandwidth
        capacity = None
        if spec.memory == "own":  # activations land in the unit's memory, which its accelerators share
            bandwidth = min(bandwidth, unit_device.memory.bandwidth * unit_device.efficiency.memory
                            * scale.memory_bandwidth / shared_by)
            capacity = unit_device.memory.capacity * node.unit_count(spec) / node.devices_per_node
        label = "host CPU" if spec.name == HOST else spec.name
        units[spec.name] = ComputeUnit(spec.name, label, unit_device, cost_of(unit_device), link.latency, bandwidth,
                                       capacity, shared_by)
    routes = compute_routes(build_topology(cluster, scale.link_bandwidth))
    tiers = {t.name: t for t in memory_tiers(cluster, scale.link_bandwidth, scale.memory_bandwidth)}
    return Machine(cluster, units, routes, tiers, scale)
