"""Routing: for each step and MoE layer, how many tokens go from each source device to each expert.

This is the interface every routing source implements (generators now; traces later). A
source returns a `RoutingStep`: integer counts[layer, source, expert] for the model's MoE
layers, plus per-token expert ids where the source has them. Generators emit counts directly
(vectorised numpy, never a Python loop per token) and are deterministic under a seed: step s
draws from its own generator seeded by (seed, s), so results do not depend on the order in
which the simulator asks for steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RoutingStep:
    """Routing of one step. counts[l, s, e] = tokens from source s routed to expert e in the
    l-th MoE layer; each token is counted once per chosen expert, so counts[l, s].sum() equals
    top_k x tokens[s]. token_experts[l] (tokens, top_k) and token_source (tokens,) are the
    per-token ids when known."""

    counts: np.ndarray
    token_experts: list[np.ndarray] | None = None
    token_source: np.ndarray | None = None


class RoutingSource(Protocol):
    num_experts: int
    top_k: int

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        """Routing of `step` for `tokens[s]` tokens at each source s over `num_layers` MoE layers."""
        ...


def zipf_popularity(num_experts: int, alpha: float) -> np.ndarray:
    """Zipf(alpha) popularity over expert ranks: p_r proportional to 1 / r^alpha."""
    ranks = np.arange(1, num_experts + 1, dtype=float)
    p = ranks ** (-alpha)
    return p / p.sum()


def inclusion_probabilities(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """Per-token probability that each expert is among its top-k (sums to k, each <= 1).

    Scales popularity by k and caps at 1, giving the excess to the uncapped experts until
    nothing exceeds 1 (an expert cannot be chosen twice by one token).
    """
    p = np.asarray(popularity, dtype=float)
    p = p / p.sum()
    pi = np.zeros_like(p)
    free = np.ones(p.size, dtype=bool)
    remaining = float(top_k)
    while True:
        scaled = p * remaining / p[free].sum()
        over = free & (scaled >= 1.0)
        if not over.any():
            pi[free] = scaled[free]
            return pi
        pi[over] = 1.0
        free &= ~over
        remaining = top_k - pi[~free].sum()


def sample_counts(rng: np.random.Generator, tokens: np.ndarray, inclusion: np.ndarray, top_k: int) -> np.ndarray:
    """counts[l, s, e] for tokens[s] tokens per source and inclusion[l, e] probabilities.

    Draws top_k x tokens[s] assignments multinomially with the inclusion probabilities, so
    expected loads match top-k sampling without replacement and every row sums exactly to
    top_k x tokens[s]; any count above tokens[s] (impossible for distinct top-k) is moved to
    the experts with the most room.
    """
    layers, experts = inclusion.shape
    n = np.broadcast_to(tokens * top_k, (layers, tokens.size))
    pvals = np.broadcast_to((inclusion / top_k)[:, None, :], (layers, tokens.size, experts))
    counts = rng.multinomial(n, pvals)
    cap = tokens[None, :, None]
    excess = np.clip(counts - cap, 0, None)
    if excess.any():
        counts -= excess
        for l, s in zip(*np.nonzero(excess.sum(axis=2))):
            extra = int(excess[l, s].sum())
            room = cap[0, s, 0] - counts[l, s]
            order = np.argsort(-room, kind="stable")
            for e in order:
                take = min(extra, int(room[e]))
                counts[l, s, e] += take
                extra -= take
                if not extra:
                    break
    return counts


@dataclass
class PopularityRouting:
    """Independent tokens choosing top-k experts by a per-layer popularity vector.

    `popularity[l]` is the probability mass of each expert at MoE layer l. With `shuffle`,
    which expert is hot differs per layer (fixed for the whole run under the seed).
    """

    num_experts: int
    top_k: int
    popularity: np.ndarray  # (layers, experts)
    seed: int = 0

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if self.popularity.shape[0] != num_layers:
            raise ValueError(f"popularity has {self.popularity.shape[0]} layers, need {num_layers}")
        rng = np.random.default_rng([self.seed, 1, step])
        inclusion = np.stack([inclusion_probabilities(p, self.top_k) for p in self.popularity])
        return RoutingStep(counts=sample_counts(rng, np.asarray(tokens, dtype=np.int64), inclusion, self.top_k))


def uniform_routing(num_experts: int, top_k: int, num_layers: int, seed: int = 0) -> PopularityRouting:
    """Every expert equally likely at every layer."""
    pop = np.full((num_layers, num_experts), 1.0 / num_experts)
    return PopularityRouting(num_experts, top_k, pop, seed)


def zipf_routing(num_experts: int, top_k: int, num_layers: int, alpha: float, seed: int = 0,
                 shuffle: bool = True) -> PopularityRouting:
    """Zipf(alpha)-skewed popularity; with `shuffle`, each layer's hot experts differ."""
    base = zipf_popularity(num_experts, alpha)
    rng = np.random.default_rng([seed, 0])
    pop = np.stack([base[rng.permutation(num_experts)] if shuffle else base for _ in range(num_layers)])
    return PopularityRouting(num_experts, top_k, pop, seed)


@dataclass
class FixedRouting:
    """The same counts every step: counts[l, s, e] given outright (tests, hand calculations)."""

    num_experts: int
    top_k: int
    counts: np.ndarray

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        counts = np.asarray(self.counts, dtype=np.int64)
        if counts.ndim == 2:
            counts = np.broadcast_to(counts, (num_layers, *counts.shape))
        if counts.shape != (num_layers, len(tokens), self.num_experts):
            raise ValueError(
                f"fixed routing counts have shape {counts.shape}, expected "
                f"(layers={num_layers}, sources={len(tokens)}, experts={self.num_experts})"
            )
        expected = np.asarray(tokens)[None, :] * self.top_k
        if not np.array_equal(counts.sum(axis=2), np.broadcast_to(expected, counts.shape[:2])):
            raise ValueError(
                f"fixed routing counts must sum to top_k x tokens per source ({expected.ravel().tolist()}), "
                f"got {counts.sum(axis=2)[0].tolist()}"
            )
        return RoutingStep(counts=np.array(counts))
