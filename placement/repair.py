"""Incremental rebalancing: fix the placement in force with the fewest copy moves that pay.

A planner that starts from scratch (EPLB, the ILP) rebuilds every layer and moves most copies
even when the load only drifted; renaming devices (placement/renaming.py) saves 10-15%. Here
the placement in force is the start and each move is bought only if it lowers the layer's
bottleneck (slowest device's expert time) by more than its price:

- swap: copy a on the slowest device trades places with copy b on another device (2 copies move);
- re-replicate: a spare copy of the expert that loses least by it is dropped and a copy of the
  expert with the highest load per copy takes its slot (1 copy moves);
- add: where a device has a free slot and the copy budget allows, a copy of the expert with the
  highest load per copy goes there (1 copy moves).

Replicas split their expert's tokens evenly (as EPLB serves them). Moves are greedy, the best
first, until none pays: a local search, not an optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.problem import ExpertTimeModel


@dataclass(frozen=True)
class RepairReport:
    copies_moved: int  # over all layers
    moves: int  # accepted moves (swaps and re-replications)


def _layer_copies(shares: np.ndarray) -> list[tuple[int, int]]:
    """(expert, device) of every copy of one layer's (E, D) shares."""
    return [(int(e), int(d)) for e, d in np.argwhere(shares > 1e-9)]


