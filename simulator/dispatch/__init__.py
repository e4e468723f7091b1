"""Dispatch algorithms: each turns a step's routed rows and the placement into the traffic of the
MoE layers' dispatch and combine (DESIGN.md "Dispatch"). The network fabric times that traffic.

One file per family: `direct` (Megatron all-to-all, one row per (token, expert)), `dedup` (a
token once per destination device), `hierarchical` (DeepEP normal: once per destination node
over the network, then NVLink forwarding), `low_latency` (DeepEP low-latency: per (token,
expert) RDMA with a per-kernel floor), `token_stays` (ExFlow: a token stays on its expert's device
between layers). Each is a one-method object; `Traffic` is what they make.
An algorithm carries its own facts, so nothing else keeps a table of names: `comm_kind` (whose
kernel floors and efficiency in message size apply, `comm_cost`), `stages` (pipelined stages of
its traffic) and `row_cost` (what the placement ILP pays for one routed row between two devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class DispatchLayout:
    """What dispatch needs to know of the machine and the model: groups, nodes, bytes per token."""

    num_devices: int
    ep: int  # devices of one expert-parallel group (contiguous)
    node_of: np.ndarray  # (N,) node of each device
    local_rank: np.ndarray  # (N,) index within the node
    dispatch_bytes: float  # one token's hidden state as dispatch sends it
    combine_bytes: float


@dataclass
class Traffic:
    """Bytes of every MoE layer's dispatch and combine in one step, stage by stage.

    Each stage is (Lm, N, N) bytes from device to device. One stage is a plain all-to-all; two
    stages are pipelined (the second forwards what the first delivered, chunk by chunk, as
    DeepEP's normal kernels do). `kernel_latency`, when given, is a fixed cost per collective kernel
    (charged after its last byte) that replaces the cluster profile's kernel floor (`comm_cost`);
    None: the profile's floor for the algorithm's comm kind."""

    dispatch: list[np.ndarray]
    combine: list[np.ndarray]
    kernel_latency: float | None = None
    distinct: np.ndarray | None = field(default=None)  # (Lm, N, N) token copies sent (dedup family)
    # tokens move between layers (exflow): (Lm, N) tokens resident on each device when MoE layer i's
    # attention runs; None: every token's attention runs on its own device (every other algorithm)
    residency: np.ndarray | None = None
    # (Lm,) True where a layer's combine moves nothing and launches no kernel (no floor); None: every
    # layer launches its combine kernel
    combine_skipped: np.ndarray | None = None
    # the comm kind its kernels are costed as where a step's algorithm differs from the scenario's
    # (auto dispatch: hierarchical for prefill, low_latency for decode); None: the scenario's
    kind: str | None = None

    def total(self, which: str) -> np.ndarray:
        """(Lm, N, N) bytes summed over stages (what the links carry)."""
        stages = self.dispatch if which == "dispatch" else self.combine
        return stages[0] if len(stages) == 1 else sum(stages[1:], stages[0].copy())


@dataclass(frozen=True)
class TokenIds:
    """Each token's experts, where routing drew them (per-token generators, traces): the dedup
    family then counts distinct (token, destination) pairs exactly instead of in expectation.
    Given only when every routed row is computed on the one copy of its expert (no capacity
    drops, no replicas), so the ids say exactly where each row goes."""

    token_experts: list[np.ndarray]  # per MoE layer (T, k) expert ids
    token_source: np.ndarray  # (T,) the device (or MoE-TP shard group) each token starts on


@dataclass(frozen=True)
class RowPricing:
    """What pricing one routed (token, expert) row needs, for the first EP group's devices: `base`
    (ep, ep) seconds of one row's dispatch + combine payload over each pair's slowest link;
    `per_device` / `per_node` the expected distinct (token, device) / (token, node) pairs per row
    under even routing; each device's node and local rank."""

    base: np.ndarray
    per_device: float
    per_node: float
    node: np.ndarray
    local_rank: np.ndarray


class DispatchAlgorithm(Protocol):
    name: str
    comm_kind: str  # the kernel kind whose floors and message-size efficiency apply (comm_cost)
    stages: int  # pipelined stages of its traffic (1: a plain all-to-all)
    flow_from_top1: bool  # placement measures layer-to-layer flow from each token's top-1 expert (exflow)

    def row_cost(self, p: RowPricing) -> np.ndarray:
        """(ep, ep) seconds the placement ILP charges one routed row from device s to device d."""
        ...

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        """Inter-node rows one routed inter-node row costs (placement scoring)."""
        ...

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        """Traffic of one step.

        device_rows (Lm, N, N): (token, expert) rows from each device to each device (after capacity
        and replica split); rows (G, Lm, ep, J): the same per slot, per EP group; slot_device (Lm, J):
        the group-local device of each slot; tokens (N,): tokens each device sends into the layer;
        token_ids: per-token expert ids where known (slot j is then expert j)."""
        ...
