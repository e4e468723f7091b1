"""Deduplicated dispatch: a token goes once to each destination device however many of its k
experts live there; the device reduces its experts' outputs before combine sends one row back.

With per-token ids (per-token generators, traces) the distinct pairs are counted exactly.
Counts-only routing does not say which tokens share a device, so the number of distinct
(token, device) pairs is its expectation: each slot's rows at a source are taken as a uniform
random subset of the source's tokens, independent across slots, so a token misses device d
with probability prod_{j on d} (1 - rows_j / tokens). Exact for independent per-slot choice;
against top-k draws without replacement see `distinct.py` (2-4% fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic
from moesim.simulator.dispatch.distinct import distinct_pairs


def distinct_device_rows(rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray, ep: int,
                         token_ids: TokenIds | None = None) -> np.ndarray:
    """(Lm, N, N) distinct (token, device) pairs from every device to every device (exact with
    per-token ids, else expected)."""
    G, Lm = rows.shape[0], rows.shape[1]
    n = G * ep
    out = np.zeros((Lm, n, n))
    for g in range(G):
        devs = slice(g * ep, (g + 1) * ep)
        out[:, devs, devs] = distinct_pairs(rows[g], tokens[devs], slot_device, ep, token_ids, g * ep)
    return out


@dataclass(frozen=True)
class Dedup:
    name: str = "dedup"
    comm_kind: str = "all_to_all"
    stages: int = 1
    flow_from_top1: bool = False

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return p.base * p.per_device  # a token once per destination device

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return p.per_device

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        distinct = distinct_device_rows(rows, slot_device, tokens, layout.ep, token_ids)
        return Traffic([distinct * layout.dispatch_bytes], [np.transpose(distinct, (0, 2, 1)) * layout.combine_bytes],
                       distinct=distinct)
