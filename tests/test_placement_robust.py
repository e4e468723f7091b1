"""Robust placement: scenario objective, rebalance rule, out-of-sample evaluation, drift scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.placement.evaluate import check_placement
from moesim.placement.ilp import IlpOptions, _device_times, available_solvers, solve_ilp
from moesim.placement.methods import run_method
from moesim.placement.out_of_sample import evaluate_out_of_sample, split_windows
from moesim.placement.problem import ExpertTimeModel, PlacementProblem, TOKENS_MODEL
from moesim.placement.rebalance import rebalance_decision
from moesim.placement.scenarios import sample_drift_scenarios
from moesim.workloads.synthetic_routing import DriftConfig

needs_highs = pytest.mark.skipif("highs" not in available_solvers(), reason="the robust ILP needs highspy")


def problem_for(scenarios: np.ndarray, devices: int, redundant: int) -> PlacementProblem:
    """A placement problem on the scenarios' mean load, one node, no traffic."""
    S, L, E = scenarios.shape
    load = scenarios.mean(axis=0)
    dispatch = np.repeat(load[:, None, :] / devices, devices, axis=1)
    slots = np.full(devices, -(-(E + redundant) // devices))
    return PlacementProblem(load, dispatch, np.zeros((L - 1, E, E)), 2, np.zeros(devices, dtype=int),
                            np.zeros((devices, devices)), slots, redundant, TOKENS_MODEL)


def worst_bottleneck(shares: np.ndarray, scenarios: np.ndarray) -> float:
    """Sum over layers of the worst scenario's bottleneck device load."""
    return float(sum(_device_times(shares[l], scenarios[:, l], TOKENS_MODEL).max() for l in range(shares.shape[0])))


@needs_highs
@pytest.mark.parametrize("seed", range(3))
def test_worst_case_robust_is_never_worse_on_the_worst_scenario(seed):
    rng = np.random.default_rng(seed)
    scenarios = rng.gamma(0.8, 10.0, size=(4, 1, 8))  # 4 scenarios, 1 layer, 8 experts
    problem = problem_for(scenarios, devices=3, redundant=2)
    opts = IlpOptions(solver="highs", traffic_weight=0.0, time_limit=20, gap=1e-9, decomposition="flat")
    single = solve_ilp(problem, opts).placement.shares()
    robust = solve_ilp(problem, IlpOptions(**{**opts.__dict__, "worst_weight": 1.0}), scenarios=scenarios)
    check_placement(robust.placement, problem)
    assert worst_bottleneck(robust.placement.shares(), scenarios) <= worst_bottleneck(single, scenarios) + 1e-6


@needs_highs
def test_one_scenario_robust_equals_single():
    rng = np.random.default_rng(7)
    scenarios = rng.gamma(0.8, 10.0, size=(1, 2, 8))
    problem = problem_for(scenarios, devices=3, redundant=2)
    opts = IlpOptions(solver="highs", traffic_weight=0.0, time_limit=20, gap=1e-9, decomposition="flat")
    single = solve_ilp(problem, opts)
    for lam in (0.0, 0.5, 1.0):
        robust = solve_ilp(problem, IlpOptions(**{**opts.__dict__, "worst_weight": lam}), scenarios=scenarios)
        np.testing.assert_allclose([r.objective for r in robust.reports], [r.objective for r in single.reports],
                                   rtol=1e-7)


@needs_highs
def test_ilp_robust_method_is_registered_and_feasible():
    rng = np.random.default_rng(3)
    scenarios = rng.gamma(0.8, 10.0, size=(3, 2, 8))
    problem = problem_for(scenarios, devices=3, redundant=2)  # solves to optimality well inside the limit
    res = run_method("ilp_robust", problem, IlpOptions(time_limit=5, decomposition="flat"), scenarios=scenarios)
    assert res.ilp is not None and np.isfinite(res.ilp.worst_gap)
    drawn = run_method("ilp_robust", problem, IlpOptions(time_limit=5, decomposition="flat"))  # drift-model draws
    assert drawn.placement.shares().shape == (2, 8, 3)


def test_rebalance_moves_only_when_gain_beats_cost():
    """2 devices, 1 layer, 2 experts, loads (3, 1), 1 token = 1 s (time_per_unit), 1 GB experts, 1 GB/s link.

    Current: both experts on device 0 (bottleneck 4 s). Candidate: expert 1 on device 1 (bottleneck
    3 s): gain 1 s per step; one copy of 1 GB moves over the 1 GB/s link: cost 1 s."""
    current = np.zeros((1, 2, 2))
    current[0, :, 0] = 1.0
    candidate = np.zeros((1, 2, 2))
    candidate[0, 0, 0] = candidate[0, 1, 1] = 1.0
    load = np.array([[3.0, 1.0]])
    bw = np.full((2, 2), 1e9)
    tm = ExpertTimeModel(0.0, 1.0, "tokens")
    stay = rebalance_decision(current, candidate, load, tm, 1e9, bw, horizon_steps=1)
    assert (stay.step_gain_s, stay.cost_s, stay.copies_moved, stay.move) == (1.0, 1.0, 1, False)  # equal: stay
    move = rebalance_decision(current, candidate, load, tm, 1e9, bw, horizon_steps=2)
    assert move.gain_s == 2.0 and move.move
    assert move.bytes_by_pair[0, 1] == 1e9 and move.bytes_by_pair.sum() == 1e9
    slow = rebalance_decision(current, candidate, load, tm, 1e9, np.full((2, 2), 0.25e9), horizon_steps=2)
    assert slow.cost_s == 4.0 and not slow.move  # a 4x slower link: 4 s > 2 s gained
    assert "stay" in slow.summary()


def test_out_of_sample_never_scores_on_planning_windows():
    W, k = 10, 6
    plan, score = split_windows(W, k)
    assert np.intersect1d(plan, score).size == 0 and plan.max() < score.min() and plan.size + score.size == W
    windows = np.stack([np.full((1, 4), float(w + 1)) for w in range(W)])  # window w is marked by its value
    seen = []

    def planner(planning: np.ndarray) -> np.ndarray:
        seen.append(np.unique(planning))
        return np.tile(np.eye(4)[None], (1, 1, 1))  # one expert per device

    rows = evaluate_out_of_sample(windows, k, {"one-per-device": planner})
    assert set(seen[0]) == set(range(1, k + 1))  # the planner saw windows 0..k-1 only
    assert rows[0].in_sample == rows[0].out_of_sample == 1.0
    with pytest.raises(ValueError):
        split_windows(W, W)


def test_drift_scenarios_keep_totals_and_vary():
    rng = np.random.default_rng(0)
    load = rng.gamma(1.0, 5.0, size=(3, 16))
    sc = sample_drift_scenarios(load, 5, DriftConfig(sigma=0.2, rho=0.9), batch_concentration=200.0, horizon=4)
    assert sc.shape == (5, 3, 16) and (sc >= 0).all()
    np.testing.assert_allclose(sc.sum(axis=2), np.broadcast_to(load.sum(axis=1), (5, 3)))
    assert np.std(sc, axis=0).max() > 0
    still = sample_drift_scenarios(load, 2, DriftConfig(sigma=0.0), horizon=4)
    np.testing.assert_allclose(still, np.broadcast_to(load, (2, 3, 16)))
