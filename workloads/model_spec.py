"""Pydantic schema of an MoE model: the shapes that decide FLOPs, bytes and routing.

A model spec is pure data (no hardware). Bundled specs live in `models/*.yaml`, each number
citing its public source (usually the model's Hugging Face `config.json`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GQAAttention(_Strict):
    """Multi-head / grouped-query attention (MHA when num_kv_heads == num_heads)."""

    type: Literal["gqa"] = "gqa"
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    sliding_window: int | None = Field(None, ge=1, description="window of windowed layers")
    sliding_window_every: int = Field(
        0, ge=0, description="every n-th layer is windowed (0: none, 1: all, 2: alternating)"
    )

    @model_validator(mode="after")
    def _kv_divides(self) -> "GQAAttention":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"
            )
        return self


class MLAAttention(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed KV cache."""

    type: Literal["mla"] = "mla"
    num_heads: int = Field(ge=1)
    q_lora_rank: int | None = Field(None, ge=1, description="None: q projected directly")
    kv_lora_rank: int = Field(ge=1)
    qk_nope_head_dim: int = Field(ge=1)
    qk_rope_head_dim: int = Field(ge=1)
    v_head_dim: int = Field(ge=1)


class MoESpec(_Strict):
    num_experts: int = Field(ge=1, description="routed experts per MoE layer")
    top_k: int = Field(ge=1)
    expert_intermediate_size: int = Field(ge=1)
    num_shared_experts: int = Field(0, ge=0)
    shared_intermediate_size: int | None = Field(
        None, ge=1, description="per shared expert; defaults to expert_intermediate_size"
    )
    first_dense_layers: int = Field(0, ge=0, description="leading layers with a dense FFN")
    layer_freq: int = Field(1, ge=1, description="every n-th layer (after the dense ones) is MoE")
    expert_groups: int = Field(1, ge=1, description="groups of consecutive experts for group-limited routing "
                               "(DeepSeek n_group); EPLB's hierarchical policy packs whole groups onto nodes")

    @model_validator(mode="after")
    def _k_fits(self) -> "MoESpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_experts % self.expert_groups:
            raise ValueError(f"expert_groups={self.expert_groups} does not divide num_experts={self.num_experts}")
        return self


class ModelSpec(_Strict):
    name: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    dense_intermediate_size: int = Field(ge=1, description="FFN width of dense layers")
    activation: Literal["swiglu", "gelu", "relu"] = Field(
        "swiglu", description="swiglu FFNs have 3 matrices (gate, up, down); others 2"
    )
    attention: GQAAttention | MLAAttention = Field(discriminator="type")
    moe: MoESpec
    dtype: str = Field("bf16", description="weights and activations unless overridden")
    expert_dtype: str | None = Field(None, description="routed expert weights; default dtype")
    expert_compute_dtype: str | None = Field(None, description="dtype the routed-expert GEMMs compute in; "
                                             "default: the weights' where the device has it, else the "
                                             "activations' (bf16 with fp8 weights: a W8A16 kernel)")
    kv_dtype: str | None = Field(None, description="KV cache; default dtype")
    sources: dict[str, str] = Field(default_factory=dict)
    notes: str = ""

    @field_validator("dtype", "expert_dtype", "kv_dtype")
    @classmethod
    def _dtype_known(cls, dt: str | None) -> str | None:
        """A dtype the cost model knows (else the error surfaced later, pinned on the scenario)."""
        from moesim.units import DTYPE_BITS

        if dt is not None and dt not in DTYPE_BITS:
            raise ValueError(f"unknown dtype '{dt}'; valid: {', '.join(DTYPE_BITS)}")
        return dt

    @model_validator(mode="after")
    def _expert_compute_dtype_known(self) -> "ModelSpec":
        from moesim.units import DTYPE_BITS

        dt = self.expert_compute_dtype
        if dt is not None and (dt not in DTYPE_BITS or dt in ("mxfp4", "nvfp4", "int4")):
            raise ValueError(f"expert_compute_dtype '{dt}' is not a dtype GEMMs compute in; choose one of "
                             "fp32, bf16, fp16, fp8, int8 (weight-only formats dequantize to the activations' dtype)")
        return self

    @model_validator(mode="after")
    def _dense_layers_fit(self) -> "ModelSpec":
        if self.moe.first_dense_layers > self.num_layers:
            raise ValueError(
                f"moe.first_dense_layers={self.moe.first_dense_layers} exceeds num_layers={self.num_layers}"
            )
        return self

    # --- derived shapes -------------------------------------------------------------------
    @property
    def ffn_matrices(self) -> int:
        return 3 if self.activation == "swiglu" else 2

    @property
    def shared_size(self) -> int:
        return self.moe.shared_intermediate_size or self.moe.expert_intermediate_size

    def is_moe_layer(self, layer: int) -> bool:
        """Dense for the first `first_dense_layers`, then every `layer_freq`-th layer is MoE."""
        first = self.moe.first_dense_layers
        return layer >= first and (layer - first) % self.moe.layer_freq == self.moe.layer_freq - 1

    @property
    def moe_layers(self) -> list[int]:
        return [layer for layer in range(self.num_layers) if self.is_moe_layer(layer)]

    @property
    def weight_dtype(self) -> str:
        return self.dtype

    @property
    def routed_expert_dtype(self) -> str:
        return self.expert_dtype or self.dtype

    @property
    def cache_dtype(self) -> str:
        return self.kv_dtype or self.dtype
