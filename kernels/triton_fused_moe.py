"""The expert part of an MoE layer in two Triton launches and no host synchronisation.

    ids (T, k) --moe_align--> sorted_ids / expert_ids / num_valid_blocks          (torch ops, on device)
    x (T, H) --gate+up kernel (rows gathered through sorted_ids)--> silu(g) * u   (padded rows, I)
             --down kernel (x routing weight, rows scattered to t*k + slot)-->    (T*k, H)
             --sum over the k slots-->                                             out (T, H)

No permuted copy of x is made, gate and up share one pass over the activations, and every shape is
known on the host (grids are launched at their static upper bound), so one forward is CUDA-graph
capturable. This is the structure of vLLM's / SGLang's fused_moe; the code here is our own.
"""

from __future__ import annotations

import torch

from .moe_align import align_topk_ids, choose_block_m
from .triton_env import require_triton
from .triton_moe_gemm import Variant, moe_gemm


def check_fused_args(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w_gate: torch.Tensor,
                     w_up: torch.Tensor, w_down: torch.Tensor) -> None:
    """Shape/dtype/device checks from tensor metadata only (reading ids would need a host sync)."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, hidden), got shape {tuple(x.shape)}")
    if ids.dim() != 2 or ids.shape[0] != x.shape[0] or weights.shape != ids.shape:
        raise ValueError(f"ids and weights must both be (tokens={x.shape[0]}, k), got "
                         f"{tuple(ids.shape)} and {tuple(weights.shape)}")
    experts, hidden, inter = w_gate.shape
    if w_up.shape != w_gate.shape or w_down.shape != (experts, inter, hidden) or hidden != x.shape[1]:
        raise ValueError(f"expected w_gate = w_up = (E, H={x.shape[1]}, I) and w_down = (E, I, H), got "
                         f"{tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"fused_moe supports float32/float16/bfloat16, got {x.dtype}")
    if any(w.dtype != x.dtype for w in (w_gate, w_up, w_down)):
        raise ValueError(f"weights must have x's dtype {x.dtype}")
    if any(t.device != x.device for t in (ids, weights, w_gate, w_up, w_down)):
        raise ValueError("x, ids, weights and the expert weights must be on one device")


def fused_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w_gate: torch.Tensor,
              w_up: torch.Tensor, w_down: torch.Tensor, *, block_m: int | None = None,
              tiles: dict[str, int] | None = None) -> torch.Tensor:
    """out[t] = sum_slot weights[t, slot] * expert_{ids[t, slot]}(x[t]) with SwiGLU experts, forward only.

    x (T, H); ids, weights (T, k); w_gate, w_up (E, H, I); w_down (E, I, H) -> out (T, H) in x's dtype.
    ids must lie in [0, E) (not checked: that would read the device). block_m / tiles override the
    host-chosen BLOCK_M and the autotuned tile (tests use small tiles)."""
    check_fused_args(x, ids, weights, w_gate, w_up, w_down)
    require_triton("fused_moe", x.device)
    tokens, top_k = ids.shape
    experts, hidden, inter = w_gate.shape
    if tokens == 0 or top_k == 0:
        return x.new_zeros((tokens, hidden))
    rows = tokens * top_k
    align = align_topk_ids(ids, experts, block_m or choose_block_m(rows, experts))
    act = torch.empty((align.max_blocks * align.block_m, inter), dtype=x.dtype, device=x.device)
    moe_gemm(x, w_gate, act, align, Variant(gather_a=True, gated=True, mul_weight=False, scatter_out=False,
                                            a_div=top_k), w2=w_up, tiles=tiles)
    y = torch.empty((rows, hidden), dtype=x.dtype, device=x.device)
    row_weights = weights.reshape(-1).to(torch.float32)
    moe_gemm(act, w_down, y, align, Variant(gather_a=False, gated=False, mul_weight=True, scatter_out=True),
             row_weights=row_weights, tiles=tiles)
    return y.view(tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)
