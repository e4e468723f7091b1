"""The `training:` section of a config: how a `workload.phase: train` step accumulates,
recomputes, shards and synchronises (simulator/training/)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainingConfig(BaseModel):
    """One training step (an optimizer step over the global batch) as Megatron-Core / DeepSpeed run it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    global_batch: int = Field(ge=1, description="sequences per optimizer step over all data-parallel ranks; "
                              "micro-batches per step = global_batch / (workload.batch_size x data-parallel ranks)")
    recompute: Literal["none", "selective", "full"] = Field(
        "none", description="activation recomputation (Korthikanti et al. 2022): none; selective: the attention "
        "core is rerun before its backward; full: every layer's forward is rerun before its backward")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="0: gradients all-reduced over the data-parallel group (DDP); 1 / 2: reduce-scattered and "
        "the updated parameters all-gathered after the optimizer (ZeRO / Megatron's distributed optimizer); 3: "
        "parameters sharded too (FSDP full shard), each layer's all-gathered before its forward and again before "
        "its backward, the next layer's gather in flight while a layer computes")
    grad_dtype: Literal["bf16", "fp32"] = Field("bf16", description="dtype gradients are reduced in")
    bucket_params: int = Field(40_000_000, ge=1, description="parameters per gradient bucket (Megatron-Core's "
                               "default 40M): a bucket is reduced once the backward has passed all its layers")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam: fp32 master weights and two fp32 moments "
                                              "per parameter; sgd: fp32 master weights only")
