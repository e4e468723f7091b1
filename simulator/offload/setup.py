"""Resolve the `offload:` section against the model, the cluster and device memory.

Decides, once before the run: which tier holds the experts that are not cached and how fast it
is, how big each device's expert cache is (in experts, or in bytes under mixed precision), what
device memory then holds, and the host CPU's cost model for hybrid execution. Every failure is a
`ValueError` naming the config field; `resolve` turns it into a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.hardware_profiles import DeviceSpec
from moesim.hardware_profiles.memory_tiers import MemoryTier
from moesim.placement import Placement
from moesim.simulator.cost_model import CostModel
from moesim.simulator.machine import Machine
from moesim.simulator.memory import MemoryEstimate
from moesim.simulator.offload.config import OffloadConfig
from moesim.units import fmt_bytes


class OffloadSetupError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class OffloadSetup:
    config: OffloadConfig
    tier: MemoryTier  # where uncached experts live
    host: MemoryTier | None  # host memory over the host link (hybrid activations travel on it)
    capacity: float  # per device: experts, or bytes when `by_bytes`
    by_bytes: bool
    cache_bytes: float  # device memory the cache takes (its capacity in bytes)
    holds_all: bool  # the cache has room for every expert the device owns
    expert_bytes: np.ndarray  # (moe_layers, experts) bytes of each expert as stored and moved
    host_device: DeviceSpec | None
    host_cost: CostModel | None
    memory: MemoryEstimate  # device memory with the cache in place of the placed experts
    devices_per_engine: int  # devices whose copies share one copy path (1, or a node's SSD)

    def capacity_text(self) -> str:
        return fmt_bytes(self.capacity) if self.by_bytes else f"{self.capacity:g} experts"


def _tier(machine: Machine, name: str) -> tuple[MemoryTier, MemoryTier | None]:
    tiers, cluster = machine.tiers, machine.cluster
    if name not in tiers:
        have = ", ".join(t for t in tiers if t != "device")
        raise OffloadSetupError("offload.tier", f"offload.tier is '{name}' but cluster '{cluster.name}' has no "
                                f"{name} tier (it has: {have or 'device memory only'}); add node.{name} to the "
                                "cluster profile or pick another tier")
    return tiers[name], tiers.get("host")


def setup_offload(cfg: OffloadConfig, machine: Machine, placement: Placement,
                  memory: MemoryEstimate, expert_bytes: np.ndarray, budget: float) -> OffloadSetup:
    """The resolved offload section; `memory` is the estimate with every placed expert resident.
    Tiers and the host CPU's cost come from the machine, so the what-if scale applies to them."""
    cluster, device = machine.cluster, machine.device
    tier, host = _tier(machine, cfg.tier)
    hybrid = cfg.hybrid
    host_device = host_cost = None
    if hybrid.attention == "host" or hybrid.cold_experts != "fetch":
        if cluster.node.host_cpu is None:
            field = "offload.hybrid.attention" if hybrid.attention == "host" else "offload.hybrid.cold_experts"
            raise OffloadSetupError(field, f"hybrid execution runs on the host CPU, but cluster '{cluster.name}' "
                                    "has no host CPU (node.host, or a unit named host in node.units)")
        host_device, host_cost = machine.host_device, machine.host_cost
    placed = memory.expert_weights if memory.expert_weights is not None else np.zeros_like(memory.per_device)
    other = memory.per_device - placed
    kv = memory.kv_cache if hybrid.attention == "host" else 0.0
    other = other - kv
    largest = float(expert_bytes.max())
    cap = cfg.cache.capacity
    room = budget - float(other.max())
    if cap is None:
        by_bytes, capacity, cache_bytes = True, room, room
    elif isinstance(cap, int):
        by_bytes, capacity, cache_bytes = False, float(cap), cap * largest
    else:
        by_bytes, capacity, cache_bytes = True, float(cap), float(cap)
    if cache_bytes < largest:
        raise OffloadSetupError("offload.cache.capacity", f"the expert cache gets {fmt_bytes(max(cache_bytes, 0))} "
                                f"per {device.name}, less than one expert ({fmt_bytes(largest)}): device memory "
                                f"usable {fmt_bytes(budget)} minus {fmt_bytes(float(other.max()))} for dense "
                                "weights, KV cache and activations; lower the batch, quantize experts "
                                "(precision.bits) or move attention to the host")
    if cache_bytes > room + 1e-6:
        raise OffloadSetupError("offload.cache.capacity", f"a cache of {fmt_bytes(cache_bytes)} does not fit: each "
                                f"{device.name} has {fmt_bytes(budget)} usable and needs "
                                f"{fmt_bytes(float(other.max()))} for everything else, leaving {fmt_bytes(room)}")
    owned = float(placed.max())
    if owned > tier.capacity:
        raise OffloadSetupError("offload.tier", f"each device's experts take {fmt_bytes(owned)} but the {tier.name} "
                                f"tier has {fmt_bytes(tier.capacity)} per device")
    holds_all = cache_bytes >= owned if by_bytes else capacity >= placement.experts_per_device().sum(axis=0).max()
    used = np.minimum(placed, cache_bytes)
    new_memory = replace(memory, per_device=other + used, weights=float((other + used).max()) - memory.kv_cache
                         + kv - memory.activations, kv_cache=memory.kv_cache - kv, expert_weights=used)
    shared = tier.shared_by if tier.name == "storage" else 1
    return OffloadSetup(cfg, tier, host, capacity, by_bytes, cache_bytes, holds_all, expert_bytes, host_device,
                        host_cost, new_memory, shared)
