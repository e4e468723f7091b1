"""Deduplicated dispatch: a token goes once to each destination device however many of its k
experts live there; the device reduces its experts' outputs before combine sends one row back.

Counts-only routing does not say which tokens share a device, so the number of distinct
(token, device) pairs is its expectation: each slot's rows at a source are taken as a uniform
random subset of the source's tokens, independent across slots, so a token misses device d
with probability prod_{j on d} (1 - rows_j / tokens). Exact for independent per-slot choice;
against top-k draws without replacement see tests/test_dispatch_algorithms.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, Traffic, onehot_devices


def expected_distinct(rows: np.ndarray, tokens: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """(Lm, S, G) expected distinct tokens of each source reaching each destination group.

    rows (Lm, S, J) rows from source to slot; tokens (S,); onehot (Lm, J, G) slot -> group."""
    t = np.asarray(tokens, dtype=float)[None, :, None]
    frac = np.clip(np.divide(rows, t, out=np.zeros_like(rows, dtype=float), where=t > 0), 0.0, 1.0)
    log_miss = np.log(np.maximum(1.0 - frac, 1e-300))  # finite, so 0-weight slots add exactly 0
    miss = np.exp(np.matmul(log_miss, onehot))
    return t * (1.0 - miss)


def distinct_device_rows(rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray, ep: int) -> np.ndarray:
    """(Lm, N, N) expected distinct (token, device) pairs from every device to every device."""
    G, Lm = rows.shape[0], rows.shape[1]
    n = G * ep
    out = np.zeros((Lm, n, n))
    onehot = onehot_devices(slot_device, ep)
    for g in range(G):
        devs = slice(g * ep, (g + 1) * ep)
        out[:, devs, devs] = expected_distinct(rows[g], tokens[devs], onehot)
    return out


@dataclass(frozen=True)
class Dedup:
    name: str = "dedup"

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout) -> Traffic:
        distinct = distinct_device_rows(rows, slot_device, tokens, layout.ep)
        return Traffic([distinct * layout.dispatch_bytes], [np.transpose(distinct, (0, 2, 1)) * layout.combine_bytes],
                       distinct=distinct)
