"""The device interpreter: runs a step program (simulator/program.py) on one device, step after step.

One SimPy process per device. Per step it asks the engine for the step's plans, times lists and
collectives, then walks the program's instructions, recording each phase's start and end in the
engine's flat per-step lists (index ((layer x N + device) x MB + micro-batch) x P + phase): the
hot loop touches no numpy scalars. Serving hooks (start at an arrival, replay a cached
iteration, the iteration barrier) and offloading (look up the expert cache when the dispatch is
submitted, wait for copies and host jobs before the experts) are the interpreter's, so every
schedule gets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator

from moesim.errors import MoesimError
from moesim.simulator.phases import EXP, STALL
from moesim.simulator.program import (ALL_REDUCE, ALL_REDUCE_MORE, BESIDE, COMPUTE, SUBMIT, WAIT, WAIT_ARRIVAL,
                                      WAIT_THEN, Program)

if TYPE_CHECKING:
    from moesim.simulator.engine import Engine

(DISPATCH, COMBINE, TP_ATTENTION, TP_FFN, MOE_REDUCE, DISPATCH_BWD, COMBINE_BWD, TP_ATTENTION_BWD, TP_FFN_BWD,
 GRAD_DENSE, GRAD_EXPERT, PARAM_GATHER_DENSE, PARAM_GATHER_EXPERT, PP_FWD, PP_BWD, GATHER_FWD, GATHER_BWD) = range(17)  # program.COLLECTIVES, in order


def compile_for_device(program: Program, d: int, n: int, P: int, moe_index: dict[int, int]) -> list[tuple]:
    """The program with every phase as its absolute index in the flat lists, for device `d`:
    (opcode, index, operand, layer, micro-batch, moe layer index, phase)."""
    MB = program.microbatches
    out = []
    for op, phase, layer, mb, operand in program.instructions_for(d):
        i = ((layer * n + d) * MB + mb) * P + (phase if phase >= 0 else 0)
        out.append((op, i, operand, layer, mb, moe_index.get(layer, -1), phase))
    return out


def collective_of(colls, which: int, layer: int, m: int):
    """The step's collective an instruction names (program.COLLECTIVES) for its layer / MoE layer."""
    if which == DISPATCH:
        return colls.moe[m][0]
    if which == COMBINE:
        return colls.moe[m][1]
    if which == TP_ATTENTION:
        return colls.tp[layer][0]
    if which == TP_FFN:
        return colls.tp[layer][1]
    if which == MOE_REDUCE:
        return colls.moe_reduce[m]
    if which in (DISPATCH_BWD, COMBINE_BWD):
        return colls.moe_bwd[m][which - DISPATCH_BWD]
    if which in (TP_ATTENTION_BWD, TP_FFN_BWD):
        return colls.tp_bwd[layer][which - TP_ATTENTION_BWD]
    if which in (GRAD_DENSE, GRAD_EXPERT):
        return colls.grads[layer][which - GRAD_DENSE]
    if which in (PARAM_GATHER_DENSE, PARAM_GATHER_EXPERT):
        return colls.gather[which - PARAM_GATHER_DENSE]
    if which in (PP_FWD, PP_BWD):
        return colls.pp[layer][which - PP_FWD]
    return colls.layer_gather[layer][which - GATHER_FWD]


def run_steps(engine: "Engine", d: int, run_step: Callable[[int, list, Any], Generator], first: int = 0,
              carry: Any = None, start: float = 0.0) -> Generator:
    """Every step the engine's plans hold from `first` on, on device `d`: the serving hooks (start
    at an arrival, replay a cached iteration, the iteration barrier) around `run_step(s, plans,
    carry)`, whose return value is handed to the next step's call (`carry` to the first). Both
    interpreters use it; `start` is the device's clock where the event-free path handed over."""
    if start > 0.0:
        yield engine.env.timeout(start)
    s = first
    plans = engine.plans(s)
    while plans is not None:
        if not (yield from engine.begin_step(plans, s, d)):  # True: replayed from a cached timeline
            carry = yield from run_step(s, plans, carry)
            engine.step_done(d, s)
            if engine.interactive:
                yield from engine.iteration_barrier(s)
        s += 1
        plans = engine.plans(s)


