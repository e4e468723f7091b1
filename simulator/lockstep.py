"""The event-free interpreter: steps whose collectives need no event loop run without SimPy.

When every all-to-all of a step waits for every device (a dense all-to-all, or serving's EP
group, where every rank enters each kernel), each collective is costed in one wave, when its
last device submits, and the waves of a step come in program order. A step is then a recurrence
over vectors of device clocks, one numpy pass per instruction of the step program, instead of
one SimPy event per device and instruction. The arithmetic is the event interpreter's,
operation for operation (SimPy's `now + delay`, the collectives' `max(not_before, arrival)`),
and the fabric breaks ties between flows by device index, not by the order the event loop ran
the devices in, so the timeline equals the event path's to the bit (tests/test_lockstep.py
checks every bundled example).

What runs here: no offloading and no per-unit streams, TP and MoE-TP only as one group of every
device, every collective a barrier (or one that moves nothing), or in a fixed batch with one
micro-batch a sparse plain all-to-all whose devices share one kernel floor. With one micro-batch
the program waits for each collective before it submits the next, so the waves are ordered; with
several (two-batch overlap) a step whose two waves fall on the same moment goes to the event loop.

A sparse all-to-all: the event loop runs a wave whenever a submit completes some destination's
senders. Its flows enter the fabric in the order they are submitted (one floor for all), and each
link serves flows FIFO by start time, so costing all of them in one pass at the end queues them
exactly as those waves do (equal to rounding: the waves' sums restart where the pass runs on),
and a destination wakes at its last sender's submit or its own wait, whichever is later. That
holds while no wave of a later collective comes before this one's last (the last submit): each
collective's first wave (the earliest moment some destination's senders have all submitted) is
checked against it, and a step where that fails goes to the event loop, with the step before
when the clash crosses the step boundary (that step is kept undoable until then). A fixed-batch
run whose step cannot run here hands the rest of the run to the event loop (`Handover`); serving
with one EP group runs here whole. `MOESIM_ENGINE=events` forces the event loop (for comparisons).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim import interrupts
from moesim.errors import ConfigError
from moesim.simulator.collectives import GroupCollective, StagedCollective
from moesim.simulator.interpreter import collective_of, compile_for_device
from moesim.simulator.network import Collective
from moesim.simulator.phases import INFERENCE_PHASES
from moesim.simulator.program import (ALL_REDUCE, ALL_REDUCE_MORE, BESIDE, COMPUTE, SUBMIT, WAIT, WAIT_ARRIVAL,
                                      WAIT_THEN)

if TYPE_CHECKING:
    from moesim.simulator.engine import Engine

ENGINE_VARIABLE = "MOESIM_ENGINE"
ENGINE_CHOICES = ("auto", "events")
_OPS = {COMPUTE, BESIDE, SUBMIT, WAIT, WAIT_ARRIVAL, WAIT_THEN, ALL_REDUCE, ALL_REDUCE_MORE}


def engine_choice() -> str:
    """`MOESIM_ENGINE`: auto (the event-free path where it applies) or events (always SimPy)."""
    value = os.environ.get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"
    if value not in ENGINE_CHOICES:
        raise ConfigError(f"{ENGINE_VARIABLE}={os.environ[ENGINE_VARIABLE]!r} is not an engine: choose auto (the "
                          "event-free path for steps whose collectives are all barriers, the event loop otherwise) "
                          "or events (the event loop for every step)", field=ENGINE_VARIABLE)
    return value


@dataclass
class Handover:
    """Where the event loop takes over: the first step it runs, every device's clock, and whether
    the previous step's last wait already ran that step's first compute."""

    step: int
    clocks: list[float]
    fused: bool


def program_fits(engine: "Engine") -> bool:
    """Whether the run's shape allows the event-free path at all (its steps are checked one by one)."""
    if engine_choice() == "events" or engine.offload is not None or engine.unit_streams:
        return False
    if engine.program.phases != len(INFERENCE_PHASES):  # a training step: its backward and gradients run on events
        return False
    if engine.tp not in (1, engine.n) or engine.moe_tp not in (1, engine.n):
        return False  # several TP groups: their all-reduces interleave in time
    code = engine.program.instructions
    if any(op not in _OPS for op, *_ in code):
        return False
    if engine.interactive and not bool(engine._group_pairs.sum() == engine.n * (engine.n - 1)):
        return False  # several EP groups: their waves interleave in time
    if engine.microbatches > 1:
        return True  # the step checks that its waves come in program order
    open_coll = None  # each submitted collective is waited for before the next submit
    for op, _, layer, _, operand in code:
        if op == SUBMIT:
            if open_coll is not None:
                return False
            open_coll = (operand, layer)
        elif op in (WAIT, WAIT_ARRIVAL, WAIT_THEN) and open_coll == (operand, layer):
            open_coll = None
    return open_coll is None


