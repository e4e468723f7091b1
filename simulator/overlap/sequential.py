"""No overlap between micro-batches (`policies.overlap: none`): each layer's phases in order.

Per MoE layer: attention, hand the dispatch bytes to the network, run the shared experts while
they travel (`overlap_shared_experts`), wait for the inbound tokens and run the local experts in
the same wake-up, hand back the combine bytes, wait for the own tokens to return (and, when the
next layer's attention follows directly, run it in that wake-up too: a MoE layer costs two SimPy
events per device).
"""

from __future__ import annotations

from moesim.simulator.overlap.schedules import Schedule
from moesim.simulator.program import (Program, StepShape, all_reduce, attention_block, beside, compute, dense_ffn_block,
                                      submit, wait_arrival, wait_then)


def sequential_program(shape: StepShape) -> Program:
    # the next layer's attention joins the combine's wake-up when nothing runs between them (a
    # serving step is formed when it starts, so never across a step's end there)
    chain = shape.overlap_shared_experts and not shape.moe_tp and not shape.serving
    out = []
    for layer, moe in enumerate(shape.is_moe):
        out += attention_block(shape, layer)
        if not moe:
            out += dense_ffn_block(shape, layer)
            continue
        out.append(submit("dispatch", layer))
        if shape.overlap_shared_experts:
            out.append(beside("shared_expert", layer))
        out += [wait_then("dispatch", "dispatch", layer), compute("expert", layer), submit("combine", layer)]
        out.append((wait_then if chain else wait_arrival)("combine", "combine", layer))
        if not shape.overlap_shared_experts:
            out.append(compute("shared_expert", layer))
        if shape.moe_tp:
            out.append(all_reduce("moe_reduce", "moe_allreduce", layer))
    return Program(tuple(out))


SEQUENTIAL = Schedule("none", sequential_program, offload=True, token_ids=True)
