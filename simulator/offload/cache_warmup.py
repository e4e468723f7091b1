"""What an expert cache holds before the first step: the device's experts, hottest first.

Serving systems load weights before traffic arrives; a cold start would charge every run one
compulsory miss per expert. Hotness is the mean load in the sampled routing statistics; ties
keep (layer, expert) order so the fill is deterministic.
"""

from __future__ import annotations

import numpy as np


def warm_order(load: np.ndarray, owned: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`owned` (moe_layer, expert) keys sorted by descending mean load, ties in key order."""
    hot = np.array([load[m, e] for m, e in owned]) if owned else np.zeros(0)
    order = np.argsort(-hot, kind="stable")
    return [owned[i] for i in order]
