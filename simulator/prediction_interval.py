"""Prediction intervals on the headline figures, from a calibration's held-out residuals.

Each op kind's compute time on the step's busiest device is off by the factor its held-out
residuals say (one draw per kind per sample: a kernel's error is shared by all its calls), and
the step moves by those seconds; communication is costed from link profiles and kept as it is.
Drawn by bootstrap from the residuals (deterministic under the seed), the step's spread gives
the interval at `level`. A kind the calibration never held out rows of draws from all kinds'
residuals pooled. A datasheet profile has no residuals, so no interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.simulator.cost_model import base_kind

LEVEL = 0.8
DRAWS = 4000


def residual_key(kind: str, residuals: dict[str, list[float]]) -> str | None:
    """The residual set an op kind draws from: its own, the kind it refines, else None (pooled)."""
    for key in (kind, base_kind(kind)):
        if key in residuals and residuals[key]:
            return key
    return None


def step_interval(step_s: float, seconds_by_kind: dict[str, float], residuals: dict[str, list[float]],
                  level: float = LEVEL, seed: int = 0, draws: int = DRAWS) -> tuple[float, float]:
    """(low, high) of the step time at `level`: each kind's seconds scaled by exp(a residual of
    its kind), drawn together per sample, the rest of the step unchanged."""
    rng = np.random.default_rng((seed, 0x1A7E))
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in residuals.values() if v])
    total = np.full(draws, float(step_s))
    for kind, seconds in sorted(seconds_by_kind.items()):
        key = residual_key(kind, residuals)
        pool = np.asarray(residuals[key], dtype=float) if key is not None else pooled
        total += seconds * (np.exp(rng.choice(pool, size=draws)) - 1.0)
    tail = (1.0 - level) / 2
    low, high = np.quantile(np.maximum(total, 0.0), [tail, 1.0 - tail])
    return float(low), float(high)


def busiest_compute(rows) -> dict[str, float]:
    """Seconds by op kind of the device with the most compute in a plan's op rows (one step)."""
    compute = rows[rows["kind"] != "comm"]
    if compute.empty:
        return {}
    device = compute.groupby("device")["time_s"].sum().idxmax()
    mine = compute[compute["device"] == device]
    return {str(k): float(v) for k, v in mine.groupby("kind")["time_s"].sum().items() if v > 0}


def prediction_interval(residuals: dict[str, list[float]], step_s: float, throughput: float,
                        seconds_by_kind: dict[str, float], seed: int, profile: str) -> dict[str, Any]:
    """summary.json's interval on step latency and throughput (model plus the calibration's measured error)."""
    low, high = step_interval(step_s, seconds_by_kind, residuals, seed=seed)
    busy = sum(seconds_by_kind.values())
    return {"level": LEVEL, "step_latency_s": [low, high],
            "throughput_tokens_per_s": [throughput * step_s / high if high > 0 else None,
                                        throughput * step_s / low if low > 0 else None],
            "relative": [low / step_s - 1.0, high / step_s - 1.0] if step_s > 0 else None,
            "compute_share": min(busy / step_s, 1.0) if step_s > 0 else None,
            "source": f"calibrated profile {profile}: held-out residuals by op kind ({', '.join(sorted(residuals))}), "
                      f"bootstrapped through the busiest device's compute of the first step, {DRAWS} draws"}
