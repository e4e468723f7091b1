"""The op graph of one transformer layer: FLOPs and bytes of every op, as readable rows.

Each op is a row (name, kind, phase, flops, bytes, rows) in the style of GenZ; the cost model
turns a row into time. Functions here only count work: no hardware numbers appear. Counting
conventions (stated once, tested against hand calculations):

- A GEMM of (m x k) @ (k x n) costs 2mkn FLOPs; it reads its weights once and its input and
  output activations once.
- Attention core: 2 x head_dim FLOPs per head per (query, key) pair for QK^T and the same for
  PV; prefill is causal (S(S+1)/2 pairs per sequence), decode reads the whole KV cache.
- A routed expert with n > 0 tokens reads its full weights once per layer; with n = 0 it costs
  nothing. So small-batch decode time follows the number of distinct experts touched.
- MLA (DeepSeek) prefill runs uncompressed (kv_up projection); decode runs absorbed (attend
  over the cached latent), as FlashMLA-style kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.units import dtype_bytes
from moesim.workloads.model_spec import GQAAttention, MLAAttention, ModelSpec


@dataclass(frozen=True)
class Op:
    """One op on one device. `bytes` is memory traffic for compute ops, payload for comm ops."""

    name: str
    kind: str  # "gemm", "attention", "comm"
    phase: str  # engine phase: attention, tp_allreduce, shared_expert, dispatch, expert, combine, dense_ffn
    flops: float
    bytes: float
    rows: float = 0.0  # token dimension of a GEMM, for tile padding
    dtype: str = "bf16"  # compute dtype
    fixed: float = 0.0  # seconds charged whatever the work (the fused MoE layer's floor)


@dataclass(frozen=True)
class LayerContext:
    """What one device computes in one layer: token counts and sequence shapes."""

    phase: str  # "prefill" | "decode"
    batch: int  # sequences in this device's attention replica
    seq_len: int  # prefill prompt length; decode: query tokens per sequence (1, or 1 + draft tokens to verify)
    kv_len: int  # decode: cached tokens before this step's token
    tp: int = 1
    moe_tokens: int = 0  # tokens this device sends into its MoE layer

    @property
    def attn_tokens(self) -> int:
        return self.batch * self.seq_len


def decode_keys(kv_len: int, queries: int, window: int | None) -> tuple[float, float]:
    """(query-key pairs, keys read) per sequence of a decode step with `queries` new tokens: the
    i-th sees kv_len + i keys (the ones before it, causally), within the window; the cache is
    read once for all of them (speculative verification reads it once for 1 + draft tokens)."""
    seen = np.minimum(kv_len + np.arange(1, queries + 1), window) if window else kv_len + np.arange(1, queries + 1)
    return float(seen.sum()), float(min(kv_len + queries, window) if window else kv_len + queries)


def act_dtype(model: ModelSpec) -> str:
    """Activations stay in 16 bits unless the model computes in fp16/fp32."""
    return model.dtype if model.dtype in ("bf16", "fp16", "fp32") else "bf16"


_DEQUANTIZED = ("mxfp4", "nvfp4", "int4")  # weight-only formats, computed in the activation dtype


def gemm_dtype(weight_dtype: str, device_dtypes: set[str] | None, activation: str) -> str:
    """The dtype a GEMM runs in: its weights' dtype where the device computes in it natively
    (with no device given: unless it is a weight-only format), else the activation dtype."""
    if device_dtypes is None:
        return activation if weight_dtype in _DEQUANTIZED else weight_dtype
    return weight_dtype if weight_dtype in device_dtypes else activation


def _gemm(name: str, phase: str, m: float, k: float, n: float, wbytes: float, abytes: float,
          dtype: str) -> Op:
    return Op(name, "gemm", phase, 2.0 * m * k * n, k * n * wbytes + (m * k + m * n) * abytes, m, dtype)


def causal_pairs(seq_len: int, window: int | None) -> float:
    """(query, key) pairs of causal attention over one sequence, with an optional window."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) / 2.0
    return window * (window + 1) / 2.0 + (seq_len - window) * window


def _window(att: GQAAttention, layer: int) -> int | None:
    every = att.sliding_window_every
    if att.sliding_window is None or every == 0:
        return None
    return att.sliding_window if layer % every == 0 else None


