"""The one memory ledger: what a device may fill, and what a run keeps resident in it.

Every memory figure a command checks or reports comes from here: the scenario's fit check and its
`memory` estimate, the offload cache's capacity, the placement study's expert slots and re-placed
scenarios, and the serving ranks' KV budget. A device may fill its capacity less the runtime
reserve (`policies.memory_reserve`); a run keeps its weights (the placed experts at their
precision, divided over MoE-TP shards), activations, communication buffers and KV cache, and with
offloading only the cached experts.
"""

from __future__ import annotations

import numpy as np

from moesim.placement import Placement
from moesim.simulator.config import WorkloadConfig
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
                    max_moe_tokens: int, expert_bytes: np.ndarray | None = None) -> MemoryEstimate:
    """Peak memory per device of a workload (KV cache to the last decode step) under a placement,
    with every placed expert resident (`expert_bytes[l, e]` each; default the model dtype)."""
    kv_len = (wl.kv_len or 0) + wl.steps if wl.phase == "decode" else wl.seq_len
    replica_tokens = batch * (wl.seq_len if wl.phase == "prefill" else 1)
    return estimate_memory(model, placement, tp, batch, kv_len, replica_tokens, max_moe_tokens, expert_bytes)


def resident_memory(model: ModelSpec, placement: Placement, tp: int, moe_tp: int, batch: int, wl: WorkloadConfig,
                    max_moe_tokens: int, precision: ExpertPrecision, offload: OffloadConfig | None, machine,
                    budget: float) -> tuple[MemoryEstimate, OffloadSetup | None]:
    """What a device keeps under a placement, and the offload set-up that sizes its expert cache
    to `budget` where the config offloads (raises offload's `OffloadSetupError`)."""
    memory = workload_memory(model, placement, tp, batch, wl, max_moe_tokens, precision.expert_bytes() / moe_tp)
    if offload is None:
        return memory, None
    setup = setup_offload(offload, machine, placement, memory, precision.expert_bytes(), budget)
    return setup.memory, setup
