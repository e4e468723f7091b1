"""The vectorised per-token draws (issue 27, point 4): properties, not timing.

Every token gets top_k distinct experts from at most max_nodes nodes; draws are deterministic
under (seed, step); expert frequencies over many tokens match the model: the inclusion
probabilities for the plain draw, and, for node-limited routing, the brute-force race the draw
replaces (E exponentials per token, `NodeLimitedRouting._limited`) in a two-sample test.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.workloads import node_limited_routing as nlr
from moesim.workloads.node_limited_routing import (NodeLimitedRouting, PerTokenRouting, forced_experts,
                                                   plackett_luce_inclusion)
from moesim.workloads.routing import inclusion_probabilities, zipf_popularity

E, K, NODES = 64, 8, 8


def _popularity(alpha: float, layers: int = 2, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([zipf_popularity(E, alpha)[rng.permutation(E)] for _ in range(layers)])


def _nodes(layers: int = 2, shuffle: bool = True, sizes: list[int] | None = None) -> np.ndarray:
    node = np.repeat(np.arange(len(sizes)), sizes) if sizes else np.arange(E) // (E // NODES)
    return np.stack([np.random.default_rng(l).permutation(node) if shuffle else node for l in range(layers)])


def _check_tokens(r, node: np.ndarray, max_nodes: int, tokens: np.ndarray) -> None:
    L = len(r.token_experts)
    for l, ids in enumerate(r.token_experts):
        assert ids.shape == (tokens.sum(), K) and ids.dtype == np.int32
        s = np.sort(ids, axis=1)
        assert (s[:, 1:] != s[:, :-1]).all()  # k distinct experts
        assert ((ids >= 0) & (ids < E)).all()
        nd = np.sort(node[l][ids], axis=1)
        spans = 1 + (nd[:, 1:] != nd[:, :-1]).sum(axis=1)
        assert spans.max() <= max_nodes
        bc = np.stack([np.bincount(ids[r.token_source == s_].ravel(), minlength=E) for s_ in range(tokens.size)])
        np.testing.assert_array_equal(r.counts[l], bc)
    np.testing.assert_array_equal(r.counts.sum(axis=2), np.broadcast_to(K * tokens, (L, tokens.size)))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.2])
@pytest.mark.parametrize("max_nodes, sizes", [(4, None), (2, None), (3, None), (1, None),
                                              (2, [20, 4, 12, 8, 20]), (3, [10, 6, 16, 6, 14, 12])])
def test_node_limited_tokens_are_valid(alpha, max_nodes, sizes):
    node = _nodes(sizes=sizes)
    routing = NodeLimitedRouting(E, K, _popularity(alpha), node, max_nodes, seed=3)
    tokens = np.array([700, 0, 1300, 1])
    _check_tokens(routing.step(5, tokens, 2), node, max_nodes, tokens)


def test_blocks_split_layers_and_tokens(monkeypatch):
    """Rows cut into small blocks (across layers and sources) give valid draws and exact counts."""
    monkeypatch.setattr(nlr, "_BLOCK", 777)
    node = _nodes(layers=3)
    tokens = np.array([300, 5, 410])
    for routing in (NodeLimitedRouting(E, K, _popularity(0.8, 3), node, 4, seed=1),
                    PerTokenRouting(E, K, _popularity(0.8, 3), seed=1)):
        _check_tokens(routing.step(2, tokens, 3), node, 4 if isinstance(routing, NodeLimitedRouting) else NODES,
                      tokens)


def test_deterministic_for_a_seed():
    tokens = np.array([500, 300])
    for make in (lambda s: NodeLimitedRouting(E, K, _popularity(0.6), _nodes(), 4, seed=s),
                 lambda s: PerTokenRouting(E, K, _popularity(0.6), seed=s)):
        a, b = make(7).step(3, tokens, 2), make(7).step(3, tokens, 2)
        np.testing.assert_array_equal(a.counts, b.counts)
        for x, y in zip(a.token_experts, b.token_experts):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a.token_experts[0], make(7).step(4, tokens, 2).token_experts[0])
        assert not np.array_equal(a.token_experts[0], make(8).step(3, tokens, 2).token_experts[0])


def _chi2(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Two-sample chi-square of count vectors a, b (equal totals) over bins with counts."""
    live = (a + b) > 0
    a, b = a[live].astype(float), b[live].astype(float)
    return float(((a - b) ** 2 / (a + b)).sum()), int(live.sum()) - 1


