"""Rename a new placement's devices so that it keeps the most copies where the old one has them.

A planner that starts from scratch names devices arbitrarily, so a new plan may move nearly every
copy although most of it is the old plan under other device names. Renaming devices only permutes
their loads, so every balance figure is kept while the bytes a rebalance moves drop.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _best_renaming(overlap: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """rename[c] = the current device a candidate device c becomes: the assignment that keeps
    the most copies (`overlap[d, c]` copies stay if c is renamed d), over allowed pairs only."""
    big = overlap.sum() + 1.0
    rows, cols = linear_sum_assignment(np.where(allowed, -overlap, big))
    rename = np.empty(overlap.shape[1], dtype=np.int64)
    rename[cols] = rows
    return rename


def keep_copies_in_place(current: np.ndarray, candidate: np.ndarray, node_of: np.ndarray | None = None,
                         slots: np.ndarray | None = None) -> np.ndarray:
    """The candidate shares (L, E, D) with its devices renamed, per layer, to keep the most
    copies of `current` in place.

    Whole nodes map to whole nodes first (so a node-aware plan keeps its node structure), then
    devices within each node pair; a device only takes the name of one with the same slots.
    Loads per device are only permuted, so every balance figure of the candidate is kept."""
    current, candidate = np.asarray(current, dtype=float), np.asarray(candidate, dtype=float)
    if current.shape != candidate.shape or current.ndim != 3:
        raise ValueError(f"placements must be (layers, experts, devices) of one shape: {current.shape}, "
                         f"{candidate.shape}")
    D = current.shape[2]
    node_of = np.zeros(D, dtype=np.int64) if node_of is None else np.asarray(node_of, dtype=np.int64)
    slots = np.ones(D, dtype=np.int64) if slots is None else np.asarray(slots)
    nodes = np.unique(node_of)
    members = [np.flatnonzero(node_of == n) for n in nodes]
    same_shape = np.array([[len(a) == len(b) and sorted(slots[a]) == sorted(slots[b]) for b in members]
                           for a in members])
    out = np.empty_like(candidate)
    for layer in range(current.shape[0]):
        overlap = (current[layer] > 1e-9).T.astype(float) @ (candidate[layer] > 1e-9).astype(float)  # (D, D)
        node_overlap = np.array([[overlap[np.ix_(a, b)].sum() for b in members] for a in members])
        node_rename = _best_renaming(node_overlap, same_shape)
        rename = np.empty(D, dtype=np.int64)
        for cand_node, cur_node in enumerate(node_rename):
            a, b = members[cur_node], members[cand_node]
            sub = _best_renaming(overlap[np.ix_(a, b)], slots[a][:, None] == slots[b][None, :])
            rename[b] = a[sub]
        out[layer][:, rename] = candidate[layer]
    return out
