"""In-sample vs out-of-sample balance: plan on earlier windows, score on later ones.

A placement fitted to the windows it is scored on flatters itself; what matters in serving is
how it holds up as the load drifts. `evaluate_out_of_sample` hands every planner only windows
[0, k) and scores the result on windows [k, W) (and, for reference, on [0, k)), as max/mean
device load per layer averaged over layers and windows (1 = perfect balance; the reciprocal
of the balancedness EPLB reports).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Planner = Callable[[np.ndarray], Any]  # planning windows (k, L, E) -> shares (L, E, D) or a MethodResult


def split_windows(num_windows: int, plan_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the planning windows [0, k) and the scoring windows [k, W); disjoint by construction."""
    if not 0 < plan_windows < num_windows:
        raise ValueError(f"need 0 < plan windows < windows, got {plan_windows} of {num_windows}")
    plan, score = np.arange(plan_windows), np.arange(plan_windows, num_windows)
    if np.intersect1d(plan, score).size:  # the guarantee the evaluation rests on
        raise AssertionError("planning and scoring windows overlap")
    return plan, score


def max_over_mean(shares: np.ndarray, loads: np.ndarray) -> np.ndarray:
    """(W,) max/mean device load per window, averaged over layers; shares (L, E, D), loads (W, L, E)."""
    device = np.einsum("wle,led->wld", loads, shares)
    mean = device.mean(axis=2)
    ratio = np.where(mean > 0, device.max(axis=2) / np.maximum(mean, 1e-300), 1.0)
    return ratio.mean(axis=1)


@dataclass(frozen=True)
class OutOfSampleRow:
    method: str
    in_sample: float  # mean over planning windows of max/mean
    out_of_sample: float  # mean over scoring windows of max/mean
    worst_out_of_sample: float  # the worst scoring window
    seconds: float  # planning time (a MethodResult's own, without scoring)
    gap: float  # the ILP's worst gap (nan for heuristics)


def _shares_gap_seconds(outcome: Any) -> tuple[np.ndarray, float, float | None]:
    """Shares, worst gap and the method's own solve seconds (a MethodResult times its placing only)."""
    if hasattr(outcome, "placement"):
        gap = outcome.ilp.worst_gap if getattr(outcome, "ilp", None) is not None else float("nan")
        return outcome.placement.shares(), gap, getattr(outcome, "seconds", None)
    return np.asarray(outcome, dtype=float), float("nan"), None


def evaluate_out_of_sample(windows: np.ndarray, plan_windows: int, planners: dict[str, Planner]
                           ) -> list[OutOfSampleRow]:
    """Plan with every planner on windows [0, k) only; score each on [0, k) and on [k, W)."""
    windows = np.asarray(windows, dtype=float)
    plan, score = split_windows(windows.shape[0], plan_windows)
    rows = []
    for name, planner in planners.items():
        seen = windows[plan].copy()  # a copy: a planner cannot reach the scoring windows through it
        t0 = time.perf_counter()
        shares, gap, seconds = _shares_gap_seconds(planner(seen))
        seconds = time.perf_counter() - t0 if seconds is None else seconds
        ins, outs = max_over_mean(shares, windows[plan]), max_over_mean(shares, windows[score])
        rows.append(OutOfSampleRow(name, float(ins.mean()), float(outs.mean()), float(outs.max()), seconds, gap))
    return rows
