"""The step interpreter with a stream per compute unit: where a program has several micro-batches
and parts of a layer run on units beside the accelerator, each micro-batch's instructions run as
their own chain, and each unit of the device runs one piece of work at a time (first come, first
served), so one micro-batch's attention on a PIM or the host CPU overlaps another's experts on
the accelerator where the dependencies allow (Duplex's co-processing, MoE-Lens's CPU/GPU
pipelining).

A compute instruction runs its part's seconds on each unit that has any (`StepPlan.unit_time`,
the accelerator's share first, a hand-off counting on the unit it hands to): a chain of ops one
unit after the other, a device's routed experts (split by co_process) on their units at once; a
wait holds only its own micro-batch. Phase spans are the micro-batch's own, so with units computing at once the
phase shares of device time may add up past 1. Used by the engine where plans carry
`unit_time`, the program has more than one micro-batch and nothing is offloaded; single-unit
runs keep `interpreter.device_stream` (bit-identical results).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

import numpy as np
import simpy

from moesim.errors import MoesimError
from moesim.simulator.interpreter import collective_of, compile_for_device, run_steps
from moesim.simulator.program import (
    ALL_REDUCE,
    ALL_REDUCE_MORE,
    BESIDE,
    COMPUTE,
    SUBMIT,
    WAIT,
    WAIT_ARRIVAL,
    WORK,
    Program,
)

if TYPE_CHECKING:
    from moesim.simulator.engine import Engine


def _run_on_units(env: simpy.Environment, seconds: np.ndarray, units: list[simpy.Resource], st: list, en: list,
                  i: int) -> Generator:
    """One part's work: its seconds on each unit in turn, each unit taken while it runs."""
    started = False
    for u, t in enumerate(seconds.tolist()):
        if t <= 0:
            continue
        with units[u].request() as turn:
            yield turn
            if not started:
                st[i] = env.now
                started = True
            yield env.timeout(t)
    if not started:
        st[i] = env.now
    en[i] = env.now


def _run_at_once(env: simpy.Environment, seconds: np.ndarray, units: list[simpy.Resource], st: list, en: list,
                 i: int) -> Generator:
    """A part whose shares on different units are independent (a device's expert copies split by
    co_process): each unit runs its share when it is free; the part ends with the last share."""
    work = [(u, t) for u, t in enumerate(seconds.tolist()) if t > 0]
    if len(work) <= 1:
        yield from _run_on_units(env, seconds, units, st, en, i)
        return
    starts: list[float] = []

    def share(u: int, t: float) -> Generator:
        with units[u].request() as turn:
            yield turn
            starts.append(env.now)
            yield env.timeout(t)

    yield env.all_of([env.process(share(u, t)) for u, t in work])
    st[i] = min(starts)
    en[i] = env.now


def _chain(engine: "Engine", code: list[tuple], split: np.ndarray, colls, units: list[simpy.Resource], st: list,
           en: list, d: int) -> Generator:
    """One micro-batch's instructions in order; `split` is its plan's (parts, units, layers) seconds."""
    env = engine.env
    beside = None  # a compute running beside the next wait (shared experts during dispatch)
    for op, i, operand, layer, _mb, m, _phase in code:
        run = _run_at_once if operand == WORK["expert"] and op in (COMPUTE, BESIDE) else _run_on_units
        if op == COMPUTE:
            yield from run(env, split[operand, :, layer], units, st, en, i)
        elif op == BESIDE:
            beside = env.process(run(env, split[operand, :, layer], units, st, en, i))
        elif op == SUBMIT:
            collective_of(colls, operand, layer, m).submit(d)
        elif op in (WAIT, WAIT_ARRIVAL):
            st[i] = env.now
            yield from collective_of(colls, operand, layer, m).inbound(d)
            if beside is not None:
                yield beside
                beside = None
            en[i] = env.now
        elif op in (ALL_REDUCE, ALL_REDUCE_MORE):
            coll = collective_of(colls, operand, layer, m)
            if op == ALL_REDUCE:
                st[i] = env.now
            coll.submit(d)
            yield from coll.inbound(d)
            en[i] = env.now
        else:
            raise MoesimError("a program run with a stream per unit uses compute, beside, submit, wait and "
                              "all_reduce (wait_then fuses a compute into a wait, which one stream per unit cannot)")


def unit_device_stream(engine: "Engine", d: int, program: Program, first: int = 0, carry=None,
                       start: float = 0.0) -> Generator:
    """Run `program` on device `d` for every step, one chain per micro-batch, one queue per unit."""
    env = engine.env
    MB = program.microbatches
    code = compile_for_device(program, d, engine.n, engine.P, engine.moe_index)
    chains = [[ins for ins in code if ins[4] == mb] for mb in range(MB)]
    units = [simpy.Resource(env, capacity=1) for _ in engine.sc.machine.units]

    def step(s: int, plans: list, _carry) -> Generator:
        st, en = engine.times(s)
        yield env.all_of([env.process(_chain(engine, chains[mb], plans[mb].unit_time[:, :, :, d],
                                             engine.collectives(s, mb), units, st, en, d)) for mb in range(MB)])

    return run_steps(engine, d, step, first, carry, start)
