"""When is a new placement worth moving expert weights for? A cost/benefit rule.

Moving from the current placement to a candidate means every (layer, expert, device) copy the
candidate has and the current one lacks must be fetched: its weight bytes cross the link from
the current holder with the fastest link to the receiving device. The movement cost is the
wall time of those transfers: devices receive in parallel, each device's incoming copies one
after another at the link's bandwidth (max over receivers of sum bytes / bandwidth). The gain
is the expected step-time saving (sum over MoE layers of the bottleneck device's expert time,
averaged over load scenarios) times the steps the placement will serve. Move iff gain > cost.

A planner that starts from scratch names devices arbitrarily: `keep_copies_in_place`
(placement/renaming.py) renames a candidate's devices to keep copies where they are, and
`plan_rebalance` re-plans with the ILP from the placement in force, pricing every copy it moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.ilp import IlpOptions, IlpResult, solve_ilp
from moesim.placement.problem import ExpertTimeModel, PlacementProblem
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


def seconds_per_copy(expert_bytes: float, bandwidth: np.ndarray) -> float:
    """A linear price of moving one expert copy: its bytes over the fastest link into a device,
    with the moves spread over all devices receiving in parallel (the wall time `rebalance_decision`
    charges is the max over receivers, which the re-plan's verdict still checks)."""
    bw = np.asarray(bandwidth, dtype=float).copy()
    np.fill_diagonal(bw, 0.0)
    fastest_in = bw.max(axis=0)
    if (fastest_in <= 0).any():
        raise ValueError("every device needs a link to receive expert weights over")
    return float(expert_bytes / fastest_in.mean() / bw.shape[0])


def copy_price(expert_bytes: float, bandwidth: np.ndarray, horizon_steps: int, time_per_unit: float = 1.0) -> float:
    """What moving one copy costs per step the new placement serves, in the time model's units:
    `seconds_per_copy` spread over `horizon_steps` (the price repair and plan_rebalance charge)."""
    if horizon_steps <= 0:
        raise ValueError(f"horizon_steps must be > 0, got {horizon_steps}")
    return seconds_per_copy(expert_bytes, bandwidth) / time_per_unit / horizon_steps


def plan_rebalance(problem: PlacementProblem, current: np.ndarray, expert_bytes: float, bandwidth: np.ndarray,
                   horizon_steps: int, time_per_unit: float = 1.0, options: IlpOptions | None = None,
                   scenarios: np.ndarray | None = None) -> IlpResult:
    """Re-plan from the placement in force: the ILP pays, per copy the current shares (L, E, D) lack,
    its move time spread over the `horizon_steps` the new plan will serve (in the time model's
    units), so it keeps what is in place unless moving pays back within the horizon."""
    price = copy_price(expert_bytes, bandwidth, horizon_steps, time_per_unit)
    return solve_ilp(problem, options, scenarios=scenarios, move_from=current, copy_cost=price)
