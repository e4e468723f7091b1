"""A training step as a program: every micro-batch's forward and backward, gradient accumulation
over the micro-batches, bucketed gradient reduction overlapping the last backward, and the
optimizer. Under pipeline parallelism each stage (a contiguous block of devices holding a
contiguous run of layers) has its own instructions in the 1F1B order (`stage_instructions`),
handing activations forward and gradients back to the neighbouring stages; without it, every
rank runs every layer, one micro-batch's forward and backward after the other.

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


def _gather(shape: StepShape, mb: int, order: list[int], layer: int, which: str, phase: str) -> list:
    """ZeRO-3 before `layer` (in the pass's `order`): wait for its parameters (their gather was
    handed to the network before the previous layer ran), then start the next layer's."""
    if not shape.training.layer_gather:
        return []
    k = order.index(layer)
    out = [submit(which, layer, mb)] if k == 0 else []
    out.append(wait(which, phase, layer, mb))
    if k + 1 < len(order):
        out.append(submit(which, order[k + 1], mb))
    return out


def _forward(shape: StepShape, mb: int, layers: range) -> list:
    out = []
    order = list(layers)
    for layer in layers:
        moe = shape.is_moe[layer]
        out += _gather(shape, mb, order, layer, "gather_fwd", "param_gather")
        out += attention_block(shape, layer, mb)
        if not moe:
            out += dense_ffn_block(shape, layer, mb)
            continue
        out += _moe_block(shape, layer, mb, "")
        if shape.moe_tp:
            out.append(all_reduce("moe_reduce", "moe_allreduce", layer, mb))
    return out


def _backward(shape: StepShape, mb: int, last: bool, layers: range) -> list:
    train = shape.training
    out = []
    buckets = set(train.buckets) if last else set()
    order = list(reversed(layers))
    for layer in order:
        out += _gather(shape, mb, order, layer, "gather_bwd", "param_gather_bwd")
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


def stage_instructions(shape: StepShape, stage: int, layers: range) -> list:
    """One pipeline stage's step under 1F1B (Narayanan et al. 2021, PipeDream-Flush): stage s of p
    runs min(p - s - 1, M) warm-up forwards, then alternates one forward and one backward, then
    drains the remaining backwards. A forward waits for the previous stage's activations (phase
    pp_recv at the layer before its first) and hands its own to the next; a backward waits for the
    next stage's gradients and hands its input gradients back. Without pipeline parallelism (one
    stage) this is every micro-batch's forward then backward in turn."""
    train = shape.training
    M, p = train.microbatches, max(len(train.stages), 1)
    first, end = layers.start, layers.stop

    def fwd(mb: int) -> list:
        out = [wait("pp_fwd", "pp_recv", first - 1, mb)] if stage > 0 else []
        out += _forward(shape, mb, layers)
        return out + ([submit("pp_fwd", end - 1, mb)] if stage < p - 1 else [])

    def bwd(mb: int) -> list:
        out = [wait("pp_bwd", "pp_recv", end - 1, mb)] if stage < p - 1 else []
        out += _backward(shape, mb, mb == M - 1, layers)
        return out + ([submit("pp_bwd", first - 1, mb)] if stage > 0 else [])

    if p == 1:
        out = []
        for mb in range(M):
            out += fwd(mb) + bwd(mb)
    else:
        warm = min(p - stage - 1, M)
        out = [ins for mb in range(warm) for ins in fwd(mb)]
        for i in range(M - warm):
            out += fwd(warm + i) + bwd(i)
        for mb in range(M - warm, M):
            out += bwd(mb)
    last = M - 1
    for layer in train.buckets:
        if first <= layer < end:
            out += [wait("grad_dense", "grad_sync", layer, last), wait("grad_expert", "grad_sync_expert", layer, last)]
    out.append(compute("optimizer", first, last))
    if train.gather:
        out += [all_reduce("param_gather_dense", "param_gather", first, last),
                all_reduce("param_gather_expert", "param_gather", first, last, extend=True)]
    return out


def training_program(shape: StepShape) -> Program:
    """One training step's instructions for every rank (module docstring), one list per pipeline stage."""
    train = shape.training
    if train is None:
        raise ValueError("the training schedule needs the step's training shape (StepShape.training)")
    if shape.moe_tp:
        raise ValueError("training with MoE-TP is not simulated yet (its backward reduction)")
    M = train.microbatches
    if len(train.stages) > 1:
        by_stage = tuple(tuple(stage_instructions(shape, s, range(a, b))) for s, (a, b) in enumerate(train.stages))
        return Program(by_stage[0], microbatches=M, phases=len(PHASES), by_stage=by_stage,
                       stage_size=train.stage_size)
    return Program(tuple(stage_instructions(shape, 0, range(shape.num_layers))), microbatches=M, phases=len(PHASES))


TRAINING = Schedule("train", training_program)
