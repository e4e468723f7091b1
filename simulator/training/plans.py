"""A training step's micro-batch plans: each micro-batch's forward as the step pipeline plans a
prefill of its sequences, plus its backward, recomputation, gradient and optimizer work.

Backward costs come from the forward's own op rows, costed on the same cost model: a GEMM's
backward is its data-gradient GEMM and its weight-gradient GEMM, each with the forward's FLOPs
and bytes (dY W^T and X^T dY move the same three matrices as X W; the weight gradient's
reduction over tokens is costed with the forward's efficiency in the token dimension, which
calibration of backward kernels would refine); the attention core's backward is 2.5x its
forward (FlashAttention-2's backward runs five matmuls to the forward's two, Dao 2023); norms and
other elementwise ops read the output gradient besides their input: 2x. Routed experts: 2x
their forward kernel time (data and weight gradients of every local copy). Recomputation reruns
the forward of every part (full) or of the attention core (selective) before a layer's backward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from moesim.simulator.ops import act_dtype
from moesim.simulator.step_costs import LayerOps
from moesim.simulator.step_plan import StepPipeline, StepPlan
from moesim.simulator.step_source import StepInput
from moesim.simulator.training.config import TrainingConfig
from moesim.simulator.training.memory import stage_params
from moesim.simulator.training.work import TrainingWork
from moesim.units import dtype_bytes
from moesim.workloads.model_spec import ModelSpec

ATTENTION_CORE_BACKWARD = 2.5  # FlashAttention-2: 5 matmuls backward against 2 forward
OPTIMIZER_BYTES = {"adam": 26.0, "sgd": 10.0}  # per parameter beside its gradient: fp32 master, moments, bf16 copy
OPTIMIZER_FLOPS = {"adam": 12.0, "sgd": 3.0}


@dataclass(frozen=True)
class TrainingLayout:
    """A training step's fixed facts: micro-batches per step, pipeline stages, gradient buckets and
    parameters per rank."""

    microbatches: int
    buckets: tuple[int, ...]  # the layer closing each bucket, in the order the backward reaches them
    grad_dense: np.ndarray  # (L,) bytes per rank of each bucket's dense gradients, at its closing layer
    grad_expert: np.ndarray  # (L,)
    dense: np.ndarray  # (L,) dense parameters per rank holding the layer
    expert: np.ndarray  # (L,) routed-expert parameters per rank holding the layer
    config: TrainingConfig
    stages: tuple[tuple[int, int], ...] = ((0, 0),)  # each pipeline stage's layers [first, end)

    @property
    def zero_stage(self) -> int:
        return int(self.config.zero_stage)

    def stage_params(self, stage: int) -> tuple[float, float]:
        """(dense, expert) parameters on a rank of `stage`."""
        a, b = self.stages[stage]
        return float(self.dense[a:b].sum()), float(self.expert[a:b].sum())


def layer_params(model: ModelSpec, tp: int, ep: int) -> tuple[np.ndarray, np.ndarray]:
    """(L,) dense and (L,) routed-expert parameters per rank of each layer (TP splits attention and
    dense FFNs, EP the routed experts; the embedding counts in the first layer, the LM head in the
    last; norms and router replicated), as memory.py counts them."""
    L = model.num_layers
    dense, expert = np.zeros(L), np.zeros(L)
    for layer in range(L):
        split, replicated, routed = stage_params(model, range(layer, layer + 1), layer == 0, layer == L - 1)
        dense[layer], expert[layer] = split / tp + replicated, routed / ep
    return dense, expert


def training_layout(model: ModelSpec, cfg: TrainingConfig, tp: int, ep: int, microbatches: int,
                    pp: int = 1) -> TrainingLayout:
    """Buckets of at least `bucket_params` parameters, filled in backward order (last layer first),
    each within one pipeline stage (a stage's first layer closes its last bucket)."""
    from moesim.simulator.training.memory import stage_layers

    dense, expert = layer_params(model, tp, ep)
    stages = tuple((r.start, r.stop) for r in stage_layers(model.num_layers, pp))
    starts = {a for a, _ in stages}
    gb = dtype_bytes(cfg.grad_dtype)
    grad_dense, grad_expert = np.zeros(model.num_layers), np.zeros(model.num_layers)
    buckets, held_d, held_e = [], 0.0, 0.0
    for layer in reversed(range(model.num_layers)):
        held_d += dense[layer]
        held_e += expert[layer]
        if held_d + held_e >= cfg.bucket_params or layer in starts:
            buckets.append(layer)
            grad_dense[layer], grad_expert[layer] = held_d * gb, held_e * gb
            held_d = held_e = 0.0
    return TrainingLayout(microbatches, tuple(buckets), grad_dense, grad_expert, dense, expert, cfg, stages)


def backward_time(rows) -> float:
    """Seconds of the backward of a part's forward op rows (module docstring)."""
    total = 0.0
    for r in rows:
        if r.op.kind == "gemm":
            total += 2.0 * r.cost.time  # data gradient + weight gradient
        elif r.op.name == "attn_core":
            total += ATTENTION_CORE_BACKWARD * r.cost.time
        else:
            total += 2.0 * r.cost.time
    return total


def _core_time(ops: LayerOps) -> float:
    return sum(r.cost.time for r in ops.attention if r.op.name == "attn_core")


class TrainingPlans:
    """The plans of every training step: `microbatches` forward plans (each its own routing draw,
    step x microbatches + mb), each with its `TrainingWork`."""

    def __init__(self, pipeline: StepPipeline, layout: TrainingLayout, optimizer_seconds: np.ndarray):
        self.pipeline, self.layout, self.optimizer_seconds = pipeline, layout, optimizer_seconds
        self._bwd: dict[int, tuple[LayerOps, tuple[float, float, float, float]]] = {}

    def plans(self, source: Iterable[StepInput]) -> Iterator[list[StepPlan]]:
        for inp in source:
            yield self.step_plans(inp)

    def step_plans(self, inp: StepInput) -> list[StepPlan]:
        M = self.layout.microbatches
        out = []
        for mb in range(M):
            part = dataclasses.replace(inp, step=inp.step * M + mb, microbatch=mb)
            plan = self.pipeline.plan(part)
            out.append(dataclasses.replace(plan, step=inp.step, training=self.work(plan, mb == M - 1)))
        return out

    def _layer_backward(self, ops: LayerOps) -> tuple[float, float, float, float]:
        """(attention, dense FFN, shared experts) backward seconds and the attention core's forward,
        once per distinct LayerOps (the cost cache hands out the same object for the same shape;
        the entry keeps it, so its id cannot be reused by another)."""
        got = self._bwd.get(id(ops))
        if got is None or got[0] is not ops:
            got = self._bwd[id(ops)] = (ops, (backward_time(ops.attention), backward_time(ops.dense_ffn),
                                              backward_time(ops.shared_expert), _core_time(ops)))
        return got[1]

    def work(self, plan: StepPlan, last: bool) -> TrainingWork:
        """The backward and the rest of one micro-batch's plan; gradients and the optimizer on the last."""
        L, n = plan.attention.shape
        per = np.array([[self._layer_backward(o) for o in row] for row in plan.layer_ops])  # (L, n, 4)
        mode = self.layout.config.recompute
        if mode == "full":
            recompute = plan.attention + plan.dense_ffn + plan.shared_expert + plan.expert
        elif mode == "selective":
            recompute = np.ascontiguousarray(per[..., 3])
        else:
            recompute = np.zeros((L, n))
        optimizer = np.zeros((L, n))
        lay = self.layout
        zero = np.zeros(L)
        size = n // len(lay.stages)
        if last:  # each stage's ranks step their own parameters, recorded at the stage's first layer
            for s, (a, _) in enumerate(lay.stages):
                optimizer[a, s * size:(s + 1) * size] = self.optimizer_seconds[s * size:(s + 1) * size]
        pb = dtype_bytes("bf16")
        dense, expert = zip(*(lay.stage_params(s) for s in range(len(lay.stages))))
        activation = np.asarray(plan.inputs.moe_tokens, dtype=float) * self.pipeline.model.hidden_size * \
            dtype_bytes(act_dtype(self.pipeline.model)) if len(lay.stages) > 1 else None
        return TrainingWork(recompute, np.ascontiguousarray(per[..., 0]), np.ascontiguousarray(per[..., 1]),
                            np.ascontiguousarray(per[..., 2]), 2.0 * plan.expert, optimizer,
                            lay.grad_dense if last else zero, lay.grad_expert if last else zero, lay.zero_stage,
                            np.repeat(np.asarray(dense) * pb, size), np.repeat(np.asarray(expert) * pb, size),
                            activation, lay.stages, lay.dense * pb if lay.zero_stage >= 3 else None,
                            lay.expert * pb if lay.zero_stage >= 3 else None)


def optimizer_seconds(cost, layout: TrainingLayout, dp: int, expert_dp: int, n: int) -> np.ndarray:
    """(n,) seconds of the optimizer step on each rank's parameters (its stage's; its shard under
    ZeRO >= 1): a memory-bound pass over the master weights, moments, gradient and the bf16 copy."""
    cfg = layout.config
    shard_d = dp if cfg.zero_stage >= 1 else 1
    shard_e = expert_dp if cfg.zero_stage >= 1 else 1
    out = np.zeros(n)
    size = n // len(layout.stages)
    for s in range(len(layout.stages)):
        dense, expert = layout.stage_params(s)
        params = dense / shard_d + expert / shard_e
        nbytes = params * (OPTIMIZER_BYTES[cfg.optimizer] + dtype_bytes(cfg.grad_dtype))
        out[s * size:(s + 1) * size] = float(cost.times("elementwise", params * OPTIMIZER_FLOPS[cfg.optimizer],
                                                         nbytes, params))
    return out
