"""Placement over time: re-plan after every window, move only when the rebalance rule says so.

A static placement planned on a history degrades as popularity drifts (out-of-sample max/mean
grows with the time since planning). Serving systems therefore re-plan periodically (DeepSeek's
EPLB and SGLang/vLLM's rebalancers run every so many steps). `replay_rebalancing` plays that
loop on a sequence of load windows without ever looking ahead:

    placement in force at window w  <-  decided from windows [0, w) only
    score window w with it (out-of-sample by construction)
    after window w: plan a candidate on windows [0, w]; ask the rule (`rebalance_decision`:
    expected step-time gain over the horizon vs the wall time of moving the weights); move iff it says so

and reports the balance seen, how often it moved, and the bytes and seconds the moves cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from moesim.placement.out_of_sample import max_over_mean, split_windows
from moesim.placement.rebalance import RebalanceReport

# windows seen (w, L, E), the placement in force (None for the first plan) -> shares (L, E, D)
SharesPlanner = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], RebalanceReport]  # current, candidate, seen -> verdict
Align = Callable[[np.ndarray, np.ndarray], np.ndarray]  # current, candidate -> candidate renamed (keep_copies_in_place)


@dataclass(frozen=True)
class RebalancingRow:
    """One method's run through the scoring windows with rule-driven moves."""

    method: str
    out_of_sample: float  # mean over scoring windows of max/mean, each with the placement then in force
    worst_out_of_sample: float
    moves: int  # rebalances the rule accepted
    decisions: int  # rebalances it was asked about
    bytes_moved: float  # expert weight bytes moved, all moves
    move_seconds: float  # wall time of the moves (the rule's cost), all moves
    gain_seconds: float  # the rule's expected gain of the accepted moves, summed
    plan_seconds: float  # planning time, all windows


def replay_rebalancing(method: str, windows: np.ndarray, plan_windows: int, planner: SharesPlanner,
                       rule: Rule, align: Align | None = None) -> RebalancingRow:
    """Plan on windows [0, k), then for each later window: score it with the placement in force,
    plan a candidate on everything seen so far (that window included) and the placement in force
    (a move-aware planner keeps what pays to keep), rename its devices with
    `align` where given (to keep copies in place), and move iff `rule` says so.

    The placement scoring window w was fixed before w was seen; the last window's candidate is
    not asked for (nothing is left to serve)."""
    windows = np.asarray(windows, dtype=float)
    _, score = split_windows(windows.shape[0], plan_windows)
    t0 = time.perf_counter()
    current = np.asarray(planner(windows[:plan_windows].copy(), None), dtype=float)
    plan_s = time.perf_counter() - t0
    ratios, moves, decisions, moved, move_s, gain_s = [], 0, 0, 0.0, 0.0, 0.0
    for w in score:
        ratios.append(float(max_over_mean(current, windows[w:w + 1])[0]))
        if w == score[-1]:
            break
        seen = windows[:w + 1].copy()
        t0 = time.perf_counter()
        candidate = np.asarray(planner(seen, current), dtype=float)
        if align is not None:
            candidate = align(current, candidate)
        plan_s += time.perf_counter() - t0
        verdict = rule(current, candidate, seen)
        decisions += 1
        if verdict.move:
            moves += 1
            moved += verdict.bytes_moved
            move_s += verdict.cost_s
            gain_s += verdict.gain_s
            current = candidate
    return RebalancingRow(method, float(np.mean(ratios)), float(np.max(ratios)), moves, decisions, moved, move_s,
                          gain_s, plan_s)
