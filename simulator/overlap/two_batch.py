"""Two-batch overlap (`policies.overlap: two_batch`), as DeepSeek-V3 serves prefill and decode.

A step's batch is split into two micro-batches. In each MoE layer a device runs attention of
micro-batch 0 and hands its dispatch to the network, then runs attention of micro-batch 1 while
micro-batch 0's tokens travel; it then runs micro-batch 0's experts while micro-batch 1's
dispatch is in flight, and so on: one micro-batch computes while the other communicates. Phase
spans are the device's own time: a dispatch or combine span is only the wait the device could
not hide behind the other micro-batch's compute.
"""

from __future__ import annotations

from typing import Generator

from moesim.simulator.overlap.sequential import all_reduce
from moesim.simulator.phases import ATT, COMB, DENSE, DISP, EXP, MOE_AR, SHARED, TP


def two_batch_stream(engine, d: int) -> Generator:
    env = engine.env
    tp, moe_tp = engine.tp, engine.moe_tp
    n, P, MB = engine.n, engine.P, engine.microbatches
    is_moe, moe_index = engine.is_moe, engine.moe_index
    s = 0
    plans = engine.plans(0)
    while plans is not None:
        if (yield from engine.begin_step(plans, s, d)):  # serving: replayed from a cached timeline
            s += 1
            plans = engine.plans(s)
            continue
        st, en = engine.times(s)
        lists = [[x[d] for x in engine.lists(s, mb)] for mb in range(MB)]
        colls = [engine.collectives(s, mb) for mb in range(MB)]
        pending: list = [None] * MB  # (combine, index, moe index) still to be waited for, per micro-batch

        def finish_combine(mb: int) -> Generator:
            comb, i, m = pending[mb]
            st[i + COMB] = env.now
            yield from comb.inbound(d, not_before=env.now)
            en[i + COMB] = env.now
            if moe_tp > 1:
                st[i + MOE_AR] = env.now
                yield from all_reduce(d, colls[mb].moe_reduce[m])
                en[i + MOE_AR] = env.now
            pending[mb] = None

        def compute(i: int, phase: int, seconds: float) -> Generator:
            st[i + phase] = env.now
            yield env.timeout(seconds)
            en[i + phase] = env.now

        for layer, moe_layer in enumerate(is_moe):
            index = [((layer * n + d) * MB + mb) * P for mb in range(MB)]
            for mb in range(MB):
                att, dense, shared, _ = lists[mb]
                i = index[mb]
                if pending[mb] is not None:
                    yield from finish_combine(mb)
                yield from compute(i, ATT, att[layer])
                if tp > 1:
                    st[i + TP] = env.now
                    yield from all_reduce(d, colls[mb].tp[layer][0])
                    en[i + TP] = env.now
                if not moe_layer:
                    yield from compute(i, DENSE, dense[layer])
                    if tp > 1:
                        yield from all_reduce(d, colls[mb].tp[layer][1])
                        en[i + TP] = env.now
                    continue
                colls[mb].moe[moe_index[layer]][0].submit(d)
                yield from compute(i, SHARED, shared[layer])
            if not moe_layer:
                continue
            m = moe_index[layer]
            for mb in range(MB):
                i = index[mb]
                disp, comb = colls[mb].moe[m]
                st[i + DISP] = env.now
                yield from disp.inbound(d, not_before=env.now)
                en[i + DISP] = env.now
                yield from compute(i, EXP, lists[mb][3][layer])
                comb.submit(d)
                pending[mb] = (comb, i, m)
        for mb in range(MB):
            if pending[mb] is not None:
                yield from finish_combine(mb)
        engine.step_done(d, s)
        if engine.interactive:
            yield from engine.iteration_barrier(s)
        s += 1
        plans = engine.plans(s)
