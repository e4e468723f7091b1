"""The HiGHS matrix build of the placement MILP against the PuLP build: same optimum, feasible placements."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.placement.evaluate import check_placement
from moesim.placement.ilp import IlpOptions, available_solvers, solve_ilp
from moesim.placement.ilp_matrix import build_layer
from moesim.placement.problem import ExpertTimeModel, PlacementProblem

pytestmark = pytest.mark.skipif("highs" not in available_solvers(), reason="needs highspy")


def random_problem(seed: int, E: int = 8, D: int = 3, layers: int = 2, redundant: int = 3, fixed: float = 0.0
                   ) -> PlacementProblem:
    """A small random layer stack: skewed loads, two nodes with a dearer inter-node link, layer flow."""
    rng = np.random.default_rng(seed)
    load = rng.gamma(0.7, 10.0, size=(layers, E)) + 0.1
    share = rng.dirichlet(np.ones(D), size=(layers, E))  # which source sends each expert's tokens
    dispatch = np.einsum("le,led->lde", load, share)
    flow = rng.gamma(0.5, 1.0, size=(layers - 1, E, E))
    node_of = np.arange(D) * 2 // D
    cost = np.where(node_of[:, None] == node_of[None, :], 0.05, 0.4)
    np.fill_diagonal(cost, 0.0)
    slots = np.full(D, -(-(E + redundant) // D))
    return PlacementProblem(load, dispatch, flow, 2, node_of, cost, slots, redundant, ExpertTimeModel(fixed, 1.0))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weight,fixed", [(0.0, 0.0), (1.0, 0.0), (1.0, 2.0)])
def test_matrix_and_pulp_reach_the_same_optimum(seed, weight, fixed):
    problem = random_problem(seed, fixed=fixed)
    results = {}
    for backend in ("matrix", "pulp"):
        opts = IlpOptions(solver="highs", backend=backend, traffic_weight=weight, time_limit=30, gap=1e-9,
                          decomposition="flat")
        res = solve_ilp(problem, opts)
        check_placement(res.placement, problem)  # slots, budget, shares sum to 1
        shares = res.placement.shares()
        assert ((shares > 0).sum(axis=2) >= 1).all()  # every expert has a copy
        assert all(r.status == "Optimal" for r in res.reports)
        results[backend] = [r.objective for r in res.reports]
    np.testing.assert_allclose(results["matrix"], results["pulp"], rtol=1e-6, atol=1e-7)


def test_matrix_shape_matches_the_formulation():
    """x, f per (expert, device), one t per scenario, z only for a worst-case weight; rows as documented."""
    E, D, S = 5, 3, 4
    load = np.arange(1, 1 + S * E, dtype=float).reshape(S, E)
    m = build_layer(load, np.zeros((E, D)), np.full(D, 3), E + 2, ExpertTimeModel(1.0, 1.0), 0.0, worst_weight=0.5)
    assert m.num_cols == 2 * E * D + S + 1
    assert m.num_rows == E + E * D + D + S * D + 1 + S
    assert m.integer.sum() == E * D
    one = build_layer(load[0], np.zeros((E, D)), np.full(D, 3), E + 2, ExpertTimeModel(1.0, 1.0), 0.0)
    assert one.num_cols == 2 * E * D + 1 and one.col_cost[-1] == 1.0
