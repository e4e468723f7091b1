"""Per-token top-k routing by the Gumbel-top-k trick, optionally node-limited (DeepSeek-V3 style).

Each token scores every expert with log w_e + Gumbel noise and takes the k best: that is
top-k sampling without replacement in proportion to w (Plackett-Luce / successive sampling).
Implemented as the k smallest of Exp(1) / w_e (the same race, no logarithms per element).

Plackett-Luce with w = popularity does *not* give inclusion probabilities k x p (hot experts
are chosen less than k x p), so by default w is calibrated once per distinct popularity row so
that unconstrained top-k has exactly `inclusion_probabilities(p, k)` as per-expert marginals,
the same expected loads as `PopularityRouting`'s counts. `calibrate=False` uses w = p as given.

`NodeLimitedRouting` adds DeepSeek-V3's node-limited routing (V3 paper sec. 2.1.2): a node's
score is the sum of the top max(k // M, 1) expert scores on it, the token keeps its M best
nodes, then takes the top-k experts among those nodes only. With M >= the number of nodes it
is the unconstrained draw. Node limitation shifts load towards nodes with several hot experts,
so its marginals differ from the popularity's; that is the effect being modelled.

Cost (measured with `python -m moesim.workloads.node_limited_routing` on a 2-core VM, numpy,
float32): 32 sources x 128 tokens x 58 layers x 256 experts, k = 8, Zipf(1) popularity, 8
nodes of 32 experts, M = 4: about 1.2 s per step node-limited, 0.7 s unconstrained
(PerTokenRouting), i.e. ~20 ms / ~12 ms per layer for 4096 tokens, dominated by drawing the
T x E exponentials and the per-node two-smallest; calibration adds ~0.2 s once per distinct
sorted popularity row (cached). Counts-only `PopularityRouting` is far cheaper: use per-token
routing only where per-token ids matter (deduplicated dispatch, node limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Hashable

import numpy as np

from moesim.workloads.routing import STATIONARY, RoutingStep, inclusion_probabilities

_QUADRATURE_POINTS = 400


def plackett_luce_inclusion(weights: np.ndarray, top_k: int) -> np.ndarray:
    """P(expert in top-k) when top-k is drawn without replacement in proportion to `weights`.

    Rows of `weights` (..., E) are independent. Expert e's Exp(w_e) arrival time must beat the
    k-th arrival among the others: pi_e = int w_e exp(-w_e t) P(N_-e(t) < k) dt, with the
    leave-one-out count N_-e from prefix and suffix Poisson-binomial tables truncated at k and
    the integral taken by the trapezoid rule in log t (smooth, so a few hundred points give ~1e-9).
    """
    w = np.asarray(weights, dtype=float)
    shape = w.shape
    w = w.reshape(-1, shape[-1]) / w.reshape(-1, shape[-1]).sum(axis=1, keepdims=True)
    rows, E = w.shape
    pos = np.where(w > 0, w, np.inf)
    lo = np.log(1e-10 / w.max(axis=1))
    hi = np.log(60.0 * max(top_k, 1) / pos.min(axis=1))
    x = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, _QUADRATURE_POINTS)[None, :]  # (R, P)
    t = np.exp(x)
    q = -np.expm1(-w[:, :, None] * t[:, None, :])  # (R, E, P): P(expert arrived by t)
    k = top_k
    prefix = np.zeros((rows, E + 1, t.shape[1], k))
    suffix = np.zeros((rows, E + 1, t.shape[1], k))
    prefix[:, 0, :, 0] = 1.0
    suffix[:, E, :, 0] = 1.0
    for j in range(E):  # prefix[j]: arrivals among experts < j; suffix[j]: among experts >= j
        a, qa = prefix[:, j], q[:, j, :, None]
        prefix[:, j + 1] = a * (1 - qa)
        prefix[:, j + 1, :, 1:] += a[:, :, :-1] * qa
        b, qb = suffix[:, E - j], q[:, E - j - 1, :, None]
        suffix[:, E - j - 1] = b * (1 - qb)
        suffix[:, E - j - 1, :, 1:] += b[:, :, :-1] * qb
    below = np.cumsum(suffix[:, 1:], axis=3)[..., ::-1]  # below[.., a] = P(suffix count <= k-1-a)
    survive = (prefix[:, :-1] * below).sum(axis=3)  # (R, E, P): P(N_-e(t) < k)
    integrand = w[:, :, None] * t[:, None, :] * np.exp(-w[:, :, None] * t[:, None, :]) * survive
    dx = (hi - lo)[:, None]
    pi = dx / (_QUADRATURE_POINTS - 1) * (integrand.sum(axis=2) - 0.5 * (integrand[..., 0] + integrand[..., -1]))
    return pi.reshape(shape)


@lru_cache(maxsize=64)
def _calibrated_sorted(sorted_p: tuple[float, ...], top_k: int) -> np.ndarray:
    """Weights (for popularity sorted descending) whose Plackett-Luce inclusion is inclusion_probabilities."""
    p = np.asarray(sorted_p)
    target = inclusion_probabilities(p, top_k)
    if np.allclose(p[p > 0], p[0]) or (p > 0).sum() <= top_k:
        return p.copy()
    # experts with target 1 are always chosen (infinite weight): calibrate the rest for k - capped
    free = (target > 0) & (target < 1 - 1e-12)
    capped = int((target >= 1 - 1e-12).sum())
    goal = target[free]
    w = np.zeros_like(p)
    if capped:
        w[~free & (target > 0)] = 1e12  # effectively certain (free weights are <= 1)
    if top_k - capped >= 1 and free.any():
        # fixed point on -log(1 - pi): multiplicative for small pi, fast near pi = 1
        scale = -np.log1p(-goal)
        logw = np.log(goal)
        for _ in range(100):
            pi = np.clip(plackett_luce_inclusion(np.exp(logw - logw.max()), top_k - capped), 1e-300, 1 - 1e-15)
            if np.abs(pi - goal).max() < 1e-7:
                break
            logw += np.log(scale / -np.log1p(-pi))
        w[free] = np.exp(logw - logw.max())
    return w / w.sum()


def calibrated_weights(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """(L, E) race weights whose top-k inclusion probabilities equal inclusion_probabilities(popularity[l], k).

    Calibration is permutation-equivariant, so it runs once per distinct sorted row (cached).
    """
    out = np.empty_like(popularity, dtype=float)
    for l, row in enumerate(np.asarray(popularity, dtype=float)):
        row = row / row.sum()
        order = np.argsort(-row, kind="stable")
        out[l, order] = _calibrated_sorted(tuple(np.round(row[order], 15).tolist()), top_k)
    return out


def _check_popularity(popularity: np.ndarray, num_experts: int, top_k: int) -> np.ndarray:
    """The popularity as a non-negative (L, E) float array with at least top_k live experts per layer."""
    p = np.asarray(popularity, dtype=float)
    if p.ndim != 2 or p.shape[1] != num_experts:
        raise ValueError(f"popularity must have shape (layers, {num_experts}), got {p.shape}")
    if (p < 0).any() or not np.isfinite(p).all():
        raise ValueError("popularity must be finite and non-negative")
    if top_k < 1 or top_k > num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    if ((p > 0).sum(axis=1) < top_k).any():
        raise ValueError(f"every layer's popularity needs at least top_k={top_k} experts with positive mass")
    return p / p.sum(axis=1, keepdims=True)


def _finish(experts: list[np.ndarray], src: np.ndarray, sources: int, num_experts: int) -> RoutingStep:
    """RoutingStep with counts[l, s, e] = bincount of each layer's per-token ids."""
    counts = np.stack([np.bincount((src[:, None] * num_experts + e).ravel(), minlength=sources * num_experts)
                       .reshape(sources, num_experts) for e in experts]).astype(np.int64)
    return RoutingStep(counts=counts, token_experts=experts, token_source=src)


