"""EPLB as published: `eplb_rebalance` against the worked example of DeepSeek's EPLB README,
its invariants, and `eplb_hierarchical` (the placement baseline built on it)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.placement.baselines import eplb_global, eplb_hierarchical, eplb_rebalance
from moesim.placement.evaluate import check_placement
from moesim.placement.problem import ExpertTimeModel, PlacementProblem

# github.com/deepseek-ai/EPLB README, "Interface and Example": 2 layers of 12 experts, 16 replicas,
# 4 expert groups, 2 nodes of 4 GPUs; the phy2log it prints (hierarchical policy).
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHY2LOG = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                           [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])


def gpu_loads(weight: np.ndarray, phy2log: np.ndarray, logcnt: np.ndarray, num_gpus: int) -> np.ndarray:
    """(layers, gpus) tokens per GPU: each physical expert carries load / replicas."""
    rows = np.arange(weight.shape[0])[:, None]
    per_phy = (weight / logcnt)[rows, phy2log]
    return per_phy.reshape(weight.shape[0], num_gpus, -1).sum(axis=2)


def test_readme_worked_example_exactly():
    phy2log, log2phy, logcnt = eplb_rebalance(README_WEIGHT, 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log, README_PHY2LOG)
    # the other two outputs follow from phy2log
    for l in range(2):
        np.testing.assert_array_equal(logcnt[l], np.bincount(README_PHY2LOG[l], minlength=12))
        for e in range(12):
            slots = log2phy[l, e][log2phy[l, e] >= 0]
            assert sorted(slots.tolist()) == np.flatnonzero(README_PHY2LOG[l] == e).tolist()
    assert log2phy.shape == (2, 12, 2)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("groups,nodes,gpus,replicas", [(4, 2, 8, 16), (8, 4, 8, 40), (8, 2, 4, 24), (3, 2, 4, 16)])
def test_invariants(seed, groups, nodes, gpus, replicas):
    E = 12 if groups != 8 else 16
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 200, size=(3, E))
    phy2log, log2phy, logcnt = eplb_rebalance(weight, replicas, groups, nodes, gpus)
    assert phy2log.shape == (3, replicas)  # replicas / gpus slots on every GPU, by construction
    assert (logcnt >= 1).all()
    assert (logcnt.sum(axis=1) == replicas).all()
    for l in range(3):
        np.testing.assert_array_equal(np.bincount(phy2log[l], minlength=E), logcnt[l])
        for e in range(E):
            slots = log2phy[l, e, :logcnt[l, e]]
            assert (phy2log[l, slots] == e).all() and (log2phy[l, e, logcnt[l, e]:] == -1).all()
    if groups % nodes == 0:  # hierarchical: every group lives whole on one node
        group_size = E // groups
        for l in range(3):
            node_groups = [set(g.tolist()) for g in phy2log[l].reshape(nodes, -1) // group_size]
            assert sum(len(g) for g in node_groups) == groups  # no group on two nodes
            assert all(len(g) == groups // nodes for g in node_groups)
            for n, experts in enumerate(phy2log[l].reshape(nodes, -1)):
                for g in node_groups[n]:  # all of the group's experts on that node
                    assert set(range(g * group_size, (g + 1) * group_size)) <= set(experts.tolist())


def test_groups_not_divisible_by_nodes_is_the_global_policy():
    weight = np.random.default_rng(3).integers(0, 100, size=(2, 12))
    for a, b in zip(eplb_rebalance(weight, 16, 3, 2, 8), eplb_rebalance(weight, 16, 1, 1, 8)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(20))
def test_balanced_groups_balance_no_worse_than_global(seed):
    """4 groups of 8 experts, each a permutation of the same loads: packing whole groups onto
    2 nodes costs nothing, so the per-GPU max/mean is no worse than the global policy's."""
    rng = np.random.default_rng(seed)
    base = rng.zipf(1.5, size=8) * 10.0
    weight = np.concatenate([rng.permutation(base) for _ in range(4)])[None]
    hier_p, _, hier_c = eplb_rebalance(weight, 48, 4, 2, 8)
    glob_p, _, glob_c = eplb_rebalance(weight, 48, 1, 2, 8)
    hier = gpu_loads(weight, hier_p, hier_c, 8)
    glob = gpu_loads(weight, glob_p, glob_c, 8)
    assert hier.max() / hier.mean() <= glob.max() / glob.mean() + 1e-9


