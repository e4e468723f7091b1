"""One Triton kernel for every expert GEMM of an MoE layer, driven by a `moe_align.Alignment`.

A program owns one (block of block_m expert-sorted rows, BLOCK_N columns) tile, found by GROUP_M-swizzled
decoding of a 1-D pid (L2 reuse of the A rows across N tiles). Programs past the device-side valid block
count return at once, so the grid is the host-side upper bound and no host sync is needed. Variants,
chosen by constexpr flags:

- GATHER_A: A rows are read through the sorted index (row = sorted_id // A_DIV, i.e. the token), so no
  permuted copy of the activations is materialised; otherwise A row = the padded sorted position.
- GATED: two weights (gate, up) share the A tile; the epilogue stores silu(a @ w_gate) * (a @ w_up).
- MUL_WEIGHT: the epilogue multiplies each row by its routing weight (indexed by sorted id).
- SCATTER_OUT: the row is stored at its sorted id (flat (token, slot) order) rather than its padded position.

Accumulation is float32; the store casts to the output dtype. On CUDA the tile shape (BLOCK_N, BLOCK_K,
GROUP_M, warps, stages) is chosen by `triton.autotune` per BLOCK_M, keyed on a power-of-two bucket of the
rows per expert and on N, K; under TRITON_INTERPRET one small fixed config runs (no autotuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .moe_align import Alignment
from .triton_env import interpret_requested

# (BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) per BLOCK_M; gated variants drop BLOCK_N 256
# (two fp32 accumulators of 128 x 256 would spill). Few configs on purpose: each one is compiled and timed.
CUDA_CONFIGS: dict[int, tuple[tuple[int, int, int, int, int], ...]] = {
    16: ((32, 256, 1, 4, 4), (64, 128, 1, 4, 4), (64, 256, 1, 4, 3), (128, 64, 1, 4, 5), (128, 128, 1, 4, 3)),
    32: ((64, 128, 8, 4, 4), (128, 64, 8, 4, 4), (128, 128, 8, 8, 3)),
    64: ((128, 64, 8, 4, 4), (128, 64, 8, 8, 4), (256, 64, 8, 8, 3)),
    128: ((128, 64, 8, 8, 4), (256, 64, 8, 8, 3), (128, 128, 8, 8, 3)),
}
INTERPRET_CONFIG = dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2)  # small and fast under the interpreter


@dataclass(frozen=True)
class Variant:
    """The constexpr flags of one use of the kernel (see the module docstring)."""

    gather_a: bool
    gated: bool
    mul_weight: bool
    scatter_out: bool
    a_div: int = 1  # token = sorted id // a_div when gathering (top_k for token rows, 1 for flat rows)


_jit = None
_tuned: dict[tuple, object] = {}


def _build():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["num_rows", "max_blocks", "m_bucket"])
    def moe_gemm_kernel(
        a_ptr, w_ptr, w2_ptr, out_ptr,
        sorted_ids_ptr, expert_ids_ptr, num_valid_ptr, row_weight_ptr,
        N, K, num_rows, max_blocks, m_bucket,
        stride_am, stride_ak,
        stride_we, stride_wk, stride_wn,
        stride_w2e, stride_w2k, stride_w2n,
        stride_om, stride_on,
        A_DIV: tl.constexpr, GATHER_A: tl.constexpr, GATED: tl.constexpr,
        MUL_WEIGHT: tl.constexpr, SCATTER_OUT: tl.constexpr,
        FP32_IEEE: tl.constexpr,  # float32 inputs without TF32 (torch's default fp32 matmul)
        UPCAST: tl.constexpr,  # interpreter: its dot multiplies bf16 bit patterns, so dot in fp32 there
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_pid_n
        first_m = (pid // in_group) * GROUP_M
        group_rows = min(max_blocks - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % group_rows
        pid_n = (pid % in_group) // group_rows
        if pid_m >= tl.load(num_valid_ptr):
            return

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ids = tl.load(sorted_ids_ptr + offs_m)
        row_mask = row_ids < num_rows
        expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_wn = offs_n % N  # wrap instead of masking the weight loads; wrapped columns are not stored
        offs_k = tl.arange(0, BLOCK_K)
        if GATHER_A:
            a_rows = (row_ids // A_DIV).to(tl.int64)
        else:
            a_rows = offs_m.to(tl.int64)
        a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
        w_ptrs = w_ptr + expert * stride_we + offs_k[:, None] * stride_wk + offs_wn[None, :] * stride_wn
        w2_ptrs = w2_ptr + expert * stride_w2e + offs_k[:, None] * stride_w2k + offs_wn[None, :] * stride_w2n

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_mask = offs_k < K - k0
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if FP32_IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            if GATED:
                b2 = tl.load(w2_ptrs, mask=k_mask[:, None], other=0.0)
                if UPCAST:
                    b2 = b2.to(tl.float32)
                if FP32_IEEE:
                    acc2 = tl.dot(a, b2, acc2, input_precision="ieee")
                else:
                    acc2 = tl.dot(a, b2, acc2)
                w2_ptrs += BLOCK_K * stride_w2k
            a_ptrs += BLOCK_K * stride_ak
            w_ptrs += BLOCK_K * stride_wk

        if GATED:
            acc = acc * tl.sigmoid(acc) * acc2  # silu(gate) * up, in float32
        if MUL_WEIGHT:
            rw = tl.load(row_weight_ptr + row_ids, mask=row_mask, other=0.0).to(tl.float32)
            acc = acc * rw[:, None]
        if SCATTER_OUT:
            out_rows = row_ids.to(tl.int64)
        else:
            out_rows = offs_m.to(tl.int64)
        out_ptrs = out_ptr + out_rows[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & (offs_n[None, :] < N))

    return moe_gemm_kernel


def _kernel():
    global _jit
    if _jit is None:
        _jit = _build()
    return _jit


def _bench(fn, *args, **kwargs):
    """Autotune timing: short warmup/rep so tuning a case costs well under a second."""
    import triton

    quantiles = kwargs.get("quantiles", args[0] if args else None)
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def _autotuned(block_m: int, variant: Variant):
    """The autotuned launcher for one BLOCK_M and variant (own cache: the key holds m_bucket, N, K)."""
    key = (block_m, variant)
    if key not in _tuned:
        import triton

        configs = [triton.Config(dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm), num_warps=warps, num_stages=stages)
                   for bn, bk, gm, warps, stages in CUDA_CONFIGS[block_m]
                   if not (variant.gated and bn > 128)]
        _tuned[key] = triton.autotune(configs=configs, key=["m_bucket", "N", "K"], do_bench=_bench)(_kernel())
    return _tuned[key]


def m_bucket(rows: int, experts: int) -> int:
    """Power-of-two bucket of the average rows per non-empty expert (the autotune key; host ints only)."""
    per_expert = max(1, rows // max(1, min(experts, rows)))
    return min(1 << (per_expert - 1).bit_length(), 4096)


def moe_gemm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, align: Alignment, variant: Variant,
             *, w2: torch.Tensor | None = None, row_weights: torch.Tensor | None = None,
             tiles: dict[str, int] | None = None) -> torch.Tensor:
    """Launch the kernel: out rows = (a rows of each block) @ w[block's expert] (+ variant epilogue).

    a (rows or padded rows, K); w, w2 (E, K, N); out (rows or padded rows, N); row_weights (align.rows,)
    when variant.mul_weight. `tiles` fixes BLOCK_N/BLOCK_K/GROUP_M (and optional num_warps/num_stages)
    instead of autotuning; under TRITON_INTERPRET the fixed INTERPRET_CONFIG is used by default."""
    n, k = w.shape[2], w.shape[1]
    if out.shape[0] == 0 or n == 0 or align.max_blocks == 0:
        return out
    if k == 0:
        return out.zero_()
    import triton

    w2 = w if w2 is None else w2
    row_weights = align.sorted_ids if row_weights is None else row_weights  # unused unless mul_weight
    interpret = interpret_requested()
    fp32_ieee = a.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    args = (a, w, w2, out, align.sorted_ids, align.expert_ids, align.num_valid_blocks, row_weights,
            n, k, align.rows, align.max_blocks, m_bucket(align.rows, w.shape[0]),
            a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2),
            w2.stride(0), w2.stride(1), w2.stride(2), out.stride(0), out.stride(1))
    flags = dict(A_DIV=variant.a_div, GATHER_A=variant.gather_a, GATED=variant.gated,
                 MUL_WEIGHT=variant.mul_weight, SCATTER_OUT=variant.scatter_out,
                 FP32_IEEE=fp32_ieee, UPCAST=interpret, BLOCK_M=align.block_m)
    if tiles is None and interpret:
        tiles = INTERPRET_CONFIG
    if tiles is not None:
        grid = (align.max_blocks * triton.cdiv(n, tiles["BLOCK_N"]),)
        _kernel()[grid](*args, **flags, **tiles)
        return out
    grid = lambda meta: (align.max_blocks * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _autotuned(align.block_m, variant)[grid](*args, **flags)
    return out
