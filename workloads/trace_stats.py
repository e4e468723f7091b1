"""Statistics of a routing trace, from one streaming pass: imbalance, affinity, drift, locality.

The pass keeps only per-step x layer x expert counts, per-source counts and the pair counts
between consecutive layers (bounded by steps x layers x experts and layers x experts^2, not by
the number of rows). Affinity pairs use at most `affinity_tokens` tokens per step (the first
by token id) so a huge step costs no more than that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from moesim.workloads.trace_format import TraceMeta
from moesim.workloads.routing import layer_pairs
from moesim.workloads.trace_reader import Trace

AFFINITY_TOKENS = 8192


@dataclass
class TraceTally:
    """Everything the statistics and the fit need, accumulated over the trace."""

    meta: TraceMeta
    step_ids: np.ndarray  # (S,)
    step_counts: np.ndarray  # (S, L, E) assignments per step, MoE layer, expert
    source_counts: np.ndarray  # (L, sources, E) assignments over the whole trace
    transitions: np.ndarray  # (L-1, E, E) pairs (expert at l, expert at l+1), k x k per token
    step_tokens: np.ndarray  # (S,) tokens per step
    rows: int

    @property
    def layer_counts(self) -> np.ndarray:
        return self.step_counts.sum(axis=0)


def tally(trace: Trace, max_steps: int | None = None, affinity_tokens: int = AFFINITY_TOKENS,
          progress: Callable[[int, int], None] | None = None) -> TraceTally:
    """Stream the trace once and accumulate the counts behind every statistic."""
    m = trace.meta
    L, E = m.num_moe_layers, m.num_experts
    step_counts, step_ids, step_tokens = [], [], []
    source_counts = np.zeros((L, m.num_sources, E), dtype=np.int64)
    transitions = np.zeros((max(L - 1, 0), E, E), dtype=np.int64)
    rows_seen = 0
    for rows in trace.steps():
        counts = rows.counts(L, m.num_sources, E)
        source_counts += counts
        step_counts.append(counts.sum(axis=1).astype(np.int32))
        step_ids.append(rows.step)
        tokens, experts = rows.token_experts(L)
        step_tokens.append(tokens.size)
        if affinity_tokens and L > 1:
            transitions += layer_pairs([e[:affinity_tokens] for e in experts], E)
        rows_seen += rows.num_rows
        if progress:
            progress(len(step_ids), rows_seen)
        if max_steps and len(step_ids) >= max_steps:
            break
    return TraceTally(meta=m, step_ids=np.array(step_ids), step_counts=np.stack(step_counts) if step_counts
                      else np.zeros((0, L, E), dtype=np.int32), source_counts=source_counts,
                      transitions=transitions, step_tokens=np.array(step_tokens), rows=rows_seen)


def shares(counts: np.ndarray) -> np.ndarray:
    """Normalize the last axis to sum to one (rows of zeros stay zero)."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def imbalance(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of expert counts: max/mean, coefficient of variation, entropy / log(E)."""
    counts = np.asarray(counts, dtype=float)
    mean = counts.mean(axis=-1)
    p = shares(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1) / np.log(counts.shape[-1])
        return {"max_over_mean": np.where(mean > 0, counts.max(axis=-1) / mean, np.nan),
                "cv": np.where(mean > 0, counts.std(axis=-1) / mean, np.nan),
                "entropy": ent}


def zipf_alpha(counts: np.ndarray) -> float:
    """Least-squares Zipf exponent: -slope of log(share) against log(rank) over experts used."""
    p = np.sort(shares(counts))[::-1]
    p = p[p > 0]
    if p.size < 2:
        return float("nan")
    return float(-np.polyfit(np.log(np.arange(1, p.size + 1)), np.log(p), 1)[0])


