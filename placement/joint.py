"""Joint placement across layers: block-coordinate sweeps over the layer-by-layer ILP.

`solve_ilp` places layers in order, so layer l's affinity term sees only the already fixed
layer l-1: it can follow the flow it receives but not prepare for the flow it sends on, and an
early choice that fits a weak pair can cut a strong later pair in half. MoETuner and ExFlow
solve the co-location of all layers at once (a quadratic program); here the same objective is
approached by block-coordinate descent, which keeps every subproblem the linear per-layer MILP:

    start   the layer-by-layer ilp_affinity placement
    sweep   for l = 0 .. L-1: re-solve layer l with BOTH neighbours fixed, i.e. its traffic cost
            is dispatch + the flow from layer l-1 (as in solve_ilp) + the flow into layer l+1:
            cost[i, d] += sum_j flow[l][i, j] / k * sum_d' next[j, d'] * c[d, d'] / D
            with the same two phases as ilp_affinity (bottleneck within `slack` of the load-only
            optimum, then least traffic), warm-started from the current layer;
            keep the new layer only if the total objective (sum over layers of bottleneck +
            traffic weight x (dispatch + affinity of every consecutive pair)) goes down
    stop    when a sweep improves the total by less than `tol` (relative), or after `sweeps`.

Changing layer l alone changes the total by exactly its subproblem's objective change (the
pairs (l-1, l) and (l, l+1) are both in its cost), so every accepted step is a true descent
and the result is never worse than ilp_affinity on the total objective. Deterministic: the
solver and its warm starts are, and layers are visited in a fixed order. Loads are the
problem's mean load (no scenarios).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim.placement.ilp import (
    IlpOptions,
    IlpResult,
    SolveReport,
    _layer_costs,
    _objective,
    _solve_neighbourhoods,
    _solve_part,
    pick_solver,
    solve_ilp,
)
from moesim.placement.placement import from_share_matrices
from moesim.placement.problem import PlacementProblem

DEFAULT_SWEEPS = 3
DEFAULT_TOL = 1e-3  # a sweep improving the total by less than 0.1% ends the search


def _next_costs(problem: PlacementProblem, layer: int, next_shares: np.ndarray, opts: IlpOptions) -> np.ndarray:
    """(E, D) cost of moving expert i's tokens (at `layer`, on device d) to layer+1's experts,
    placed by `next_shares`: the mirror image of _layer_costs's previous-layer term."""
    if not opts.affinity or layer + 1 >= problem.num_layers or problem.flow.shape[0] <= layer:
        return np.zeros((problem.num_experts, problem.num_devices))
    c = problem.token_cost
    if problem.time_model.unit == "tokens":  # as _layer_costs: an inter-node move is one token of work
        c = c / c.max() if c.max() > 0 else c
    flow = problem.flow[layer] / problem.top_k  # (E_l, E_l+1) token moves
    return flow @ (next_shares @ c.T) / problem.num_devices  # sum_j flow[i, j] sum_d' next[j, d'] c[d, d']


def total_objective(problem: PlacementProblem, shares: np.ndarray, opts: IlpOptions) -> float:
    """Sum over layers of bottleneck + weight x (dispatch traffic + affinity from the layer before):
    every consecutive pair counted once, the quantity the sweeps descend on."""
    total = 0.0
    for l in range(problem.num_layers):
        cost = _layer_costs(problem, l, shares[l - 1] if l > 0 else None, opts)
        total += _objective(shares[l], problem.load[l], cost, problem.time_model, opts.traffic_weight)
    return total


def _resolve_layer(problem: PlacementProblem, layer: int, cost: np.ndarray, warm: np.ndarray, opts: IlpOptions,
                   solver: str, large: bool) -> tuple[np.ndarray, list[SolveReport]]:
    """One layer's two-phase solve (as solve_ilp does it) on the given cost, from `warm`."""
    load, tm = problem.load[layer], problem.time_model
    if not large:
        return _solve_part(load, cost, problem.slots, problem.budget, tm, warm, opts, solver, layer, "joint")
    reports: list[SolveReport] = []
    cap = None
    start = warm
    if opts.bottleneck_slack is not None:
        load_only = replace(opts, traffic_weight=0.0, bottleneck_slack=None)
        first, rep = _solve_neighbourhoods(load, cost, problem.slots, problem.budget, tm, warm, load_only, solver,
                                           layer)
        rep[0].part = "joint (load)"
        reports.extend(rep)
        cap = _objective(first, load, cost, tm, 0.0, 1.0) * (1 + opts.bottleneck_slack)
        if _objective(warm, load, cost, tm, 0.0, 1.0) > cap:
            start = first
    shares, rep = _solve_neighbourhoods(load, cost, problem.slots, problem.budget, tm, start, opts, solver, layer,
                                        cap)
    rep[0].part = "joint"
    reports.extend(rep)
    return shares, reports


def solve_joint(problem: PlacementProblem, options: IlpOptions | None = None, progress=None,
                sweeps: int = DEFAULT_SWEEPS, tol: float = DEFAULT_TOL) -> IlpResult:
    """ilp_affinity's layer-by-layer placement, then up to `sweeps` block-coordinate sweeps that
    re-solve each layer with both neighbours fixed (module docstring). `options` as for
    ilp_affinity (bottleneck_slack 0.02 when not given); time_limit applies per layer solve."""
    opts = options or IlpOptions(bottleneck_slack=0.02)
    base = solve_ilp(problem, opts, progress)
    L, E, D = problem.num_layers, problem.num_experts, problem.num_devices
    if L < 2 or not opts.affinity or not (problem.flow > 0).any() or sweeps <= 0:
        return base  # no inter-layer flow: nothing for the sweeps to gain
    solver = pick_solver(opts.solver)
    large = opts.decomposition == "neighbourhood" or (opts.decomposition == "auto" and E * D > opts.flat_limit)
    shares = base.placement.shares().copy()
    reports = list(base.reports)
    best = total_objective(problem, shares, opts)
    for _ in range(sweeps):
        start_total = best
        for l in range(L):
            cost = _layer_costs(problem, l, shares[l - 1] if l > 0 else None, opts)
            if l + 1 < L:
                cost = cost + _next_costs(problem, l, shares[l + 1], opts)
            cand, rep = _resolve_layer(problem, l, cost, shares[l], opts, solver, large)
            reports.extend(rep)
            if np.isnan(cand).any():
                continue
            trial = shares.copy()
            trial[l] = cand
            t = total_objective(problem, trial, opts)
            if t < best - 1e-9 * max(1.0, abs(best)):  # strictly better only: ties keep the current layer
                shares, best = trial, t
        if start_total - best < tol * abs(start_total):
            break
    return IlpResult(from_share_matrices(shares), reports)