SPARSE = "sparse"  # a plain all-to-all whose destinations wait for their own senders only


def _barrier(coll) -> bool | str | None:
    """True: every device waits for every other (one wave at the last submit); False: it moves
    nothing and nobody waits; SPARSE: a plain all-to-all where some pairs send nothing, costed
    here in one pass when every device's kernel floor is the same (so its flows enter the fabric
    in the order they are submitted); None: the event loop's business (a sparse staged one)."""
    if isinstance(coll, Collective):
        if coll.dense:
            return True
    elif isinstance(coll, StagedCollective):
        if coll._all_need_all:
            return True
    else:
        return None
    if coll.need.any():
        if isinstance(coll, Collective) and (coll._floor is None or min(coll._floor) == max(coll._floor)):
            return SPARSE
        return None
    off = coll.matrix.copy()
    np.fill_diagonal(off, 0.0)
    return False if not off.any() else None


class _Ambiguous(Exception):
    """Two waves at the same moment with both collectives open, or a wave that the event loop
    would run before an earlier collective's last one: the event loop's order between them is not
    the program's, so the step goes to the event loop (`previous`: the clash is with the previous
    step's last sparse collective, so that step goes too)."""

    def __init__(self, previous: bool = False):
        super().__init__()
        self.previous = previous


def run_lockstep(engine: "Engine") -> Handover | None:
    """Run the engine's steps event-free while they allow it; None when the run is done, else
    where the event loop takes over."""
    n, P, MB = engine.n, engine.P, engine.microbatches
    code = [(op, i, operand, layer, mb, m) for op, i, operand, layer, mb, m, _ in
            compile_for_device(engine.program, 0, n, P, engine.moe_index)]
    clocks = np.zeros(n)
    fused = False
    s = 0
    plans = engine.plans(0)
    engine.use_array_times(True)
    # a step that ended on a sparse collective stays undoable until the next step's first wave is
    # known to come after that collective's last: (step, fabric state, clocks, fused) at its start
    open_step = None
    after = None  # the previous step's last sparse wave: this step's waves must come later
    while plans is not None:
        interrupts.check()
        colls = kinds = None
        if not (engine.interactive and engine.replay(s) is not None):  # a replayed iteration runs no collective
            colls = [engine.collectives(s, mb) for mb in range(MB)]
            kinds = [[(_barrier(d), _barrier(c)) for d, c in cs.moe] for cs in colls]
            sparse_here = any(k is SPARSE for per_mb in kinds for pair in per_mb for k in pair)
            if any(k is None for per_mb in kinds for pair in per_mb for k in pair) or any(
                    len(c.members) != 1 for cs in colls for group in (*cs.tp, cs.moe_reduce) for c in group) or (
                    sparse_here and (MB > 1 or engine.interactive)):
                return _hand_over(engine, s, clocks, fused, open_step)
        saved = (engine.fabric.free_at.copy(), engine.fabric._pair_bytes.copy())
        tail = None
        try:
            if engine.interactive:
                new_clocks = _iteration(engine, s, plans, code, colls, kinds, clocks)
            else:
                start_at = plans[0].inputs.start_at if plans[0].inputs is not None else None
                if start_at is not None:
                    clocks = np.where(start_at > clocks, clocks + (start_at - clocks), clocks)
                fused_out, new_clocks, tail = _step(engine, s, plans, code, colls, kinds, clocks, fused, after)
        except _Ambiguous as clash:  # undo the step's waves; the event loop runs it from its start
            _undo(engine, s, saved)
            if clash.previous and open_step is not None:  # and the step before, whose last wave comes too late
                _undo(engine, open_step[0], open_step[1])
                return _hand_over(engine, open_step[0], open_step[2], open_step[3])
            return _hand_over(engine, s, clocks, fused, open_step)
        if open_step is not None:
            _done(engine, open_step[0])
            open_step = None
        if not engine.interactive:
            if tail is None:
                _done(engine, s)
            else:
                open_step = (s, saved, clocks, fused)
            fused = fused_out
        after = tail
        clocks = new_clocks
        s += 1
        engine.lockstep_clock = float(clocks.max())  # serving forms the next iteration at the barrier's time
        plans = engine.plans(s)
    if open_step is not None:
        _done(engine, open_step[0])
    return None


