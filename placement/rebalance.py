"""When is a new placement worth moving expert weights for? A cost/benefit rule.

Moving from the current placement to a candidate means every (layer, expert, device) copy the
candidate has and the current one lacks must be fetched: its weight bytes cross the link from
the current holder with the fastest link to the receiving device. The movement cost is the
wall time of those transfers: devices receive in parallel, each device's incoming copies one
after another at the link's bandwidth (max over receivers of sum bytes / bandwidth). The gain
is the expected step-time saving (sum over MoE layers of the bottleneck device's expert time,
averaged over load scenarios) times the steps the placement will serve. Move iff gain > cost.

A planner that starts from scratch names devices arbitrarily, so a new plan may move nearly
every copy although most of it is the old one under other device names. `keep_copies_in_place`
renames the candidate's devices (per layer, nodes first, then devices within nodes) to keep
as many copies where they already are as possible: the balance is unchanged (renaming devices
permutes their loads) and the bytes moved drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from moesim.placement.problem import ExpertTimeModel
from moesim.workloads.model_spec import ModelSpec


def model_expert_bytes(spec: ModelSpec) -> float:
    """Bytes of one routed expert's weights as stored (FFN matrices x hidden x intermediate x dtype)."""
    from moesim.units import DTYPE_BITS

    bits = DTYPE_BITS[spec.routed_expert_dtype]
    return spec.ffn_matrices * spec.hidden_size * spec.moe.expert_intermediate_size * bits / 8


@dataclass(frozen=True)
class RebalanceReport:
    """The decision and the figures behind it (seconds, bytes)."""

    move: bool
    gain_s: float  # expected step-time saving x horizon steps
    cost_s: float  # wall time of the weight transfers
    step_gain_s: float  # expected saving per step (all MoE layers)
    bytes_moved: float
    copies_moved: int
    bytes_by_pair: np.ndarray  # (D, D) bytes from source device to receiving device

    def summary(self) -> str:
        verdict = "move" if self.move else "stay"
        return (f"{verdict}: gain {self.gain_s:.4g} s ({self.step_gain_s * 1e6:.4g} us/step) vs cost "
                f"{self.cost_s:.4g} s to move {self.copies_moved} copies, {self.bytes_moved / 1e9:.4g} GB")


def expected_step_time(shares: np.ndarray, load: np.ndarray, tm: ExpertTimeModel) -> float:
    """Sum over layers of the slowest device's expert time, averaged over scenarios.

    shares (L, E, D); load (L, E) or scenarios (S, L, E)."""
    loads = np.asarray(load, dtype=float)
    loads = loads[None] if loads.ndim == 2 else loads
    held = (shares > 1e-9).astype(float)
    tokens = np.einsum("sle,led->sld", loads, shares)
    copies = np.einsum("sle,led->sld", (loads > 0).astype(float), held)
    return float(tm.time(tokens, copies).max(axis=2).sum(axis=1).mean())


def transfer_bytes(current: np.ndarray, candidate: np.ndarray, expert_bytes: float, bandwidth: np.ndarray
                   ) -> tuple[np.ndarray, int]:
    """(D, D) bytes each device pair carries to give the candidate its new copies, and how many copies.

    Each new copy comes from the current holder of that expert (same layer) with the fastest link."""
    cur, new = current > 1e-9, candidate > 1e-9
    D = current.shape[2]
    pairs = np.zeros((D, D))
    fresh = np.argwhere(new & ~cur)  # (layer, expert, receiving device)
    for l, e, d in fresh:
        holders = np.flatnonzero(cur[l, e])
        src = int(holders[np.argmax(bandwidth[holders, d])])
        pairs[src, d] += expert_bytes
    return pairs, len(fresh)


def rebalance_decision(current: np.ndarray, candidate: np.ndarray, load: np.ndarray, tm: ExpertTimeModel,
                       expert_bytes: float, bandwidth: np.ndarray, horizon_steps: int,
                       time_per_unit: float = 1.0) -> RebalanceReport:
    """Should the system move from `current` to `candidate` shares (L, E, D)?

    `load` (L, E) or scenarios (S, L, E) is the load expected over the horizon; `bandwidth` (D, D)
    bytes/s per link; `time_per_unit` converts the time model's unit to seconds (1 for a fitted
    model in seconds; seconds per token for a tokens model)."""
    current, candidate = np.asarray(current, dtype=float), np.asarray(candidate, dtype=float)
    if current.shape != candidate.shape or current.ndim != 3:
        raise ValueError(f"placements must be (layers, experts, devices) of one shape: {current.shape}, "
                         f"{candidate.shape}")
    if horizon_steps < 0:
        raise ValueError(f"horizon_steps must be >= 0, got {horizon_steps}")
    step_gain = (expected_step_time(current, load, tm) - expected_step_time(candidate, load, tm)) * time_per_unit
    pairs, copies = transfer_bytes(current, candidate, expert_bytes, bandwidth)
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = np.where(pairs > 0, pairs / bandwidth, 0.0)
    cost = float(seconds.sum(axis=0).max()) if copies else 0.0
    gain = step_gain * horizon_steps
    return RebalanceReport(bool(gain > cost), gain, cost, step_gain, float(pairs.sum()), copies, pairs)


def _best_renaming(overlap: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """rename[c] = the current device a candidate device c becomes: the assignment that keeps
    the most copies (`overlap[d, c]` copies stay if c is renamed d), over allowed pairs only."""
    big = overlap.sum() + 1.0
    rows, cols = linear_sum_assignment(np.where(allowed, -overlap, big))
    rename = np.empty(overlap.shape[1], dtype=np.int64)
    rename[cols] = rows
    return rename


def keep_copies_in_place(current: np.ndarray, candidate: np.ndarray, node_of: np.ndarray | None = None,
                         slots: np.ndarray | None = None) -> np.ndarray:
    """The candidate shares (L, E, D) with its devices renamed, per layer, to keep the most
    copies of `current` in place.

    Whole nodes map to whole nodes first (so a node-aware plan keeps its node structure), then
    devices within each node pair; a device only takes the name of one with the same slots.
    Loads per device are only permuted, so every balance figure of the candidate is kept."""
    current, candidate = np.asarray(current, dtype=float), np.asarray(candidate, dtype=float)
    if current.shape != candidate.shape or current.ndim != 3:
        raise ValueError(f"placements must be (layers, experts, devices) of one shape: {current.shape}, "
                         f"{candidate.shape}")
    D = current.shape[2]
    node_of = np.zeros(D, dtype=np.int64) if node_of is None else np.asarray(node_of, dtype=np.int64)
    slots = np.ones(D, dtype=np.int64) if slots is None else np.asarray(slots)
    nodes = np.unique(node_of)
    members = [np.flatnonzero(node_of == n) for n in nodes]
    same_shape = np.array([[len(a) == len(b) and sorted(slots[a]) == sorted(slots[b]) for b in members]
                           for a in members])
    out = np.empty_like(candidate)
    for layer in range(current.shape[0]):
        overlap = (current[layer] > 1e-9).T.astype(float) @ (candidate[layer] > 1e-9).astype(float)  # (D, D)
        node_overlap = np.array([[overlap[np.ix_(a, b)].sum() for b in members] for a in members])
        node_rename = _best_renaming(node_overlap, same_shape)
        rename = np.empty(D, dtype=np.int64)
        for cand_node, cur_node in enumerate(node_rename):
            a, b = members[cur_node], members[cand_node]
            sub = _best_renaming(overlap[np.ix_(a, b)], slots[a][:, None] == slots[b][None, :])
            rename[b] = a[sub]
        out[layer][:, rename] = candidate[layer]
    return out
