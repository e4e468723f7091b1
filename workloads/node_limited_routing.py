"""Per-token top-k routing by the Gumbel-top-k trick, optionally node-limited (DeepSeek-V3 style).

Each token scores every expert with log w_e + Gumbel noise and takes the k best: that is
top-k sampling without replacement in proportion to w (Plackett-Luce / successive sampling),
the k smallest of Exp(1) / w_e (the race). The race is drawn node by node in time order, with
O(k) random numbers per token instead of E exponentials (see "the draw" below).

Plackett-Luce with w = popularity does *not* give inclusion probabilities k x p (hot experts
are chosen less than k x p), so by default w is calibrated once per distinct popularity row so
that unconstrained top-k has exactly `inclusion_probabilities(p, k)` as per-expert marginals,
the same expected loads as `PopularityRouting`'s counts. `calibrate=False` uses w = p as given.

`NodeLimitedRouting` adds DeepSeek-V3's node-limited routing (V3 paper sec. 2.1.2): a node's
score is the sum of the top max(k // M, 1) expert scores on it, the token keeps its M best
nodes, then takes the top-k experts among those nodes only. With M >= the number of nodes it
is the unconstrained draw. Node limitation shifts load towards nodes with several hot experts,
so its marginals differ from the popularity's; that is the effect being modelled.

Cost (`python benchmarks/bench_routing_draws.py`, CPU seconds per step on a shared 2-core VM,
DeepSeek-V3: 58 MoE layers x 256 experts, k = 8, Zipf(0.6), 8 nodes of 32 experts, M = 4, 32
GPUs): decode (128 tokens per GPU) ~0.2 s node-limited, ~0.04 s unconstrained (PerTokenRouting);
prefill (16k tokens per GPU: 30M token-layers) ~34 s and ~7 s, i.e. ~1.1 us / ~0.2 us per token
and layer (the race over all E experts took 0.8 / 0.5 s and 182 / 83 s): a node-limited token
draws ~28 race events (2 on each of 8 nodes, ~3 on each kept one) at ~20-30 ns each in numpy.
Calibration adds ~0.2 s once per distinct sorted popularity row (cached). Counts-only
`PopularityRouting` is far cheaper: use per-token routing only where per-token ids matter
(deduplicated dispatch, node limits).
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


def forced_experts(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """(L, E) bool: the experts calibration gives inclusion 1 (weight ~1e12), which every token takes.

    The same test as `_calibrated_sorted` on the same sorted, rounded rows, so a forced expert is
    exactly one whose calibrated weight is (effectively) infinite."""
    out = np.zeros(np.shape(popularity), dtype=bool)
    for l, row in enumerate(np.asarray(popularity, dtype=float)):
        row = row / row.sum()
        order = np.argsort(-row, kind="stable")
        out[l, order] = _forced_sorted(tuple(np.round(row[order], 15).tolist()), top_k)
    return out


@lru_cache(maxsize=64)
def _forced_sorted(sorted_p: tuple[float, ...], top_k: int) -> np.ndarray:
    p = np.asarray(sorted_p)
    if np.allclose(p[p > 0], p[0]) or (p > 0).sum() <= top_k:
        return np.zeros(p.size, dtype=bool)  # calibration keeps w = p: no infinite weights
    return inclusion_probabilities(p, top_k) >= 1 - 1e-12


# ---- the draw: node by node, O(k) random numbers per token ------------------------------------
#
# A token's race over E experts (the k smallest of Exp(1) / w_e) is drawn without drawing E
# exponentials. Nodes race independently, and a node's race is a Poisson process of its whole
# weight W whose events each pick one of its experts by weight, a repeat of an expert already
# picked being no arrival (uniformisation: expert j's first event comes after Exp(w_j), the race).
# So node-limited routing draws every node's first r arrivals (its score, the sum of its top r
# scores -log t, is -log of the product of their times; where an event repeats an expert, the
# arrival comes Exp(1) / (W x rest) later, by an expert of the rest), keeps the M best nodes, runs
# their processes on by a few events at once, and merges the M sorted lists of arrivals (bitonic,
# on int64 keys time << 32 | slot); rows where a kept node's last event came before the k-th
# arrival run on by more events until none does. Unconstrained top-k is one node: k successive
# draws without replacement, in order (rejection of a drawn expert, then, after a few rounds, a
# draw from the rest's weight). Every pick is one uniform through a guide table (exact: the table
# only says where the search starts; floor(x x n) on a node of equal weights). Experts whose
# calibrated weight is infinite (inclusion 1) arrive first on every token and their nodes are
# always kept; they go in front, in random order, as in the race. Everything runs on blocks of
# (layer, token) rows, a few numpy calls per event, never a loop per token; results depend only
# on (seed, step).

_BLOCK = 1 << 15  # (layer, token) rows per block (half that for node-limited draws, whose blocks hold 8 x more)
_GUIDE = 4  # guide-table entries per expert slot (at least)
_REJECTIONS = 4  # rejection rounds before drawing from the remaining experts directly
_TIME_BITS = np.int64(32)  # merge keys: float32 time bits << 32 | flat slot (times are >= 0)
_MAX_KEY = np.iinfo(np.int64).max  # no arrival: pads and repeats in the merged lists


@dataclass(frozen=True)
class _Tables:
    """Per layer and node, the node's raced experts (heaviest first) for drawing arrivals.

    Flat arrays: node q = layer * N + node; slot q * S + j is its j-th expert."""

    N: int  # nodes per layer (padded with empty nodes)
    S: int  # slots per node
    G: int  # guide entries per node
    cum: np.ndarray  # (L*N*S,) float64 cumulative node-normalised weight through the slot (inf after the last)
    wn: np.ndarray  # (L*N*S,) float64 node-normalised weight
    expert: np.ndarray  # (L*N*S,) int32 expert id
    guide: np.ndarray  # (L*N*G,) int64 first slot whose cum exceeds g / G
    inv_w: np.ndarray  # (L*N,) float32 1 / the node's weight (layer-normalised; inf for a node without any)
    npos: np.ndarray  # (L*N,) int64 experts with positive weight on the node
    forced: np.ndarray  # (L*N,) bool the node holds a forced expert
    uniform: np.ndarray  # (L,) bool every node of the layer weighs its experts alike (slot = floor(x * npos))

    @property
    def dummy(self) -> int:
        """A slot of weight 0 that is never drawn (a placeholder in lists of drawn slots)."""
        return self.cum.size - 1


def _build_tables(weights: np.ndarray, node: np.ndarray, num_nodes: int, forced: np.ndarray) -> _Tables:
    """Tables for race weights (L, E), with node[l, e] in [0, num_nodes) and forced experts left out."""
    L, E = weights.shape
    N = num_nodes
    w = np.where(forced, 0.0, weights)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    S = max(int(np.bincount(node[l], minlength=N).max()) for l in range(L))
    G = 1 << int(np.ceil(np.log2(max(_GUIDE * S, 2))))
    cum = np.full((L, N, S), np.inf)
    wn = np.zeros((L, N, S))
    expert = np.zeros((L, N, S), dtype=np.int32)
    guide = np.zeros((L, N, G), dtype=np.int64)
    inv_w = np.full((L, N), np.inf, dtype=np.float32)
    npos = np.zeros((L, N), dtype=np.int64)
    grid = np.arange(G) / G
    for l in range(L):
        for n in range(N):
            members = np.flatnonzero(node[l] == n)
            members = members[np.argsort(-w[l, members], kind="stable")]
            wm = w[l, members]
            W = wm.sum()
            q = l * N + n
            expert[l, n, : members.size] = members
            guide[l, n] = q * S
            if W <= 0:
                continue
            live = int((wm > 0).sum())
            share = wm[:live] / W
            c = np.minimum(np.cumsum(share), 1.0)
            c[-1] = 1.0
            cum[l, n, :live] = c
            wn[l, n, :live] = share
            guide[l, n] = q * S + np.minimum(np.searchsorted(c, grid, side="right"), live - 1)
            inv_w[l, n] = np.float32(1.0 / W)
            npos[l, n] = live
    has_forced = np.zeros((L, N), dtype=bool)
    for l in range(L):
        has_forced[l, np.unique(node[l][forced[l]])] = True
    live = wn > 0
    top = np.where(live, wn, -np.inf).max(axis=2, keepdims=True)
    low = np.where(live, wn, np.inf).min(axis=2, keepdims=True)
    uniform = (~live.any(axis=2, keepdims=True) | (top - low <= 1e-12 * top)).all(axis=(1, 2))
    tail = lambda a, v: np.append(a.ravel(), np.asarray(v, dtype=a.dtype))  # the dummy slot
    return _Tables(N, S, G, tail(cum, np.inf), tail(wn, 0.0), tail(expert, 0),
                   guide.ravel(), inv_w.ravel(), npos.ravel(), has_forced.ravel(), uniform)


def _lookup(t: _Tables, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Flat slot of node q holding x in [0, 1) of its cumulative weight (guide table, then step on)."""
    pos = t.guide[q * t.G + (x * t.G).astype(np.int64)]
    idx = np.flatnonzero(x >= t.cum[pos])
    while idx.size:
        pos[idx] += 1
        idx = idx[x[idx] >= t.cum[pos[idx]]]
    return pos


