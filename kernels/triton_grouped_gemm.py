"""Triton grouped GEMM for the expert FFNs: all experts' matmuls in one kernel launch.

Contract (same as `grouped_moe.grouped_gemm_torch`): x_sorted (M, K) holds the rows of expert 0, then
expert 1, ... (block sizes = counts, E entries, sum M); w is (E, K, N); y[rows of e] = x[rows of e] @ w[e].

Scheduling follows MegaBlocks / vLLM fused_moe: the host turns `counts` into a tile table with one
entry per BLOCK_M-row tile *within a group* -- (group id, first row, rows in the tile) -- and the grid is
(tiles, cdiv(N, BLOCK_N)). A program loads its table entry, walks K in BLOCK_K steps accumulating
x_tile @ w[group] in float32, and stores its (rows, BLOCK_N) block in the input dtype. Tiles never
straddle two groups, so the only padding waste is the masked tail of each group's last tile;
empty groups get no tiles at all. `TILE_M` (= BLOCK_M) is the tile the simulator's calibration uses.

Running it needs triton plus either a CUDA device or the Triton interpreter: with `TRITON_INTERPRET=1`
in the environment before triton is first imported, kernels run (slowly) on CPU tensors. triton is
imported lazily, on the first launch, so importing this module never needs it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import torch

from .grouped_args import check_grouped_args

TILE_M = 64  # BLOCK_M: rows per tile; a group of c rows costs ceil(c / TILE_M) tiles
BLOCK_N = 64
BLOCK_K = 32  # tl.dot needs every block dimension >= 16

_kernels: dict[bool, object] = {}  # interpret mode -> jitted kernel (built on first use)


def _interpret_requested() -> bool:
    """TRITON_INTERPRET set to a true value (same spellings triton accepts)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def _unavailable_reason(device: torch.device | None = None) -> str | None:
    """One line saying why the kernel cannot run here (on tensors on `device`), or None if it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if _interpret_requested():
        return None
    if device is not None and device.type != "cuda":
        return (f"tensors are on {device.type} and TRITON_INTERPRET is not set: move them to a CUDA device, "
                "or set TRITON_INTERPRET=1 before triton is imported to run on CPU")
    if not torch.cuda.is_available():
        return "no CUDA device and TRITON_INTERPRET is not set (set TRITON_INTERPRET=1 to run on CPU)"
    return None


def triton_available() -> bool:
    """True when the kernel can run: triton installed and (a CUDA device or TRITON_INTERPRET=1)."""
    return _unavailable_reason() is None


def build_tile_table(counts: torch.Tensor | Sequence[int], block_m: int = TILE_M,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """(tiles, 3) int32 table of (group id, first row, rows) for every BLOCK_M tile within every group.

    E.g. counts [0, 5, 70, 1], block_m 64 -> [[1, 0, 5], [2, 5, 64], [2, 69, 6], [3, 75, 1]]."""
    if block_m < 1:
        raise ValueError(f"block_m must be >= 1, got {block_m}")
    host = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    rows = []
    start = 0
    for group, c in enumerate(int(c) for c in host):
        for offset in range(0, c, block_m):
            rows.append((group, start + offset, min(block_m, c - offset)))
        start += c
    table = torch.tensor(rows, dtype=torch.int32) if rows else torch.empty((0, 3), dtype=torch.int32)
    if start >= 2**31:
        raise ValueError(f"{start} rows do not fit the int32 tile table")
    return table.to(device) if device is not None else table


def _build_kernel(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def grouped_gemm_kernel(
        x_ptr, w_ptr, y_ptr, tiles_ptr,
        N, K,
        stride_xm, stride_xk,
        stride_we, stride_wk, stride_wn,
        stride_ym, stride_yn,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        FP32_IEEE: tl.constexpr,  # float32 inputs without TF32 (matches torch's default fp32 matmul)
        UPCAST: tl.constexpr,  # interpreter: its dot multiplies bf16 bit patterns, so dot in fp32 there
    ):
        pid_tile = tl.program_id(0)
        pid_n = tl.program_id(1)
        group = tl.load(tiles_ptr + pid_tile * 3).to(tl.int64)
        row_start = tl.load(tiles_ptr + pid_tile * 3 + 1).to(tl.int64)
        rows = tl.load(tiles_ptr + pid_tile * 3 + 2)

        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < rows
        mask_n = offs_n < N

        x_ptrs = x_ptr + (row_start + offs_m)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + group * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask_k = offs_k < K - k0
            a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if FP32_IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk

        y_ptrs = y_ptr + (row_start + offs_m)[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    return grouped_gemm_kernel


def _kernel(interpret: bool):
    if interpret not in _kernels:
        _kernels[interpret] = _build_kernel(interpret)
    return _kernels[interpret]


def grouped_gemm_triton(x_sorted: torch.Tensor, counts: torch.Tensor | Sequence[int], w: torch.Tensor,
                        *, block_m: int = TILE_M, block_n: int = BLOCK_N, block_k: int = BLOCK_K
                        ) -> torch.Tensor:
    """y (M, N) = per-group x_sorted @ w[e], one launch for all groups; see the module docstring.

    Raises ValueError for mismatched arguments and RuntimeError (one line) when triton cannot run here.
    Forward only (no autograd). float32 uses IEEE fp32 dot unless torch.backends.cuda.matmul.allow_tf32."""
    host = check_grouped_args(x_sorted, counts, w)
    if x_sorted.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"grouped_gemm_triton supports float32/float16/bfloat16, got {x_sorted.dtype}")
    if min(block_m, block_n, block_k) < 16:
        raise ValueError(f"tl.dot needs block sizes >= 16, got {block_m}/{block_n}/{block_k}")
    reason = _unavailable_reason(x_sorted.device)
    if reason is not None:
        raise RuntimeError(f"grouped_gemm_triton cannot run: {reason}")

    rows, k = x_sorted.shape
    n = w.shape[2]
    y = torch.empty((rows, n), dtype=x_sorted.dtype, device=x_sorted.device)
    tiles = build_tile_table(host, block_m, device=x_sorted.device)
    if tiles.shape[0] == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    interpret = _interpret_requested()
    fp32_ieee = x_sorted.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    grid = (tiles.shape[0], -(-n // block_n))
    _kernel(interpret)[grid](
        x_sorted, w, y, tiles,
        n, k,
        x_sorted.stride(0), x_sorted.stride(1),
        w.stride(0), w.stride(1), w.stride(2),
        y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        FP32_IEEE=fp32_ieee, UPCAST=interpret,
    )
    return y
