"""The one memory ledger: what a device may fill, and what a run keeps resident in it.

Every memory figure a command checks or reports comes from here: the scenario's fit check and its
`memory` estimate, the offload cache's capacity, the placement study's expert slots and re-placed
scenarios, and the serving ranks' KV budget. A device may fill its capacity less the runtime
reserve (`policies.memory_reserve`); a run keeps its weights (the placed experts at their
precision, divided over MoE-TP shards), activations, communication buffers and KV cache, and with
offloading only the cached experts. A part of the layer that runs on a unit with its own memory
(`policies.units`, e.g. experts on the host CPU or Grace) keeps its data there: routed experts
their weights, attention the KV cache (MoE-Lens); those bytes leave the accelerator's ledger and
are checked against the unit's share of its memory.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim.placement import Placement
from moesim.simulator.config import UnitsConfig, WorkloadConfig
from moesim.simulator.expert_precision import ExpertPrecision
from moesim.simulator.memory import MemoryEstimate, estimate_memory
from moesim.simulator.offload.config import OffloadConfig
from moesim.simulator.offload.setup import OffloadSetup, setup_offload
from moesim.workloads import ModelSpec


def usable_bytes(capacity: float, reserve_share: float) -> float:
    """Bytes a run may fill of a device's `capacity`: all but the runtime reserve."""
    return capacity * (1 - reserve_share)


def reserve_bytes(capacity: float, reserve_share: float) -> float:
    """The runtime reserve itself (allocator slack, CUDA context, fragmentation)."""
    return capacity * reserve_share


def workload_memory(model: ModelSpec, placement: Placement, tp: int, batch: int, wl: WorkloadConfig,
                    max_moe_tokens: int, expert_bytes: np.ndarray | None = None,
                    speculative=None) -> MemoryEstimate:
    """Peak memory per device of a workload (KV cache to the last decode step, with speculative
    decoding its accepted tokens a step plus the drafts being verified) under a placement, with
    every placed expert resident (`expert_bytes[l, e]` each; default the model dtype)."""
    from moesim.simulator.speculative import kv_growth, queries_per_sequence

    queries = queries_per_sequence(speculative)
    if wl.phase == "decode":
        kv_len = int(np.ceil((wl.kv_len or 0) + wl.steps * kv_growth(speculative))) + queries - 1
    else:
        kv_len = wl.seq_len
    replica_tokens = batch * (wl.seq_len if wl.phase in ("prefill", "train") else queries)
    return estimate_memory(model, placement, tp, batch, kv_len, replica_tokens, max_moe_tokens, expert_bytes)


def resident_memory(model: ModelSpec, placement: Placement, tp: int, moe_tp: int, batch: int, wl: WorkloadConfig,
                    max_moe_tokens: int, precision: ExpertPrecision, offload: OffloadConfig | None, machine,
                    budget: float, units: UnitsConfig | None = None,
                    speculative=None) -> tuple[MemoryEstimate, OffloadSetup | None]:
    """What a device keeps under a placement (what runs on units of their own memory moved there,
    `units` being policies.units), and the offload set-up that sizes its expert cache to `budget`
    where the config offloads (raises offload's `OffloadSetupError`)."""
    memory = workload_memory(model, placement, tp, batch, wl, max_moe_tokens, precision.expert_bytes() / moe_tp,
                             speculative)
    if offload is None:
        if units is not None:
            memory = on_units(memory, machine, units.expert, units.attention)
        return memory, None
    setup = setup_offload(offload, machine, placement, memory, precision.expert_bytes(), budget)
    return setup.memory, setup


def on_units(memory: MemoryEstimate, machine, expert_unit: str, attention_unit: str) -> MemoryEstimate:
    """The estimate with what runs on units of their own memory moved off the accelerator: routed
    expert weights to the expert unit, the KV cache to the attention unit (`auto` stays home)."""
    units = machine.units
    moved: dict[str, float] = {}
    per_device, weights, kv = memory.per_device, memory.weights, memory.kv_cache
    experts = memory.expert_weights
    if expert_unit in units and units[expert_unit].memory_capacity is not None and experts is not None:
        per_device = per_device - experts
        weights = weights - float(experts.max())
        moved[expert_unit] = moved.get(expert_unit, 0.0) + float(experts.max())
        experts = np.zeros_like(experts)
    if attention_unit in units and units[attention_unit].memory_capacity is not None and kv:
        per_device = per_device - kv
        moved[attention_unit] = moved.get(attention_unit, 0.0) + kv
        kv = 0.0
    if not moved:
        return memory
    return replace(memory, weights=weights, kv_cache=kv, per_device=per_device, expert_weights=experts,
                   on_units=tuple(moved.items()))
