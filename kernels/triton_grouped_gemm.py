"""Triton grouped GEMM for the expert FFNs: all experts' matmuls in one kernel launch.

Contract (same as `grouped_moe.grouped_gemm_torch`): x_sorted (M, K) holds the rows of expert 0, then
expert 1, ... (block sizes = counts, E entries, sum M); w is (E, K, N); y[rows of e] = x[rows of e] @ w[e].

Scheduling follows MegaBlocks / vLLM fused_moe: `moe_align.align_counts` pads each group's rows to a
BLOCK_M multiple on the device and maps every block to its group; the kernel (`triton_moe_gemm`) reads
rows through that index and writes them back in place, so tiles never straddle two groups and empty
groups get no tiles. BLOCK_M follows the rows per group (16 for decode-sized groups .. `TILE_M` for
prefill); the rest of the tile is autotuned on CUDA, fixed under the interpreter.

`grouped_gemm_triton` validates its arguments (reading counts on the host, one sync);
`grouped_gemm_device` is the sync-free path for callers that already trust them (benchmarks, CUDA graphs).

Running it needs triton plus either a CUDA device or the Triton interpreter: with `TRITON_INTERPRET=1`
in the environment before triton is first imported, kernels run (slowly) on CPU tensors. triton is
imported lazily, on the first launch, so importing this module never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .grouped_args import as_counts, check_grouped_args
from .moe_align import align_counts, choose_block_m
from .triton_env import require_triton, triton_available
from .triton_moe_gemm import Variant, moe_gemm

__all__ = ["TILE_M", "grouped_gemm_device", "grouped_gemm_triton", "triton_available"]

TILE_M = 128  # the largest BLOCK_M (prefill-sized groups); a group of c rows costs ceil(c / BLOCK_M) tiles
PLAIN = Variant(gather_a=True, gated=False, mul_weight=False, scatter_out=True)


def grouped_gemm_device(x_sorted: torch.Tensor, counts: torch.Tensor, w: torch.Tensor, *,
                        block_m: int | None = None, tiles: dict[str, int] | None = None) -> torch.Tensor:
    """grouped_gemm_triton without argument checks or host syncs: counts (E,) stays on the device."""
    rows, n = x_sorted.shape[0], w.shape[2]
    y = torch.empty((rows, n), dtype=x_sorted.dtype, device=x_sorted.device)
    if rows == 0:
        return y
    align = align_counts(counts.to(x_sorted.device), block_m or choose_block_m(rows, w.shape[0]), rows)
    return moe_gemm(x_sorted, w, y, align, PLAIN, tiles=tiles)


def grouped_gemm_triton(x_sorted: torch.Tensor, counts: torch.Tensor | Sequence[int], w: torch.Tensor,
                        *, block_m: int | None = None, block_n: int | None = None, block_k: int | None = None
                        ) -> torch.Tensor:
    """y (M, N) = per-group x_sorted @ w[e], one launch for all groups; see the module docstring.

    Raises ValueError for mismatched arguments and RuntimeError (one line) when triton cannot run here.
    Forward only (no autograd). float32 uses IEEE fp32 dot unless torch.backends.cuda.matmul.allow_tf32.
    block_n / block_k fix the tile (both or neither) instead of autotuning; block_m overrides BLOCK_M."""
    check_grouped_args(x_sorted, counts, w)
    if x_sorted.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"grouped_gemm_triton supports float32/float16/bfloat16, got {x_sorted.dtype}")
    if min(b for b in (block_m, block_n, block_k, 16) if b is not None) < 16:
        raise ValueError(f"tl.dot needs block sizes >= 16, got {block_m}/{block_n}/{block_k}")
    if (block_n is None) != (block_k is None):
        raise ValueError("give block_n and block_k together (or neither, to autotune)")
    require_triton("grouped_gemm_triton", x_sorted.device)
    tiles = None if block_n is None else dict(BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=1)
    return grouped_gemm_device(x_sorted, as_counts(counts), w, block_m=block_m, tiles=tiles)
