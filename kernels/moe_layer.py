"""A small, readable torch MoE stack: top-k router, SwiGLU experts, an MoE layer and a tiny model.

This is a reference implementation (a Python loop over experts with index_select/index_add),
written to be read and to produce real routing decisions, not to be fast. Callbacks registered
with `TinyMoEModel.add_routing_callback` see every MoE layer's top-k expert ids and gate
weights per token, which is how `record_routing` turns forward passes into moesim traces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# fn(moe_layer_index, ids (tokens, k) int64, weights (tokens, k) float): called once per MoE layer per forward
RoutingCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Routing:
    """One router decision for a batch of tokens (all tensors have tokens as their first axis)."""

    ids: torch.Tensor  # (tokens, k) chosen experts, highest probability first
    weights: torch.Tensor  # (tokens, k) gate weights applied to the experts' outputs
    probs: torch.Tensor  # (tokens, experts) full softmax, used by the load-balancing loss


class TopKRouter(nn.Module):
    """Linear gate -> softmax over experts -> top-k; weights optionally renormalized to sum to 1."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, renormalize: bool = True):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize

    def forward(self, x: torch.Tensor) -> Routing:
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(ids=ids, weights=weights.to(x.dtype), probs=probs)


class ExpertMLP(nn.Module):
    """One expert: a SwiGLU feed-forward block, down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def load_balancing_loss(probs: torch.Tensor, ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-Transformer auxiliary loss E * sum_e f_e * P_e (1.0 when routing is perfectly even).

    f_e is the fraction of top-k assignments that went to expert e, P_e its mean router probability."""
    counts = torch.bincount(ids.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / ids.numel()
    return num_experts * torch.sum(fraction * probs.mean(dim=0))


class MoELayer(nn.Module):
    """Router plus experts: each token goes to its top-k experts, outputs summed by gate weight."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int, renormalize: bool = True):
        super().__init__()
        self.router = TopKRouter(hidden, num_experts, top_k, renormalize)
        self.experts = nn.ModuleList(ExpertMLP(hidden, intermediate) for _ in range(num_experts))
        self.last_routing: Routing | None = None  # kept for the aux loss and for callers that inspect it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.router(flat)
        self.last_routing = routing
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.nonzero(routing.ids == e, as_tuple=True)
            if token_idx.numel() == 0:
                continue
            y = expert(flat.index_select(0, token_idx)) * routing.weights[token_idx, slot].unsqueeze(-1)
            out.index_add_(0, token_idx, y)
        return out.reshape(shape)

    def aux_loss(self) -> torch.Tensor:
        """Load-balancing loss of the last forward pass."""
        if self.last_routing is None:
            raise RuntimeError("aux_loss() needs a forward pass first")
        r = self.last_routing
        return load_balancing_loss(r.probs, r.ids, self.router.num_experts)


class CausalMeanMix(nn.Module):
    """Cheapest causal token mixing: each position sees the running mean of the positions up to it.

    Stands in for attention so a token's routing can depend on its context, at O(T) cost."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, time, hidden)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return self.proj(torch.cumsum(x, dim=1) / steps)


class RMSNorm(nn.Module):
    """x / rms(x) * scale (written out because nn.RMSNorm needs torch >= 2.4)."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.scale


class MoEBlock(nn.Module):
    """Pre-norm residual block: x + mix(norm(x)), then x + moe(norm(x))."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int):
        super().__init__()
        self.mix_norm = RMSNorm(hidden)
        self.mix = CausalMeanMix(hidden)
        self.moe_norm = RMSNorm(hidden)
        self.moe = MoELayer(hidden, intermediate, num_experts, top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.mix_norm(x))
        return x + self.moe(self.moe_norm(x))


class _Handle:
    """Removes a registered routing callback (like torch's RemovableHandle)."""

    def __init__(self, callbacks: list[RoutingCallback], fn: RoutingCallback):
        self._callbacks, self._fn = callbacks, fn

    def remove(self) -> None:
        if self._fn in self._callbacks:
            self._callbacks.remove(self._fn)


class TinyMoEModel(nn.Module):
    """Token embedding -> `layers` residual MoE blocks -> final norm -> LM head (every layer is MoE)."""

    def __init__(self, vocab: int, hidden: int, layers: int, experts: int, top_k: int,
                 intermediate: int | None = None):
        super().__init__()
        self.vocab, self.hidden, self.num_layers = vocab, hidden, layers
        self.num_experts, self.top_k = experts, top_k
        self.intermediate = intermediate or 2 * hidden
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(MoEBlock(hidden, self.intermediate, experts, top_k) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self._callbacks: list[RoutingCallback] = []
        for index, block in enumerate(self.blocks):
            block.moe.register_forward_hook(self._make_hook(index))

    def _make_hook(self, index: int):
        def hook(module: MoELayer, _inputs, _output) -> None:
            r = module.last_routing
            for fn in list(self._callbacks):
                fn(index, r.ids.detach(), r.weights.detach())
        return hook

    def add_routing_callback(self, fn: RoutingCallback) -> _Handle:
        """Call fn(moe_layer, ids, weights) after every MoE layer's forward; tokens in (batch, time) order."""
        self._callbacks.append(fn)
        return _Handle(self._callbacks, fn)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch, time) int64 -> next-token logits (batch, time, vocab)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss over the MoE layers of the last forward pass."""
        return torch.stack([block.moe.aux_loss() for block in self.blocks]).mean()
