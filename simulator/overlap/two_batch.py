"""Two-batch overlap (`policies.overlap: two_batch`), as DeepSeek-V3 serves prefill and decode.

A step's batch is split into two micro-batches. In each MoE layer a device runs attention of
micro-batch 0 and hands its dispatch to the network, then runs attention of micro-batch 1 while
micro-batch 0's tokens travel; it then runs micro-batch 0's experts while micro-batch 1's
dispatch is in flight, and so on: one micro-batch computes while the other communicates. A
micro-batch's combine is waited for just before its next layer (or at the step's end). Phase
spans are the device's own time: a dispatch or combine span is only the wait the device could
not hide behind the other micro-batch's compute.
"""

from __future__ import annotations

from moesim.simulator.overlap.schedules import Schedule
from moesim.simulator.program import (Program, StepShape, all_reduce, attention_block, compute, dense_ffn_block, submit,
                                      wait)

MICROBATCHES = 2


def two_batch_program(shape: StepShape) -> Program:
    MB = MICROBATCHES
    out = []
    pending: list[int | None] = [None] * MB  # the MoE layer whose combine a micro-batch still awaits

    def finish_combine(mb: int) -> None:
        layer = pending[mb]
        out.append(wait("combine", "combine", layer, mb))
        if shape.moe_tp:
            out.append(all_reduce("moe_reduce", "moe_allreduce", layer, mb))
        pending[mb] = None

    for layer, moe in enumerate(shape.is_moe):
        for mb in range(MB):
            if pending[mb] is not None:
                finish_combine(mb)
            out += attention_block(shape, layer, mb)
            if not moe:
                out += dense_ffn_block(shape, layer, mb)
                continue
            out += [submit("dispatch", layer, mb), compute("shared_expert", layer, mb)]
        if moe:
            for mb in range(MB):
                out += [wait("dispatch", "dispatch", layer, mb), compute("expert", layer, mb),
                        submit("combine", layer, mb)]
                pending[mb] = layer
    for mb in range(MB):
        if pending[mb] is not None:
            finish_combine(mb)
    return Program(tuple(out), MB)


TWO_BATCH = Schedule("two_batch", two_batch_program, MICROBATCHES, overlaps_comm=True)
