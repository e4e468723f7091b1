"""No overlap between micro-batches: a device runs each layer's phases in order (`policies.overlap: none`).

Per MoE layer: attention, hand the dispatch bytes to the network, run the shared experts while
they travel (`overlap_shared_experts`), wait for the inbound tokens, run the local experts, hand
back the combine bytes, wait for the own tokens to return. Compute that directly follows a wait
shares its wake-up (the wait fires when the bytes have arrived plus the compute time), so a MoE
layer costs two SimPy events per device. Times go into the engine's flat per-step lists: the
hot loop touches no numpy scalars.
"""

from __future__ import annotations

from typing import Generator

from moesim.simulator.phases import ATT, COMB, DENSE, DISP, EXP, MOE_AR, SHARED, STALL, TP


def all_reduce(d: int, coll) -> Generator:
    """An all-reduce within the device's group: hand over this rank's bytes, wait for the group."""
    coll.submit(d)
    yield from coll.inbound(d)


def sequential_stream(engine, d: int) -> Generator:
    env = engine.env
    overlap = engine.sc.config.policies.overlap_shared_experts
    tp, moe_tp = engine.tp, engine.moe_tp
    n_layers, n, P = engine.n_layers, engine.n, engine.P
    is_moe, moe_index, offload = engine.is_moe, engine.moe_index, engine.offload
    pending_attention = False  # the previous wait already ran this layer's attention
    s = 0
    plans = engine.plans(0)
    while plans is not None:
        plan = plans[0]
        if (yield from engine.begin_step(plans, s, d)):  # serving: replayed from a cached timeline
            s += 1
            plans = engine.plans(s)
            continue
        st, en = engine.times(s)
        att, dense, shared, expert = (x[d] for x in engine.lists(s))
        colls = engine.collectives(s)
        for layer, moe_layer in enumerate(is_moe):
            i = (layer * n + d) * P
            if not pending_attention:
                st[i + ATT] = env.now
                yield env.timeout(att[layer])
            en[i + ATT] = env.now
            pending_attention = False
            if tp > 1:
                st[i + TP] = env.now
                yield from all_reduce(d, colls.tp[layer][0])
                en[i + TP] = env.now
            if not moe_layer:
                st[i + DENSE] = env.now
                yield env.timeout(dense[layer])
                en[i + DENSE] = env.now
                if tp > 1:
                    yield from all_reduce(d, colls.tp[layer][1])
                    en[i + TP] = env.now
                continue
            m = moe_index[layer]
            disp, comb = colls.moe[m]
            disp.submit(d)
            wait = None
            if offload is not None:  # the router has chosen: look up the cache, start copies
                wait = offload.demand(plan, d, m)
                offload.prefetch(plan, d, m)
                if not wait.fetched and not wait.host:
                    wait = None  # every expert resident: exactly the no-offload timeline
            now = env.now
            busy_until = now
            if overlap:  # shared experts compute while the dispatch bytes travel
                st[i + SHARED] = now
                busy_until = en[i + SHARED] = now + shared[layer]
            if wait is None:
                yield from disp.inbound(d, not_before=busy_until, then=expert[layer])
                now = env.now
                st[i + DISP] = busy_until
                en[i + DISP] = st[i + EXP] = disp.received_at(d, busy_until)
            else:
                yield from disp.inbound(d, not_before=busy_until)
                st[i + DISP] = busy_until
                ready = en[i + DISP] = st[i + STALL] = env.now
                stall = yield from engine.run_offloaded_experts(wait)
                now = env.now
                en[i + STALL] = st[i + EXP] = ready + stall
            en[i + EXP] = st[i + COMB] = now
            comb.submit(d)
            # the next layer's attention (if it follows directly) runs in the same wake-up
            nxt = None
            if overlap and moe_tp == 1 and not engine.interactive:  # a serving step is formed when it starts
                if layer + 1 < n_layers:
                    nxt, j, nxt_st = att[layer + 1], i + n * P, st
                else:
                    following = engine.plans(s + 1)
                    if following is not None:
                        nxt, j, nxt_st = engine.lists(s + 1)[0][d][0], d * P, engine.times(s + 1)[0]
            chain = nxt is not None
            yield from comb.inbound(d, not_before=now, then=nxt if chain else 0.0)
            en[i + COMB] = done = comb.received_at(d, not_before=now)
            if chain:
                pending_attention = True
                nxt_st[j + ATT] = done
            if not overlap:
                st[i + SHARED] = env.now
                yield env.timeout(shared[layer])
                en[i + SHARED] = env.now
            if moe_tp > 1:  # experts were split over the MoE-TP group: sum their partial outputs
                st[i + MOE_AR] = env.now
                yield from all_reduce(d, colls.moe_reduce[m])
                en[i + MOE_AR] = env.now
        engine.step_done(d, s)
        if engine.interactive:
            yield from engine.iteration_barrier(s)
        s += 1
        plans = engine.plans(s)
