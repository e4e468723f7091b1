"""The MoE layer as production systems structure it: permute -> grouped GEMM -> unpermute.

`moe_layer.MoELayer` loops over experts and gathers each expert's tokens with index_select. Serving
systems (MegaBlocks, vLLM fused_moe, SGLang, TensorRT-LLM) instead sort the (token, slot) rows by
expert once, so every expert's tokens form one contiguous row block, run all experts' matmuls as a
single *grouped GEMM* over those blocks, and scatter the results back, mixing each token's k expert
outputs by its gate weights:

    x (T, H), ids (T, k) --permute--> x_sorted (T*k, H), order, counts (E,)
    x_sorted --grouped GEMM w_gate/w_up (E, H, I)--> silu(gate) * up (T*k, I)
             --grouped GEMM w_down (E, I, H)--> y_sorted (T*k, H)
    y_sorted --unpermute(order, weights)--> out (T, H)

`grouped_gemm_torch` is the loop reference; `triton_grouped_gemm.grouped_gemm_triton` computes the same
thing in one kernel launch. Backend "triton_fused" (`triton_fused_moe.fused_moe`) goes further, as vLLM /
SGLang do: routing alignment on the device, gate+up in one kernel reading tokens through the sorted index,
down with the gate weight in its epilogue, no host synchronisation at all. `GroupedMoE.dense_reference` runs every expert on every token and mixes
with a dense gate matrix: no sorting, no grouping, the correctness oracle for both.

The code is device-agnostic (CPU or CUDA, float32 / bfloat16 / float16): tensors stay where they are given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .grouped_args import check_grouped_args
from .moe_layer import MoELayer, Routing, TopKRouter, load_balancing_loss

BACKENDS = ("torch", "triton", "triton_fused")


# ----------------------------------------------------------------------------------------------
# permute / grouped GEMM / unpermute


def permute(x: torch.Tensor, ids: torch.Tensor, num_experts: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the (token, slot) rows by expert id.

    x (T, H), ids (T, k) int -> (x_sorted (T*k, H), order (T*k,) int64, counts (E,) int64), where
    order[i] = t*k + slot is the flat (token, slot) index of sorted row i (stable: within one expert,
    rows keep token order) and x_sorted[i] = x[order[i] // k]. counts has length `num_experts`
    (default ids.max()+1; pass it, or trailing unused experts are missing)."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, hidden), got shape {tuple(x.shape)}")
    if ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"ids must be (tokens={x.shape[0]}, k), got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor, got {ids.dtype}")
    k = ids.shape[1]
    flat = ids.reshape(-1).to(torch.int64)
    if num_experts is None:
        num_experts = int(flat.max()) + 1 if flat.numel() else 0
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_experts):
        raise ValueError(f"ids must lie in [0, num_experts={num_experts}), "
                         f"got min {int(flat.min())} max {int(flat.max())}")
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    x_sorted = x.index_select(0, torch.div(order, max(k, 1), rounding_mode="floor"))
    return x_sorted, order, counts


def grouped_gemm_torch(x_sorted: torch.Tensor, counts: torch.Tensor | Sequence[int],
                       w: torch.Tensor) -> torch.Tensor:
    """y[rows of group e] = x_sorted[rows of group e] @ w[e]; groups are consecutive row blocks.

    x_sorted (M, K), counts (E,) with sum M, w (E, K, N) -> y (M, N) in x_sorted's dtype.
    Reference implementation: one matmul per non-empty group (differentiable)."""
    host = check_grouped_args(x_sorted, counts, w)
    if x_sorted.shape[0] == 0:
        return x_sorted.new_zeros((0, w.shape[2]))
    pieces, start = [], 0
    for e, c in enumerate(host):
        if c:
            pieces.append(x_sorted[start:start + c] @ w[e])
            start += c
    return torch.cat(pieces, dim=0)


def grouped_gemm(x_sorted: torch.Tensor, counts: torch.Tensor | Sequence[int], w: torch.Tensor,
                 backend: str = "torch") -> torch.Tensor:
    """Dispatch to the torch reference or the Triton kernel (same contract)."""
    if backend == "torch":
        return grouped_gemm_torch(x_sorted, counts, w)
    if backend in ("triton", "triton_fused"):
        from .triton_grouped_gemm import grouped_gemm_triton  # lazy: triton is optional

        return grouped_gemm_triton(x_sorted, counts, w)
    raise ValueError(f"unknown grouped GEMM backend '{backend}'; valid: {', '.join(BACKENDS)}")


def unpermute(y_sorted: torch.Tensor, order: torch.Tensor, weights: torch.Tensor,
              tokens: int) -> torch.Tensor:
    """Inverse of `permute` plus the top-k combine: out[t] = sum_slot weights[t, slot] * y[t*k+slot].

    y_sorted (T*k, N) in sorted order, order from `permute`, weights (T, k) -> out (T, N) in y's
    dtype. The mix is a gather and a sum over k in float32 (deterministic; no atomic scatter-add)."""
    if weights.dim() != 2 or weights.shape[0] != tokens:
        raise ValueError(f"weights must be (tokens={tokens}, k), got shape {tuple(weights.shape)}")
    k = weights.shape[1]
    if y_sorted.dim() != 2 or y_sorted.shape[0] != tokens * k:
        raise ValueError(f"y_sorted must have tokens*k = {tokens * k} rows, got shape {tuple(y_sorted.shape)}")
    if order.shape != (tokens * k,):
        raise ValueError(f"order must have tokens*k = {tokens * k} entries, got shape {tuple(order.shape)}")
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device, dtype=order.dtype)
    y = y_sorted.index_select(0, inverse).reshape(tokens, k, -1)  # (token, slot) order
    out = (y.float() * weights.float().unsqueeze(-1)).sum(dim=1)
    return out.to(y_sorted.dtype)


# ----------------------------------------------------------------------------------------------
# the layer


class GroupedMoE(nn.Module):
    """MoE layer with stacked expert weights and a grouped-GEMM forward.

    w_gate, w_up: (E, hidden, intermediate); w_down: (E, intermediate, hidden) -- stored (in, out) so a
    group's rows multiply w[e] directly. backend "torch" (loop reference, differentiable), "triton"
    (one-launch grouped GEMMs) or "triton_fused" (the whole expert part fused, no host sync); the Triton
    backends are forward only: no gradients flow through them."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int,
                 renormalize: bool = True, backend: str = "torch"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown grouped GEMM backend '{backend}'; valid: {', '.join(BACKENDS)}")
        self.hidden, self.intermediate = hidden, intermediate
        self.num_experts, self.top_k = num_experts, top_k
        self.backend = backend
        self.router = TopKRouter(hidden, num_experts, top_k, renormalize)
        self.w_gate = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.w_up = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.w_down = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.reset_parameters()
        self.last_routing: Routing | None = None

    def reset_parameters(self) -> None:
        """nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per expert matrix."""
        for w in (self.w_gate, self.w_up, self.w_down):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    @classmethod
    def from_moe_layer(cls, layer: MoELayer, backend: str = "torch") -> GroupedMoE:
        """Copy a loop-based MoELayer (router and experts) into stacked weights; same dtype and device."""
        first = layer.experts[0]
        hidden, intermediate = first.gate.in_features, first.gate.out_features
        router = layer.router
        ref = first.gate.weight
        moe = cls(hidden, intermediate, router.num_experts, router.top_k, router.renormalize, backend)
        moe.to(device=ref.device, dtype=ref.dtype)
        moe.router.load_state_dict(router.state_dict())
        with torch.no_grad():
            for e, expert in enumerate(layer.experts):
                # nn.Linear stores (out, in); the grouped layout is (in, out)
                moe.w_gate[e].copy_(expert.gate.weight.t())
                moe.w_up[e].copy_(expert.up.weight.t())
                moe.w_down[e].copy_(expert.down.weight.t())
        return moe

    def _experts(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gate = grouped_gemm(x_sorted, counts, self.w_gate, self.backend)
        up = grouped_gemm(x_sorted, counts, self.w_up, self.backend)
        return grouped_gemm(F.silu(gate) * up, counts, self.w_down, self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.router(flat)
        self.last_routing = routing
        if self.backend == "triton_fused":
            from .triton_fused_moe import fused_moe  # lazy: triton is optional

            out = fused_moe(flat, routing.ids, routing.weights, self.w_gate, self.w_up, self.w_down)
            return out.reshape(shape)
        x_sorted, order, counts = permute(flat, routing.ids, self.num_experts)
        y_sorted = self._experts(x_sorted, counts)
        return unpermute(y_sorted, order, routing.weights, flat.shape[0]).reshape(shape)

    def dense_gate_weights(self, routing: Routing) -> torch.Tensor:
        """(tokens, E) gate-weight matrix: the top-k weights at their expert ids, zeros elsewhere."""
        dense = routing.weights.new_zeros((routing.ids.shape[0], self.num_experts))
        return dense.scatter(1, routing.ids, routing.weights)

    @torch.no_grad()
    def dense_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Oracle: every expert on every token, mixed by the dense gate matrix (no sort, no groups)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        dense = self.dense_gate_weights(self.router(flat))  # (T, E)
        gate = torch.einsum("th,ehi->eti", flat, self.w_gate)
        up = torch.einsum("th,ehi->eti", flat, self.w_up)
        y = torch.einsum("eti,eih->eth", F.silu(gate) * up, self.w_down)  # (E, T, H)
        out = torch.einsum("te,eth->th", dense.float(), y.float())
        return out.to(x.dtype).reshape(shape)

    def aux_loss(self) -> torch.Tensor:
        """Load-balancing loss of the last forward pass (same definition as MoELayer)."""
        if self.last_routing is None:
            raise RuntimeError("aux_loss() needs a forward pass first")
        r = self.last_routing
        return load_balancing_loss(r.probs, r.ids, self.num_experts)

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, intermediate={self.intermediate}, experts={self.num_experts}, "
                f"top_k={self.top_k}, backend={self.backend}")
