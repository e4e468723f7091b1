"""Shortcut overlap (`policies.overlap: shortcut`), as ScMoE's shortcut-connected MoE.

The MoE block of a layer takes its input from before the layer's attention (the shortcut), so
its dispatch leaves as the layer starts and travels while the device runs attention and the
shared-expert compute; the device waits only for what that compute could not hide.
"""

from __future__ import annotations

from moesim.simulator.overlap.schedules import Schedule
from moesim.simulator.program import (Program, StepShape, all_reduce, attention_block, compute, dense_ffn_block, submit,
                                      wait)


def shortcut_program(shape: StepShape) -> Program:
    out = []
    for layer, moe in enumerate(shape.is_moe):
        if moe:
            out.append(submit("dispatch", layer))  # the MoE input is ready before this layer's attention
        out += attention_block(shape, layer)
        if not moe:
            out += dense_ffn_block(shape, layer)
            continue
        out += [compute("shared_expert", layer), wait("dispatch", "dispatch", layer), compute("expert", layer),
                submit("combine", layer), wait("combine", "combine", layer)]
        if shape.moe_tp:
            out.append(all_reduce("moe_reduce", "moe_allreduce", layer))
    return Program(tuple(out))


SHORTCUT = Schedule("shortcut", shortcut_program, overlaps_comm=True)