def _undo(engine: "Engine", s: int, saved: tuple) -> None:
    """Put the fabric back as it was before step `s` and drop the step's collectives."""
    engine.fabric.free_at[:], engine.fabric._pair_bytes[:] = saved
    for mb in range(engine.microbatches):
        engine._by_step.pop((s, mb), None)


def _hand_over(engine: "Engine", s: int, clocks: np.ndarray, fused: bool, open_step=None) -> Handover:
    if open_step is not None:  # the step before ran here and is final now
        _done(engine, open_step[0])
    engine.use_array_times(False)  # (an undone step's cells are all written again by the event loop)
    if engine.interactive:  # every device waits at the iteration barrier until the last is done
        clocks = np.full(engine.n, clocks.max())
    return Handover(s, clocks.tolist(), fused)


def _done(engine: "Engine", s: int) -> None:
    for d in range(engine.n):
        engine.step_done(d, s)


def _iteration(engine: "Engine", s: int, plans: list, code: list, colls, kinds, clocks: np.ndarray) -> np.ndarray:
    """A serving iteration: every device starts together (after the barrier), waits for the first
    arrival, replays a cached timeline or runs the step, and the iteration ends at the last device."""
    now = float(clocks.max())  # the barrier released every device at the last one's end
    start_at = plans[0].inputs.start_at if plans[0].inputs is not None else None
    if start_at is not None and start_at > now:
        now = now + (start_at - now)
    engine.lockstep_clock = now
    engine.step_started(s)
    replay = engine.replay(s)
    t = np.full(engine.n, now)
    if replay is not None:
        t = t + np.asarray(replay.duration, dtype=float)
    else:
        _, t, _ = _step(engine, s, plans, code, colls, kinds, t, False, None)
    _done(engine, s)
    engine._iteration_end(s)
    return t


def _works(plan) -> tuple:
    return (plan.attention, plan.dense_ffn, plan.shared_expert, plan.expert)


