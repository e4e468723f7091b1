"""Node-limited (DeepSeek-V3) per-token routing: node span, distinct ids, counts, determinism, marginals."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.workloads.node_limited_routing import NodeLimitedRouting, PerTokenRouting, plackett_luce_inclusion
from moesim.workloads.routing import inclusion_probabilities, zipf_popularity

E, K, L, NODES = 64, 8, 3, 8


def _popularity(alpha: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.stack([zipf_popularity(E, alpha)[rng.permutation(E)] for _ in range(L)])


def _nodes(shuffle: bool = False) -> np.ndarray:
    node = np.arange(E) // (E // NODES)
    return np.stack([np.random.default_rng(l).permutation(node) if shuffle else node for l in range(L)])


@pytest.mark.parametrize("max_nodes, shuffle", [(1, False), (2, True), (4, False), (3, True)])
def test_tokens_span_at_most_m_nodes_with_distinct_experts(max_nodes, shuffle):
    node = _nodes(shuffle)
    routing = NodeLimitedRouting(E, K, _popularity(), node, max_nodes, seed=2)
    tokens = np.array([30, 0, 50])
    r = routing.step(7, tokens, L)
    assert r.counts.shape == (L, 3, E) and r.token_source.shape == (80,)
    for l, ids in enumerate(r.token_experts):
        assert ids.shape == (80, K)
        assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()  # k distinct experts
        spans = [np.unique(node[l][row]).size for row in ids]
        assert max(spans) <= max_nodes
        bc = np.stack([np.bincount(ids[r.token_source == s].ravel(), minlength=E) for s in range(3)])
        np.testing.assert_array_equal(r.counts[l], bc)
    np.testing.assert_array_equal(r.counts.sum(axis=2), np.broadcast_to(K * tokens, (L, 3)))


def test_uneven_nodes_and_padding():
    node = np.broadcast_to(np.r_[np.zeros(40), np.ones(10), np.full(14, 2)].astype(int), (L, E))
    r = NodeLimitedRouting(E, K, _popularity(), node, 2, seed=0).step(0, np.array([100]), L)
    for l, ids in enumerate(r.token_experts):
        assert max(np.unique(node[l][row]).size for row in ids) <= 2
        assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()


def test_deterministic_under_seed_and_step():
    routing = NodeLimitedRouting(E, K, _popularity(), _nodes(), 2, seed=4)
    tokens = np.array([20, 20])
    a, b = routing.step(3, tokens, L), NodeLimitedRouting(E, K, _popularity(), _nodes(), 2, seed=4).step(3, tokens, L)
    np.testing.assert_array_equal(a.counts, b.counts)
    for x, y in zip(a.token_experts, b.token_experts):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.counts, routing.step(4, tokens, L).counts)
    other_seed = NodeLimitedRouting(E, K, _popularity(), _nodes(), 2, seed=5)
    assert not np.array_equal(a.counts, other_seed.step(3, tokens, L).counts)


def test_all_nodes_is_unconstrained_top_k():
    """M >= nodes gives the same draws as PerTokenRouting, with marginals = inclusion_probabilities."""
    pop = _popularity(1.0)
    tokens = np.array([2000, 2000])
    limited = NodeLimitedRouting(E, K, pop, _nodes(), NODES, seed=1)
    plain = PerTokenRouting(E, K, pop, seed=1)
    np.testing.assert_array_equal(limited.step(0, tokens, L).counts, plain.step(0, tokens, L).counts)
    steps = 5
    load = sum(limited.step(s, tokens, L).counts.sum(axis=1) for s in range(steps)) / (steps * tokens.sum())
    target = np.stack([inclusion_probabilities(p, K) for p in pop])
    sigma = np.sqrt(target * (1 - target) / (steps * tokens.sum()))
    assert (np.abs(load - target) <= 5 * sigma + 1e-12).all()


def test_calibration_matters_and_plackett_luce_is_exact():
    p = zipf_popularity(E, 1.0)
    assert np.abs(plackett_luce_inclusion(np.ones(E), K) - K / E).max() < 1e-6
    assert np.abs(plackett_luce_inclusion(p, K) - inclusion_probabilities(p, K)).max() > 0.1  # uncalibrated
    rng = np.random.default_rng(0)
    race = rng.standard_exponential((40000, E)) / p
    freq = np.bincount(np.argpartition(race, K - 1, axis=1)[:, :K].ravel(), minlength=E) / 40000
    assert np.abs(freq - plackett_luce_inclusion(p, K)).max() < 0.012


def test_node_limit_with_m1_keeps_one_node():
    r = NodeLimitedRouting(E, K, _popularity(), _nodes(), 1, seed=0).step(0, np.array([64]), L)
    assert all((np.ptp(_nodes()[l][ids], axis=1) == 0).all() for l, ids in enumerate(r.token_experts))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_nodes=0), "max_nodes"),
    (dict(expert_node=np.zeros((L, E - 1), dtype=int)), "expert_node must have"),
    (dict(expert_node=np.zeros((L, E))), "integer"),
    (dict(expert_node=np.broadcast_to(np.arange(E) // 4, (L, E)), max_nodes=1), "fewer than top_k"),
])
def test_bad_arguments(kwargs, message):
    args = dict(num_experts=E, top_k=K, popularity=_popularity(), expert_node=_nodes(), max_nodes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        NodeLimitedRouting(**args)
