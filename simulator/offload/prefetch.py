"""Prefetchers: which experts a device copies in ahead of the layer that needs them.

When a device's router has chosen layer l's experts, a prefetcher names experts for layer
l + lookahead (within the same step: the next step's routing depends on tokens not yet made):

- none: nothing;
- oracle: exactly the experts that layer will use on this device (an upper bound);
- affinity: the experts most likely to follow this layer's choices under the routing's
  layer-to-layer transition statistics (Read-ME, ExFlow), as many as the device usually needs;
- predictor: a gate predictor of given accuracy (Pre-gated MoE, ExpertFlow): each true expert is
  named with probability `accuracy`, each missed one replaced by a wrong expert of the device,
  drawn in proportion to popularity (a learned predictor's mistakes lean to hot experts).

Predictions are deterministic under the scenario seed and independent of event order.
"""

from __future__ import annotations

import numpy as np

from moesim.workloads.routing_statistics import ExpertStatistics
from moesim.simulator.offload.config import PrefetchConfig


class Prefetcher:
    """Names nothing: the base of every prefetch policy, and `none` itself."""

    active = False

    def __init__(self, cfg: PrefetchConfig, stats: ExpertStatistics, seed: int):
        self.cfg, self.stats, self.seed = cfg, stats, seed

    def predict(self, device: int, step: int, layer: int, target: int, owned: np.ndarray, true_next: np.ndarray,
                current_load: np.ndarray) -> list[int]:
        """Experts (of `owned`, those the device holds at `target`) to prefetch, most wanted first.

        `true_next`: experts the device will really run at `target` (only the oracle and the
        predictor's accuracy model may look); `current_load`: tokens per expert at `layer`."""
        return []


class OraclePrefetch(Prefetcher):
    """Exactly the experts the target layer will use on the device (an upper bound)."""

    active = True

    def predict(self, device, step, layer, target, owned, true_next, current_load) -> list[int]:
        return [int(e) for e in true_next]


class PredictorPrefetch(Prefetcher):
    """A gate predictor of given accuracy (Pre-gated MoE, ExpertFlow)."""

    active = True

    def predict(self, device, step, layer, target, owned, true_next, current_load) -> list[int]:
        return self._predictor(device, step, target, owned, true_next)

    def _predictor(self, device: int, step: int, target: int, owned: np.ndarray, true_next: np.ndarray) -> list[int]:
        rng = np.random.default_rng((self.seed, 0x5EED, step, target, device))
        hit = rng.random(len(true_next)) < self.cfg.accuracy
        named = [int(e) for e in true_next[hit]]
        wrong = np.setdiff1d(owned, true_next)
        n_wrong = min(int((~hit).sum()), len(wrong))
        if n_wrong:  # a learned predictor errs toward popular experts: wrong picks follow the mean load
            weight = self.stats.load[target, wrong] + 1e-9
            named += [int(e) for e in rng.choice(wrong, size=n_wrong, replace=False, p=weight / weight.sum())]
        return named


class AffinityPrefetch(Prefetcher):
    """The experts most likely to follow this layer's choices (Read-ME, ExFlow)."""

    active = True

    def predict(self, device, step, layer, target, owned, true_next, current_load) -> list[int]:
        return self._affinity(layer, target, owned, current_load)

    def _affinity(self, layer: int, target: int, owned: np.ndarray, current_load: np.ndarray) -> list[int]:
        score = np.asarray(current_load, dtype=float)
        for l in range(layer, target):  # chain the transitions up to the target layer
            score = score @ self.stats.transition[l]
        count = self.cfg.experts or self._usual_count(target, owned)
        order = owned[np.argsort(-score[owned], kind="stable")]
        return [int(e) for e in order[:count] if score[e] > 0]

    def _usual_count(self, target: int, owned: np.ndarray) -> int:
        """Distinct experts the device runs per layer on average: sum of P(expert gets >= 1 token),
        with a Poisson number of tokens per expert at its mean load."""
        load = self.stats.load[target, owned]
        return max(1, int(round(float((1.0 - np.exp(-load)).sum()))))