@pytest.mark.parametrize("replicas,groups,nodes,gpus,match", [
    (18, 4, 2, 8, "num_replicas=18 is not a multiple of num_gpus=8"),
    (16, 4, 3, 8, "num_gpus=8 is not a multiple of num_nodes=3"),
    (8, 4, 2, 8, "num_replicas=8 is fewer than the 12 logical experts"),
    (16, 8, 2, 8, "12 experts do not split into num_groups=8"),
])
def test_bad_shapes_are_explained(replicas, groups, nodes, gpus, match):
    with pytest.raises(ValueError, match=match):
        eplb_rebalance(README_WEIGHT, replicas, groups, nodes, gpus)


def problem(load: np.ndarray, devices: int, nodes: int, redundant: int, groups: int, slots: int) -> PlacementProblem:
    load = np.asarray(load, dtype=float)
    L, E = load.shape
    dispatch = np.repeat(load[:, None, :] / devices, devices, axis=1)
    node_of = np.arange(devices) * nodes // devices
    cost = np.where(node_of[:, None] == node_of[None, :], 1.0, 5.0)
    np.fill_diagonal(cost, 0.0)
    return PlacementProblem(load, dispatch, np.zeros((L - 1, E, E)), 2, node_of, cost, np.full(devices, slots),
                            redundant, ExpertTimeModel(0.5, 1.0, "tokens"), expert_groups=groups)


def test_hierarchical_baseline_is_the_published_plan():
    p = problem(README_WEIGHT, devices=8, nodes=2, redundant=4, groups=4, slots=2)
    pl = eplb_hierarchical(p)
    check_placement(pl, p)
    for l in range(2):
        share = pl.share_matrix(l)
        expect = np.zeros((12, 8))
        np.add.at(expect, (README_PHY2LOG[l], np.arange(16) // 2), 1.0 / np.bincount(README_PHY2LOG[l])[
            README_PHY2LOG[l]])
        np.testing.assert_allclose(share, expect)
        # replicas of an expert never leave its node; groups stay whole on a node
        node_of_expert = [set((np.flatnonzero(row) // 4).tolist()) for row in share]
        assert all(len(n) == 1 for n in node_of_expert)
        assert all(len({next(iter(node_of_expert[e])) for e in range(g * 3, g * 3 + 3)}) == 1 for g in range(4))


def test_hierarchical_baseline_without_groups_and_uneven_budget():
    """No expert groups on 2 nodes: the global policy. 12 + 6 copies on 8 devices: EPLB needs
    equal slots per device, so 16 physical experts (2 per device) and 2 redundant unused."""
    weight = np.random.default_rng(5).integers(1, 100, size=(2, 12)).astype(float)
    p = problem(weight, devices=8, nodes=2, redundant=6, groups=1, slots=3)
    pl = eplb_hierarchical(p)
    check_placement(pl, p)
    phy2log, _, logcnt = eplb_rebalance(weight, 16, 1, 2, 8)
    for l in range(2):
        expect = np.zeros((12, 8))
        np.add.at(expect, (phy2log[l], np.arange(16) // 2), 1.0 / logcnt[l, phy2log[l]])
        np.testing.assert_allclose(pl.share_matrix(l), expect)
    assert eplb_global(p).shares().shape == pl.shares().shape


def test_hierarchical_baseline_errors():
    with pytest.raises(ValueError, match="no multiple of 8 between 12 and 14"):
        eplb_hierarchical(problem(README_WEIGHT, devices=8, nodes=2, redundant=2, groups=4, slots=2))
    with pytest.raises(ValueError, match="same number of devices on every node"):
        eplb_hierarchical(problem(README_WEIGHT, devices=6, nodes=4, redundant=6, groups=4, slots=3))
    with pytest.raises(ValueError, match="equal expert groups"):
        eplb_hierarchical(problem(README_WEIGHT, devices=8, nodes=2, redundant=4, groups=5, slots=2))
