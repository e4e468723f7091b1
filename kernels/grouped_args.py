"""Argument checks of a grouped-GEMM call, shared by the torch reference and the Triton kernel."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_counts(counts: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Group sizes as a 1-D int64 tensor (a list or tuple of ints is accepted too)."""
    if not isinstance(counts, torch.Tensor):
        counts = torch.as_tensor(list(counts), dtype=torch.int64)
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D (one size per expert), got shape {tuple(counts.shape)}")
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise ValueError(f"counts must be an integer tensor, got {counts.dtype}")
    return counts.to(torch.int64)


def check_grouped_args(x_sorted: torch.Tensor, counts: torch.Tensor | Sequence[int],
                       w: torch.Tensor) -> list[int]:
    """Validate a grouped-GEMM call; returns counts as a host list of ints.

    Contract: x_sorted (M, K), w (E, K, N), counts (E,) non-negative with sum(counts) == M. Raises
    ValueError naming the mismatch otherwise."""
    counts = as_counts(counts)
    if x_sorted.dim() != 2:
        raise ValueError(f"x_sorted must be 2-D (rows, K), got shape {tuple(x_sorted.shape)}")
    if w.dim() != 3:
        raise ValueError(f"w must be 3-D (E, K, N), got shape {tuple(w.shape)}")
    rows, k = x_sorted.shape
    experts, wk, _ = w.shape
    if wk != k:
        raise ValueError(f"w has K={wk} (shape {tuple(w.shape)}) but x_sorted has K={k} "
                         f"(shape {tuple(x_sorted.shape)})")
    if counts.numel() != experts:
        raise ValueError(f"counts has {counts.numel()} groups but w has E={experts} experts "
                         f"(shape {tuple(w.shape)})")
    host = [int(c) for c in counts.tolist()]
    if any(c < 0 for c in host):
        raise ValueError(f"counts must be non-negative, got {host}")
    if sum(host) != rows:
        raise ValueError(f"counts sum to {sum(host)} but x_sorted has {rows} rows")
    if x_sorted.dtype != w.dtype:
        raise ValueError(f"x_sorted is {x_sorted.dtype} but w is {w.dtype}; they must match")
    if x_sorted.device != w.device:
        raise ValueError(f"x_sorted is on {x_sorted.device} but w is on {w.device}")
    return host
