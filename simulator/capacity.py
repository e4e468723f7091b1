"""Capacity policy stage: how many (token, expert) rows each expert keeps (DESIGN.md "Capacity").

capacity = factor x tokens x k / E per expert and expert-parallel group; overflow is either
kept (the expert runs it anyway) or dropped (counted in the plan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def apply_capacity(counts: np.ndarray, capacity: int | None) -> np.ndarray:
    """Keep at most `capacity` assignments per expert (counts[l, s, e] over one EP group).

    Kept assignments are split over sources by cumulative integer rounding, so per-expert
    totals are exact and the survivors are spread in proportion to what each source sent.
    """
    if capacity is None:
        return counts
    load = counts.sum(axis=1, keepdims=True)  # (L, 1, E)
    kept = np.minimum(load, capacity)
    cum = np.cumsum(counts, axis=1)
    safe = np.maximum(load, 1)
    upto = (cum * kept) // safe
    prev = np.concatenate([np.zeros_like(upto[:, :1]), upto[:, :-1]], axis=1)
    return upto - prev


@dataclass(frozen=True)
class CapacityPolicy:
    """`factor` None keeps every row; with `drop`, each expert keeps ceil(factor x tokens x k / E)."""

    factor: float | None
    overflow: str  # "keep" | "drop"
    top_k: int
    num_experts: int

    def capacity(self, group_tokens: int) -> int | None:
        if self.factor is None or self.overflow != "drop":
            return None  # "keep" runs the overflow anyway
        return int(np.ceil(self.factor * group_tokens * self.top_k / self.num_experts))

    def __call__(self, counts: np.ndarray, group_tokens: int) -> np.ndarray:
        """Kept counts[l, s, e] of one expert-parallel group that sent `group_tokens` tokens."""
        return apply_capacity(counts, self.capacity(group_tokens))
