"""Estimate the synthetic routing model's parameters from a trace (`moesim trace fit`).

- popularity: each layer's observed expert shares (explicit weights; a Zipf exponent is
  reported alongside);
- drift and batch variance: a variogram of per-step shares. The mean squared change between
  steps h apart is 2 x (sampling + batch variance) + h x drift^2 x c(p), so a line fitted
  over h gives the batch variance from its intercept (after removing the known top-k
  sampling noise) and the random-walk drift from its slope;
- locality: how far each source's shares stray from the layer's, beyond sampling noise;
- affinity: the strength whose synthetic traces give the same mutual information between
  consecutive layers as the trace, found by bisection on layer pairs simulated per token with
  the trace's own step sizes and sources (common random numbers keep the curve monotone).
Each estimate is a median over layers (or layer pairs), which keeps one odd layer from
dominating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workloads.routing import inclusion_probabilities, layer_pairs
from moesim.workloads.synthetic_routing import (DriftConfig, PopularityConfig, RoutingModelConfig, SyntheticRouting,
                                                systematic_experts)
from moesim.workloads.trace_stats import AFFINITY_TOKENS, TraceTally, conditional_concentration, shares, zipf_alpha

MAX_LAG = 32
AFFINITY_PAIRS = 4


def sampling_variance(p: np.ndarray, top_k: int, draws: float) -> float:
    """Expected sum over experts of the squared error of observed shares from `draws` top-k
    assignments (distinct experts per token, so less than multinomial noise)."""
    pi = inclusion_probabilities(p, top_k) if p.sum() > 0 else p
    return float(np.sum(pi * (1 - pi)) / (top_k * max(draws, 1)))


def variogram(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean over step pairs h apart of the summed squared share change, for h = 1..max_lag."""
    return np.array([np.mean(np.sum((x[h:] - x[:-h]) ** 2, axis=-1)) for h in range(1, max_lag + 1)])


