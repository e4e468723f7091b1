"""Shortcut overlap (`policies.overlap: shortcut`), as ScMoE's shortcut-connected MoE.

The MoE block of a layer takes its input from before the layer's attention (the shortcut), so
its dispatch leaves as the layer starts and travels while the device runs attention and the
dense / shared-expert compute; the device waits only for what that compute could not hide.
"""

from __future__ import annotations

from typing import Generator

from moesim.simulator.overlap.sequential import all_reduce
from moesim.simulator.phases import ATT, COMB, DENSE, DISP, EXP, MOE_AR, SHARED, TP


def shortcut_stream(engine, d: int) -> Generator:
    env = engine.env
    tp, moe_tp = engine.tp, engine.moe_tp
    n, P = engine.n, engine.P
    is_moe, moe_index = engine.is_moe, engine.moe_index
    s = 0
    plans = engine.plans(0)
    while plans is not None:
        st, en = engine.times(s)
        att, dense, shared, expert = (x[d] for x in engine.lists(s))
        colls = engine.collectives(s)

        def compute(i: int, phase: int, seconds: float) -> Generator:
            st[i + phase] = env.now
            yield env.timeout(seconds)
            en[i + phase] = env.now

        for layer, moe_layer in enumerate(is_moe):
            i = (layer * n + d) * P
            if moe_layer:
                disp, comb = colls.moe[moe_index[layer]]
                disp.submit(d)  # the shortcut: the MoE input is ready before this layer's attention
            yield from compute(i, ATT, att[layer])
            if tp > 1:
                st[i + TP] = env.now
                yield from all_reduce(d, colls.tp[layer][0])
                en[i + TP] = env.now
            if not moe_layer:
                yield from compute(i, DENSE, dense[layer])
                if tp > 1:
                    yield from all_reduce(d, colls.tp[layer][1])
                    en[i + TP] = env.now
                continue
            yield from compute(i, SHARED, shared[layer])
            st[i + DISP] = env.now
            yield from disp.inbound(d, not_before=env.now)
            en[i + DISP] = env.now
            yield from compute(i, EXP, expert[layer])
            comb.submit(d)
            st[i + COMB] = env.now
            yield from comb.inbound(d, not_before=env.now)
            en[i + COMB] = env.now
            if moe_tp > 1:
                st[i + MOE_AR] = env.now
                yield from all_reduce(d, colls.moe_reduce[moe_index[layer]])
                en[i + MOE_AR] = env.now
        engine.step_done(d, s)
        s += 1
        plans = engine.plans(s)