def _device_times(copies: list[tuple[int, int]], load: np.ndarray, tm: ExpertTimeModel, D: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(D,) device times and (C,) each copy's time, replicas splitting their expert's load evenly."""
    experts = np.array([e for e, _ in copies])
    devices = np.array([d for _, d in copies])
    n = np.bincount(experts, minlength=load.size)
    w = tm.fixed * (load[experts] > 0) + tm.per_token * load[experts] / n[experts]
    return np.bincount(devices, weights=w, minlength=D), w


def _hottest(copies: list[tuple[int, int]], load: np.ndarray) -> tuple[int, np.ndarray]:
    """The expert with the highest load per copy, and every expert's copy count."""
    n = np.bincount([e for e, _ in copies], minlength=load.size)
    return int(np.argmax(np.where(n > 0, load / np.maximum(n, 1), -np.inf))), n


def _best_swap(copies, w, times) -> tuple[float, int, int] | None:
    """The swap between the slowest device and another that lowers the pair's max the most."""
    experts = np.array([e for e, _ in copies])
    devices = np.array([d for _, d in copies])
    hi = int(np.argmax(times))
    mine = np.flatnonzero(devices == hi)
    others = np.flatnonzero(devices != hi)
    if not mine.size or not others.size:
        return None
    wa, wb = w[mine][:, None], w[others][None, :]
    new_hi = times[hi] - wa + wb
    new_other = times[devices[others]][None, :] - wb + wa
    peak = np.maximum(new_hi, new_other)
    # a device may not end with two copies of one expert
    held = {(e, d) for e, d in copies}
    a_exp, b_exp = experts[mine], experts[others]
    bad = (a_exp[:, None] == b_exp[None, :])
    bad |= np.array([[(int(ea), int(devices[o])) in held for o in others] for ea in a_exp])
    bad |= np.array([[(int(eb), hi) in held for eb in b_exp] for _ in a_exp])
    peak = np.where(bad, np.inf, peak)
    i, j = np.unravel_index(int(np.argmin(peak)), peak.shape)
    if not np.isfinite(peak[i, j]):
        return None
    return float(peak[i, j]), int(mine[i]), int(others[j])


def _best_rereplication(copies, load, tm, D) -> tuple[list[tuple[int, int]], np.ndarray] | None:
    """Drop one copy of the expert that loses least (its other copies absorb the load) and give its
    slot to the expert with the highest load per copy; the candidate with the lowest bottleneck."""
    hot, n = _hottest(copies, load)
    spare = [e for e in np.argsort(load / np.maximum(n - 1, 1)) if n[e] >= 2 and e != hot][:4]
    best = None
    held = set(copies)
    for e in spare:
        for k, (ce, cd) in enumerate(copies):
            if ce != e or (hot, cd) in held:
                continue
            trial = copies[:k] + [(hot, cd)] + copies[k + 1:]
            times, _ = _device_times(trial, load, tm, D)
            if best is None or times.max() < best[1].max():
                best = (trial, times)
    return best


def _best_addition(copies, load, tm, D, slots, budget) -> tuple[list[tuple[int, int]], np.ndarray] | None:
    """A copy of the expert with the highest load per copy on the free slot that helps most."""
    if slots is None or len(copies) >= budget:
        return None
    used = np.bincount([d for _, d in copies], minlength=D)
    hot, _ = _hottest(copies, load)
    held = set(copies)
    best = None
    for d in np.flatnonzero(used < slots):
        if (hot, int(d)) in held:
            continue
        trial = copies + [(hot, int(d))]
        times, _ = _device_times(trial, load, tm, D)
        if best is None or times.max() < best[1].max():
            best = (trial, times)
    return best


def repair_layer(shares: np.ndarray, load: np.ndarray, tm: ExpertTimeModel, price: float, max_moves: int = 1000,
                 slots: np.ndarray | None = None, budget: int | None = None) -> tuple[np.ndarray, int, int]:
    """One layer: (E, D) shares after the paying moves, copies moved, moves accepted."""
    E, D = shares.shape
    copies = _layer_copies(shares)
    moved = accepted = 0
    for _ in range(max_moves):
        times, w = _device_times(copies, load, tm, D)
        peak = float(times.max())
        swap = _best_swap(copies, w, times)
        swap_gain = -np.inf
        if swap is not None:
            _, a, b = swap
            trial = list(copies)
            (ea, da), (eb, db) = trial[a], trial[b]
            trial[a], trial[b] = (ea, db), (eb, da)
            swap_gain = peak - float(_device_times(trial, load, tm, D)[0].max()) - 2 * price
        rep = _best_rereplication(copies, load, tm, D)
        add = _best_addition(copies, load, tm, D, slots, budget if budget is not None else np.inf)
        one_copy = [c for c in (rep, add) if c is not None]
        best_one = min(one_copy, key=lambda c: c[1].max()) if one_copy else None
        one_gain = -np.inf if best_one is None else peak - float(best_one[1].max()) - price
        if max(swap_gain, one_gain) <= 1e-12 * max(peak, 1.0):
            break
        if swap_gain > one_gain:  # a tie goes to the move of one copy
            copies, moved = trial, moved + 2
        else:
            copies, moved = best_one[0], moved + 1
        accepted += 1
    out = np.zeros((E, D))
    n = np.bincount([e for e, _ in copies], minlength=E)
    for e, d in copies:
        out[e, d] = 1.0 / n[e]
    return out, moved, accepted


def repair_placement(current: np.ndarray, load: np.ndarray, tm: ExpertTimeModel, price: float = 0.0,
                     slots: np.ndarray | None = None, budget: int | None = None) -> tuple[np.ndarray, RepairReport]:
    """(L, E, D) shares of the placement in force, improved layer by layer on `load` (L, E) by moves
    that each lower the layer's bottleneck by more than `price` per copy moved (time-model units).
    With `slots` (D,) and `budget` (copies per layer), free slots may take new copies."""
    current, load = np.asarray(current, dtype=float), np.asarray(load, dtype=float)
    if current.ndim != 3 or load.shape != current.shape[:2]:
        raise ValueError(f"need shares (L, E, D) and load (L, E); got {current.shape} and {load.shape}")
    if price < 0:
        raise ValueError(f"price must be >= 0, got {price}")
    out = np.empty_like(current)
    moved = accepted = 0
    for layer in range(current.shape[0]):
        out[layer], m, a = repair_layer(current[layer], load[layer], tm, price, slots=slots, budget=budget)
        moved, accepted = moved + m, accepted + a
    return out, RepairReport(moved, accepted)