def _hits(pos: np.ndarray, prev: list[np.ndarray]) -> np.ndarray:
    hit = pos == prev[0]
    for p in prev[1:]:
        hit |= pos == p
    return hit


def _draw(rng: np.random.Generator, site: "_Site", prev: list[np.ndarray], at: np.ndarray | None = None
          ) -> np.ndarray:
    """Flat slots drawn from the nodes of `site` (its entries `at`, or all) without the slots in
    `prev` (each like the entries).

    Rejection of an already drawn slot is exact; rows still rejected after a few rounds (a
    dominant expert already drawn) draw from the remaining weight directly."""
    n = site.q.size if at is None else at.size
    pos = site.lookup(rng.random(n), at)
    if not prev:
        return pos
    idx = np.flatnonzero(_hits(pos, prev))
    for _ in range(_REJECTIONS):
        if not idx.size:
            return pos
        new = site.lookup(rng.random(idx.size), idx if at is None else at[idx])
        pos[idx] = new
        idx = idx[_hits(new, [p[idx] for p in prev])]
    if idx.size:
        q = site.q[idx if at is None else at[idx]]
        pos[idx] = _draw_rest(rng, site.t, q, [p[idx] for p in prev])
    return pos


def _draw_rest(rng: np.random.Generator, t: _Tables, q: np.ndarray, prev: list[np.ndarray]) -> np.ndarray:
    """Draw from the weight left outside the slots `prev`: a uniform over that weight, moved past
    every drawn slot that starts at or below it (the fixed point of that move)."""
    w = [t.wn[p] for p in prev]
    start = [t.cum[p] - wi for p, wi in zip(prev, w)]
    u = rng.random(q.size) * (1.0 - sum(w))
    v = u
    while True:
        moved = u + sum(wi * (si <= v) for wi, si in zip(w, start))
        if np.array_equal(moved, v):
            break
        v = moved
    pos = _lookup(t, q, np.minimum(v, np.nextafter(1.0, 0.0)))
    bad = np.flatnonzero(_hits(pos, prev))  # rounding at a boundary (probability ~1e-16): again
    if bad.size:
        pos[bad] = _draw_rest(rng, t, q[bad], [p[bad] for p in prev])
    return pos


