"""Timing one op the way kernel benchmarks do: warm-up, synchronisation, repetitions, robust stats.

On the CPU each repetition is one call bracketed by perf_counter. On a GPU one call per CUDA-event
pair measures the host, not the kernel: a Python call and an event record cost ~10-30 us, so every
small kernel reads as the same ~20 us (the 2026-11-26 H100 run fitted that floor). So each GPU
sample times N launches between one event pair -- a CUDA graph of N captured launches replayed at
once, or, where the op cannot be captured (it synchronises with the host), N back-to-back calls --
and divides by N, after subtracting the fixed cost of one sample (the event pair and the graph
launch, measured on a trivial graph). N is chosen so a sample lasts ~`batch_time`. Operands rotate
through a pool larger than the L2 cache (measure.py), so the N launches read cold weights.

The host floor itself is measured apart (`host_floor`): one launch per event pair, N back-to-back
launches per pair, and a graph of N, on a small GEMM; calibrate.py writes it to machine.json.

The median is the estimate; the interquartile spread over the median is the run-to-run noise the
validation report compares errors with. The arithmetic (`per_launch`, `launches_for`,
`sample_loop`) is pure so tests check it with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    median: float  # seconds per launch
    p10: float
    p90: float
    spread: float  # (p75 - p25) / median
    reps: int  # samples
    launches: int = 1  # launches per sample (N)
    method: str = "perf_counter"  # perf_counter | cuda_graph | back_to_back | event_pair


def summarize(samples: Sequence[float], launches: int = 1, method: str = "perf_counter") -> Timing:
    s = np.asarray(samples, dtype=float)
    q10, q25, q50, q75, q90 = np.percentile(s, [10, 25, 50, 75, 90])
    return Timing(float(q50), float(q10), float(q90), float((q75 - q25) / q50) if q50 > 0 else 0.0, len(s),
                  launches, method)


def per_launch(totals: Sequence[float], n: int, floor: float = 0.0, method: str = "cuda_graph") -> Timing:
    """Per-launch time and spread from samples that each timed `n` launches in `totals[i]` seconds,
    `floor` being the fixed cost of one sample (event pair + graph launch): (total - floor) / n,
    never below zero."""
    if n < 1:
        raise ValueError(f"launches per sample must be >= 1, got {n}")
    per = [max(t - floor, 0.0) / n for t in totals]
    return summarize(per, n, method)


def launches_for(single: float, batch_time: float = 2e-3, max_launches: int = 100) -> int:
    """N launches per sample so a sample lasts about `batch_time` (1 for ops already that long)."""
    if not single > 0:
        return max_launches
    return int(min(max_launches, max(1, round(batch_time / single))))


def sample_loop(sample: Callable[[], float], n: int, floor: float, min_reps: int, min_time: float,
                max_reps: int, method: str) -> Timing:
    """Draw samples (each `sample()` returns the elapsed seconds of n launches) until both `min_reps`
    samples and `min_time` seconds of samples are reached (at most `max_reps`), then `per_launch`."""
    totals: list[float] = []
    elapsed = 0.0
    while len(totals) < min_reps or (elapsed < min_time and len(totals) < max_reps):
        dt = sample()
        totals.append(dt)
        elapsed += dt
    return per_launch(totals, n, floor, method)


def time_op(fn: Callable[[], object], device: str = "cpu", warmup: int = 3, min_reps: int = 5,
            min_time: float = 0.05, max_reps: int = 200, batch_time: float = 2e-3,
            max_launches: int = 100, graph: bool = True) -> Timing:
    """Median and spread of `fn()`'s run time on `device` ("cpu" or "cuda"), per launch. `graph=False`
    skips the CUDA-graph attempt for ops known to synchronise with the host (timed back to back)."""
    if device == "cuda":
        return _time_cuda(fn, warmup, min_reps, min_time, max_reps, batch_time, max_launches, graph)
    for _ in range(warmup):
        fn()

    def one() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return sample_loop(one, 1, 0.0, min_reps, min_time, max_reps, "perf_counter")


# ----------------------------------------------------------------------------------------------
# CUDA


def _event_pair(run: Callable[[], object]) -> float:
    """Seconds between two CUDA events around `run()` (waits for the end event)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _capture(fn: Callable[[], object], n: int):
    """A CUDA graph of n calls of fn, or None where fn cannot be captured (it syncs with the host)."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as graph capture requires
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return graph
    except Exception:  # noqa: BLE001 -- capture fails for host-synchronising ops: time them back to back
        torch.cuda.synchronize()
        return None


_FLOOR: dict[str, float] = {}


def graph_sample_floor() -> float:
    """Fixed cost of one graph sample: an event pair around the replay of a one-kernel graph (median)."""
    if "graph" not in _FLOOR:
        import torch

        x = torch.zeros(1, device="cuda")
        graph = _capture(lambda: x.add_(1), 1)
        run = graph.replay if graph is not None else (lambda: x.add_(1))
        for _ in range(5):
            _event_pair(run)
        _FLOOR["graph"] = float(np.median([_event_pair(run) for _ in range(50)]))
    return _FLOOR["graph"]


def _time_cuda(fn: Callable[[], object], warmup: int, min_reps: int, min_time: float, max_reps: int,
               batch_time: float, max_launches: int, use_graph: bool = True) -> Timing:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    single = float(np.median([_event_pair(fn) for _ in range(3)]))  # an upper bound (includes the host)
    n = launches_for(single, batch_time, max_launches)
    graph = _capture(fn, n) if use_graph else None
    if graph is not None:
        graph.replay()
        torch.cuda.synchronize()
        return sample_loop(lambda: _event_pair(graph.replay), n, graph_sample_floor(), min_reps, min_time,
                           max_reps, "cuda_graph")

    def back_to_back() -> None:
        for _ in range(n):
            fn()
    return sample_loop(lambda: _event_pair(back_to_back), n, 0.0, min_reps, min_time, max_reps, "back_to_back")


def floor_summary(single: float, back_to_back: float, graph: float, n: int, sample_floor: float) -> dict[str, float]:
    """The host floor report: seconds per launch with one launch per event pair, with n back-to-back
    launches per pair, and in a graph of n; the fixed cost of one sample. Where the first two are far
    above the graph's, they measure the host, not the kernel."""
    return {"launches": float(n), "one_per_event_pair_s": single, "back_to_back_per_launch_s": back_to_back,
            "cuda_graph_per_launch_s": graph, "graph_sample_floor_s": sample_floor,
            "host_floor_s": max(single - graph, 0.0)}


def host_floor(dtype: str = "bfloat16", n: int = 100, reps: int = 20) -> dict[str, float]:
    """Measure the host floor on the GPU with a 16x1024x2048 GEMM (a few us of kernel): median seconds
    per launch with one launch per event pair, n per pair back to back, and a graph of n."""
    import torch

    a = torch.randn(16, 1024, device="cuda").to(getattr(torch, dtype))
    b = torch.randn(1024, 2048, device="cuda").to(getattr(torch, dtype))

    def fn() -> object:
        return torch.matmul(a, b)

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    single = float(np.median([_event_pair(fn) for _ in range(reps)]))

    def loop() -> None:
        for _ in range(n):
            fn()
    batched = float(np.median([_event_pair(loop) for _ in range(reps)])) / n
    graph = _capture(fn, n)
    floor = graph_sample_floor()
    graphed = float(np.median([max(_event_pair(graph.replay) - floor, 0.0) for _ in range(reps)])) / n \
        if graph is not None else float("nan")
    return floor_summary(single, batched, graphed, n, floor)
