"""A serving deployment's capacity: the highest load at which it still meets its SLOs (Vidur's
config search does the same), found by bisection on the serving simulation.

`bisect_capacity(meets, lo, hi, rel_tol)` is the search alone: `meets(load)` says whether a load
is served within the SLOs, assumed true below some capacity and false above (more load never
helps latency). It probes `lo` and `hi`, then halves the bracket in log space until
hi / lo <= 1 + rel_tol, and returns the largest load that met (None where even `lo` fails; `hi`
itself, flagged, where nothing in the range fails). `serving_meets(row, slo)` judges one
simulated point: TTFT and TPOT p99 within their limits and the point not saturated (achieved
requests/s at least 90% of offered, serving/results.offered_and_achieved).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Capacity:
    """The result of a search: the capacity (None: not even the lowest load), whether it is the
    top of the range (the real capacity may be higher), and every probe (load, met)."""

    load: float | None
    at_top: bool = False
    probes: list[tuple[float, bool]] = field(default_factory=list)


def bisect_capacity(meets: Callable[[float], bool], lo: float, hi: float, rel_tol: float = 0.05) -> Capacity:
    """The highest load in [lo, hi] that `meets` accepts, within a factor 1 + rel_tol (module docstring)."""
    if not (0 < lo <= hi) or not rel_tol > 0:
        raise ValueError(f"capacity search needs 0 < lo <= hi and rel_tol > 0, got {lo}, {hi}, {rel_tol}")
    probes: list[tuple[float, bool]] = []

    def probe(x: float) -> bool:
        ok = bool(meets(x))
        probes.append((x, ok))
        return ok

    if not probe(lo):
        return Capacity(None, False, probes)
    if hi == lo or probe(hi):
        return Capacity(hi, True, probes)
    good, bad = lo, hi
    while bad / good > 1 + rel_tol:
        mid = math.sqrt(good * bad)
        if probe(mid):
            good = mid
        else:
            bad = mid
    return Capacity(good, False, probes)


def serving_meets(row: dict[str, Any], slo: dict[str, float]) -> tuple[bool, str]:
    """Whether a simulated serving point meets the SLOs, and what failed first ("" when it met)."""
    if row.get("status") != "ok":
        return False, f"failed: {row.get('error', '')}"
    if row.get("saturated") == 1.0:
        return False, "saturated (achieved < 90% of offered requests/s)"
    for name, limit in (("ttft_p99_s", slo.get("ttft_p99")), ("tpot_p99_s", slo.get("tpot_p99"))):
        value = row.get(name)
        if limit is not None and (value is None or value != value or value > limit):
            return False, f"{name} {value:.3g} s > {limit:.3g} s" if value == value and value is not None \
                else f"{name} not measured"
    return True, ""