def _race(rng: np.random.Generator, tokens: int, inv_w: np.ndarray) -> np.ndarray:
    """(tokens, E) float32 race times Exp(1) / w_e: the k smallest are a top-k draw in proportion to w."""
    times = rng.standard_exponential((tokens, inv_w.size), dtype=np.float32)
    times *= inv_w
    return times


def _smallest_k(times: np.ndarray, k: int) -> np.ndarray:
    """(tokens, k) int32 column ids of each row's k smallest entries, best first; overwrites `times`.

    k rounds of argmin are about twice as fast as argpartition for the small k of MoE routing.
    """
    if k > 16:
        return np.argpartition(times, k - 1, axis=1)[:, :k].astype(np.int32)
    rows = np.arange(times.shape[0])
    out = np.empty((times.shape[0], k), dtype=np.int32)
    for i in range(k):
        out[:, i] = times.argmin(axis=1)
        times[rows, out[:, i]] = np.inf
    return out


@dataclass
class PerTokenRouting:
    """RoutingSource drawing per-token top-k ids (Gumbel-top-k) from a per-layer popularity (L, E)."""

    num_experts: int
    top_k: int
    popularity: np.ndarray
    seed: int = 0
    calibrate: bool = True  # marginals = inclusion_probabilities (else Plackett-Luce on p itself)
    weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.popularity = _check_popularity(self.popularity, self.num_experts, self.top_k)
        self.weights = calibrated_weights(self.popularity, self.top_k) if self.calibrate else self.popularity
        with np.errstate(divide="ignore"):
            self._inv_w = (1.0 / self.weights).astype(np.float32)

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if self.popularity.shape[0] != num_layers:
            raise ValueError(f"popularity has {self.popularity.shape[0]} layers, need {num_layers}")
        tokens = np.asarray(tokens, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1, step])
        src = np.repeat(np.arange(tokens.size, dtype=np.int64), tokens)
        experts = [_smallest_k(_race(rng, src.size, self._inv_w[l]), self.top_k) for l in range(num_layers)]
        return _finish(experts, src, tokens.size, self.num_experts)

    def regime(self, step: int) -> Hashable:
        """One popularity for the run (`routing_regime`)."""
        return STATIONARY


