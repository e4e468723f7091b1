"""A training step as a program: every micro-batch's forward, then its backward, gradient
accumulation over the micro-batches, bucketed gradient reduction overlapping the last backward,
and the optimizer (no pipeline parallelism: every rank holds every layer).

Forward, per layer, as the sequential schedule runs it (attention, TP all-reduce; a MoE layer's
dispatch with the shared experts beside it, the routed experts, the combine). Backward, layers
in reverse: the forward rerun first where activations are recomputed; a MoE layer's output
gradient travels to the experts by `dispatch_bwd` (the combine's gradient: the dispatch's
pairs, bytes and dtype, with the forward's routing) while the shared experts' backward runs
beside it, then the experts' data and weight gradients, then `combine_bwd` (the dispatch's
gradient: the combine's pairs and bytes) brings the input gradients home; then the attention's
backward (with its TP all-reduce). Four all-to-alls per MoE layer and micro-batch in all.

Gradients accumulate locally over micro-batches; in the last micro-batch's backward, a bucket's
reduction is handed to the network as soon as the backward has passed the layer that closes it
(DDP / Megatron's overlapped gradient reduction), so it overlaps the layers still to go. The
step ends with waiting for every bucket, the optimizer step, and (ZeRO >= 1) the all-gather of
the updated parameters.
"""

from __future__ import annotations

from moesim.simulator.overlap.schedules import Schedule
from moesim.simulator.phases import PHASES
from moesim.simulator.program import (Program, StepShape, all_reduce, attention_block, beside, compute,
                                      dense_ffn_block, submit, wait, wait_arrival, wait_then)


def _moe_block(shape: StepShape, layer: int, mb: int, part: str) -> list:
    """A MoE layer's all-to-all, shared and routed experts, and all-to-all back; `part` "" for the
    forward, "_bwd" for the backward (whose collectives and phases carry that suffix)."""
    dispatch, combine, shared = "dispatch" + part, "combine" + part, "shared_expert" + part
    out = [submit(dispatch, layer, mb)]
    if shape.overlap_shared_experts:
        out.append(beside(shared, layer, mb))
    out += [wait_then(dispatch, dispatch, layer, mb), compute("expert" + part, layer, mb),
            submit(combine, layer, mb), wait_arrival(combine, combine, layer, mb)]
    if not shape.overlap_shared_experts:
        out.append(compute(shared, layer, mb))
    return out


def _forward(shape: StepShape, mb: int) -> list:
    out = []
    for layer, moe in enumerate(shape.is_moe):
        out += attention_block(shape, layer, mb)
        if not moe:
            out += dense_ffn_block(shape, layer, mb)
            continue
        out += _moe_block(shape, layer, mb, "")
        if shape.moe_tp:
            out.append(all_reduce("moe_reduce", "moe_allreduce", layer, mb))
    return out


def _backward(shape: StepShape, mb: int, last: bool) -> list:
    train = shape.training
    out = []
    buckets = set(train.buckets) if last else set()
    for layer in reversed(range(shape.num_layers)):
        if train.recompute:
            out.append(compute("recompute", layer, mb))
        if shape.is_moe[layer]:
            out += _moe_block(shape, layer, mb, "_bwd")
        else:
            out.append(compute("dense_ffn_bwd", layer, mb))
            if shape.tp:
                out.append(all_reduce("tp_ffn_bwd", "tp_allreduce_bwd", layer, mb))
        out.append(compute("attention_bwd", layer, mb))
        if shape.tp:
            out.append(all_reduce("tp_attention_bwd", "tp_allreduce_bwd", layer, mb, extend=not shape.is_moe[layer]))
        if layer in buckets:  # the bucket's gradients are final: reduce them while the backward goes on
            out += [submit("grad_dense", layer, mb), submit("grad_expert", layer, mb)]
    return out


def training_program(shape: StepShape) -> Program:
    """One training step's instructions for every rank (module docstring)."""
    train = shape.training
    if train is None:
        raise ValueError("the training schedule needs the step's training shape (StepShape.training)")
    if shape.moe_tp:
        raise ValueError("training with MoE-TP is not simulated yet (its backward reduction)")
    M = train.microbatches
    out = []
    for mb in range(M):
        out += _forward(shape, mb)
        out += _backward(shape, mb, mb == M - 1)
    last = M - 1
    for layer in train.buckets:
        out += [wait("grad_dense", "grad_sync", layer, last), wait("grad_expert", "grad_sync_expert", layer, last)]
    out.append(compute("optimizer", 0, last))
    if train.gather:
        out += [all_reduce("param_gather_dense", "param_gather", 0, last),
                all_reduce("param_gather_expert", "param_gather", 0, last, extend=True)]
    return Program(tuple(out), microbatches=M, phases=len(PHASES))


TRAINING = Schedule("train", training_program)
