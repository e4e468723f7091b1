"""Routing that replays a measured expert-load history as explicit per-layer popularity.

Each window's per-layer shares become a `PopularityRouting` (multinomial counts through the
same inverse-CDF tables as uniform/zipf); `routing.per_token` swaps in Gumbel-top-k draws
(`map_sources`), so k distinct experts per token hold either way. `window` picks what a step
replays: `mean` (the mean of the windows' shares, every step), an index (that window), or
`cycle` (window (step // steps_per_window) mod windows, the history replayed in order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Hashable

import numpy as np

from moesim.workloads.load_matrix import LoadHistory
from moesim.workloads.node_limited_routing import PerTokenRouting
from moesim.workloads.routing import (PopularityRouting, RoutingSource, RoutingStep, inclusion_probabilities,
                                      routing_regime)


@dataclass
class LoadMatrixRouting:
    """RoutingSource drawing each step from the per-layer shares of a load history (model-matched)."""

    history: LoadHistory
    top_k: int
    window: int | str = "mean"  # "mean", "cycle" or a window index
    steps_per_window: int = 1
    seed: int = 0
    sources: list[RoutingSource] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        W = self.history.num_windows
        if isinstance(self.window, str) and self.window not in ("mean", "cycle"):
            raise ValueError(f"window must be 'mean', 'cycle' or a window index, got '{self.window}'")
        if not isinstance(self.window, str) and not 0 <= self.window < W:
            raise ValueError(f"window {self.window} asked but the history has {W} (0..{W - 1})")
        if self.steps_per_window < 1:
            raise ValueError(f"steps_per_window must be >= 1, got {self.steps_per_window}")
        E = self.history.num_experts
        self.sources = [PopularityRouting(E, self.top_k, p, self.seed) for p in self.popularities()]

    @property
    def num_experts(self) -> int:
        return self.history.num_experts

    @property
    def popularity(self) -> np.ndarray:
        """(L, E) the popularity of a single-window replay (mean or an index)."""
        if self.window == "cycle":
            raise ValueError("a cycling load-matrix routing has one popularity per window (see popularities())")
        return self.popularities()[0]

    def popularities(self) -> list[np.ndarray]:
        """The (L, E) popularity of every window this routing replays, in replay order."""
        shares = self.history.shares()
        if self.window == "mean":
            return [self.history.mean_shares()]
        if self.window == "cycle":
            return list(shares)
        return [shares[int(self.window)]]

    def window_at(self, step: int) -> int:
        """Index into `sources` of the window step `step` replays."""
        return (step // self.steps_per_window) % len(self.sources)

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        return self.sources[self.window_at(step)].step(step, tokens, num_layers)

    def regime(self, step: int) -> Hashable | None:
        """The regime of the window source the step replays; with several windows (cycle), tagged
        by the window (see `routing_regime`)."""
        w = self.window_at(step)
        inner = routing_regime(self.sources[w], step)
        if inner is None or len(self.sources) == 1:
            return inner
        return ("load_window", w, inner)

    def map_sources(self, fn: Callable[[PopularityRouting], RoutingSource]) -> "LoadMatrixRouting":
        """The same replay with every window's source replaced by fn(source) (e.g. per-token draws)."""
        out = replace(self)
        out.sources = [fn(s) for s in self.sources]
        return out

    @property
    def exact_marginals(self) -> bool:
        """True when every source's expected loads are its popularity's inclusion probabilities
        (counts or unconstrained per-token draws; node-limited routing shifts them)."""
        return all(type(s) in (PopularityRouting, PerTokenRouting) for s in self.sources)

    def expected_inclusion(self) -> np.ndarray:
        """(L, E) expected assignments per token (rows sum to top_k), averaged over replayed windows."""
        return np.mean([[inclusion_probabilities(row, self.top_k) for row in p] for p in self.popularities()],
                       axis=0)

    def window_inclusion(self) -> np.ndarray:
        """(W, L, E) expected assignments per token if each window of the history held alone."""
        return np.array([[inclusion_probabilities(row, self.top_k) for row in p] for p in self.history.shares()])
