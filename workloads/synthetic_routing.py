"""One composable generator of realistic routing: popularity, drift, batch variance, affinity, locality.

Each step, for MoE layer l and token source s, a token picks top-k distinct experts from

    p_step[l]    = normalize(base[l] * exp(z_step[l]))             drift: z is an AR(1) walk
    p_batch[l]   = Dirichlet(batch_concentration * p_step[l])        batch-to-batch variance
    p[l, s]      = (1 - locality) * p_batch[l] + locality * q[l, s]  token-source locality

where base is uniform, Zipf(alpha) (hot experts shuffled per layer), Dirichlet(concentration)
or explicit weights, and q[l, s] ~ Dirichlet(E * base[l]) is a fixed per-source preference.
Inter-layer affinity is a latent position u in [0, 1) per token: the experts are those under
u, u+1, ..., u+k-1 when the top-k inclusion probabilities of p[l, s] are laid end to end in a
fixed random expert order per layer (systematic sampling: k distinct experts, exact inclusion
probabilities), and u carries over from layer l to l+1 with probability `affinity`, else is
redrawn. Marginals stay exactly p,
while P(expert at l+1 | expert at l) concentrates as affinity -> 1 (MoETuner/ExFlow-style
structure). With no affinity the counts are drawn directly (multinomial, no per-token loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from moesim.workloads.routing import (STATIONARY, RoutingStep, cap_at_tokens, inclusion_probabilities,
                                      zipf_popularity)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PopularityConfig(_Strict):
    """The run-long expert popularity of each MoE layer."""

    kind: Literal["uniform", "zipf", "dirichlet", "explicit"] = "uniform"
    alpha: float = Field(1.0, ge=0, description="zipf: p_rank proportional to rank^-alpha")
    concentration: float = Field(1.0, gt=0, description="dirichlet: per-expert concentration (small = skewed)")
    shuffle: bool = Field(True, description="zipf: the hot experts differ per layer")
    weights: list[list[float]] | None = Field(None, description="explicit: one row of expert weights per MoE layer")

    @model_validator(mode="after")
    def _explicit_has_weights(self) -> "PopularityConfig":
        if self.kind == "explicit" and not self.weights:
            raise ValueError("popularity kind 'explicit' needs weights (one row per MoE layer)")
        for i, row in enumerate(self.weights or []):
            if any(w < 0 for w in row):
                raise ValueError(f"popularity.weights[{i}] must be non-negative, got {row}")
            if not sum(row) > 0:
                raise ValueError(f"popularity.weights[{i}] must have a positive sum (some expert must be chosen), "
                                 f"got {row}")
        return self


class DriftConfig(_Strict):
    """Slow change of popularity over steps: an AR(1) walk on log-popularity."""

    sigma: float = Field(0.0, ge=0, description="std of the per-step change of log-popularity")
    rho: float = Field(1.0, ge=0, le=1, description="persistence: 1 = random walk, < 1 mean-reverting")


class RoutingModelConfig(_Strict):
    """Parameters of the composable routing generator (written by `moesim trace fit`)."""

    popularity: PopularityConfig = PopularityConfig()
    drift: DriftConfig = DriftConfig()
    batch_concentration: float | None = Field(
        None, gt=0, description="per-step Dirichlet concentration of popularity (None: sampling noise only)")
    affinity: float = Field(0.0, ge=0, le=1, description="P(a token's routing position carries to the next layer)")
    locality: float = Field(0.0, ge=0, le=1, description="weight of each source's own expert preference")
    fitted_from: str | None = Field(None, description="provenance: the trace this was fitted to")
    _source: str | None = PrivateAttr(None)  # the YAML it was read from, for errors found later

    @property
    def source(self) -> str | None:
        """The generator YAML this config was loaded from (None: built in code or inline)."""
        return self._source


def load_routing_model(path: str | Path) -> RoutingModelConfig:
    """Read a generator YAML (the file `moesim trace fit` writes; key `synthetic:` or top level)."""
    from moesim.errors import ConfigError
    from moesim.yaml_io import load_yaml, validate

    data = load_yaml(Path(path))
    if not data:  # all defaults would be a uniform generator nobody asked for
        raise ConfigError("the generator file is empty; expected a 'synthetic:' mapping (popularity, drift, "
                          "affinity, ...) as `moesim trace fit` writes", file=path, field="synthetic")
    if isinstance(data, dict) and "synthetic" in data:
        data = data["synthetic"]
    if not isinstance(data, dict):
        raise ConfigError(f"'synthetic' must be a mapping, found {type(data).__name__}", file=path, field="synthetic")
    cfg = validate(RoutingModelConfig, data, Path(path))
    cfg._source = str(path)
    return cfg


def base_popularity(cfg: PopularityConfig, num_layers: int, num_experts: int, seed: int) -> np.ndarray:
    """(layers, experts) run-long popularity from the config, deterministic under the seed."""
    rng = np.random.default_rng([seed, 0])
    if cfg.kind == "uniform":
        return np.full((num_layers, num_experts), 1.0 / num_experts)
    if cfg.kind == "zipf":
        base = zipf_popularity(num_experts, cfg.alpha)
        return np.stack([base[rng.permutation(num_experts)] if cfg.shuffle else base for _ in range(num_layers)])
    if cfg.kind == "dirichlet":
        return rng.dirichlet(np.full(num_experts, cfg.concentration), size=num_layers)
    w = np.asarray(cfg.weights, dtype=float)
    if w.ndim != 2 or w.shape[1] != num_experts or w.shape[0] not in (1, num_layers) or (w < 0).any():
        raise ValueError(f"explicit popularity weights must be non-negative with shape ({num_layers}, {num_experts}) "
                         f"or (1, {num_experts}); got {w.shape}")
    w = np.broadcast_to(w, (num_layers, num_experts))
    return w / w.sum(axis=1, keepdims=True)


@dataclass
class SyntheticRouting:
    """RoutingSource for `RoutingModelConfig`; step s is reproducible on its own under the seed."""

    cfg: RoutingModelConfig
    num_experts: int
    top_k: int
    num_layers: int
    seed: int = 0
    per_token: bool = False  # always produce per-token ids (trace synthesis, caches)
    _drift_at: tuple[int, np.ndarray] | None = field(default=None, repr=False)
    _source_pref: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.base = base_popularity(self.cfg.popularity, self.num_layers, self.num_experts, self.seed)
        rng = np.random.default_rng([self.seed, 4])
        self.order = np.stack([rng.permutation(self.num_experts) for _ in range(self.num_layers)])

    def _drift(self, step: int) -> np.ndarray:
        """z_step (layers, experts): the log-popularity offset, continued from the last step asked."""
        d = self.cfg.drift
        if d.sigma == 0:
            return np.zeros_like(self.base)
        at, z = self._drift_at if self._drift_at and self._drift_at[0] <= step else (0, np.zeros_like(self.base))
        for t in range(at + 1, step + 1):
            eps = np.random.default_rng([self.seed, 2, t]).standard_normal(self.base.shape)
            z = d.rho * z + d.sigma * eps
        self._drift_at = (step, z)
        return z

    def _preferences(self, sources: int) -> np.ndarray:
        """q[l, s, e]: each source's fixed expert preference (Dirichlet around the base)."""
        if sources not in self._source_pref:
            rng = np.random.default_rng([self.seed, 3, sources])
            alpha = np.maximum(self.base * self.num_experts, 1e-3)
            g = rng.standard_gamma(np.broadcast_to(alpha[:, None, :], (self.num_layers, sources, self.num_experts)))
            self._source_pref[sources] = g / g.sum(axis=2, keepdims=True)
        return self._source_pref[sources]

    def popularity(self, step: int, sources: int, rng: np.random.Generator) -> np.ndarray:
        """p[l, s, e] of this step (drift, then batch variance, then locality)."""
        p = self.base * np.exp(self._drift(step))
        p /= p.sum(axis=1, keepdims=True)
        if self.cfg.batch_concentration is not None:
            g = rng.standard_gamma(np.maximum(self.cfg.batch_concentration * p, 1e-9))
            total = g.sum(axis=1, keepdims=True)
            p = np.where(total > 0, g / np.maximum(total, 1e-300), p)
        p = np.broadcast_to(p[:, None, :], (self.num_layers, sources, self.num_experts))
        if self.cfg.locality > 0:
            p = (1 - self.cfg.locality) * p + self.cfg.locality * self._preferences(sources)
        return p

    def regime(self, step: int) -> Hashable | None:
        """Stationary without drift; with drift (sigma > 0) every step has its own popularity, so
        its own regime (None; see `routing_regime`)."""
        return None if self.cfg.drift.sigma > 0 else STATIONARY

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if num_layers != self.num_layers:
            raise ValueError(f"generator built for {self.num_layers} MoE layers, asked for {num_layers}")
        tokens = np.asarray(tokens, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1, step])
        p = self.popularity(step, tokens.size, rng)
        incl = np.apply_along_axis(inclusion_probabilities, 2, p, self.top_k) / self.top_k  # (L, S, E), rows sum 1
        if self.cfg.affinity == 0 and not self.per_token:
            return RoutingStep(counts=self._counts_direct(rng, tokens, incl))
        return self._per_token(rng, tokens, incl)

    def _counts_direct(self, rng: np.random.Generator, tokens: np.ndarray, incl: np.ndarray) -> np.ndarray:
        """Multinomial counts per (layer, source); a count above the source's tokens moves elsewhere."""
        counts = rng.multinomial(np.broadcast_to(tokens * self.top_k, incl.shape[:2]), incl)
        return cap_at_tokens(counts, tokens)

    def _per_token(self, rng: np.random.Generator, tokens: np.ndarray, incl: np.ndarray) -> RoutingStep:
        """Token-level draws: systematic sampling at the token's latent position u.

        Laid end to end in the layer's expert order, the inclusion probabilities (each <= 1,
        summing to k) cover [0, k); the token takes the experts under u, u + 1, ..., u + k - 1.
        That gives k distinct experts with exactly the intended inclusion probabilities, and a u
        carried to the next layer (affinity) makes the next choice depend on this one.
        Column order: the expert under u would always come first, i.e. from the first 1/k of the
        layer's order; each token's columns are rotated by its own random offset instead (the same
        on every layer, drawn after everything else), so column 0, the "top-1" that consumers such
        as the exflow dispatch read, is an unbiased one of the token's experts.
        """
        L, S, E = incl.shape
        src = np.repeat(np.arange(S), tokens)
        T = src.size
        u = rng.random(T)
        layers = []
        counts = np.zeros((L, S, E), dtype=np.int64)
        for l in range(L):
            if l:
                u = np.where(rng.random(T) < self.cfg.affinity, u, rng.random(T))
            experts = systematic_experts(incl[l], self.order[l], src, u, self.top_k)
            layers.append(experts.astype(np.int32))
            counts[l] = np.bincount((src[:, None] * E + experts).ravel(), minlength=S * E).reshape(S, E)
        cols = (np.arange(self.top_k)[None, :] + rng.integers(self.top_k, size=T)[:, None]) % self.top_k
        layers = [np.take_along_axis(experts, cols, axis=1) for experts in layers]
        return RoutingStep(counts=counts, token_experts=layers, token_source=src)


def systematic_experts(incl: np.ndarray, order: np.ndarray, block: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    """(T, k) distinct experts of tokens at latent positions u in [0, 1), token i drawing from
    row block[i] of the inclusion probabilities incl (B, E).

    Each row, laid end to end in `order` and scaled to sum to k, covers [0, k); the token takes
    the experts under u, u + 1, ..., u + k - 1 (systematic sampling). Shared by the generator
    and the affinity fit, so the fit calibrates on exactly the draws synthesis makes.
    """
    B, E = incl.shape
    cdf = np.cumsum(incl[:, order], axis=1)
    cdf *= k / cdf[:, -1:]
    cdf += (np.arange(B) * k)[:, None]  # one block per row: a single searchsorted serves all
    idx = np.searchsorted(cdf.ravel(), u[:, None] + (block * k)[:, None] + np.arange(k)[None, :], side="right")
    return order[np.clip(idx - (block * E)[:, None], 0, E - 1)]