def _key(times: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """int64 keys ordered by time (float32, >= 0), then flat slot: min/max carry the slot along."""
    return (times.view(np.int32).astype(np.int64) << _TIME_BITS) | slot


def _bitonic_sort(keys: np.ndarray) -> None:
    """Sort (..., P, n) keys ascending along axis -2 in place; each column must be bitonic (P a power of 2)."""
    P, n = keys.shape[-2:]
    d = P // 2
    while d:
        v = keys.reshape(*keys.shape[:-2], P // (2 * d), 2, d, n)
        lo, hi = v[..., 0, :, :], v[..., 1, :, :]
        mn = np.minimum(lo, hi)
        np.maximum(lo, hi, out=hi)
        lo[...] = mn
        d //= 2


def _merge_lists(keys: np.ndarray, kk: int) -> np.ndarray:
    """(kk, n) the kk smallest keys of B sorted lists (B, D, n), ascending (bitonic merges in pairs)."""
    B, D, n = keys.shape
    lists = np.full((B, _pow2(max(kk, D)), n), _MAX_KEY, dtype=np.int64)
    lists[:, :D] = keys
    return _merge_padded(lists, kk)


def _pow2(x: int) -> int:
    return 1 << int(np.ceil(np.log2(max(x, 1))))


def _merge_padded(lists: np.ndarray, kk: int) -> np.ndarray:
    """(kk, n) the kk smallest keys of B sorted lists (B, P, n) padded with _MAX_KEY to P (a power
    of 2 >= kk): pairs of lists merge into the P smallest of the two, bitonic, then sorted."""
    while lists.shape[0] > 1:
        if lists.shape[0] & 1:
            lists = np.concatenate([lists, np.full((1, *lists.shape[1:]), _MAX_KEY, dtype=np.int64)])
        merged = np.minimum(lists[0::2], lists[1::2, ::-1])  # the P smallest of each pair, bitonic
        _bitonic_sort(merged)
        lists = merged
    return lists[0, :kk]


class _Site:
    """The nodes a batch of draws is made on: node q per entry, and what is read from it every draw."""

    def __init__(self, t: _Tables, q: np.ndarray, uniform: bool):
        self.t, self.q, self.uniform = t, q, uniform
        self.inv_w, self.npos = t.inv_w[q], t.npos[q]
        self._base = q * (t.S if uniform else t.G)

    def take(self, idx: np.ndarray) -> "_Site":
        return _Site(self.t, self.q[idx], self.uniform)

    def lookup(self, x: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """Flat slots holding uniforms x (shape (..., entries)) of each entry's node (of entries `at`)."""
        base = self._base if at is None else self._base[at]
        if self.uniform:
            return base + (x * (self.npos if at is None else self.npos[at])).astype(np.int64)
        t = self.t
        pos = t.guide[base + (x * t.G).astype(np.int64)]
        idx = np.flatnonzero(x >= t.cum[pos])
        flat_pos, flat_x = pos.reshape(-1), x.reshape(-1)
        while idx.size:
            flat_pos[idx] += 1
            idx = idx[flat_x[idx] >= t.cum[flat_pos[idx]]]
        return pos


def _first_real(rng: np.random.Generator, site: _Site, r: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Times and slots of the first r arrivals on every entry's node (inf and the dummy slot past
    the node's experts).

    The node's race as a Poisson process of its whole weight whose events pick an expert by
    weight, an expert's repeat being no arrival: the j-th event follows the (j-1)-th arrival by
    Exp(1) / W; where it repeats a drawn expert, the arrival comes Exp(1) / (W x rest) later, by
    an expert drawn from the rest (what the repeats until a new expert add up to)."""
    t, m = site.t, site.q.size
    times: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    short = bool((site.npos < r).any())
    for j in range(1, r + 1):
        with np.errstate(invalid="ignore"):  # inf x 0 on a node without weight: set to inf below
            tj = rng.standard_exponential(m, dtype=np.float32) * site.inv_w
        if times:
            tj += times[-1]
        sj = site.lookup(rng.random(m))
        if slots:
            rep = np.flatnonzero(_hits(sj, slots) & (site.npos >= j))
            if rep.size:
                prev = [s[rep] for s in slots]
                rest = (1.0 - sum(t.wn[p] for p in prev)).astype(np.float32)
                tj[rep] += rng.standard_exponential(rep.size, dtype=np.float32) * site.inv_w[rep] / rest
                sj[rep] = _draw(rng, site, prev, rep)
        if short:
            none = site.npos < j
            tj[none] = np.inf
            sj[none] = t.dummy
        times.append(tj)
        slots.append(sj)
    return times, slots


def _sort_small(keys: np.ndarray) -> None:
    """Sort (D, ...) keys along axis 0 in place (odd-even transposition: D rounds of min/max)."""
    D = keys.shape[0]
    for rnd in range(D):
        for i in range(rnd & 1, D - 1, 2):
            lo = np.minimum(keys[i], keys[i + 1])
            np.maximum(keys[i], keys[i + 1], out=keys[i + 1])
            keys[i] = lo


def _limited_block(rng: np.random.Generator, t: _Tables, lay: np.ndarray, kk: int, max_nodes: int, r: int,
                   events: int) -> np.ndarray:
    """(kk, rows) expert ids, earliest first: the kk earliest arrivals on each row's max_nodes best nodes.

    Every node's first r arrivals score it; the kept nodes' races then run on by `events` more
    events of their Poisson processes at once (`_Runs`), their arrivals are merged, and rows where
    a kept node's last event came before the k-th arrival run on by more events, until none does."""
    N, n, M = t.N, lay.size, max_nodes
    uniform = bool(t.uniform[lay].all())
    q = ((lay * N)[None, :] + np.arange(N)[:, None]).ravel()  # node-major: (N, rows) flattened
    site = _Site(t, q, uniform)
    times, slots = _first_real(rng, site, r)
    if r == 1:
        score = times[0].copy()
    elif r == 2:
        score = times[0] * times[1]
    else:
        score = np.prod(np.stack(times), axis=0, dtype=np.float64).astype(np.float32)
    if (site.npos < r).any():
        score[site.npos < r] = np.inf  # fewer than r experts: the missing scores count +inf
    score[t.forced[q]] = -1.0  # a forced expert arrives at ~0: its node ranks first (keys below every score >= 0)
    key = (score.view(np.int32).astype(np.int64) * N).reshape(N, n) + np.arange(N)[:, None]
    better = (key[None, :, :] < key[:, None, :]).sum(axis=1, dtype=np.int8)  # nodes ranked above each node
    kept = np.flatnonzero((better < M).T)  # row * N + node, M per row
    sel = ((kept % N) * n + kept // N).reshape(n, M).T.ravel()  # node-major into q: (M, rows) flattened
    runs = _Runs(site.take(sel), [a[sel] for a in slots], times[-1][sel], M, r)
    base = np.stack([_key(a[sel], s) for a, s in zip(times, runs.seen)])  # (r, M*rows)
    out = runs.merge(kk, base, runs.extend(rng, events))
    rows = runs.unsettled(out, kk)
    best, sub, place = out, runs, np.arange(n)
    while rows.size:  # rows of `best` / `sub` to run on, at `place[rows]` in `out`
        events = 2 * max(events, 2)
        sub, place = sub.take(rows), place[rows]
        best = sub.merge(kk, best[:, rows], sub.extend(rng, events), row_list=True)
        out[:, place] = best
        rows = sub.unsettled(best, kk)
    return t.expert[out & np.int64(0xFFFFFFFF)]


class _Runs:
    """The kept nodes' races, (M, rows) entries flattened node-major: the slots seen so far (every
    event's, a repeat's included), the time of the last event, and the arrivals counted."""

    def __init__(self, site: _Site, seen: list[np.ndarray], last: np.ndarray, M: int, count):
        self.site, self.seen, self.last, self.M = site, seen, last, M
        self.count = np.full(last.size, count, dtype=np.int64) if np.isscalar(count) else count

    def take(self, rows: np.ndarray) -> "_Runs":
        n = self.last.size // self.M
        idx = (np.arange(self.M)[:, None] * n + rows).ravel()
        return _Runs(self.site.take(idx), [a[idx] for a in self.seen], self.last[idx], self.M, self.count[idx])

    def extend(self, rng: np.random.Generator, events: int) -> np.ndarray | None:
        """(events, entries) keys of the next `events` events on every entry's node, sorted, a repeat
        of a seen slot being no arrival (_MAX_KEY); advances the races."""
        if not events:
            return None
        site, m = self.site, self.last.size
        ct = rng.standard_exponential((events, m), dtype=np.float32)
        with np.errstate(invalid="ignore"):  # inf x 0 on a node without weight: no arrival below
            ct *= site.inv_w
        ct[0] += self.last
        for j in range(1, events):  # (np.cumsum along the first axis is several times slower)
            ct[j] += ct[j - 1]
        cs = site.lookup(rng.random((events, m)))
        keys = _key(ct, cs)
        for j in range(events):
            rep = _hits(cs[j], self.seen)
            keys[j][rep] = _MAX_KEY
            self.count += ~rep
            self.seen.append(cs[j])
        none = ~(ct[-1] < np.inf)  # a node without experts (inf times)
        if none.any():
            keys[:, none] = _MAX_KEY
        _sort_small(keys)
        self.last = ct[-1]
        return keys

    def merge(self, kk: int, first: np.ndarray, events: np.ndarray | None, row_list: bool = False) -> np.ndarray:
        """(kk, rows) the kk smallest keys of the entries' arrivals `first` and event keys `events`
        (each (D, M*rows), sorted per entry, every event after every arrival in `first`); with
        row_list, `first` is one sorted (kk, rows) list per row instead."""
        M, n = self.M, self.last.size // self.M
        D0 = 0 if row_list else first.shape[0]
        D = D0 + (0 if events is None else events.shape[0])
        P = _pow2(max(kk, D))
        lists = np.full((M + row_list, P, n), _MAX_KEY, dtype=np.int64)
        if row_list:
            lists[M, :kk] = first
        else:
            lists[:M, :D0] = first.reshape(D0, M, n).transpose(1, 0, 2)
        if events is not None:
            lists[:M, D0:D] = events.reshape(events.shape[0], M, n).transpose(1, 0, 2)
        return _merge_padded(lists, kk)

    def unsettled(self, best: np.ndarray, kk: int) -> np.ndarray:
        """Rows where a kept node's last event came before the k-th arrival and it has experts left."""
        M, n = self.M, self.last.size // self.M
        last = (self.last.view(np.int32).astype(np.int64) << _TIME_BITS).reshape(M, n)  # <= every key at that time
        more = (last <= best[-1]) & (self.count < np.minimum(self.site.npos, kk)).reshape(M, n)
        return np.flatnonzero(more.any(axis=0))


def _top_k_block(rng: np.random.Generator, t: _Tables, lay: np.ndarray, kk: int) -> np.ndarray:
    """(kk, rows) expert ids: kk successive draws without replacement (one node per layer), in order."""
    site = _Site(t, lay.astype(np.int64), bool(t.uniform[lay].all()))
    slots: list[np.ndarray] = []
    for _ in range(kk):
        slots.append(_draw(rng, site, slots))
    return t.expert[np.stack(slots)] if slots else np.zeros((0, lay.size), dtype=np.int32)


@dataclass(frozen=True)
class _Group:
    """Layers drawn alike: the same path (top_k, limited or dense) and number of forced experts."""

    path: str
    layers: np.ndarray
    forced: np.ndarray  # (layers, h) the forced expert ids
    r: int = 1  # node score: the product of a node's first r arrival times


def _draw_step(rng: np.random.Generator, groups: list[_Group], draw_block, tokens: np.ndarray, top_k: int,
               num_layers: int, num_experts: int) -> RoutingStep:
    """Every group's layers in blocks of (layer, token) rows (a run of one layer's tokens, or whole
    layers where a layer has fewer tokens than a block); counts accumulate per block."""
    sources = tokens.size
    T = int(tokens.sum())
    src = np.repeat(np.arange(sources, dtype=np.int64), tokens)
    src_off = src * num_experts
    experts: list[np.ndarray | None] = [None] * num_layers
    counts = np.zeros((num_layers, sources, num_experts), dtype=np.int64)
    for g in groups:
        Lg, h = g.layers.size, g.forced.shape[1]
        block = max(_BLOCK // 2 if g.path == "limited" else _BLOCK, 1)
        per_block = max(1, block // max(T, 1))
        out = np.empty((Lg, T, top_k), dtype=np.int32)
        cflat = np.zeros(Lg * sources * num_experts, dtype=np.int64)
        if T >= block:
            chunks = [(i, i + 1, t0, min(t0 + block, T)) for i in range(Lg) for t0 in range(0, T, block)]
        else:
            chunks = [(i0, min(i0 + per_block, Lg), 0, T) for i0 in range(0, Lg, per_block)] if T else []
        for i0, i1, t0, t1 in chunks:
            nl, nt = i1 - i0, t1 - t0
            ids = draw_block(rng, g, np.repeat(g.layers[i0:i1], nt), top_k - h)  # (kk, nl * nt)
            out[i0:i1, t0:t1, h:] = ids.reshape(-1, nl, nt).transpose(1, 2, 0)
            if h:
                heavy = np.broadcast_to(g.forced[i0:i1, None, :], (nl, nt, h))
                if h > 1:  # equal (infinite) weights: a uniformly random order
                    heavy = np.take_along_axis(heavy, np.argsort(rng.random((nl, nt, h)), axis=2), axis=2)
                out[i0:i1, t0:t1, :h] = heavy
            base = (np.arange(i0, i1, dtype=np.int64) * (sources * num_experts))[:, None] + src_off[t0:t1]
            c0, c1 = int(base[0, 0]), int(base[-1, -1]) + num_experts
            cflat[c0:c1] += np.bincount((ids + (base.reshape(-1) - c0)).reshape(-1), minlength=c1 - c0)
        cnt = cflat.reshape(Lg, sources, num_experts)
        for i, l in enumerate(g.layers):
            if h:
                cnt[i][:, g.forced[i]] += tokens[:, None]
            experts[int(l)] = out[i]
        counts[g.layers] = cnt
    return RoutingStep(counts=counts, token_experts=experts, token_source=src)


def _step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, 1, step])))


def _forced_groups(path: list[str], forced: np.ndarray, r: list[int] | None = None) -> list[_Group]:
    """Layers grouped by (path, forced experts per layer, node score depth r), in a fixed order. A
    dense layer draws its forced experts in its race, so it has none in front."""
    keys: dict[tuple[str, int, int], list[int]] = {}
    for l, p in enumerate(path):
        keys.setdefault((p, 0 if p == "dense" else int(forced[l].sum()), r[l] if r else 1), []).append(l)
    out = []
    for (p, h, depth), layers in sorted(keys.items()):
        ls = np.asarray(layers, dtype=np.int64)
        front = np.stack([np.flatnonzero(forced[l]) if h else np.zeros(0, dtype=np.int64) for l in ls])
        out.append(_Group(p, ls, front.reshape(ls.size, h), depth))
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
        self.forced = forced_experts(self.popularity, self.top_k) if self.calibrate else \
            np.zeros(self.popularity.shape, dtype=bool)
        L = self.popularity.shape[0]
        self._one_node = _build_tables(self.weights, np.zeros((L, self.num_experts), dtype=np.int64), 1, self.forced)
        self._groups = _forced_groups(["top_k"] * L, self.forced)

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if self.popularity.shape[0] != num_layers:
            raise ValueError(f"popularity has {self.popularity.shape[0]} layers, need {num_layers}")
        tokens = np.asarray(tokens, dtype=np.int64)
        block = lambda rng, g, lay, kk: _top_k_block(rng, self._one_node, lay, kk)
        return _draw_step(_step_rng(self.seed, step), self._groups, block, tokens, self.top_k, num_layers,
                          self.num_experts)

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
        self.forced = forced_experts(self.popularity, self.top_k) if self.calibrate else \
            np.zeros(self.popularity.shape, dtype=bool)
        L = self.popularity.shape[0]
        compact = np.stack([np.unique(row, return_inverse=True)[1].reshape(-1) for row in self.expert_node])
        nodes = int(compact.max()) + 1
        self._one_node = _build_tables(self.weights, np.zeros((L, self.num_experts), dtype=np.int64), 1, self.forced)
        self._nodes = _build_tables(self.weights, compact, nodes, self.forced)
        self._r = [min(self.per_node, table.shape[1]) if table is not None else 1 for table in self._members]
        self._groups = _forced_groups([self._path(l, compact[l]) for l in range(L)], self.forced, self._r)

    def _path(self, l: int, node_of: np.ndarray) -> str:
        """How layer l is drawn: top_k (M covers every node), limited, or dense (the race over
        every expert, for layers outside the node draw's assumptions: more nodes with forced
        experts than M, or kept nodes that could run out of experts)."""
        M, N = int(self.max_nodes), int(node_of.max()) + 1
        if self._members[l] is None:
            return "top_k"
        forced_nodes = np.unique(node_of[self.forced[l]])
        if forced_nodes.size > M:
            return "dense"
        live = np.bincount(node_of[(self.weights[l] > 0) & ~self.forced[l]], minlength=N)
        others = np.delete(live, forced_nodes)
        # the kept others: the best-scored, and nodes with fewer than r live experts (score +inf) last
        r = self._r[l]
        others = np.concatenate([np.sort(others[others >= r]), np.sort(others[others < r])])
        if live[forced_nodes].sum() + others[: M - forced_nodes.size].sum() < self.top_k - self.forced[l].sum():
            return "dense"
        return "limited"

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
        return _draw_step(_step_rng(self.seed, step), self._groups, self._block, tokens, self.top_k, num_layers,
                          self.num_experts)

    def _block(self, rng: np.random.Generator, g: _Group, lay: np.ndarray, kk: int) -> np.ndarray:
        if g.path == "top_k" or kk == 0:
            return _top_k_block(rng, self._one_node, lay, kk)
        if g.path == "limited":
            M, r = int(self.max_nodes), g.r
            events = max(min(kk, -(-kk // M) + 3, self._nodes.S) - r, 0)
            return _limited_block(rng, self._nodes, lay, kk, M, r, events)
        return self._dense_block(rng, lay)

    def _dense_block(self, rng: np.random.Generator, lay: np.ndarray) -> np.ndarray:
        """(k, rows) by the race over every expert (E exponentials per token), forced experts included."""
        out = np.empty((self.top_k, lay.size), dtype=np.int32)
        for l in np.unique(lay):
            rows = np.flatnonzero(lay == l)
            out[:, rows] = self._limited(rng, rows.size, self._members[int(l)], self._inv_w[int(l)]).T
        return out

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