def _loose(df: int) -> float:
    return df + 6.0 * np.sqrt(2.0 * df) + 10.0  # far beyond the 1e-6 quantile: a bias, not noise, fails it


@pytest.mark.parametrize("alpha, max_nodes, shuffle", [(0.0, 4, False), (0.6, 4, True), (1.2, 4, True),
                                                      (0.8, 2, True), (1.0, 1, True), (0.6, 3, True)])
def test_node_limited_matches_the_race(alpha, max_nodes, shuffle):
    """Expert, top-1 and node frequencies of the vectorised draw vs the brute-force race."""
    T = 60000
    node = _nodes(layers=1, shuffle=shuffle)
    routing = NodeLimitedRouting(E, K, _popularity(alpha, 1), node, max_nodes, seed=11)
    fast = routing.step(0, np.array([T]), 1).token_experts[0]
    race = routing._limited(np.random.default_rng(99), T, routing._members[0], routing._inv_w[0])
    def per_node(ids: np.ndarray) -> np.ndarray:  # how many of a token's experts each node holds
        return np.stack([(node[0][ids] == n).sum(axis=1) for n in range(NODES)], axis=1)

    for stat in (lambda ids: np.bincount(ids.ravel(), minlength=E),  # expert loads
                 lambda ids: np.bincount(ids[:, 0], minlength=E),  # top-1
                 lambda ids: np.bincount(node[0][ids].ravel(), minlength=NODES),  # rows per node
                 lambda ids: np.bincount(per_node(ids).ravel(), minlength=K + 1),  # the node limit's shape
                 lambda ids: np.bincount(np.sort(node[0][ids], axis=1)[:, ::2].ravel(), minlength=NODES)):
        chi2, df = _chi2(stat(fast), stat(race))
        assert chi2 < _loose(df), (chi2, df)
    tv = 0.5 * np.abs(np.bincount(fast.ravel(), minlength=E) - np.bincount(race.ravel(), minlength=E)).sum() / fast.size
    assert tv < 0.02


def test_uniform_popularity_is_uniform():
    """Uniform popularity on equal nodes: every expert carries k/E of the rows, node-limited or not."""
    T = 40000
    pop = np.full((1, E), 1.0 / E)
    for routing in (NodeLimitedRouting(E, K, pop, _nodes(1), 4, seed=2), PerTokenRouting(E, K, pop, seed=2)):
        load = routing.step(0, np.array([T]), 1).counts[0, 0]
        expect = np.full(E, T * K / E)
        chi2 = float(((load - expect) ** 2 / expect).sum())
        assert chi2 < _loose(E - 1), chi2


@pytest.mark.parametrize("alpha, calibrate", [(0.0, True), (0.7, True), (1.2, True), (1.6, True), (1.0, False)])
def test_per_token_marginals(alpha, calibrate):
    """Plain per-token draws: expert frequencies = inclusion probabilities (calibrated) or the
    Plackett-Luce inclusion of the popularity itself (calibrate=False), within 5 sigma."""
    T = 60000
    pop = _popularity(alpha, 1)
    load = PerTokenRouting(E, K, pop, seed=4, calibrate=calibrate).step(0, np.array([T]), 1).counts[0, 0] / T
    p = pop[0] / pop[0].sum()
    target = inclusion_probabilities(p, K) if calibrate else plackett_luce_inclusion(p, K)
    sigma = np.sqrt(target * (1 - target) / T)
    assert (np.abs(load - target) <= 5 * sigma + 1e-9).all()


