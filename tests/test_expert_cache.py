"""Expert cache policies: hand-checked sequences, LRU's inclusion property, pinned experts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.simulator.offload.expert_cache import LFU, LRU, PINNED, ExpertCache


def run(cache: ExpertCache, layers: list[list[int]]) -> list[list[int]]:
    return [cache.access(keys) for keys in layers]


def test_lru_by_hand():
    c = ExpertCache(2, LRU)
    assert run(c, [[0], [1], [0], [2], [1]]) == [[0], [1], [], [2], [1]]  # 2 evicts 1 (least recent)
    assert (c.stats.hits, c.stats.misses, c.stats.evictions) == (1, 4, 2)


def test_lfu_keeps_the_frequent_expert():
    c = ExpertCache(2, LFU)
    assert run(c, [[0], [0], [1], [2], [0]]) == [[0], [], [1], [2], []]  # 2 evicts 1 (used once), not 0
    assert c.stats.hit_rate == pytest.approx(2 / 5)


def test_pinned_experts_are_never_evicted():
    c = ExpertCache(2, PINNED, pinned=frozenset({7}))
    run(c, [[1], [2], [3], [4]])
    assert 7 in c and c.stats.misses == 4
    assert c.access([7]) == []


def test_one_slot_two_experts_alternating():
    """The issue's tiny case: one slot, two experts used alternately: every access misses."""
    c = ExpertCache(1, LRU)
    assert run(c, [[0], [1], [0], [1]]) == [[0], [1], [0], [1]]
    assert c.stats.hit_rate == 0.0


def test_larger_lru_cache_never_lowers_hit_rate():
    """LRU is a stack algorithm: a bigger cache holds a superset, so hits never drop."""
    rng = np.random.default_rng(3)
    p = 1 / np.arange(1, 33) ** 1.1
    seq = [list(rng.choice(32, size=2, replace=False, p=p / p.sum())) for _ in range(400)]
    rates = []
    for cap in range(2, 33, 3):
        c = ExpertCache(cap, LRU)
        run(c, seq)
        rates.append(c.stats.hit_rate)
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    assert rates[-1] > rates[0]


def test_cache_holding_everything_misses_only_cold():
    c = ExpertCache(8, LFU)
    run(c, [[e % 8, (e + 3) % 8] for e in range(100)])
    assert c.stats.misses == 8 and c.stats.evictions == 0


def test_prefetched_expert_counts_as_prefetch_hit():
    c = ExpertCache(2, LRU)
    c.access([0])
    assert c.prefetch([1], protect=[0]) == [1]
    assert c.access([1]) == []
    assert c.stats.prefetch_hits == 1 and c.stats.prefetches == 1


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="at least one expert"):
        ExpertCache(0)
    with pytest.raises(ValueError, match="pinned experts do not fit"):
        ExpertCache(1, PINNED, pinned=frozenset({1, 2}))
    with pytest.raises(ValueError, match="cannot hold"):
        ExpertCache(2, LRU).access([0, 1, 2])
