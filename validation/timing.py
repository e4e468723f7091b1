"""Timing one op the way kernel benchmarks do: warm-up, synchronisation, repetitions, robust stats.

On a GPU each repetition is bracketed by CUDA events (device time, no host jitter); on the CPU
by perf_counter. Repetitions continue until both a minimum count and a minimum total time are
reached, so tiny ops get enough samples. The median is the estimate; the interquartile spread
over the median is the run-to-run noise the validation report compares errors with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    median: float
    p10: float
    p90: float
    spread: float  # (p75 - p25) / median
    reps: int


def summarize(samples: list[float]) -> Timing:
    s = np.asarray(samples, dtype=float)
    q10, q25, q50, q75, q90 = np.percentile(s, [10, 25, 50, 75, 90])
    return Timing(float(q50), float(q10), float(q90), float((q75 - q25) / q50) if q50 > 0 else 0.0, len(s))


def time_op(fn: Callable[[], object], device: str = "cpu", warmup: int = 3, min_reps: int = 5,
            min_time: float = 0.05, max_reps: int = 200) -> Timing:
    """Median and spread of `fn()`'s run time on `device` ("cpu" or "cuda")."""
    if device == "cuda":
        return _time_cuda(fn, warmup, min_reps, min_time, max_reps)
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < min_reps or (total < min_time and len(samples) < max_reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt)
        total += dt
    return summarize(samples)


def _time_cuda(fn: Callable[[], object], warmup: int, min_reps: int, min_time: float, max_reps: int) -> Timing:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples: list[float] = []
    total = 0.0
    while len(samples) < min_reps or (total < min_time and len(samples) < max_reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        dt = start.elapsed_time(end) / 1e3
        samples.append(dt)
        total += dt
    return summarize(samples)
