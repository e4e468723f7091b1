"""Routing: for each step and MoE layer, how many tokens go from each source device to each expert.

This is the interface every routing source implements (generators now; traces later). A
source returns a `RoutingStep`: integer counts[layer, source, expert] for the model's MoE
layers, plus per-token expert ids where the source has them. Generators emit counts directly
(vectorised numpy, never a Python loop per token) and are deterministic under a seed: step s
draws from its own generator seeded by (seed, s), so results do not depend on the order in
which the simulator asks for steps.

Every source also names the *routing regime* of a step (`regime(step)`, read through
`routing_regime`): which distribution that step draws from, so that a consumer that reuses one
step's draw for another (the serving iteration cache) never crosses a change of distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Hashable, Protocol

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

    def regime(self, step: int) -> Hashable | None:
        """The routing regime of `step` (see `routing_regime`, which says what each source returns)."""
        ...


STATIONARY = "stationary"  # the regime of a source whose distribution never changes over the run


def routing_regime(source: object, step: int) -> Hashable | None:
    """A hashable token of the distribution `source.step(step, ...)` draws from.

    Two steps with equal regimes (and equal tokens per source) draw from the same distribution:
    their routings differ only by sampling noise, so one draw may stand for the other (the serving
    iteration cache, simulator/serving/iteration_cache.py, keys on the batch shape and this). None
    means the step's distribution is its own, shared with no other step: nothing may stand for it.
    This is the one place the decision is made; each source's `regime` method implements its line:

    - STATIONARY, one regime for the run: uniform and zipf (`PopularityRouting`), fixed counts
      (`FixedRouting`), per-token and node-limited draws (`PerTokenRouting`, `NodeLimitedRouting`:
      a fixed popularity on a fixed placement), a load-matrix replay of the mean or of one window,
      and the synthetic generator without drift (its batch variance is a fresh draw each step from
      a fixed distribution; locality preferences and the affinity order are fixed for the run);
    - None: the synthetic generator with drift (sigma > 0: popularity walks a step every step, so
      no two steps share a distribution) and a trace without repeat (each trace step is its own
      routing);
    - a recurring index: a trace with repeat (the trace step, step mod the trace's length: the same
      rows come back each lap), a load-matrix cycle (the window the step replays, with that
      window's source's own regime);
    - a source without a `regime` method: None (unknown sources are never stood in for).
    """
    regime = getattr(source, "regime", None)
    return regime(step) if callable(regime) else None


def layer_pairs(experts: list[np.ndarray], num_experts: int, from_top1: bool = False) -> np.ndarray:
    """(L-1, E, E) counts of every (expert at l, expert at l+1) pair of each token (k x k each).

    `from_top1`: only the token's first-listed expert at l, paired with each of its k at l+1, and
    counted k times (so totals match): the moves of a token that stays on its top-1 expert's
    device between layers (exflow dispatch)."""
    L = len(experts)
    out = np.zeros((max(L - 1, 0), num_experts, num_experts), dtype=np.int64)
    for l in range(L - 1):
        a, b = experts[l].astype(np.int64), experts[l + 1].astype(np.int64)
        if from_top1:
            a = np.repeat(a[:, :1], a.shape[1], axis=1)
        flat = (a[:, :, None] * num_experts + b[:, None, :]).ravel()
        out[l] = np.bincount(flat, minlength=num_experts * num_experts).reshape(num_experts, num_experts)
    return out


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


def inverse_cdf_table(probabilities: np.ndarray, resolution: int) -> np.ndarray:
    """Lookup table mapping a uniform integer in [0, resolution) to a category.

    Each category gets round(p x resolution) entries (largest remainder, so the table is
    exactly full): sampling through it is exact for probabilities that are multiples of
    1/resolution and within 1/resolution of p otherwise.
    """
    p = np.asarray(probabilities, dtype=float)
    p = p / p.sum()
    raw = p * resolution
    slots = np.floor(raw).astype(np.int64)
    short = resolution - int(slots.sum())
    if short:
        slots[np.argsort(-(raw - slots), kind="stable")[:short]] += 1
    return np.repeat(np.arange(p.size, dtype=np.int32), slots)


def sampling_tables(inclusion: np.ndarray, top_k: int) -> np.ndarray:
    """Flattened per-layer inverse-CDF tables of inclusion / k (build once per routing source)."""
    experts = inclusion.shape[1]
    resolution = 1 << max(16, int(np.ceil(np.log2(experts * 256))))
    return np.stack([inverse_cdf_table(row / top_k, resolution) for row in inclusion])


@lru_cache(maxsize=8)
def _row_offsets(layers: int, per_row: tuple[int, ...], experts: int) -> np.ndarray:
    """Bin offset (layer x sources + source) x experts of every draw, cached per shape."""
    rows = np.repeat(np.arange(len(per_row), dtype=np.int64), per_row)
    out = (np.arange(layers, dtype=np.int64)[:, None] * len(per_row) + rows[None, :]) * experts
    out.setflags(write=False)
    return out


def uniform_tables(tables: np.ndarray, experts: int) -> bool:
    """True when every table maps equal-width ranges to experts in order (uniform routing)."""
    resolution = tables.shape[1]
    if resolution % experts:
        return False
    return bool(np.array_equal(tables[:, :: resolution // experts], np.broadcast_to(np.arange(experts), (tables.shape[0], experts)))
                and np.array_equal(tables[:, resolution // experts - 1 :: resolution // experts],
                                   np.broadcast_to(np.arange(experts), (tables.shape[0], experts))))


def sample_counts(rng: np.random.Generator, tokens: np.ndarray, tables: np.ndarray, experts: int,
                  top_k: int) -> np.ndarray:
    """counts[l, s, e] for tokens[s] tokens per source, sampled through `sampling_tables`.

    Draws top_k x tokens[s] independent assignments per (layer, source) from inclusion / k, so
    counts are multinomial: expected loads match top-k sampling without replacement and every
    row sums exactly to top_k x tokens[s]. Each assignment is one uniform integer looked up in
    an inverse-CDF table (a gather and a bincount per step; several times faster than numpy's
    multinomial). Any count above tokens[s] (impossible for distinct top-k) is moved to the
    experts with the most room.
    """
    layers, resolution = tables.shape
    tokens = np.asarray(tokens, dtype=np.int64)
    per_row = tokens * top_k
    total = int(per_row.sum())
    offsets = _row_offsets(layers, tuple(per_row.tolist()), experts)  # (layer, source) bin of each draw
    if uniform_tables(tables, experts) and resolution == 1 << 16:
        # every expert equally likely: the high bits of a uniform 16-bit draw are the expert
        draws = np.frombuffer(rng.bytes(2 * layers * total), dtype=np.uint16).reshape(layers, total)
        chosen = offsets + (draws // (resolution // experts))
    elif resolution == 1 << 16:  # raw random bytes are the cheapest uniform 16-bit integers
        draws = np.frombuffer(rng.bytes(2 * layers * total), dtype=np.uint16).reshape(layers, total)
        chosen = offsets + tables.ravel().take(draws + (np.arange(layers, dtype=np.int64) * resolution)[:, None])
    else:
        draws = rng.integers(0, resolution, size=(layers, total), dtype=np.int64)
        draws += (np.arange(layers, dtype=np.int64) * resolution)[:, None]
        chosen = offsets + tables.ravel().take(draws)
    counts = np.bincount(chosen.ravel(), minlength=layers * tokens.size * experts).reshape(layers, tokens.size, experts)
    return cap_at_tokens(counts, tokens)


def cap_at_tokens(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Move any count above its source's token count (impossible with distinct top-k) to the
    experts of that (layer, source) with the most room; row sums are unchanged."""
    cap = tokens[None, :, None]
    excess = np.clip(counts - cap, 0, None)
    if excess.any():
        counts -= excess
        for l, s in zip(*np.nonzero(excess.sum(axis=2))):
            extra = int(excess[l, s].sum())
            room = cap[0, s, 0] - counts[l, s]
            for e in np.argsort(-room, kind="stable"):
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

    def __post_init__(self) -> None:
        self.inclusion = np.stack([inclusion_probabilities(p, self.top_k) for p in self.popularity])
        self._tables = sampling_tables(self.inclusion, self.top_k)

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if self.popularity.shape[0] != num_layers:
            raise ValueError(f"popularity has {self.popularity.shape[0]} layers, need {num_layers}")
        rng = np.random.default_rng([self.seed, 1, step])
        counts = sample_counts(rng, np.asarray(tokens, dtype=np.int64), self._tables, self.num_experts, self.top_k)
        return RoutingStep(counts=counts)

    def regime(self, step: int) -> Hashable:
        """One popularity for the run (`routing_regime`)."""
        return STATIONARY


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

    def regime(self, step: int) -> Hashable:
        """The same counts every step (`routing_regime`)."""
        return STATIONARY