def attention_ops(model: ModelSpec, layer: int, ctx: LayerContext, dtypes: set[str] | None = None) -> list[Op]:
    """Attention projections and core for one device (heads split over tp)."""
    att = model.attention
    h = model.hidden_size
    wb, ab = dtype_bytes(model.weight_dtype), dtype_bytes(act_dtype(model))
    kvb = dtype_bytes(model.cache_dtype)
    gd = gemm_dtype(model.weight_dtype, dtypes, act_dtype(model))
    T = float(ctx.attn_tokens)
    heads = att.num_heads / ctx.tp
    ops: list[Op] = []
    if isinstance(att, GQAAttention):
        kv = max(1.0, att.num_kv_heads / ctx.tp)
        hd = att.head_dim
        ops.append(_gemm("qkv_proj", "attention", T, h, (heads + 2 * kv) * hd, wb, ab, gd))
        window = _window(att, layer)
        if ctx.phase == "prefill":
            pairs = ctx.batch * causal_pairs(ctx.seq_len, window)
            flops = pairs * 2 * heads * (hd + hd)
            mem = T * (heads * hd * 2 + 2 * kv * hd) * ab + T * 2 * kv * hd * kvb
        else:
            per_seq, read = decode_keys(ctx.kv_len, ctx.seq_len, window)
            pairs = ctx.batch * per_seq
            flops = pairs * 2 * heads * (hd + hd)
            mem = ctx.batch * read * 2 * kv * hd * kvb + T * (heads * hd * 2 + 2 * kv * hd) * ab
        ops.append(Op("attn_core", "attention", "attention", flops, mem, T, act_dtype(model)))
        ops.append(_gemm("o_proj", "attention", T, heads * hd, h, wb, ab, gd))
    else:
        assert isinstance(att, MLAAttention)
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        latent = att.kv_lora_rank + att.qk_rope_head_dim
        if att.q_lora_rank:
            ops.append(_gemm("q_down", "attention", T, h, att.q_lora_rank, wb, ab, gd))
            ops.append(_gemm("q_up", "attention", T, att.q_lora_rank, heads * qk, wb, ab, gd))
        else:
            ops.append(_gemm("q_proj", "attention", T, h, heads * qk, wb, ab, gd))
        ops.append(_gemm("kv_down", "attention", T, h, latent, wb, ab, gd))
        if ctx.phase == "prefill":
            ops.append(_gemm("kv_up", "attention", T, att.kv_lora_rank,
                             heads * (att.qk_nope_head_dim + att.v_head_dim), wb, ab, gd))
            pairs = ctx.batch * causal_pairs(ctx.seq_len, None)
            flops = pairs * 2 * heads * (qk + att.v_head_dim)
            mem = T * heads * (2 * qk + 2 * att.v_head_dim) * ab + T * latent * kvb
        else:
            # absorbed: q_nope @ W_uk per head, and the latent output @ W_uv per head
            absorb = Op("attn_absorb", "gemm", "attention",
                        2.0 * T * heads * att.kv_lora_rank * (att.qk_nope_head_dim + att.v_head_dim),
                        heads * att.kv_lora_rank * (att.qk_nope_head_dim + att.v_head_dim) * wb
                        + T * heads * (att.qk_nope_head_dim + att.v_head_dim + 2 * att.kv_lora_rank) * ab,
                        T, gd)
            ops.append(absorb)
            per_seq, read = decode_keys(ctx.kv_len, ctx.seq_len, None)
            pairs = ctx.batch * per_seq
            flops = pairs * 2 * heads * (latent + att.kv_lora_rank)
            mem = ctx.batch * read * latent * kvb + T * heads * (latent + att.kv_lora_rank) * ab
        ops.append(Op("attn_core", "attention", "attention", flops, mem, T, act_dtype(model)))
        ops.append(_gemm("o_proj", "attention", T, heads * att.v_head_dim, h, wb, ab, gd))
    return ops


def router_op(model: ModelSpec, tokens: float) -> Op:
    ab = dtype_bytes(act_dtype(model))
    return _gemm("router", "attention", tokens, model.hidden_size, model.moe.num_experts, ab, ab, act_dtype(model))


