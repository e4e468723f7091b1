"""Joint placement across layers (placement/joint.py): block-coordinate sweeps that re-solve each
layer with both neighbours fixed, against ilp_affinity's layer-by-layer placement."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.placement.evaluate import check_placement, score
from moesim.placement.ilp import IlpOptions, available_solvers
from moesim.placement.joint import solve_joint, total_objective
from moesim.placement.methods import run_method
from moesim.placement.problem import ExpertTimeModel, PlacementProblem

pytestmark = pytest.mark.skipif(not available_solvers(), reason="no MILP solver")
OPTS = IlpOptions(time_limit=5.0)


def planted(seed: int = 0, strong: float = 10.0, weak: float = 1.0, zero: bool = False) -> PlacementProblem:
    """4 layers, 16 experts, 4 devices x 4 slots, equal loads. Pair (0, 1): a weak identity flow;
    pair (1, 2): strong, each of 4 random groups of layer-1 experts sends to its own random
    block of 4 layer-2 experts; pair (2, 3): a strong identity. Layer by layer, layer 1 follows
    layer 0 (weak pair) and then cannot serve the strong pair; seeing layer 2 fixes that."""
    L, E, D = 4, 16, 4
    load = np.full((L, E), 100.0)
    dispatch = np.repeat(load[:, None, :] / D, D, axis=1)
    flow = np.zeros((L - 1, E, E))
    flow[0] = weak * np.eye(E)
    rng = np.random.default_rng(seed)
    src, dst = rng.permutation(E).reshape(4, 4), rng.permutation(E).reshape(4, 4)
    for k in range(4):
        flow[1][np.ix_(src[k], dst[k])] = strong / 4
    flow[2] = strong * np.eye(E)
    if zero:
        flow[:] = 0.0
    return PlacementProblem(load, dispatch, flow, 2, np.zeros(D, dtype=int), 1.0 - np.eye(D), np.full(D, 4), 0,
                            ExpertTimeModel(0.0, 1.0, "tokens"))


def _feasible(result, problem):
    check_placement(result.placement, problem)  # slots, budget, shares sum to 1
    shares = result.placement.shares()
    assert ((shares > 0).sum(axis=2) >= 1).all()  # every expert has a copy
    assert np.allclose(shares.sum(axis=2), 1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_joint_cuts_cross_device_pairs_at_the_same_bottleneck(seed):
    problem = planted(seed)
    load = run_method("ilp_load", problem, OPTS)
    layered = run_method("ilp_affinity", problem, OPTS)
    joint = run_method("ilp_joint", problem, OPTS)
    for r in (load, layered, joint):
        _feasible(r, problem)
    assert layered.score.flow_cross_device > 0.2  # layer by layer leaves strong pairs split
    assert joint.score.flow_cross_device <= layered.score.flow_cross_device - 0.2
    assert joint.score.flow_cross_device < 0.01
    assert joint.score.bottleneck_tokens <= 1.02 * load.score.bottleneck_tokens + 1e-9
    opts = IlpOptions(time_limit=5.0, bottleneck_slack=0.02)
    assert total_objective(problem, joint.placement.shares(), opts) < \
        total_objective(problem, layered.placement.shares(), opts)


def test_zero_flow_joint_equals_affinity():
    problem = planted(zero=True)
    layered = run_method("ilp_affinity", problem, OPTS)
    joint = run_method("ilp_joint", problem, OPTS)
    _feasible(joint, problem)
    assert np.array_equal(joint.placement.shares(), layered.placement.shares())


def test_joint_is_deterministic_and_neighbourhood_path_never_worse():
    problem = planted(2)
    opts = IlpOptions(time_limit=2.0, bottleneck_slack=0.02, decomposition="neighbourhood", neighbourhood=2)
    a, b = solve_joint(problem, opts), solve_joint(problem, opts)
    assert np.array_equal(a.placement.shares(), b.placement.shares())
    check_placement(a.placement, problem)
    from moesim.placement.ilp import solve_ilp
    base = solve_ilp(problem, opts)
    assert total_objective(problem, a.placement.shares(), opts) <= total_objective(problem, base.placement.shares(),
                                                                                   opts) + 1e-9
    s_base, s_joint = score(base.placement, problem), score(a.placement, problem)
    assert s_joint.flow_cross_device <= s_base.flow_cross_device + 1e-12
    assert s_joint.bottleneck_tokens <= 1.02 * s_base.bottleneck_tokens + 1e-9
