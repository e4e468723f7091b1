"""Distinct (token, destination) pairs: what a deduplicating dispatch sends.

A deduplicating all-to-all sends a token once per destination group (device or node) however
many of its k experts live there. With per-token ids the count is exact (`distinct_from_tokens`).
With counts only (`expected_distinct`) the model is: the tokens a source s sends to slot j are a
uniform random subset of its tokens[s] tokens, of size rows[s, j], independently across slots, so

    P(token misses group g) = prod_{j in g} (1 - rows[s, j] / tokens[s])
    E[distinct tokens of s at g] = tokens[s] x (1 - that product).

This is exact when each slot selects its tokens independently (independent Bernoulli routing,
or one expert per group). Top-k without replacement makes a token's choices negatively
correlated (choosing one expert leaves fewer picks for the others), so a token misses a group
less often than the product says and the model *under*-estimates distinct pairs. Uniform
routing, E = 64, k = 8, 8 experts per device: exact P(miss) = C(56, 8) / C(64, 8) = 0.3209
against 0.875^8 = 0.3436, so 0.6791 vs 0.6564 of tokens reach each device (-3.3%). Measured
against Gumbel-top-k draws (tests/test_dispatch_distinct.py, E = 64, k = 8, 8 devices): totals
-3.4% for uniform and -2.2% for Zipf(1) popularity, single (source, device) cells -0% to -4.5%
(a device holding one always-chosen expert is exact). The gap shrinks as k / (experts
per group) falls and vanishes for one expert per group.
"""

from __future__ import annotations

import numpy as np


def expected_distinct(rows: np.ndarray, tokens: np.ndarray, group_of_slot: np.ndarray, groups: int) -> np.ndarray:
    """[..., s, g] expected distinct tokens of source s reaching group g, from (token, slot) rows [..., s, j].
    `group_of_slot` is (J,), or (L, J) with rows [..., L, s, j] when every layer places slots differently.

    Rows may be fractional (replicas split load); the per-slot fraction is clipped to [0, 1]
    and a source with no tokens reaches nothing.
    """
    rows = np.asarray(rows, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    group_of_slot = np.asarray(group_of_slot, dtype=np.int64)
    slots = group_of_slot.shape[-1]
    if rows.shape[-2:] != (tokens.size, slots) or (group_of_slot.ndim == 2 and rows.shape[-3] != group_of_slot.shape[0]):
        raise ValueError(f"rows must end in (sources={tokens.size}, slots={slots}) (with a layer axis matching "
                         f"group_of_slot {group_of_slot.shape}), got {rows.shape}")
    if group_of_slot.size and (group_of_slot.min() < 0 or group_of_slot.max() >= groups):
        raise ValueError(f"group_of_slot must lie in [0, {groups})")
    safe = np.where(tokens > 0, tokens, 1.0)
    frac = np.clip(rows / safe[:, None], 0.0, 1.0)
    full = frac >= 1.0  # a slot taking every token: the group cannot be missed (log1p(-1) = -inf)
    # (J, G), or (L, J, G) when each layer places its slots differently (rows then [L, S, J])
    onehot = (np.asarray(group_of_slot)[..., None] == np.arange(groups)).astype(float)
    log_miss = np.log1p(-np.where(full, 0.0, frac)) @ onehot  # [..., s, g]
    miss = np.where(full.astype(float) @ onehot > 0, 0.0, np.exp(log_miss))
    return np.where(tokens[:, None] > 0, tokens[:, None] * (1.0 - miss), 0.0)


def distinct_from_tokens(token_experts: np.ndarray, token_source: np.ndarray, expert_group: np.ndarray,
                         sources: int, groups: int) -> np.ndarray:
    """(s, g) exact count of distinct (token, group) pairs, from per-token ids token_experts (T, k)."""
    return distinct_by_layer(np.asarray(token_experts)[None], np.asarray(token_source, dtype=np.int64),
                             np.asarray(expert_group, dtype=np.int64), sources, groups)[0]


def distinct_pairs(rows: np.ndarray, tokens: np.ndarray, slot_group: np.ndarray, groups: int,
                   token_ids=None, group_offset: int = 0) -> np.ndarray:
    """[Lm, s, g] distinct (token, group) pairs of one EP group's sources: exact from per-token ids
    when given (`TokenIds`, slot j = expert j; sources are the EP group's devices, numbered from
    `group_offset`), else in expectation from the slot rows [Lm, s, j]."""
    if token_ids is None:
        return expected_distinct(rows, tokens, slot_group, groups)
    sources = tokens.size
    src = np.asarray(token_ids.token_source, dtype=np.int64) - group_offset
    mine = (src >= 0) & (src < sources)
    ids = np.stack(token_ids.token_experts)  # (Lm, T, k)
    if not mine.all():
        ids, src = ids[:, mine], src[mine]
    return distinct_by_layer(ids, src, np.asarray(slot_group, dtype=np.int64), sources, groups).astype(float)


def distinct_by_layer(token_experts: np.ndarray, token_source: np.ndarray, expert_group: np.ndarray,
                      sources: int, groups: int) -> np.ndarray:
    """(Lm, s, g) `distinct_from_tokens` of every layer at once: token_experts (Lm, T, k), and
    expert_group (E,) or (Lm, E) where each layer places its experts differently."""
    Lm = token_experts.shape[0]
    if expert_group.ndim == 2:
        g = np.take_along_axis(expert_group, token_experts.reshape(Lm, -1).astype(np.int64), axis=1)
        g = g.reshape(token_experts.shape)
    else:
        g = expert_group[token_experts]
    g.sort(axis=2)
    first = np.ones(g.shape, dtype=bool)
    first[:, :, 1:] = g[:, :, 1:] != g[:, :, :-1]  # first occurrence of each group in a token's sorted list
    key = g + (token_source * groups)[None, :, None] + (np.arange(Lm, dtype=np.int64) * (sources * groups))[:, None, None]
    return np.bincount(key[first], minlength=Lm * sources * groups).reshape(Lm, sources, groups)