def conditional_concentration(pairs: np.ndarray) -> dict[str, float]:
    """How concentrated P(next | current) is for one layer pair of pair counts (E x E).

    top1: mean over current experts (weighted by use) of the largest conditional probability;
    lift: top1 over the largest unconditional share of the next layer (1 = no affinity);
    mi: mutual information over the next layer's entropy (0 = independent, 1 = determined).
    """
    pairs = np.asarray(pairs, dtype=float)
    total = pairs.sum()
    if total == 0:
        return {"top1": float("nan"), "lift": float("nan"), "mi": float("nan")}
    joint = pairs / total
    row = joint.sum(axis=1)
    col = joint.sum(axis=0)
    top1 = float(pairs.max(axis=1).sum() / total)
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(joint > 0, joint * np.log(joint / (row[:, None] * col[None, :])), 0.0).sum()
        h = -np.where(col > 0, col * np.log(col), 0.0).sum()
    return {"top1": top1, "lift": top1 / float(col.max()), "mi": float(mi / h) if h > 0 else float("nan")}


def greedy_colocation(pairs: np.ndarray, devices: int, previous: np.ndarray) -> tuple[float, np.ndarray]:
    """Place the next layer's experts on devices (equal numbers each) to keep as many pairs
    on one device as a greedy pass can, given the current layer's placement `previous`.
    Returns (fraction of pairs kept on one device, next layer's placement)."""
    E = pairs.shape[1]
    per_device = -(-E // devices)
    profit = np.zeros((E, devices))
    np.add.at(profit.T, previous, pairs)  # profit[e', d] = pairs from experts on d to e'
    order = np.argsort(-profit, axis=None, kind="stable")
    placed = np.full(E, -1)
    room = np.full(devices, per_device)
    for flat in order:
        e, d = divmod(int(flat), devices)
        if placed[e] < 0 and room[d] > 0:
            placed[e] = d
            room[d] -= 1
    total = pairs.sum()
    kept = profit[np.arange(E), placed].sum()
    return (float(kept / total) if total else float("nan")), placed


def contiguous_devices(num_experts: int, devices: int) -> np.ndarray:
    return np.arange(num_experts) * devices // num_experts


@dataclass
class TraceStats:
    """The statistics `moesim trace stats` prints and plots."""

    summary: dict
    layers: pd.DataFrame  # one row per MoE layer
    pairs: pd.DataFrame  # one row per consecutive MoE layer pair
    steps: pd.DataFrame  # one row per (step, layer): imbalance and drift over time


def sampling_tv(p: np.ndarray, n: float) -> float:
    """Expected total-variation distance between two independent samples of n draws from p
    (normal approximation): the drift you would see with no drift at all."""
    return float(0.5 * np.sum(np.sqrt(4 * p * (1 - p) / (np.pi * max(n, 1)))))


def compute_stats(t: TraceTally, devices: int = 8) -> TraceStats:
    """Imbalance per layer, affinity per layer pair, drift over steps, source locality."""
    m = t.meta
    L, E = m.num_moe_layers, m.num_experts
    load = t.layer_counts
    imb = imbalance(load)
    step_imb = imbalance(t.step_counts) if len(t.step_ids) else {k: np.zeros((0, L)) for k in imb}
    x = shares(t.step_counts)  # (S, L, E)
    p = shares(load)
    S = x.shape[0]
    per_step_draws = t.step_tokens.mean() * m.top_k if S else 0.0
    layers = pd.DataFrame({
        "moe_layer": np.arange(L), "max_over_mean": imb["max_over_mean"], "cv": imb["cv"],
        "entropy": imb["entropy"],
        "step_max_over_mean": step_imb["max_over_mean"].mean(axis=0) if S else np.nan,
        "top_expert_share": p.max(axis=1), "zipf_alpha": [zipf_alpha(load[l]) for l in range(L)],
        "drift_tv": 0.5 * np.abs(np.diff(x, axis=0)).sum(axis=2).mean(axis=0) if S > 1 else np.nan,
        "sampling_tv": [sampling_tv(p[l], per_step_draws) for l in range(L)],
        "first_last_tv": 0.5 * np.abs(shares(t.step_counts[: max(S // 4, 1)].sum(axis=0))
                                      - shares(t.step_counts[-max(S // 4, 1):].sum(axis=0))).sum(axis=1)
        if S > 1 else np.nan,
        "source_tv": 0.5 * np.abs(shares(t.source_counts) - p[:, None, :]).sum(axis=2).mean(axis=1),
    })
    pair_rows = []
    placement = contiguous_devices(E, devices)
    for l in range(L - 1):
        c = conditional_concentration(t.transitions[l])
        total = t.transitions[l].sum()
        same = contiguous_devices(E, devices)
        contiguous = float(t.transitions[l][same[:, None] == same[None, :]].sum() / total) if total else np.nan
        # the same greedy placement on independent layers shows how much of it skew alone explains
        independent = np.outer(t.transitions[l].sum(axis=1), t.transitions[l].sum(axis=0))
        skew_only, _ = greedy_colocation(independent, devices, placement)
        best, placement = greedy_colocation(t.transitions[l], devices, placement)
        pair_rows.append({"from_layer": l, "to_layer": l + 1, "top1_conditional": c["top1"], "lift": c["lift"],
                          "mutual_info": c["mi"], "colocated_contiguous": contiguous,
                          "colocated_best": best, "colocated_best_if_independent": skew_only,
                          "colocated_random": 1.0 / devices})
    pairs = pd.DataFrame(pair_rows, columns=["from_layer", "to_layer", "top1_conditional", "lift", "mutual_info",
                                             "colocated_contiguous", "colocated_best",
                                             "colocated_best_if_independent", "colocated_random"])
    steps = pd.DataFrame({
        "step": np.repeat(t.step_ids, L), "moe_layer": np.tile(np.arange(L), S),
        "max_over_mean": step_imb["max_over_mean"].ravel(), "cv": step_imb["cv"].ravel(),
        "tv_from_mean": (0.5 * np.abs(x - p[None]).sum(axis=2)).ravel() if S else np.zeros(0),
    })

    def mean(series: pd.Series) -> float | None:
        v = series.mean()
        return None if pd.isna(v) else round(float(v), 4)

    summary = {
        "source": "measured from the trace",
        "rows": t.rows, "steps": int(S), "tokens_per_step_mean": float(t.step_tokens.mean()) if S else 0.0,
        "moe_layers": L, "experts": E, "top_k": m.top_k, "sources": m.num_sources, "source_kind": m.source_kind,
        "model": m.model,
        "imbalance": {"max_over_mean": mean(layers["max_over_mean"]), "cv": mean(layers["cv"]),
                      "entropy": mean(layers["entropy"]), "step_max_over_mean": mean(layers["step_max_over_mean"]),
                      "zipf_alpha": mean(layers["zipf_alpha"])},
        "affinity": {"top1_conditional": mean(pairs["top1_conditional"]), "lift": mean(pairs["lift"]),
                     "mutual_info": mean(pairs["mutual_info"]), "devices": devices,
                     "colocated_contiguous": mean(pairs["colocated_contiguous"]),
                     "colocated_best": mean(pairs["colocated_best"]),
                     "colocated_best_if_independent": mean(pairs["colocated_best_if_independent"]),
                     "colocated_random": 1.0 / devices,
                     "tokens_per_step_used": int(min(AFFINITY_TOKENS, t.step_tokens.max())) if S else 0},
        "drift": {"step_to_step_tv": mean(layers["drift_tv"]), "sampling_tv": mean(layers["sampling_tv"]),
                  "first_vs_last_quarter_tv": mean(layers["first_last_tv"])},
        "locality": {"source_tv": mean(layers["source_tv"])},
    }
    return TraceStats(summary=summary, layers=layers, pairs=pairs, steps=steps)
