"""Memory per rank of an MoE training step under Megatron-Core / DeepSpeed parallelism: weights,
gradients and optimizer states (sharded by ZeRO), activations (Korthikanti et al. 2022), and a
refusal that gives the breakdown and what to change when the step does not fit.

Parameters counted (`param_counts`): per layer its attention projections (`attention_params`), two
norm vectors, a dense FFN or (MoE layers) the shared experts, the router and the routed experts;
then the embedding and the LM head once each (untied) and the final norm. Not counted: biases,
MLA's two internal norms (q_a / kv_a layernorm: 1536 + 512 values a DeepSeek-V3 layer) and DeepSeek-V3's
multi-token-prediction module, which is not part of the 671B main model (the spec has no MTP).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import ConfigError
from moesim.simulator.memory import attention_params
from moesim.units import dtype_bytes, fmt_bytes
from moesim.workloads.model_spec import GQAAttention, ModelSpec

ZERO_STAGES = (0, 1, 2, 3)
RECOMPUTE = ("none", "selective", "full")
#: fp32 optimizer states per parameter: Adam's two moments, SGD's momentum, plain SGD none
OPTIMIZER_STATES = {"adam": 2, "sgd-momentum": 1, "sgd": 0}
STATE_BYTES = 4.0


@dataclass(frozen=True)
class TrainParallel:
    """Megatron-Core's degrees: tp x pp x dp ranks; in each pipeline stage the routed experts are
    sharded over ep x expert_tp ranks and replicated expert_dp times (the expert-data-parallel group)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    expert_tp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def expert_dp(self) -> int:
        return self.world // (self.pp * self.ep * self.expert_tp)

    def validate(self, model: ModelSpec) -> "TrainParallel":
        """Raise ConfigError naming the first degree that cannot shard `model` (else return self)."""
        for name in ("tp", "pp", "dp", "ep", "expert_tp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=f"parallelism.{name}")
        stage_ranks, span = self.tp * self.dp, self.ep * self.expert_tp
        if stage_ranks % span:
            raise ConfigError(f"ep x expert_tp = {self.ep} x {self.expert_tp} = {span} must divide the "
                              f"{stage_ranks} ranks of a pipeline stage (tp x dp = {self.tp} x {self.dp}): the "
                              "experts of a stage are sharded over ep x expert_tp of its ranks", field="parallelism.ep")
        experts = model.moe.num_experts
        if experts % self.ep:
            raise ConfigError(f"ep={self.ep} must divide the {experts} routed experts of {model.name}",
                              field="parallelism.ep")
        if self.pp > model.num_layers:
            raise ConfigError(f"pp={self.pp} exceeds the {model.num_layers} layers of {model.name}: every "
                              "pipeline stage needs at least one layer", field="parallelism.pp")
        att = model.attention
        heads = [("attention heads", att.num_heads)]
        if isinstance(att, GQAAttention):
            heads.append(("KV heads", att.num_kv_heads))  # Megatron shards query groups over tp too
        for what, n in heads:
            if n % self.tp:
                raise ConfigError(f"tp={self.tp} must divide the {n} {what} of {model.name}", field="parallelism.tp")
        return self


@dataclass(frozen=True)
class ParamCounts:
    dense: float  # everything but the routed experts (embedding, LM head, norms and router included)
    expert: float  # routed experts, each counted once
    expert_active: float  # the top_k / num_experts share of `expert` one token uses

    @property
    def total(self) -> float:
        return self.dense + self.expert

    @property
    def active(self) -> float:
        """Parameters one token uses."""
        return self.dense + self.expert_active


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes on the rank that holds the most (of pipeline stage `stage`)."""

    weights: float
    gradients: float
    optimizer_states: float  # master weights included
    activations: float
    comm_buffers: float = 0.0
    stage: int = 0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.comm_buffers

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights), ("gradients", self.gradients),
                ("optimizer states (incl. master weights)", self.optimizer_states),
                ("activations", self.activations), ("communication buffers", self.comm_buffers),
                ("total", self.total)]

    def describe(self) -> str:
        return ", ".join(f"{name} {fmt_bytes(b)}" for name, b in self.rows()[:-1]) + (
            f"; total {fmt_bytes(self.total)} (pipeline stage {self.stage})")


def stage_layers(num_layers: int, pp: int) -> list[range]:
    """Contiguous layers of each pipeline stage, as even as possible; the first stages take the extra."""
    base, extra = divmod(num_layers, pp)
    out, start = [], 0
    for stage in range(pp):
        n = base + (stage < extra)
        out.append(range(start, start + n))
        start += n
    return out


def _ffn(model: ModelSpec, width: float) -> float:
    return model.ffn_matrices * model.hidden_size * width


def stage_params(model: ModelSpec, layers: range, first: bool, last: bool) -> tuple[float, float, float]:
    """(TP-split dense, TP-replicated dense (norms, router), routed-expert) parameters of a stage."""
    h, m = model.hidden_size, model.moe
    split = replicated = expert = 0.0
    for layer in layers:
        split += attention_params(model)
        replicated += 2 * h  # the norms before attention and FFN
        if model.is_moe_layer(layer):
            split += m.num_shared_experts * _ffn(model, model.shared_size)
            replicated += h * m.num_experts  # router
            expert += m.num_experts * _ffn(model, m.expert_intermediate_size)
        else:
            split += _ffn(model, model.dense_intermediate_size)
    if first:
        split += model.vocab_size * h  # embedding
    if last:
        split += model.vocab_size * h  # LM head (untied)
        replicated += h  # final norm
    return split, replicated, expert


def param_counts(model: ModelSpec) -> ParamCounts:
    split, replicated, expert = stage_params(model, range(model.num_layers), True, True)
    return ParamCounts(split + replicated, expert, expert * model.moe.top_k / model.moe.num_experts)


def _layer_activations(model: ModelSpec, par: TrainParallel, layer: int, b: int, s: int, attention_core: bool) -> float:
    """Bytes one layer keeps for its backward on one rank, per micro-batch (Korthikanti et al. 2022,
    16-bit activations, 1-byte dropout masks, TP with sequence parallel: every term / tp).

    Attention 11sbh + 5as^2b (the softmax and its dropout; `attention_core` False drops it, as
    selective recompute does), norms 4sbh. An FFN of width f keeps its input 2sbh, output dropout
    mask sbh, its first GEMMs' outputs 2(m-1)sbf and the activation's 2sbf (f = 4h, m = 2: the
    paper's 19sbh). An MoE layer keeps the same for its shared experts (width n_shared x f_shared)
    and, per routed (token, expert) pair, the dispatched input and combined output (2h each) and the
    expert's 2m f. Approximation: routing is balanced, so a rank holds its own tokens' share of the
    pairs, s b top_k / tp, whichever EP rank they ran on; with expert_tp each of its ranks keeps the
    pair's 4h copies and 1/expert_tp of the hidden part. Router probabilities are not counted."""
    h, m, nm = model.hidden_size, model.moe, model.ffn_matrices
    sb = s * b
    att = 11 * sb * h + (5 * model.attention.num_heads * s * s * b if attention_core else 0)
    if model.is_moe_layer(layer):
        ffn = sb * (3 * h + 2 * nm * m.num_shared_experts * model.shared_size)
        ffn += sb * m.top_k * (4 * h * par.expert_tp + 2 * nm * m.expert_intermediate_size)
    else:
        ffn = sb * (3 * h + 2 * nm * model.dense_intermediate_size)
    return (att + 4 * sb * h + ffn) / par.tp


def _stage_activations(model: ModelSpec, par: TrainParallel, layers: range, last: bool, b: int, s: int,
                       recompute: str, in_flight: int) -> float:
    """Bytes a stage's rank holds at its peak with `in_flight` micro-batches' activations held.
    The backward reruns one layer (full) or one attention core (selective) at a time, which then
    holds its activations once more; under full recompute that layer's input checkpoint is one
    of its own activations, so it is not counted twice."""
    full = [_layer_activations(model, par, layer, b, s, True) for layer in layers]
    if recompute == "full":
        checkpoints = 2 * s * b * model.hidden_size / par.tp * (in_flight * len(layers) - 1)
        held = checkpoints + max(full)
    elif recompute == "selective":
        core = 5 * model.attention.num_heads * s * s * b / par.tp
        held = in_flight * sum(_layer_activations(model, par, layer, b, s, False) for layer in layers) + core
    else:
        held = in_flight * sum(full)
    if last:  # fp32 logits of the output layer and cross entropy, 4sbv/tp: one micro-batch's at a time
        held += 4 * s * b * model.vocab_size / par.tp
    return held


def _choice(value, valid, field: str):
    if value not in valid:
        raise ConfigError(f"must be one of {', '.join(map(str, valid))}, got {value!r}", field=field)
    return value


def _bytes(dtype: str, field: str) -> float:
    try:
        return dtype_bytes(dtype)
    except ValueError as err:
        raise ConfigError(str(err), field=field) from None


def training_memory(model: ModelSpec, par: TrainParallel, *, micro_batch: int, seq_len: int, zero_stage: int = 0,
                    recompute: str = "none", in_flight: int | None = None, param_dtype: str = "bf16",
                    grad_dtype: str = "fp32", master_dtype: str | None = "fp32", optimizer: str = "adam",
                    comm_buffer_bytes: float = 0.0) -> TrainingMemory:
    """Memory of the rank that holds the most, over the pipeline stages.

    ZeRO as DeepSpeed defines it, over each parameter kind's data-parallel group (dense: dp, routed
    experts: expert_dp): stage 1 shards optimizer states and master weights, 2 gradients too, 3
    parameters too (FSDP full shard). `in_flight`: micro-batches whose activations a rank holds at
    once; None: 1F1B's pp - i on stage i (1 without PP), else that many on every stage. "none"
    counts the s x s attention scores (no fused attention); with a flash-attention core, which keeps
    none, "selective" is the closer figure even when nothing is recomputed."""
    par.validate(model)
    _choice(zero_stage, ZERO_STAGES, "training.zero_stage")
    _choice(recompute, RECOMPUTE, "training.recompute")
    _choice(optimizer, tuple(OPTIMIZER_STATES), "training.optimizer")
    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len), ("in_flight", in_flight or 1)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", field=f"training.{name}")
    if comm_buffer_bytes < 0:
        raise ConfigError(f"must not be negative, got {comm_buffer_bytes}", field="training.comm_buffer_bytes")
    pb, gb = _bytes(param_dtype, "training.param_dtype"), _bytes(grad_dtype, "training.grad_dtype")
    ob = (_bytes(master_dtype, "training.master_dtype") if master_dtype else 0.0) + (
        STATE_BYTES * OPTIMIZER_STATES[optimizer])

    def shard(dense: float, expert: float, from_stage: int) -> float:
        if zero_stage < from_stage:
            return dense + expert
        return dense / par.dp + expert / par.expert_dp

    worst = None
    for stage, layers in enumerate(stage_layers(model.num_layers, par.pp)):
        first, last = stage == 0, stage == par.pp - 1
        split, replicated, expert = stage_params(model, layers, first, last)
        dense, expert = split / par.tp + replicated, expert / (par.ep * par.expert_tp)
        held = par.pp - stage if in_flight is None else in_flight
        mem = TrainingMemory(
            weights=shard(dense, expert, 3) * pb, gradients=shard(dense, expert, 2) * gb,
            optimizer_states=shard(dense, expert, 1) * ob,
            activations=_stage_activations(model, par, layers, last, micro_batch, seq_len, recompute, held),
            comm_buffers=float(comm_buffer_bytes), stage=stage)
        if worst is None or mem.total > worst.total:
            worst = mem
    return worst


def check_fits(mem: TrainingMemory, capacity_bytes: float, where: str, zero_stage: int = 0,
               recompute: str = "none", max_zero: int = 3) -> None:
    """Refuse a training step whose busiest rank needs more than `capacity_bytes`, with the breakdown
    and what to change (its largest part first; settings already taken, `zero_stage` and
    `recompute`, and stages above `max_zero` are not suggested)."""
    if capacity_bytes <= 0:
        raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
    if mem.total <= capacity_bytes:
        return
    hints = {"optimizer_states": "a higher ZeRO stage (training.zero_stage 1 shards optimizer states and master "
                                 "weights over the data-parallel group)",
             "gradients": "ZeRO stage 2 (shards gradients too)",
             "weights": "ZeRO stage 3 (shards parameters too)",
             "activations": "activation recomputation (training.recompute: selective, then full) or a "
                            "smaller micro-batch or sequence",
             "comm_buffers": "smaller communication buffers"}
    taken = {"optimizer_states": zero_stage >= 1 or max_zero < 1, "gradients": zero_stage >= 2 or max_zero < 2,
             "weights": zero_stage >= 3 or max_zero < 3, "activations": False}
    if recompute == "full":
        hints["activations"] = "a smaller micro-batch or sequence"
    order = sorted((k for k in hints if getattr(mem, k) > 0 and not taken.get(k, False)), key=lambda k: -getattr(mem, k))
    if not order:
        order = ["activations"]
    raise ConfigError(
        f"the training step does not fit in memory on {where}: the busiest rank (pipeline stage {mem.stage}) "
        f"needs {fmt_bytes(mem.total)} ({mem.describe()}) but has {fmt_bytes(capacity_bytes)}. "
        f"The largest part is {max(hints, key=lambda k: getattr(mem, k)).replace('_', ' ')}; try "
        + "; ".join(hints[k] for k in order)
        + "; or more tp / pp / ep ranks.")


def scenario_training_memory(model: ModelSpec, tp: int, num_devices: int, ep: int, moe_tp: int, micro_batch: int,
                             seq_len: int, cfg, pp: int = 1) -> TrainingMemory:
    """A training scenario's busiest rank (over its `pp` pipeline stages), for its `training:`
    section `cfg`. The attention core is a fused (flash) kernel, as the backward's cost assumes, so
    no s x s scores are kept: recompute "none" holds what Korthikanti et al.'s selective policy
    holds. Gradients accumulate in fp32 buffers (Megatron's main_grad), whatever dtype they are
    reduced in."""
    par = TrainParallel(tp=tp, pp=pp, dp=num_devices // (tp * pp), ep=ep, expert_tp=moe_tp)
    recompute = "selective" if cfg.recompute == "none" else cfg.recompute
    return training_memory(model, par, micro_batch=micro_batch, seq_len=seq_len, zero_stage=int(cfg.zero_stage),
                           recompute=recompute, grad_dtype="fp32", optimizer=cfg.optimizer)
