"""Estimate the synthetic routing model's parameters from a trace (`moesim trace fit`).

- popularity: each layer's observed expert shares (explicit weights; a Zipf exponent is
  reported alongside);
- drift and batch variance: a variogram of per-step shares. The mean squared change between
  steps h apart is 2 x (sampling + batch variance) + h x drift^2 x c(p), so a line fitted
  over h gives the batch variance from its intercept (after removing the known top-k
  sampling noise) and the random-walk drift from its slope;
- locality: how far each source's shares stray from the layer's, beyond sampling noise;
- affinity: the strength whose synthetic traces give the same mutual information between
  consecutive layers as the trace, found by bisection on simulated layer pairs of the same
  size (common random numbers keep the curve monotone).
Each estimate is a median over layers (or layer pairs), which keeps one odd layer from
dominating.
"""

from __future__ import annotations

import numpy as np

from moesim.workloads.routing import inclusion_probabilities
from moesim.workloads.synthetic_routing import DriftConfig, PopularityConfig, RoutingModelConfig, SyntheticRouting
from moesim.workloads.trace_stats import TraceTally, conditional_concentration, layer_pairs, shares, zipf_alpha

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


CALIBRATION_STEPS = 8


def _pair_mi(cfg: RoutingModelConfig, popularity: np.ndarray, top_k: int, tokens: int, sources: int,
             seed: int) -> float:
    """Mutual information between two layers of synthetic routing, pooled like the trace's
    pairs: `tokens` tokens over a few steps and `sources` sources (drift, batch variance and
    locality each blur the pooled coupling, so they are simulated too)."""
    cfg = cfg.model_copy(update={"popularity": PopularityConfig(kind="explicit", weights=popularity.tolist())})
    gen = SyntheticRouting(cfg, popularity.shape[1], top_k, 2, seed, per_token=True)
    per = max(1, tokens // (CALIBRATION_STEPS * sources))
    pairs = sum(layer_pairs(gen.step(s, np.full(sources, per), 2).token_experts, popularity.shape[1])[0]
                for s in range(CALIBRATION_STEPS))
    return conditional_concentration(pairs)["mi"]


def fit_affinity(t: TraceTally, cfg: RoutingModelConfig, seed: int = 0, iterations: int = 12) -> float:
    """Affinity strength matching the mutual information of a few layer pairs (median), with
    the other fitted parameters (`cfg`) in place."""
    m = t.meta
    if m.num_moe_layers < 2:
        return 0.0
    p = shares(t.layer_counts)
    tokens = int(t.transitions[0].sum() // (m.top_k * m.top_k))
    picks = np.unique(np.linspace(0, m.num_moe_layers - 2, min(AFFINITY_PAIRS, m.num_moe_layers - 1)).astype(int))
    found = []
    for l in picks:
        target = conditional_concentration(t.transitions[l])["mi"]
        pops = p[l : l + 2]

        def mi(a: float) -> float:
            return _pair_mi(cfg.model_copy(update={"affinity": a}), pops, m.top_k, tokens, m.num_sources, seed)

        if mi(0.0) >= target:
            found.append(0.0)
            continue
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mi(mid) < target else (lo, mid)
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