def device_stream(engine: "Engine", d: int, program: Program, first: int = 0, fused: bool = False,
                  start: float = 0.0) -> Generator:
    """Run `program` on device `d` for every step the engine's plans hold (from `first`, at `start`,
    the previous step's last wait having run this one's first compute where `fused`)."""
    code = compile_for_device(program, d, engine.n, engine.P, engine.moe_index)
    MB = program.microbatches
    return run_steps(engine, d, lambda s, plans, fused: _program_step(engine, d, code, MB, s, plans, bool(fused)),
                     first, fused, start)


def _program_step(engine: "Engine", d: int, code: list[tuple], MB: int, s: int, plans: list,
                  fused: bool) -> Generator:
    """One step of the compiled program on device `d`; returns whether its last wait already ran
    the next step's first compute in its wake-up (`fused`, carried into the next step)."""
    env = engine.env
    P = engine.P
    last = len(code) - 1
    offload = engine.offload
    st, en = engine.times(s)
    dur = [[x[d] for x in engine.lists(s, mb)] for mb in range(MB)]
    colls = [engine.collectives(s, mb) for mb in range(MB)]
    free_at = None  # a `beside` compute's end: the next wait does not end before it
    off_wait = None  # offloading: what this MoE layer's experts wait for
    for k, (op, i, operand, layer, mb, m, _) in enumerate(code):
        if op == COMPUTE:
            if fused:
                fused = False
            else:
                st[i] = env.now
                yield env.timeout(dur[mb][operand][layer])
            en[i] = env.now
        elif op == SUBMIT:
            coll = collective_of(colls[mb], operand, layer, m)
            coll.submit(d)
            if offload is not None and operand == DISPATCH:  # the router has chosen: look up the cache
                plan = plans[mb]
                w = offload.demand(plan, d, m)
                offload.prefetch(plan, d, m)
                off_wait = w if (w.fetched or w.host) else None  # all resident: the no-offload timeline
        elif op == WAIT_THEN:
            coll = collective_of(colls[mb], operand, layer, m)
            nb = env.now if free_at is None else free_at
            free_at = None
            if off_wait is not None:  # copies or host jobs to wait for before the experts
                if k == last or code[k + 1][6] != EXP:
                    raise MoesimError("with offloading, a program's dispatch wait must run the experts next")
                yield from coll.inbound(d, not_before=nb)
                st[i] = nb
                base = i - i % P
                ready = en[i] = st[base + STALL] = env.now
                stall = yield from engine.run_offloaded_experts(off_wait)
                en[base + STALL] = st[base + EXP] = ready + stall
                off_wait = None
                fused = True
                continue
            if k < last:
                nxt = code[k + 1]
                then, nxt_st = dur[nxt[4]][nxt[2]][nxt[3]], st
            else:  # the next step's first compute (a fixed batch: the next step is known already)
                following = engine.plans(s + 1)
                nxt = code[0]
                then, nxt_st = None, None
                if following is not None:
                    then = engine.lists(s + 1, nxt[4])[nxt[2]][d][nxt[3]]
                    nxt_st = engine.times(s + 1)[0]
            if then is None:
                yield from coll.inbound(d, not_before=nb, then=0.0)
                st[i] = nb
                en[i] = coll.received_at(d, not_before=nb)
                continue
            yield from coll.inbound(d, not_before=nb, then=then)
            st[i] = nb
            en[i] = nxt_st[nxt[1]] = coll.received_at(d, nb)
            fused = True
        elif op == WAIT:
            if off_wait is not None:
                raise MoesimError("with offloading, a program's dispatch wait must run the experts next")
            coll = collective_of(colls[mb], operand, layer, m)
            nb = env.now if free_at is None else free_at
            free_at = None
            st[i] = nb
            yield from coll.inbound(d, not_before=nb)
            en[i] = env.now
        elif op == BESIDE:
            now = env.now
            st[i] = now
            free_at = en[i] = now + dur[mb][operand][layer]
        elif op == WAIT_ARRIVAL:
            coll = collective_of(colls[mb], operand, layer, m)
            nb = env.now if free_at is None else free_at
            free_at = None
            yield from coll.inbound(d, not_before=nb, then=0.0)
            st[i] = nb
            en[i] = coll.received_at(d, not_before=nb)
        elif op == ALL_REDUCE:
            coll = collective_of(colls[mb], operand, layer, m)
            st[i] = env.now
            coll.submit(d)
            yield from coll.inbound(d)
            en[i] = env.now
        elif op == ALL_REDUCE_MORE:
            coll = collective_of(colls[mb], operand, layer, m)
            coll.submit(d)
            yield from coll.inbound(d)
            en[i] = env.now
    return fused