@dataclass
class NodeLimitedRouting:
    """RoutingSource with DeepSeek-V3 node-limited top-k: each token's experts lie on at most `max_nodes` nodes.

    `expert_node[l, e]` is the node of expert e at MoE layer l under the current placement (the
    primary copy's node for replicated experts).
    """

    num_experts: int
    top_k: int
    popularity: np.ndarray
    expert_node: np.ndarray
    max_nodes: int
    seed: int = 0
    calibrate: bool = True
    weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.popularity = _check_popularity(self.popularity, self.num_experts, self.top_k)
        node = np.asarray(self.expert_node)
        if node.shape != self.popularity.shape:
            raise ValueError(f"expert_node must have the popularity's shape {self.popularity.shape} "
                             f"(layers, experts), got {node.shape}")
        if not np.issubdtype(node.dtype, np.integer) or (node < 0).any():
            raise ValueError("expert_node must hold non-negative integer node ids")
        if int(self.max_nodes) < 1:
            raise ValueError(f"max_nodes (M) must be >= 1, got {self.max_nodes}")
        self.expert_node = node.astype(np.int64)
        self.per_node = max(self.top_k // int(self.max_nodes), 1)
        self._members = [self._node_table(row) for row in self.expert_node]
        self.weights = calibrated_weights(self.popularity, self.top_k) if self.calibrate else self.popularity
        with np.errstate(divide="ignore"):
            self._inv_w = (1.0 / self.weights).astype(np.float32)

    def _node_table(self, node_of: np.ndarray) -> np.ndarray | None:
        """(nodes, slots) table of each node's experts, padded with E to a power-of-two number of
        slots; None if M covers all nodes."""
        nodes, sizes = np.unique(node_of, return_counts=True)
        if np.sort(sizes)[: self.max_nodes].sum() < self.top_k:
            raise ValueError(f"max_nodes={self.max_nodes} nodes may hold fewer than top_k={self.top_k} experts "
                             f"(node sizes {sizes.tolist()})")
        if self.max_nodes >= nodes.size:
            return None
        slots = 1 << int(np.ceil(np.log2(max(sizes.max(), 2))))
        table = np.full((nodes.size, slots), self.num_experts, dtype=np.int64)
        order = np.argsort(node_of, kind="stable")
        rank = np.arange(node_of.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        table[np.searchsorted(nodes, node_of[order]), rank] = order
        return table

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if self.popularity.shape[0] != num_layers:
            raise ValueError(f"popularity has {self.popularity.shape[0]} layers, need {num_layers}")
        tokens = np.asarray(tokens, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1, step])
        src = np.repeat(np.arange(tokens.size, dtype=np.int64), tokens)
        experts = []
        for l in range(num_layers):
            table = self._members[l]
            if table is None:
                experts.append(_smallest_k(_race(rng, src.size, self._inv_w[l]), self.top_k))
            else:
                experts.append(self._limited(rng, src.size, table, self._inv_w[l]))
        return _finish(experts, src, tokens.size, self.num_experts)

    def regime(self, step: int) -> Hashable:
        """One popularity on one placement for the run (`routing_regime`)."""
        return STATIONARY

    def _limited(self, rng: np.random.Generator, tokens: int, table: np.ndarray, inv_w: np.ndarray) -> np.ndarray:
        """(tokens, k) top-k ids among the experts on each token's M best nodes.

        Race times are drawn laid out (slot, token, node), so per-node reductions run over the
        leading axis (fast in numpy); padding slots get time +inf. Score = -log(time), so a node's
        sum of its top r scores is minus the sum of the logs of its r smallest times: keep the M
        nodes with the smallest such sums, then race only their experts. A node with fewer than
        r experts counts +inf for the missing ones and ranks last.
        """
        N, slots = table.shape
        times = rng.standard_exponential((slots, tokens, N), dtype=np.float32)
        times *= np.append(inv_w, np.float32(np.inf))[table.T][:, None, :]
        r = min(self.per_node, slots)
        best = _two_smallest(times)[:r] if r <= 2 else np.partition(times, r - 1, axis=0)[:r]
        with np.errstate(divide="ignore", invalid="ignore"):
            node_score = np.log(np.asarray(best, dtype=np.float64)).sum(axis=0)  # (tokens, N)
        kept = np.argpartition(node_score, self.max_nodes - 1, axis=1)[:, : self.max_nodes]  # (T, M)
        cand = times[:, np.arange(tokens)[:, None], kept]  # (slots, T, M)
        local = _smallest_k(np.ascontiguousarray(cand.transpose(1, 2, 0)).reshape(tokens, -1), self.top_k)
        return np.take_along_axis(table[kept].reshape(tokens, -1), local, axis=1).astype(np.int32)


def _two_smallest(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and second smallest along axis 0 (a power of two long, >= 2) by a pairwise tournament.

    Elementwise minimum/maximum of contiguous halves: several times faster than np.partition.
    """
    h = x.shape[0] // 2
    lo, hi = np.minimum(x[:h], x[h:]), np.maximum(x[:h], x[h:])
    while lo.shape[0] > 1:
        h = lo.shape[0] // 2
        a1, b1, a2, b2 = lo[:h], lo[h:], hi[:h], hi[h:]
        lo, hi = np.minimum(a1, b1), np.minimum(np.maximum(a1, b1), np.minimum(a2, b2))
    return lo[0], hi[0]


def _bench(sources: int = 32, per_source: int = 128, layers: int = 58, experts: int = 256, nodes: int = 8,
           max_nodes: int = 4, top_k: int = 8, steps: int = 3) -> dict[str, float]:
    """Seconds per step at DeepSeek-V3 scale, node-limited and unconstrained (documents the cost)."""
    import time

    from moesim.workloads.routing import zipf_popularity

    rng = np.random.default_rng(0)
    pop = np.stack([zipf_popularity(experts, 1.0)[rng.permutation(experts)] for _ in range(layers)])
    node = np.broadcast_to(np.arange(experts) // (experts // nodes), (layers, experts)).copy()
    tokens = np.full(sources, per_source)
    out = {}
    for name, src in (("node_limited", NodeLimitedRouting(experts, top_k, pop, node, max_nodes)),
                      ("per_token", PerTokenRouting(experts, top_k, pop))):
        src.step(0, tokens, layers)
        t0 = time.perf_counter()
        for s in range(steps):
            src.step(s + 1, tokens, layers)
        out[name] = (time.perf_counter() - t0) / steps
    return out


if __name__ == "__main__":
    print(_bench())
