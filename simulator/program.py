"""A step as a small program: what one device does in a step, as a list of plain instructions.

An overlap schedule (`simulator/overlap/`) is a function from the step's shape (`StepShape`:
which layers are MoE, whether TP / MoE-TP all-reduces run, how many micro-batches) to a
`Program`; one interpreter (`simulator/interpreter.py`) runs it on every device. Instructions are
tuples, so a program is plain data: it can be printed, compared in a test, pickled, and later run
by another interpreter (a vectorised one) without change.

The vocabulary (each names the phase it records and, for work, the plan array it reads):
- `compute(phase, layer, mb)`: run the phase's time from the plan (attention, dense FFN, shared or
  routed experts) on the device.
- `beside(phase, layer, mb)`: the phase's compute runs while the next wait is in flight (shared
  experts during dispatch): recorded, and the next wait cannot end before it does.
- `submit(coll, layer, mb)`: hand this device's bytes of a collective to the network.
- `wait(coll, phase, layer, mb)`: wait for a collective's inbound bytes, recording the phase.
- `wait_arrival(coll, phase, layer, mb)`: the same, but the phase ends when the bytes could be
  used (their arrival, the kernel floor, the `beside` compute), not when the device woke.
- `wait_then(coll, phase, layer, mb)`: `wait_arrival`, and the compute that follows runs in the
  same wake-up (one SimPy event instead of two).
- `all_reduce(coll, phase, layer, mb, extend=False)`: submit and wait for a group all-reduce;
  `extend` adds its span to the phase's earlier span in the layer (the second TP all-reduce).

Collectives are named: "dispatch", "combine" (per MoE layer), "tp_attention", "tp_ffn" (per layer
under TP), "moe_reduce" (per MoE layer under MoE-TP); a training step's backward adds "dispatch_bwd"
(the combine's gradient, sent the dispatch's way with its bytes), "combine_bwd" (the dispatch's
gradient, the combine's way), their TP all-reduces, and per gradient bucket (named by the layer
that closes it) "grad_dense" / "grad_expert" over the data-parallel / expert-data-parallel
groups, with ZeRO's "param_gather_dense" / "param_gather_expert" after the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.simulator.phases import INFERENCE_PHASES, PHASE_INDEX

# opcodes (small ints: the interpreter's hot loop compares them)
COMPUTE, BESIDE, SUBMIT, WAIT, WAIT_ARRIVAL, WAIT_THEN, ALL_REDUCE, ALL_REDUCE_MORE = range(8)
OPCODE_NAMES = ("compute", "beside", "submit", "wait", "wait_arrival", "wait_then", "all_reduce", "all_reduce_more")
WAITS = (WAIT, WAIT_ARRIVAL, WAIT_THEN)
COLLECTIVES = ("dispatch", "combine", "tp_attention", "tp_ffn", "moe_reduce",
               # a training step's (simulator/training/): the backward's all-to-alls and TP all-reduces, the
               # gradient buckets' reduction over the data-parallel groups, ZeRO's parameter all-gather
               "dispatch_bwd", "combine_bwd", "tp_attention_bwd", "tp_ffn_bwd", "grad_dense", "grad_expert",
               "param_gather_dense", "param_gather_expert",
               # pipeline parallelism: a stage's activations to the next stage, its input gradients back
               "pp_fwd", "pp_bwd",
               # ZeRO-3: a layer's parameters all-gathered before its forward and before its backward
               "gather_fwd", "gather_bwd")
# the plan arrays compute reads (a training plan's `training` work after the forward's four)
WORK = {"attention": 0, "dense_ffn": 1, "shared_expert": 2, "expert": 3, "recompute": 4, "attention_bwd": 5,
        "dense_ffn_bwd": 6, "shared_expert_bwd": 7, "expert_bwd": 8, "optimizer": 9}

Instruction = tuple  # (opcode, phase index or -1, layer, micro-batch, operand)


@dataclass(frozen=True)
class TrainingShape:
    """What a training schedule knows beyond the layers: micro-batches accumulated per step, the
    gradient buckets (each named by the layer that closes it, in the order the backward reaches
    them), whether a layer's forward is rerun before its backward, and ZeRO's parameter gather."""

    microbatches: int
    buckets: tuple[int, ...]
    recompute: bool = False
    gather: bool = False  # ZeRO >= 1: the updated parameters are all-gathered after the optimizer
    stages: tuple[tuple[int, int], ...] = ()  # pipeline parallelism: each stage's layers [first, end)
    stage_size: int = 0  # devices per pipeline stage
    layer_gather: bool = False  # ZeRO-3: every layer's parameters all-gathered before its forward and backward


@dataclass(frozen=True)
class StepShape:
    """What a schedule may know of a step: the layers' kinds and the parallel groups' all-reduces."""

    is_moe: tuple[bool, ...]
    tp: bool  # attention / dense FFN all-reduce over a TP group after each
    moe_tp: bool  # MoE-TP: the experts' partial outputs are all-reduced after combine
    microbatches: int = 1
    overlap_shared_experts: bool = True  # shared experts run while dispatch is in flight
    serving: bool = False  # steps are formed at the engine's clock (no compute fused across a step's end)
    training: TrainingShape | None = None  # a training step (simulator/training/schedule.py)

    @property
    def num_layers(self) -> int:
        return len(self.is_moe)


def compute(phase: str, layer: int, mb: int = 0) -> Instruction:
    return (COMPUTE, PHASE_INDEX[phase], layer, mb, WORK[phase])


def beside(phase: str, layer: int, mb: int = 0) -> Instruction:
    return (BESIDE, PHASE_INDEX[phase], layer, mb, WORK[phase])


def submit(coll: str, layer: int, mb: int = 0) -> Instruction:
    return (SUBMIT, -1, layer, mb, COLLECTIVES.index(coll))


def wait(coll: str, phase: str, layer: int, mb: int = 0) -> Instruction:
    return (WAIT, PHASE_INDEX[phase], layer, mb, COLLECTIVES.index(coll))


def wait_arrival(coll: str, phase: str, layer: int, mb: int = 0) -> Instruction:
    return (WAIT_ARRIVAL, PHASE_INDEX[phase], layer, mb, COLLECTIVES.index(coll))


def wait_then(coll: str, phase: str, layer: int, mb: int = 0) -> Instruction:
    return (WAIT_THEN, PHASE_INDEX[phase], layer, mb, COLLECTIVES.index(coll))


def all_reduce(coll: str, phase: str, layer: int, mb: int = 0, extend: bool = False) -> Instruction:
    return (ALL_REDUCE_MORE if extend else ALL_REDUCE, PHASE_INDEX[phase], layer, mb, COLLECTIVES.index(coll))


def attention_block(shape: StepShape, layer: int, mb: int = 0) -> list[Instruction]:
    """A layer's attention, then its TP all-reduce under tensor parallelism (every schedule's start of a layer)."""
    out = [compute("attention", layer, mb)]
    if shape.tp:
        out.append(all_reduce("tp_attention", "tp_allreduce", layer, mb))
    return out


def dense_ffn_block(shape: StepShape, layer: int, mb: int = 0) -> list[Instruction]:
    """A dense layer's FFN, then its TP all-reduce (recorded on the layer's same TP span)."""
    out = [compute("dense_ffn", layer, mb)]
    if shape.tp:
        out.append(all_reduce("tp_ffn", "tp_allreduce", layer, mb, extend=True))
    return out


@dataclass(frozen=True)
class Program:
    """One step's instructions, in order, the same on every device."""

    instructions: tuple[Instruction, ...]
    microbatches: int = 1
    phases: int = len(INFERENCE_PHASES)  # phases its timeline records (a training program's: all of PHASES)
    # pipeline parallelism: each stage's own instructions, stage s on devices [s x stage_size, (s + 1) x stage_size)
    by_stage: tuple[tuple[Instruction, ...], ...] = ()
    stage_size: int = 0

    def instructions_for(self, device: int) -> tuple[Instruction, ...]:
        """What `device` runs: its pipeline stage's instructions, or the one program every device runs."""
        return self.by_stage[device // self.stage_size] if self.by_stage else self.instructions

    def describe(self) -> list[str]:
        """One readable line per instruction (tests and `--explain` style output)."""
        from moesim.simulator.phases import PHASES

        out = []
        for op, phase, layer, mb, operand in self.instructions:
            what = COLLECTIVES[operand] if op not in (COMPUTE, BESIDE) else ""
            name = PHASES[phase] if phase >= 0 else ""
            out.append(f"L{layer} mb{mb} {OPCODE_NAMES[op]} {what} {name}".replace("  ", " ").strip())
        return out

    def check(self, shape: StepShape) -> None:
        """A wait_then must be followed by a compute (in the step, or the next step's first
        instruction); every collective submitted is waited for in the same step."""
        for ins in self.by_stage or (self.instructions,):
            self._check(ins, shape)

    def _check(self, ins: tuple[Instruction, ...], shape: StepShape) -> None:
        for k, (op, _, layer, mb, _) in enumerate(ins):
            if op == WAIT_THEN:
                nxt = ins[k + 1] if k + 1 < len(ins) else ins[0]
                if nxt[0] != COMPUTE:
                    raise ValueError(f"instruction {k} (wait_then at layer {layer}) is not followed by a compute")
            if layer >= shape.num_layers or mb >= self.microbatches:
                raise ValueError(f"instruction {k} names layer {layer} / micro-batch {mb} outside the step")
