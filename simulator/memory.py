"""Device memory a scenario needs: weights, KV cache and activation buffers, per device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement import Placement
from moesim.simulator.ops import act_dtype
from moesim.units import dtype_bytes, fmt_bytes
from moesim.workloads.model_spec import GQAAttention, ModelSpec


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float  # bytes on the most loaded device
    kv_cache: float
    activations: float
    per_device: np.ndarray  # (ep,) total bytes of each device of an EP group
    expert_weights: np.ndarray | None = None  # (ep,) routed-expert bytes of each device (inside per_device)
    on_units: tuple[tuple[str, float], ...] = ()  # (unit, bytes of one accelerator's share) kept on units' own memory

    @property
    def total(self) -> float:
        return float(self.per_device.max())

    def describe(self) -> str:
        return (f"weights {fmt_bytes(self.weights)}, KV cache {fmt_bytes(self.kv_cache)}, "
                f"activations {fmt_bytes(self.activations)}")


def attention_params(model: ModelSpec) -> float:
    """Parameters of one attention block (projections only)."""
    att, h = model.attention, model.hidden_size
    if isinstance(att, GQAAttention):
        return h * (att.num_heads + 2 * att.num_kv_heads) * att.head_dim + att.num_heads * att.head_dim * h
    qk = att.qk_nope_head_dim + att.qk_rope_head_dim
    q = (h * att.q_lora_rank + att.q_lora_rank * att.num_heads * qk) if att.q_lora_rank else h * att.num_heads * qk
    kv = h * (att.kv_lora_rank + att.qk_rope_head_dim) + att.kv_lora_rank * att.num_heads * (
        att.qk_nope_head_dim + att.v_head_dim)
    return q + kv + att.num_heads * att.v_head_dim * h


def kv_bytes_per_token(model: ModelSpec, layer: int, tp: int) -> float:
    """KV-cache bytes one token adds in one layer on one device (heads split over tp)."""
    att = model.attention
    b = dtype_bytes(model.cache_dtype)
    if isinstance(att, GQAAttention):
        return 2 * max(1.0, att.num_kv_heads / tp) * att.head_dim * b
    return (att.kv_lora_rank + att.qk_rope_head_dim) * b  # MLA latent is replicated over tp


def placed_expert_bytes(placement: Placement, expert_bytes: np.ndarray, ep: int) -> np.ndarray:
    """(ep,) bytes of the routed-expert copies each device of an EP group holds."""
    out = np.zeros(ep)
    for layer in range(placement.num_layers):
        live = placement.slot_share[layer] > 0  # padding slots carry no share
        np.add.at(out, placement.slot_device[layer][live], expert_bytes[layer, placement.slot_expert[layer][live]])
    return out


def estimate_memory(model: ModelSpec, placement: Placement, tp: int, batch: int, kv_len: int,
                    attn_tokens: int, moe_tokens: int, expert_bytes: np.ndarray | None = None) -> MemoryEstimate:
    """Peak memory per device: replicated/TP-split dense weights, the device's expert copies
    (`expert_bytes[l, e]` each, default the model dtype), the KV cache of its sequences, and
    activation + dispatch buffers of one layer."""
    h, m = model.hidden_size, model.moe
    wb = dtype_bytes(model.weight_dtype)
    ab = dtype_bytes(act_dtype(model))
    nm = model.ffn_matrices
    dense_layers = model.num_layers - len(model.moe_layers)
    shared = nm * h * model.shared_size * m.num_shared_experts
    per_layer = attention_params(model) / tp * wb
    dense = (model.num_layers * per_layer
             + dense_layers * nm * h * model.dense_intermediate_size / tp * wb
             + len(model.moe_layers) * (shared + h * m.num_experts) * wb
             + 2 * model.vocab_size * h / tp * wb)
    if expert_bytes is None:
        one = nm * h * m.expert_intermediate_size * dtype_bytes(model.routed_expert_dtype)
        expert_bytes = np.full((placement.num_layers, m.num_experts), float(one))
    experts = placed_expert_bytes(placement, expert_bytes, placement.num_devices)
    att = model.attention
    kv = 0.0
    for layer in range(model.num_layers):
        window = getattr(att, "sliding_window", None)
        every = getattr(att, "sliding_window_every", 0)
        cached = min(kv_len, window) if window and every and layer % every == 0 else kv_len
        kv += batch * cached * kv_bytes_per_token(model, layer, tp)
    # one layer's live activations (input, residual, attention output, FFN input) and the
    # dispatch receive + combine send buffers, sized for this device's routed rows
    act = 4 * attn_tokens * h * ab + 2 * moe_tokens * m.top_k * h * ab
    per_device = dense + experts + kv + act
    return MemoryEstimate(float(dense + experts.max()), float(kv), float(act), per_device, experts)
