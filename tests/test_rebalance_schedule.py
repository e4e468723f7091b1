"""Placement over time: renaming a new plan to keep copies in place, and the rule-driven replay
that re-plans after every window without looking ahead."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moesim.placement.baselines import eplb_global
from moesim.placement.ilp import IlpOptions, available_solvers, solve_ilp
from moesim.placement.out_of_sample import max_over_mean
from moesim.placement.problem import PlacementProblem, TOKENS_MODEL
from moesim.placement.rebalance import rebalance_decision, transfer_bytes
from moesim.placement.renaming import keep_copies_in_place
from moesim.placement.rebalance_schedule import replay_rebalancing


def problem_for(load: np.ndarray, devices: int, redundant: int, per_node: int) -> PlacementProblem:
    L, E = load.shape
    slots = np.full(devices, -(-(E + redundant) // devices))
    node_of = np.arange(devices) // per_node
    return PlacementProblem(load, np.repeat(load[:, None, :] / devices, devices, axis=1), np.zeros((L - 1, E, E)),
                            2, node_of, np.zeros((devices, devices)), slots, redundant, TOKENS_MODEL)


def test_renamed_plan_keeps_balance_and_moves_nothing_when_only_names_differ():
    rng = np.random.default_rng(0)
    load = rng.gamma(0.7, 10.0, size=(3, 16))
    problem = problem_for(load, devices=8, redundant=8, per_node=4)
    current = eplb_global(problem).shares()
    # the same plan with devices renamed within and across nodes: nothing needs to move
    perm = np.array([5, 4, 7, 6, 1, 0, 3, 2])
    shuffled = current[:, :, perm]
    assert transfer_bytes(current, shuffled, 1.0, np.ones((8, 8)))[1] > 0
    kept = keep_copies_in_place(current, shuffled, problem.node_of, problem.slots)
    assert transfer_bytes(current, kept, 1.0, np.ones((8, 8)))[1] == 0
    np.testing.assert_allclose(kept, current)


@pytest.mark.parametrize("seed", range(3))
def test_renaming_never_moves_more_and_keeps_every_balance_figure(seed):
    rng = np.random.default_rng(seed)
    load = rng.gamma(0.7, 10.0, size=(2, 32))
    problem = problem_for(load, devices=8, redundant=8, per_node=4)
    current = eplb_global(problem).shares()
    candidate = eplb_global(replace(problem, load=load * rng.lognormal(0, 0.4, size=load.shape))).shares()
    kept = keep_copies_in_place(current, candidate, problem.node_of, problem.slots)
    bw = np.ones((8, 8))
    assert transfer_bytes(current, kept, 1.0, bw)[1] <= transfer_bytes(current, candidate, 1.0, bw)[1]
    # renaming permutes device loads: each layer's sorted device loads are the candidate's
    future = rng.gamma(0.7, 10.0, size=(4, 2, 32))
    np.testing.assert_allclose(max_over_mean(kept, future), max_over_mean(candidate, future))
    for layer in range(2):
        np.testing.assert_allclose(np.sort(load[layer] @ kept[layer]), np.sort(load[layer] @ candidate[layer]))
        # whole nodes map to whole nodes: each node's set of copies is some node's set in the candidate
        nodes_kept = sorted(tuple(sorted(np.flatnonzero(kept[layer][:, problem.node_of == n].sum(axis=1))))
                            for n in range(2))
        nodes_cand = sorted(tuple(sorted(np.flatnonzero(candidate[layer][:, problem.node_of == n].sum(axis=1))))
                            for n in range(2))
        assert nodes_kept == nodes_cand


def test_renaming_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        keep_copies_in_place(np.zeros((1, 4, 2)), np.zeros((1, 4, 3)))


def test_replay_scores_each_window_with_a_placement_decided_before_it():
    """A planner that records what it saw: window w is never among the windows behind the placement
    that scores it, and a rule that always refuses keeps the first plan to the end."""
    rng = np.random.default_rng(3)
    windows = rng.gamma(0.7, 10.0, size=(6, 2, 16))
    problem = problem_for(windows.mean(axis=0), devices=4, redundant=4, per_node=4)
    seen_lengths = []

    def planner(seen, current):
        assert (current is None) == (len(seen) == 3)
        seen_lengths.append(len(seen))
        return eplb_global(replace(problem, load=seen[-1])).shares()

    def always(horizon):
        return lambda cur, cand, seen: rebalance_decision(cur, cand, seen[-1], TOKENS_MODEL, 1.0, np.ones((4, 4)),
                                                          horizon, time_per_unit=1.0)

    moving = replay_rebalancing("eplb", windows, 3, planner, always(10**9))
    assert seen_lengths == [3, 4, 5]  # planned on [0,3), then after windows 3 and 4; never after the last
    # with an unbounded horizon every improving candidate moves; the placement scoring window w
    # is the plan on window w-1 (or the initial plan)
    expected = [max_over_mean(eplb_global(replace(problem, load=windows[2])).shares(), windows[3:4])[0]]
    current = eplb_global(replace(problem, load=windows[2])).shares()
    for w in (4, 5):
        cand = eplb_global(replace(problem, load=windows[w - 1])).shares()
        if rebalance_decision(current, cand, windows[w - 1], TOKENS_MODEL, 1.0, np.ones((4, 4)), 10**9).move:
            current = cand
        expected.append(max_over_mean(current, windows[w:w + 1])[0])
    assert moving.out_of_sample == pytest.approx(np.mean(expected))
    assert moving.decisions == 2

    staying = replay_rebalancing("eplb", windows, 3, planner, always(0))
    assert staying.moves == 0 and staying.bytes_moved == 0.0
    first = eplb_global(replace(problem, load=windows[2])).shares()
    assert staying.out_of_sample == pytest.approx(max_over_mean(first, windows[3:]).mean())


def test_replay_tracks_cheaper_rebalancing_on_a_drifting_load():
    """Popularity that rotates every window: re-planning on the latest window beats the first plan."""
    E, W = 16, 8
    base = np.geomspace(40, 1, E)
    windows = np.stack([np.roll(base, w)[None, :] for w in range(W)])  # (W, 1, E)
    problem = problem_for(windows[0], devices=4, redundant=0, per_node=4)

    def planner(seen, current=None):
        return eplb_global(replace(problem, load=seen[-1])).shares()

    def rule(cur, cand, seen):
        return rebalance_decision(cur, cand, seen[-1], TOKENS_MODEL, 1.0, np.ones((4, 4)), 10**6)

    tracked = replay_rebalancing("eplb", windows, 4, planner, rule)
    static = max_over_mean(planner(windows[:4]), windows[4:]).mean()
    assert tracked.moves >= 1
    assert tracked.out_of_sample < static


def _moved_copies(current: np.ndarray, new: np.ndarray) -> int:
    return int(((new > 1e-9) & ~(current > 1e-9)).sum())


def _bottleneck(shares: np.ndarray, load: np.ndarray) -> float:
    return float(sum((load[l] @ shares[l]).max() for l in range(load.shape[0])))


@pytest.mark.skipif("highs" not in available_solvers(), reason="needs highspy")
def test_priced_moves_trade_balance_against_copies_moved_exactly():
    """Exact solves on a small layer: an unaffordable move keeps the current placement; a free one
    reaches the unpriced optimum; in between, the priced plan is optimal for bottleneck + price x moves."""
    rng = np.random.default_rng(5)
    old = rng.gamma(0.7, 10.0, size=(1, 12))
    new = old * rng.lognormal(0, 0.8, size=old.shape)
    problem = problem_for(new, devices=4, redundant=4, per_node=2)
    current = eplb_global(replace(problem, load=old)).shares()
    opts = IlpOptions(solver="highs", traffic_weight=0.0, time_limit=30, gap=1e-9, decomposition="flat")
    free = solve_ilp(problem, opts).placement.shares()

    stay = solve_ilp(problem, opts, move_from=current, copy_cost=1e6).placement.shares()
    assert _moved_copies(current, stay) == 0

    zero = solve_ilp(problem, opts, move_from=current, copy_cost=0.0).placement.shares()
    assert _bottleneck(zero, new) == pytest.approx(_bottleneck(free, new), rel=1e-6)

    price = 0.5 * (_bottleneck(current, new) - _bottleneck(free, new)) / max(_moved_copies(current, free), 1)
    priced = solve_ilp(problem, opts, move_from=current, copy_cost=price).placement.shares()
    for other in (current, free, zero, stay):
        assert _bottleneck(priced, new) + price * _moved_copies(current, priced) <= \
            _bottleneck(other, new) + price * _moved_copies(current, other) + 1e-6
    assert _moved_copies(current, priced) <= _moved_copies(current, free)
    assert _moved_copies(current, free) > 0 and _bottleneck(free, new) < _bottleneck(current, new)  # a real trade


def test_plan_rebalance_prices_a_copy_by_its_transfer_spread_over_the_horizon():
    from moesim.placement.rebalance import copy_price, seconds_per_copy

    bw = np.full((4, 4), 100.0)
    bw[:2, 2:] = bw[2:, :2] = 10.0
    assert seconds_per_copy(1000.0, bw) == pytest.approx(1000.0 / 100.0 / 4)
    with pytest.raises(ValueError, match="link"):
        seconds_per_copy(1.0, np.eye(3))
    assert copy_price(1000.0, bw, 10, time_per_unit=2.0) == pytest.approx(1000.0 / 100.0 / 4 / 2.0 / 10)
    with pytest.raises(ValueError, match="horizon"):
        copy_price(1000.0, bw, 0)