def _step(engine: "Engine", s: int, plans: list, code: list, colls: list, kinds: list, now: np.ndarray,
          fused: bool, after: float | None) -> tuple[bool, np.ndarray, float | None]:
    """One step of the program on every device at once; returns (fused, clocks) as the event
    interpreter's `_program_step` leaves them, and the time of the last wave of the step's last
    sparse collective where no barrier followed it (else None).

    A sparse all-to-all runs its waves at the submits that complete a destination's senders; it
    is costed here in one pass, which equals those waves where no wave of a later collective
    comes before its last (checked: `after`, and each collective's first wave against it)."""
    n, P, MB = engine.n, engine.P, engine.microbatches
    width = n * MB * P  # a phase's cells for every device: i, i + MB x P, ...
    work = [_works(p) for p in plans]
    st, en = engine.times(s)
    last = len(code) - 1
    free_at = None
    wave_at: dict[int, float | np.ndarray] = {}  # per collective (its id): when its one wave ran (sparse:
    own: dict[int, np.ndarray] = {}  # per destination, the wave that completed its senders)
    last_wave = -np.inf
    inherited = after is not None  # `after` is the previous step's

    def ordered(first_wave: float) -> None:  # the event loop runs this wave after the last sparse one
        if after is not None and not first_wave > after:
            raise _Ambiguous(previous=inherited)

    for k, (op, i, operand, layer, mb, m) in enumerate(code):
        cells = slice(i, i + width, MB * P)
        if op == COMPUTE:
            if fused:
                fused = False
            else:
                st[cells] = now
                now = now + work[mb][operand][layer]
            en[cells] = now
        elif op == BESIDE:
            st[cells] = now
            free_at = now + work[mb][operand][layer]
            en[cells] = free_at
        elif op == SUBMIT:
            coll = collective_of(colls[mb], operand, layer, m)
            barrier = kinds[mb][m][0 if operand == 0 else 1]
            t = now if coll._floor is None else now + np.asarray(coll._floor)
            if coll._floor is not None:  # a device does not leave the kernel before its floor
                own[id(coll)] = t
            if barrier is SPARSE:
                # a destination is ready (its wave runs) when the last of its senders submits
                ready = np.where(coll.need, now[:, None], -np.inf).max(axis=0)
                ordered(float(ready[np.isfinite(ready)].min()))
                wave_at[id(coll)] = ready
                after, inherited = float(now.max()), False  # its last wave: the last submit
                _wave(coll, t)
            elif barrier:
                w = float(now.max())  # the last device's submit runs the wave
                if MB > 1 and w <= last_wave:
                    raise _Ambiguous
                ordered(w)
                after = None  # every device waits for this wave: later ones follow it
                wave_at[id(coll)] = last_wave = w
                _wave(coll, t)
        elif op in (ALL_REDUCE, ALL_REDUCE_MORE):  # one group of every device: a barrier
            if op == ALL_REDUCE:
                st[cells] = now
            w = float(now.max())
            if MB > 1 and w <= last_wave:
                raise _Ambiguous
            ordered(w)
            after = None
            last_wave = w
            now = _all_reduce(engine, collective_of(colls[mb], operand, layer, m), now)
            en[cells] = now
        else:  # a wait
            coll = collective_of(colls[mb], operand, layer, m)
            barrier = kinds[mb][m][0 if operand == 0 else 1]
            nb = now if free_at is None else free_at
            free_at = None
            t_own = own.get(id(coll))
            nb2 = nb if t_own is None else np.where(t_own > nb, t_own, nb)
            a = np.asarray(coll._arrival) if barrier else None  # (-inf where nothing arrives)
            used = nb2 if a is None else np.where(nb2 > a, nb2, a)  # received_at
            nxt_st = st
            then = None
            if op == WAIT_THEN:
                if k < last:
                    nxt = code[k + 1]
                    then, nxt_i = work[nxt[4]][nxt[2]][nxt[3]], nxt[1]
                else:  # the next step's first compute (a fixed batch: known already)
                    following = engine.plans(s + 1)
                    nxt = code[0]
                    if following is not None:
                        then = _works(following[nxt[4]])[nxt[2]][nxt[3]]
                        nxt_st, nxt_i = engine.times(s + 1)[0], nxt[1]
            x = used + then if then is not None else used + 0.0
            base = now if not barrier else np.maximum(now, wave_at[id(coll)])  # woken by its wave, or later
            delay = x - base
            woke = np.where(delay > 0, base + delay, base)
            st[cells] = nb
            if op == WAIT:
                en[cells] = woke
            else:
                en[cells] = used
                if then is not None:
                    nxt_st[slice(nxt_i, nxt_i + width, MB * P)] = used
                    fused = True
            now = woke
    return fused, now, after


def _all_reduce(engine: "Engine", coll: GroupCollective, now: np.ndarray) -> np.ndarray:
    """`GroupCollective` over every device: the wave at the last arrival, everyone leaves together."""
    n = now.size
    wave = float(now.max())
    start = now if coll.floor is None else now + coll.floor
    inbound = engine.fabric.transfer(np.arange(n, dtype=np.int64), start, coll.matrix, coll.kind)
    finish = max(float(inbound.max()), float(start.max())) + coll.extra
    coll.done[0] = finish
    delay = max(finish, 0.0) + 0.0 - wave
    return np.full(n, wave + delay if delay > 0 else wave)


def _wave(coll, times: np.ndarray) -> None:
    """A barrier collective's one wave, as its last submit runs it: every device's bytes enter the
    fabric at `times` (a plain or a staged all-to-all)."""
    n = times.size
    if coll._floor is not None:
        coll._own = times.tolist()
    coll._queue, coll._times = list(range(n)), times.tolist()
    coll.left = 0
    if isinstance(coll, StagedCollective):
        coll._pending = [0] * n
    else:
        coll.pending = np.zeros_like(coll.pending)
    coll._wave()
