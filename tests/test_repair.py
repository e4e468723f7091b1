"""Incremental rebalancing from the placement in force: moves only when they pay, slots and
coverage kept, and the hand cases of a swap and a re-replication."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.placement.problem import ExpertTimeModel, TOKENS_MODEL
from moesim.placement.repair import repair_placement


def shares_of(layout: list[list[int]], experts: int) -> np.ndarray:
    """(1, E, D) shares from each device's list of experts (replicas split evenly)."""
    D = len(layout)
    out = np.zeros((1, experts, D))
    for d, held in enumerate(layout):
        out[0, held, d] = 1.0
    return out / out.sum(axis=2, keepdims=True)


def peak(shares: np.ndarray, load: np.ndarray) -> float:
    return float(sum((load[l] @ shares[l]).max() for l in range(load.shape[0])))


def test_one_swap_balances_two_devices():
    current = shares_of([[0, 1], [2, 3]], 4)
    load = np.array([[10.0, 9.0, 1.0, 2.0]])  # device 0: 19, device 1: 3
    fixed, rep = repair_placement(current, load, TOKENS_MODEL)
    assert peak(fixed, load) == pytest.approx(11.0)  # best single swap: {0, 2} | {1, 3}, 11 and 11
    assert rep.copies_moved == 2 and rep.moves == 1


def test_a_newly_hot_expert_gets_the_spare_copy():
    # expert 3 was replicated; now expert 0 is the hot one
    current = shares_of([[0, 3], [1, 3], [2, 4]], 5)
    load = np.array([[30.0, 5.0, 5.0, 2.0, 5.0]])
    fixed, rep = repair_placement(current, load, TOKENS_MODEL)
    held = fixed[0] > 0
    assert held[0].sum() == 2 and held[3].sum() == 1  # the replica moved from 3 to 0
    assert peak(fixed, load) < peak(current, load)
    assert (held.sum(axis=0) == 2).all() and (held.sum(axis=1) >= 1).all()  # slots and coverage kept


@pytest.mark.parametrize("seed", range(4))
def test_never_worse_keeps_slots_and_coverage_and_pays_its_price(seed):
    rng = np.random.default_rng(seed)
    E, D, L = 24, 6, 2
    layout = [list(range(d * 4, d * 4 + 4)) + [int(rng.integers(E))] for d in range(D)]
    layout = [sorted(set(h)) + ([] if len(set(h)) == 5 else [(max(h) + 7) % E]) for h in layout]
    current = np.concatenate([shares_of(layout, E)] * L)
    load = rng.gamma(0.7, 10.0, size=(L, E))
    tm = ExpertTimeModel(0.5, 1.0)
    free, rep_free = repair_placement(current, load, tm, price=0.0)
    for l in range(L):
        held, before = free[l] > 0, current[l] > 0
        assert (held.sum(axis=0) == before.sum(axis=0)).all()  # every device keeps its slot count
        assert (held.sum(axis=1) >= 1).all()
        np.testing.assert_allclose(free[l].sum(axis=1), 1.0)
    times = lambda s, l: (tm.fixed * (load[l] > 0) @ (s[l] > 0) + tm.per_token * load[l] @ s[l]).max()
    assert sum(times(free, l) for l in range(L)) <= sum(times(current, l) for l in range(L)) + 1e-9
    stay, rep_stay = repair_placement(current, load, tm, price=1e9)
    np.testing.assert_allclose(stay, current)
    assert rep_stay.copies_moved == 0 and rep_free.copies_moved >= rep_stay.copies_moved


def test_bad_shapes_and_prices_are_refused():
    with pytest.raises(ValueError, match="shares"):
        repair_placement(np.zeros((1, 4, 2)), np.zeros((2, 4)), TOKENS_MODEL)
    with pytest.raises(ValueError, match="price"):
        repair_placement(np.zeros((1, 4, 2)), np.zeros((1, 4)), TOKENS_MODEL, price=-1.0)


def test_a_free_slot_takes_a_copy_of_the_hot_expert_within_the_budget():
    current = shares_of([[0], [1], [2]], 3)
    load = np.array([[30.0, 5.0, 5.0]])
    slots = np.array([2, 2, 2])
    without, _ = repair_placement(current, load, TOKENS_MODEL)
    np.testing.assert_allclose(without, current)  # no spare copy to move and no room assumed
    fixed, rep = repair_placement(current, load, TOKENS_MODEL, slots=slots, budget=5)
    assert (fixed[0, 0] > 0).sum() == 3 and rep.copies_moved == 2  # two new copies of expert 0: 10 per copy
    assert peak(fixed, load) == pytest.approx(15.0)
    capped, _ = repair_placement(current, load, TOKENS_MODEL, slots=slots, budget=4)
    assert (capped[0] > 0).sum() == 4
