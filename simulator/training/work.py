"""What a training step adds to a micro-batch's plan: the backward, recomputation, gradient
synchronisation and optimizer work the training program (schedule.py) runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TrainingWork:
    """Seconds per (layer, device) of the backward's parts, as `StepPlan`'s forward arrays; the
    optimizer's seconds sit at layer 0. Gradient bytes per rank sit at the layer that closes each
    bucket (the last layer the backward reaches in it: its reduction starts there), 0 elsewhere."""

    recompute: np.ndarray  # (L, N) the forward rerun before a layer's backward (activation recomputation)
    attention_bwd: np.ndarray  # (L, N) attention, norms and router: data and weight gradients
    dense_ffn_bwd: np.ndarray  # (L, N)
    shared_expert_bwd: np.ndarray  # (L, N)
    expert_bwd: np.ndarray  # (L, N) routed experts: data and weight gradients of every local copy
    optimizer: np.ndarray  # (L, N) the optimizer step on the rank's (shard of) parameters, at layer 0
    grad_dense: np.ndarray  # (L,) bytes of dense gradients per rank reduced over the data-parallel group
    grad_expert: np.ndarray  # (L,) bytes of expert gradients per rank over the expert-data-parallel group
    zero_stage: int = 0  # 0: all-reduce; 1-2: reduce-scatter, then the updated parameters all-gathered
    param_dense: np.ndarray | None = None  # (N,) bytes of dense parameters each rank all-gathers (ZeRO >= 1)
    param_expert: np.ndarray | None = None
    activation: np.ndarray | None = None  # (N,) pipeline parallelism: bytes each rank hands to the next stage
    stages: tuple[tuple[int, int], ...] = ()  # pipeline parallelism: each stage's layers [first, end)
    layer_dense: np.ndarray | None = None  # (L,) ZeRO-3: bytes of each layer's dense parameters per rank (gathered)
    layer_expert: np.ndarray | None = None  # (L,)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The compute arrays in `program.WORK` order after the forward's four."""
        return (self.recompute, self.attention_bwd, self.dense_ffn_bwd, self.shared_expert_bwd, self.expert_bwd,
                self.optimizer)