def test_dominant_expert_draws_from_the_rest():
    """An expert with most of the weight (calibrate=False) is rejected again and again once drawn:
    the draw falls back to the rest's weight and keeps the Plackett-Luce marginals."""
    T = 40000
    p = np.full(E, 0.05 / (E - 1))
    p[3] = 0.95
    load = PerTokenRouting(E, K, p[None], seed=1, calibrate=False).step(0, np.array([T]), 1).counts[0, 0] / T
    target = plackett_luce_inclusion(p, K)
    assert (np.abs(load - target) <= 5 * np.sqrt(target * (1 - target) / T) + 1e-9).all()


def test_forced_experts_come_first():
    """Calibrated inclusion 1 (Zipf 1.6 over 64 experts, k = 8): those experts go to every token, first."""
    pop = _popularity(1.6, 1)
    forced = np.flatnonzero(forced_experts(pop / pop.sum(axis=1, keepdims=True), K)[0])
    assert forced.size >= 2
    for routing in (PerTokenRouting(E, K, pop, seed=0), NodeLimitedRouting(E, K, pop, _nodes(1), 4, seed=0)):
        ids = routing.step(0, np.array([3000]), 1).token_experts[0]
        assert (np.sort(ids[:, : forced.size], axis=1) == forced).all()
        first = np.bincount(ids[:, 0], minlength=E)[forced] / len(ids)  # a random order among them
        assert np.abs(first - 1 / forced.size).max() < 0.05


def test_more_forced_nodes_than_m_takes_the_race():
    """Forced experts on more nodes than M cannot all be kept: such a layer is drawn by the full race."""
    pop = _popularity(1.6, 1)
    forced = forced_experts(pop / pop.sum(axis=1, keepdims=True), K)[0]
    h = int(forced.sum())
    node = np.zeros((1, E), dtype=np.int64)
    node[0, forced] = np.arange(h)  # each forced expert on its own node, among lights
    node[0, ~forced] = np.arange((~forced).sum()) % (h + 2)
    routing = NodeLimitedRouting(E, K, pop, node, h - 1, seed=0)
    assert [g.path for g in routing._groups] == ["dense"]
    _check_tokens(routing.step(0, np.array([500]), 1), node, h - 1, np.array([500]))


def test_merge_lists_takes_the_smallest_sorted():
    rng = np.random.default_rng(0)
    for B, D, kk in ((4, 5, 8), (3, 2, 5), (1, 6, 4), (5, 8, 8), (2, 16, 16)):
        keys = np.sort(rng.integers(0, 1 << 40, size=(B, D, 300)), axis=1)
        got = nlr._merge_lists(keys, kk)
        want = np.sort(keys.transpose(1, 0, 2).reshape(B * D, 300), axis=0)[:kk]
        np.testing.assert_array_equal(got, want)


def test_sparse_popularity_matches_the_race():
    """Experts without mass and a node without any: never drawn; loads as the brute-force race's."""
    T = 40000
    pop = np.zeros((1, E))
    pop[0, :20], pop[0, 40:44] = 1.0, 0.5  # nodes 0, 1 full, node 2 half, node 5 half, the rest empty
    node = _nodes(layers=1, shuffle=False)
    routing = NodeLimitedRouting(E, K, pop, node, 3, seed=6)
    assert [g.path for g in routing._groups] == ["limited"]
    r = routing.step(0, np.array([T]), 1)
    _check_tokens(r, node, 3, np.array([T]))
    fast = r.token_experts[0]
    assert (pop[0][fast] > 0).all()
    with np.errstate(invalid="ignore"):  # the race's zero weights: inf x a zero exponential
        race = routing._limited(np.random.default_rng(5), T, routing._members[0], routing._inv_w[0])
    chi2, df = _chi2(np.bincount(fast.ravel(), minlength=E), np.bincount(race.ravel(), minlength=E))
    assert chi2 < _loose(df), (chi2, df)
