"""The expert-placement problem: what every placement method (baseline or ILP) is given.

Per MoE layer: the mean load of each expert, the tokens each (group-local) source device
sends to each expert, and the layer-to-layer flow of tokens between experts. Per device: its
node, its expert slots (memory) and the cost of moving one token to every other device. The
expert-time model turns a device's slots and tokens into seconds, so "bottleneck" means the
slowest device's expert time, the quantity the simulator's straggler waits on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moesim.workloads.routing import RoutingSource
from moesim.workloads.routing_statistics import routing_statistics


@dataclass(frozen=True)
class ExpertTimeModel:
    """Seconds for one expert copy on one device: `fixed` if it gets any tokens (weight read,
    launch) plus `per_token` x tokens. Linear so that the ILP can use it exactly; fitted to the
    simulator's cost function by `fit_expert_time` (or tokens only: fixed=0, per_token=1)."""

    fixed: float
    per_token: float
    unit: str = "s"  # "s" for a fitted time model, "tokens" for token balancing

    def time(self, tokens: np.ndarray, copies: np.ndarray) -> np.ndarray:
        return self.fixed * copies + self.per_token * tokens


TOKENS_MODEL = ExpertTimeModel(0.0, 1.0, "tokens")


@dataclass(frozen=True)
class PlacementProblem:
    """One expert-parallel group's placement problem (every group gets the same placement)."""

    load: np.ndarray  # (L, E) mean assignments per step each expert receives
    dispatch: np.ndarray  # (L, D, E) mean assignments per step from group-local source s to expert e
    flow: np.ndarray  # (L-1, E, E) mean (expert at l, expert at l+1) pairs per step, k x k per token
    top_k: int
    node_of: np.ndarray  # (D,) node index of each device
    token_cost: np.ndarray  # (D, D) seconds to move one token s -> d (dispatch + combine), 0 on diagonal
    slots: np.ndarray  # (D,) most expert copies a device can hold (memory)
    redundant: int = 0  # copies allowed beyond one per expert, summed over devices
    time_model: ExpertTimeModel = TOKENS_MODEL
    provenance: dict[str, Any] = field(default_factory=dict)
    expert_groups: int = 1  # routing groups of consecutive experts (DeepSeek-V3 n_group); 1 = ungrouped
    load_history: np.ndarray | None = None  # (W, L, E) per-step load of each measured window (load's units)

    @property
    def num_layers(self) -> int:
        return self.load.shape[0]

    @property
    def num_experts(self) -> int:
        return self.load.shape[1]

    @property
    def num_devices(self) -> int:
        return self.node_of.size

    @property
    def num_nodes(self) -> int:
        return int(self.node_of.max()) + 1

    @property
    def budget(self) -> int:
        """Total expert copies allowed: one per expert plus the redundant ones."""
        return self.num_experts + self.redundant

    def with_time_model(self, model: ExpertTimeModel) -> "PlacementProblem":
        return replace(self, time_model=model)

    def check(self) -> None:
        """Raise ValueError with an explanation when no placement can satisfy the problem."""
        E, D = self.num_experts, self.num_devices
        if self.expert_groups < 1 or E % self.expert_groups:
            raise ValueError(f"{E} experts do not split into {self.expert_groups} equal expert groups")
        if self.redundant < 0:
            raise ValueError(f"redundant slots must be >= 0, got {self.redundant}")
        capacity = int(self.slots.sum())
        if capacity < E:
            raise ValueError(f"{E} experts do not fit: the {D} devices hold {capacity} expert copies in all "
                             f"(slots per device: {sorted(set(self.slots.tolist()))}); add devices or memory, "
                             "or quantize the experts")
        if self.redundant > capacity - E:
            raise ValueError(f"{self.redundant} redundant copies asked but only {capacity - E} slots are left "
                             f"after one copy of each of the {E} experts ({D} devices x slots {sorted(set(self.slots.tolist()))})")
        if (self.load < 0).any() or not np.isfinite(self.load).all():
            raise ValueError("expert loads must be finite and non-negative")


def uniform_slots(num_experts: int, num_devices: int, redundant: int, memory_slots: int | None = None) -> np.ndarray:
    """Slots per device as DeepSeek's EPLB lays them out: ceil((E + R) / D) physical experts
    each, capped by what memory allows."""
    per = -(-(num_experts + redundant) // num_devices)
    if memory_slots is not None:
        per = min(per, memory_slots)
    return np.full(num_devices, per, dtype=np.int64)


def problem_from_routing(routing: RoutingSource, tokens: np.ndarray, num_layers: int, *, node_of: np.ndarray,
                         token_cost: np.ndarray, redundant: int = 0, slots: np.ndarray | None = None,
                         steps: int = 16, first_step: int = 0, time_model: ExpertTimeModel = TOKENS_MODEL,
                         provenance: dict[str, Any] | None = None, expert_groups: int = 1,
                         flow_from_top1: bool = False) -> PlacementProblem:
    """Sample `steps` steps of a routing source (trace or generator) into a placement problem.

    `tokens[s]` is what each device sends per step; devices beyond one group (len(node_of))
    are further expert-parallel groups whose routing is averaged in. `flow_from_top1`: the
    layer-to-layer flow a token makes when it stays on its top-1 expert's device (exflow).
    """
    D = node_of.size
    dispatch, flow, how = routing_statistics(routing, np.asarray(tokens, dtype=np.int64), num_layers, D, steps,
                                             first_step, flow_from_top1)
    E = routing.num_experts
    slot_arr = uniform_slots(E, D, redundant) if slots is None else np.asarray(slots, dtype=np.int64)
    prov = {"steps": [first_step, first_step + steps], "flow": how, **(provenance or {})}
    return PlacementProblem(dispatch.sum(axis=1), dispatch, flow, routing.top_k, np.asarray(node_of), token_cost,
                            slot_arr, redundant, time_model, prov, expert_groups)
