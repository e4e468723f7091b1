"""Load scenarios for the robust placement ILP: windows of a history, or draws from a drift model.

A scenario is one (layers, experts) load matrix the placement must serve; the robust ILP takes
them as an (S, layers, experts) array and minimises (1 - lam) x mean + lam x worst of their
bottlenecks. Two sources:

- `window_loads`: the mean load of consecutive windows of steps of a routing source (a trace
  or the generator), i.e. the windows of a history;
- `sample_drift_scenarios`: future-like windows drawn from the synthetic routing generator's own
  drift model (an AR(1) walk on log-popularity, then Dirichlet batch variance) started from the
  planning load, so the placement is hedged against where popularity is going, not only where it was.
"""

from __future__ import annotations

import numpy as np

from moesim.workloads.routing import RoutingSource
from moesim.workloads.synthetic_routing import DriftConfig, PopularityConfig, RoutingModelConfig, SyntheticRouting


def window_loads(routing: RoutingSource, tokens: np.ndarray, num_layers: int, windows: int, window_steps: int,
                 first_step: int = 0) -> np.ndarray:
    """(windows, layers, experts) mean assignments per step of each window of `window_steps` steps."""
    tokens = np.asarray(tokens, dtype=np.int64)
    out = np.zeros((windows, num_layers, routing.num_experts))
    for w in range(windows):
        for s in range(window_steps):
            step = routing.step(first_step + w * window_steps + s, tokens, num_layers)
            out[w] += step.counts.sum(axis=1)
        out[w] /= window_steps
    return out


def sample_drift_scenarios(load: np.ndarray, num: int, drift: DriftConfig, batch_concentration: float | None = None,
                           horizon: int = 8, window_steps: int = 1, seed: int = 0) -> np.ndarray:
    """(num, layers, experts) loads drawn from the generator's drift model around a planning load.

    `load` is (layers, experts), or (windows, layers, experts) whose last window starts the
    walk. Each scenario runs its own drift path for `horizon` steps and averages the popularity
    (with batch variance) over the next `window_steps` steps; per-layer totals stay the planning
    load's."""
    load = np.asarray(load, dtype=float)
    base = load[-1] if load.ndim == 3 else load
    if base.ndim != 2 or (base < 0).any() or not np.isfinite(base).all():
        raise ValueError(f"planning load must be a finite non-negative (layers, experts) array, got {base.shape}")
    if num < 1 or horizon < 0 or window_steps < 1:
        raise ValueError(f"need num >= 1, horizon >= 0, window_steps >= 1; got {num}, {horizon}, {window_steps}")
    totals = base.sum(axis=1, keepdims=True)
    weights = np.where(totals > 0, base / np.maximum(totals, 1e-300), 1.0 / base.shape[1])
    cfg = RoutingModelConfig(popularity=PopularityConfig(kind="explicit", weights=weights.tolist()), drift=drift,
                             batch_concentration=batch_concentration)
    L, E = base.shape
    out = np.zeros((num, L, E))
    for s in range(num):
        gen = SyntheticRouting(cfg, E, 1, L, seed=seed * 1_000_003 + s)
        for t in range(horizon + 1, horizon + 1 + window_steps):
            out[s] += gen.popularity(t, 1, np.random.default_rng([seed, s, t]))[:, 0, :]
        out[s] *= totals / window_steps
    return out