def ffn_flops_bytes(model: ModelSpec, tokens: np.ndarray | float, width: float, weight_dtype: str,
                    weight_bytes: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and bytes of one FFN (expert or dense) of `width` over `tokens` rows; 0 tokens cost 0.

    SwiGLU has gate, up and down matrices (3 x h x width weights); GELU/ReLU FFNs have 2.
    Activations: read the input and write the output (2h per token), plus the intermediate
    written and read once per matrix (matrices x width per token). `weight_bytes` overrides the
    weights' bytes (e.g. per-expert quantization, broadcast against `tokens`).
    """
    n = np.asarray(tokens, dtype=float)
    h, nm = model.hidden_size, model.ffn_matrices
    ab = dtype_bytes(act_dtype(model))
    flops = 2.0 * n * h * width * nm
    weight = nm * h * width * dtype_bytes(weight_dtype) if weight_bytes is None else np.asarray(weight_bytes)
    mem = np.where(n > 0, weight + n * (2 * h + nm * width) * ab, 0.0)
    return flops, mem


def expert_op(model: ModelSpec, expert: int, tokens: float, dtypes: set[str] | None = None) -> Op:
    wd = model.routed_expert_dtype
    flops, mem = ffn_flops_bytes(model, tokens, model.moe.expert_intermediate_size, wd)
    return Op(f"expert[{expert}]", "gemm", "expert", float(flops), float(mem), tokens,
              gemm_dtype(wd, dtypes, act_dtype(model)))


def shared_expert_op(model: ModelSpec, tokens: float, dtypes: set[str] | None = None) -> Op | None:
    if not model.moe.num_shared_experts:
        return None
    width = model.shared_size * model.moe.num_shared_experts
    flops, mem = ffn_flops_bytes(model, tokens, width, model.weight_dtype)
    return Op("shared_expert", "gemm", "shared_expert", float(flops), float(mem), tokens,
              gemm_dtype(model.weight_dtype, dtypes, act_dtype(model)))


def dense_ffn_op(model: ModelSpec, tokens: float, tp: int, dtypes: set[str] | None = None) -> Op:
    flops, mem = ffn_flops_bytes(model, tokens, model.dense_intermediate_size / tp, model.weight_dtype)
    return Op("dense_ffn", "gemm", "dense_ffn", float(flops), float(mem), tokens,
              gemm_dtype(model.weight_dtype, dtypes, act_dtype(model)))


def tp_allreduce_bytes(model: ModelSpec, tokens: float, tp: int) -> float:
    """Bytes each rank sends in a ring all-reduce of the layer output: 2 (tp-1)/tp x payload."""
    if tp == 1:
        return 0.0
    return 2.0 * (tp - 1) / tp * tokens * model.hidden_size * dtype_bytes(act_dtype(model))


def token_bytes(model: ModelSpec, dtype: str) -> float:
    """Bytes of one token's hidden state as dispatch/combine send it."""
    return model.hidden_size * dtype_bytes(dtype)


def norm_ops(model: ModelSpec, tokens: float, dtypes: set[str] | None = None) -> list[Op]:
    """The two RMSNorms of a layer (before attention and before the FFN/MoE block): each reads and
    writes every token's hidden state once and reads its weight vector."""
    h, ab, wb = model.hidden_size, dtype_bytes(act_dtype(model)), dtype_bytes(model.weight_dtype)
    return [Op(name, "elementwise", "attention", 4.0 * tokens * h, 2.0 * tokens * h * ab + h * wb, tokens,
               act_dtype(model)) for name in ("input_norm", "post_attention_norm")]


def model_edge_ops(model: ModelSpec, tokens: float, tp: int, first: bool, last: bool, sequences: float,
                   dtypes: set[str] | None = None) -> list[Op]:
    """Ops outside the layers: the embedding lookup before the first layer; the final norm and the
    LM head (vocab split over tp; logits of each sequence's last token only) after the last."""
    h, ab, wb = model.hidden_size, dtype_bytes(act_dtype(model)), dtype_bytes(model.weight_dtype)
    ops: list[Op] = []
    if first:
        ops.append(Op("embedding", "elementwise", "attention", 0.0, tokens * h * (wb + ab), tokens, act_dtype(model)))
    if last:
        ops.append(Op("final_norm", "elementwise", "attention", 4.0 * sequences * h, 2.0 * sequences * h * ab + h * wb,
                      sequences, act_dtype(model)))
        ops.append(_gemm("lm_head", "attention", sequences, h, model.vocab_size / tp, wb, ab,
                         gemm_dtype(model.weight_dtype, dtypes, act_dtype(model))))
    return ops