def fit_drift_and_batch(t: TraceTally, locality: float = 0.0) -> tuple[float, float | None]:
    """(drift sigma, batch concentration or None) from the per-layer variograms.

    Locality mixes a fixed per-source preference into each step's popularity, which damps the
    shared (drifting, varying) part by (1 - locality); the estimates undo that damping."""
    S = t.step_counts.shape[0]
    if S < 3:
        return 0.0, None
    x = shares(t.step_counts)  # (S, L, E)
    p = shares(t.layer_counts)
    draws = float(t.step_tokens.mean()) * t.meta.top_k
    lags = min(MAX_LAG, max(S // 2, 1))
    sigmas, concs = [], []
    for l in range(x.shape[1]):
        d = variogram(x[:, l], lags)
        h = np.arange(1, lags + 1)
        slope, intercept = np.polyfit(h, d, 1) if lags >= 2 else (0.0, d[0])
        pl = p[l]
        c = float(np.sum(pl**2 * (1 - 2 * pl + np.sum(pl**2))))
        damp = max(1.0 - locality, 1e-3) ** 2
        sigmas.append(np.sqrt(max(slope, 0.0) / (c * damp)) if c > 0 else 0.0)
        batch = (intercept / 2 - sampling_variance(pl, t.meta.top_k, draws)) / damp
        spread = 1 - float(np.sum(pl**2))
        concs.append(spread / batch - 1 if batch > 0 else np.inf)
    sigma = float(np.median(sigmas))
    conc = float(np.median(concs))
    return sigma, (None if not np.isfinite(conc) or conc <= 0 else conc)


def fit_locality(t: TraceTally) -> float:
    """Weight of the per-source preference: between-source share variance beyond sampling noise,
    over the variance a Dirichlet(E x p) preference would add."""
    m = t.meta
    if m.num_sources < 2:
        return 0.0
    per_source = t.source_counts.sum(axis=2)  # (L, sources) assignments
    x = shares(t.source_counts)
    p = shares(t.layer_counts)
    E = m.num_experts
    out = []
    for l in range(m.num_moe_layers):
        used = per_source[l] > 0
        excess = np.mean(np.sum((x[l, used] - p[l]) ** 2, axis=-1))
        noise = np.mean([sampling_variance(p[l], m.top_k, n) for n in per_source[l, used]])
        pref = float(np.sum(p[l] * (1 - p[l])) / (E + 1))
        out.append(np.sqrt(max(excess - noise, 0.0) / pref) if pref > 0 else 0.0)
    return float(np.clip(np.median(out), 0.0, 1.0))


CALIBRATION_TOKENS = 1 << 17  # at most this many simulated tokens per layer pair
CALIBRATION_BLOCKS = 1 << 20  # at most this many (step, source) x expert inclusion entries per layer


def calibration_steps(t: TraceTally, seed: int) -> list[np.ndarray]:
    """Tokens per source of each simulated step, shaped like the trace: its own step sizes (as
    many tokens as the tally paired, in order, until the budget), each token's source drawn by
    the sources' shares.

    The pooled mutual information depends on the step structure, not only on the token count:
    per-step popularity (batch variance, drift) shared by both layers of a few large steps
    couples them, while many small steps average it out. So the fit simulates the trace's
    steps, not a few pooled ones."""
    m = t.meta
    sizes = np.minimum(t.step_tokens, AFFINITY_TOKENS).astype(np.int64)
    w = t.source_counts.sum(axis=(0, 2)).astype(float)
    w = w / w.sum() if w.sum() > 0 else np.full(m.num_sources, 1.0 / m.num_sources)
    rng = np.random.default_rng([seed, 6])
    out, tokens, blocks = [], 0, 0
    for n in sizes:
        per_source = rng.multinomial(n, w)
        tokens, blocks = tokens + n, blocks + np.count_nonzero(per_source) * m.num_experts
        if out and (tokens > CALIBRATION_TOKENS or blocks > CALIBRATION_BLOCKS):
            break
        out.append(per_source)
    return out


def inclusion_rows(p: np.ndarray, top_k: int) -> np.ndarray:
    """`inclusion_probabilities` of every row (last axis) at once: scale to k, cap at 1 and give
    the excess to the uncapped experts until none exceeds 1 (the fit needs it for up to a
    million (step, source) rows, where a per-row call dominates)."""
    p = p / p.sum(axis=-1, keepdims=True)
    pi = np.zeros_like(p)
    free = np.ones(p.shape, dtype=bool)
    remaining = np.full(p.shape[:-1] + (1,), float(top_k))
    while True:
        scaled = p * remaining / np.maximum(np.where(free, p, 0.0).sum(axis=-1, keepdims=True), 1e-300)
        over = free & (scaled >= 1.0)
        if not over.any():
            return np.where(free, scaled, pi)
        pi[over] = 1.0
        free &= ~over
        remaining = top_k - np.where(free, 0.0, pi).sum(axis=-1, keepdims=True)


@dataclass
class PairDraws:
    """A simulated layer pair with every random draw fixed except the affinity's coin: the
    experts at the first layer, at the second under the carried position and under a fresh one,
    and each token's uniform deciding whether it carries. The MI for any affinity is then a
    recount (common random numbers: monotone in the affinity, and cheap to bisect)."""

    first: np.ndarray  # (T, k)
    carried: np.ndarray  # (T, k)
    fresh: np.ndarray  # (T, k)
    coin: np.ndarray  # (T,)
    num_experts: int

    def mi(self, affinity: float) -> float:
        """Mutual information over the next layer's entropy of the pair at this affinity."""
        second = np.where((self.coin < affinity)[:, None], self.carried, self.fresh)
        return conditional_concentration(layer_pairs([self.first, second], self.num_experts)[0])["mi"]


def pair_draws(cfg: RoutingModelConfig, t: TraceTally, firsts: np.ndarray, seed: int) -> dict[int, PairDraws]:
    """PairDraws for the layer pairs (l, l + 1), l in `firsts`, drawn the way synthesis does: per
    token, step by step with the step's popularity (drift, batch variance, locality), in the
    trace's step sizes (`calibration_steps`)."""
    m = t.meta
    layers = np.unique(np.concatenate([firsts, firsts + 1]))
    gen = SyntheticRouting(cfg, m.num_experts, m.top_k, m.num_moe_layers, seed, per_token=True)
    rows, block, blocks = [], [], 0
    for s, per_source in enumerate(calibration_steps(t, seed)):
        used = np.flatnonzero(per_source)
        rows.append(gen.popularity(s, per_source.size, np.random.default_rng([seed, 1, s]))[layers][:, used])
        block.append(np.repeat(np.arange(blocks, blocks + used.size), per_source[used]))
        blocks += used.size
    incl = inclusion_rows(np.concatenate(rows, axis=1), m.top_k)  # (picked layers, blocks, E)
    block = np.concatenate(block)
    rng = np.random.default_rng([seed, 5])
    u, coin, v = rng.random(block.size), rng.random(block.size), rng.random(block.size)

    def experts(layer: int, at: np.ndarray) -> np.ndarray:
        return systematic_experts(incl[np.searchsorted(layers, layer)], gen.order[layer], block, at, m.top_k)

    return {int(l): PairDraws(first=experts(l, u), carried=experts(l + 1, u), fresh=experts(l + 1, v), coin=coin,
                              num_experts=m.num_experts) for l in firsts}


def fit_affinity(t: TraceTally, cfg: RoutingModelConfig, seed: int = 0, iterations: int = 12) -> float:
    """Affinity strength matching the mutual information of a few layer pairs (median), with
    the other fitted parameters (`cfg`) in place, on pairs simulated with the trace's steps."""
    m = t.meta
    if m.num_moe_layers < 2 or not t.rows:
        return 0.0
    picks = np.unique(np.linspace(0, m.num_moe_layers - 2, min(AFFINITY_PAIRS, m.num_moe_layers - 1)).astype(int))
    found = []
    for l, draws in pair_draws(cfg, t, picks, seed).items():
        target = conditional_concentration(t.transitions[l])["mi"]
        if draws.mi(0.0) >= target:
            found.append(0.0)
            continue
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if draws.mi(mid) < target else (lo, mid)
        found.append((lo + hi) / 2)
    return float(np.median(found))


def fit_routing_model(t: TraceTally, source: str | None = None, seed: int = 0) -> tuple[RoutingModelConfig, dict]:
    """(generator config, report of the estimates) for the trace behind the tally."""
    p = shares(t.layer_counts)
    locality = fit_locality(t)
    sigma, conc = fit_drift_and_batch(t, locality)
    cfg = RoutingModelConfig(
        popularity=PopularityConfig(kind="explicit", weights=[[float(f"{v:.6g}") for v in row] for row in p]),
        drift=DriftConfig(sigma=round(sigma, 6), rho=1.0),
        batch_concentration=None if conc is None else round(conc, 3),
        locality=round(locality, 4), fitted_from=source,
    )
    affinity = fit_affinity(t, cfg, seed)
    cfg = cfg.model_copy(update={"affinity": round(affinity, 4)})
    report = {
        "zipf_alpha_per_layer_median": float(np.nanmedian([zipf_alpha(c) for c in t.layer_counts])),
        "drift_sigma": sigma, "drift_model": "random walk (rho = 1)", "batch_concentration": conc,
        "locality": locality, "affinity": affinity,
        "steps": int(t.step_counts.shape[0]), "tokens_per_step": float(t.step_tokens.mean()) if t.rows else 0.0,
    }
    return cfg, report
