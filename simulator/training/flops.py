"""The FLOPs a training report states, so that MFU and HFU can be reproduced by hand.

Convention: "6 N_active per token plus attention" (PaLM, Chowdhery et al. 2022, appendix B;
Megatron-LM, Narayanan et al. 2021, eq. 3). A matmul weight costs 2 FLOPs per token forward and
4 backward (data and weight gradients), 6 in all. N_active counts the matmul weights one token
uses: attention projections, dense FFN layers, shared experts, its top_k routed experts, the router
and the LM head (every token is a training target, so every token pays the LM head). The embedding
lookup is excluded: it is a gather, not a matmul. Norm weights are elementwise and excluded too.

The attention core (QK^T and PV) is counted as `simulator/ops.py` charges it in a prefill: causal
(query, key) pairs, within the sliding window where a layer has one, 2 x heads x (qk dim + v dim)
FLOPs per pair forward; backward is twice the forward. PaLM and Megatron count the full S x S
score matrix (12 L H Q T / token); the causal count here is about half of that.

MFU counts model FLOPs (recomputation excluded); HFU counts what the hardware ran (recomputation
included): "full" reruns one forward of everything, "selective" the attention core's forward only.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.simulator.memory import attention_params
from moesim.simulator.ops import causal_pairs
from moesim.simulator.training.memory import param_counts
from moesim.workloads.model_spec import GQAAttention, ModelSpec

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class FlopsPerToken:
    dense_matmul: float  # 6 x active matmul parameters (no embedding)
    attention: float  # attention core, forward + backward (3 x forward)

    @property
    def total(self) -> float:
        return self.dense_matmul + self.attention


@dataclass(frozen=True)
class StepFlops:
    model_flops: float  # what MFU counts
    hardware_flops: float  # model FLOPs plus the recomputed forward


def _ffn(model: ModelSpec, width: float) -> float:
    return model.ffn_matrices * model.hidden_size * width


def _params(model: ModelSpec) -> tuple[float, float, float]:
    """(dense matmul weights, routed-expert weights of one token, routed-expert weights in all)."""
    m, moe = model.moe, len(model.moe_layers)
    dense = (model.num_layers * attention_params(model)
             + (model.num_layers - moe) * _ffn(model, model.dense_intermediate_size)
             + moe * (_ffn(model, model.shared_size) * m.num_shared_experts + model.hidden_size * m.num_experts)
             + model.vocab_size * model.hidden_size)  # LM head
    one = _ffn(model, m.expert_intermediate_size)
    return dense, moe * m.top_k * one, moe * m.num_experts * one


def active_params(model: ModelSpec) -> float:
    """Parameters one token touches: all dense ones (embedding and norms included) + top_k experts
    (memory.py's count: one counting of parameters for memory, gradients and MFU)."""
    return param_counts(model).active


def total_params(model: ModelSpec) -> float:
    """All parameters, each routed expert counted once."""
    return param_counts(model).total


def attention_forward_per_token(model: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs of the attention core per token, averaged over a causal sequence of seq_len."""
    att = model.attention
    if isinstance(att, GQAAttention):
        dims, every = 2 * att.head_dim, att.sliding_window_every
        windows = [att.sliding_window if att.sliding_window and every and layer % every == 0 else None
                   for layer in range(model.num_layers)]
    else:
        dims = att.qk_nope_head_dim + att.qk_rope_head_dim + att.v_head_dim
        windows = [None] * model.num_layers
    return sum(causal_pairs(seq_len, w) for w in windows) / seq_len * 2 * att.num_heads * dims


def model_flops_per_token(model: ModelSpec, seq_len: int) -> FlopsPerToken:
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    dense, active, _ = _params(model)
    return FlopsPerToken(6.0 * (dense + active), 3.0 * attention_forward_per_token(model, seq_len))


def step_flops(model: ModelSpec, tokens: float, seq_len: int, recompute: str = "none") -> StepFlops:
    """Model and hardware FLOPs of a step training `tokens` tokens in sequences of seq_len."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
    if tokens < 0:
        raise ValueError(f"tokens must be non-negative, got {tokens}")
    per = model_flops_per_token(model, seq_len)
    extra = {"none": 0.0, "selective": per.attention / 3, "full": per.total / 3}[recompute]
    return StepFlops(tokens * per.total, tokens * (per.total + extra))


def _utilization(flops: float, step_seconds: float, devices: int, peak_flops_per_device: float) -> float:
    if step_seconds <= 0 or devices <= 0 or peak_flops_per_device <= 0:
        raise ValueError(f"step_seconds, devices and peak_flops_per_device must be positive, got "
                         f"{step_seconds}, {devices}, {peak_flops_per_device}")
    return flops / (step_seconds * devices * peak_flops_per_device)


def mfu(model_flops: float, step_seconds: float, devices: int, peak_flops_per_device: float) -> float:
    """Model FLOPs utilization: model FLOPs / (seconds x devices x peak FLOP/s per device)."""
    return _utilization(model_flops, step_seconds, devices, peak_flops_per_device)


def hfu(hardware_flops: float, step_seconds: float, devices: int, peak_flops_per_device: float) -> float:
    """Hardware FLOPs utilization: as mfu, counting the recomputed forward too."""
    return _utilization(hardware_flops, step_seconds, devices, peak_flops_per_device)
