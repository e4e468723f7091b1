"""The incremental continuous-batching scheduler (`ContinuousBatcher`): hand-calculated
iterations per policy, and invariants checked from outside over seeded random runs (KV never over
capacity, token conservation, re-prefill after preemption, budget and running limits).
`schedule_iterations` is built on it; its own tests are in test_arrivals.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.simulator.compose import KV_POLICIES, SERVING_ORDERS
from moesim.workloads.batching import PREEMPT, BatchItem, ContinuousBatcher, SchedulerPolicy


def P(rid, tokens, kv):
    return BatchItem(rid, "prefill", tokens, kv)


def D(rid, kv):
    return BatchItem(rid, "decode", 1, kv)


def step_all(b: ContinuousBatcher, now_of=lambda it: float(it)):
    """(batch, emitted, finished, kv_used after commit) per iteration until done."""
    out, it = [], 0
    while not b.done:
        batch = b.next_batch(now_of(it))
        assert batch, "stalled"
        em = b.emitted(batch)
        fin = b.commit(batch)
        out.append((batch, em, fin, b.kv_used_tokens))
        it += 1
    return out


# --- hand-calculated iterations -------------------------------------------------------------

def _two(order):
    # r0: prompt 3, output 2; r1: prompt 2, output 1; both arrive at 0; 4 tokens per iteration
    b = ContinuousBatcher(SchedulerPolicy(max_batch_tokens=4, max_running=4, order=SERVING_ORDERS[order]), kv_capacity_tokens=100)
    b.submit(1, 0.0, 2, 1)  # submitted out of order: the queue is FIFO by (arrival, id)
    b.submit(0, 0.0, 3, 2)
    return b


def test_hand_mixed():
    b = _two("mixed")
    assert b.next_batch(0.0) == b.next_batch(0.0)  # planning changes nothing
    assert step_all(b) == [
        # it0: r0 admitted with its whole prompt (3, its first token), r1 gets the last budget token
        ([P(0, 3, 0), P(1, 1, 0)], [0], [], 5 + 3),
        # it1: r0 decodes (kv 3 = prompt + 1 - 1) -> its 2nd and last token; r1's last chunk -> its only token
        ([D(0, 3), P(1, 1, 1)], [0, 1], [0, 1], 0),
    ]
    assert b.preemptions() == {} and b.running == 0 and b.waiting == 0


def test_hand_prefill_first():
    b = _two("prefill_first")
    assert step_all(b) == [
        ([P(0, 3, 0), P(1, 1, 0)], [0], [], 8),
        ([P(1, 1, 1)], [1], [1], 5),  # prefill work exists (r1's rest): no decode for r0
        ([D(0, 3)], [0], [0], 0),
    ]


def test_hand_preempt():
    # KV 6 tokens, 8 tokens per iteration, 2 running; r0: prompt 2, output 4; r1: prompt 2, output 3;
    # r2: prompt 1, output 1, waits for a running slot
    b = ContinuousBatcher(SchedulerPolicy(8, 2, kv_policy=PREEMPT), kv_capacity_tokens=6)
    b.submit(0, 0.0, 2, 4)
    b.submit(1, 0.0, 2, 3)
    b.submit(2, 0.0, 1, 1)
    assert step_all(b) == [
        ([P(0, 2, 0), P(1, 2, 0)], [0, 1], [], 4),   # both prompts fit (admission needs the prompt only)
        ([D(0, 2), D(1, 2)], [0, 1], [], 6),         # cache full
        # 2 decodes, 0 free: r1 (newest) preempted, frees 3; an iteration that preempts admits nobody (r2 would fit)
        ([D(0, 3)], [0], [], 4),
        # r1 is at the front of the queue: its re-prefill of 2 + 2 generated = 4 > 6 - 5 free waits, r2 behind it
        ([D(0, 4)], [0], [0], 0),
        ([P(1, 4, 0), P(2, 1, 0)], [1, 2], [1, 2], 0),  # r1's re-prefill emits its 3rd and last token
    ]
    assert b.preemptions() == {1: 1}


def test_arrivals_gate_admission_and_next_arrival():
    b = ContinuousBatcher(SchedulerPolicy(8, 2))
    assert b.done and b.next_arrival() is None and b.next_batch(0.0) == []
    b.submit(5, 2.0, 3, 1)
    b.submit(4, 1.0, 3, 1)
    assert b.next_arrival() == 1.0 and b.waiting == 2
    assert b.next_batch(0.5) == []
    assert b.next_batch(1.0) == [P(4, 3, 0)]
    assert b.next_batch(2.0) == [P(4, 3, 0), P(5, 3, 0)]
    assert b.commit(b.next_batch(2.0)) == [4, 5] and b.done


def test_commit_takes_only_the_planned_batch():
    b = ContinuousBatcher(SchedulerPolicy(8, 2))
    b.submit(0, 0.0, 3, 2)
    with pytest.raises(ValueError, match="next_batch"):
        b.commit([P(0, 3, 0)])
    b.next_batch(0.0)
    with pytest.raises(ValueError, match="next_batch"):
        b.commit([P(0, 2, 0)])


def test_no_chunked_prefill_waits_for_room():
    # budget 4: r0 (prompt 3) leaves 1 token; r1 (prompt 3) waits for an iteration with 3 free,
    # and r2 (prompt 1) waits behind it (FIFO); with chunking r1 would take the 1 token
    reqs = [(0, 0.0, 3, 3), (1, 0.0, 3, 1), (2, 0.0, 1, 1)]
    chunked = ContinuousBatcher(SchedulerPolicy(4, 4))
    whole = ContinuousBatcher(SchedulerPolicy(4, 4, chunked_prefill=False))
    for r in reqs:
        chunked.submit(*r)
        whole.submit(*r)
    assert chunked.next_batch(0.0) == [P(0, 3, 0), P(1, 1, 0)]
    got = step_all(whole)
    assert [g[0] for g in got] == [
        [P(0, 3, 0)],
        [D(0, 3), P(1, 3, 0)],
        [D(0, 4), P(2, 1, 0)],
    ]
    with pytest.raises(ValueError, match="request 9"):
        whole.submit(9, 0.0, 5, 1)  # a prompt over the budget can never be admitted whole


def test_request_that_can_never_fit_raises():
    reserve = ContinuousBatcher(SchedulerPolicy(8, 2), kv_capacity_tokens=10)
    reserve.submit(1, 0.0, 6, 4)  # 10 fits exactly
    with pytest.raises(ValueError, match=r"request 7\b.*6 \+ 5 = 11.*10"):
        reserve.submit(7, 0.0, 6, 5)
    preempt = ContinuousBatcher(SchedulerPolicy(8, 2, kv_policy=PREEMPT), kv_capacity_tokens=10)
    preempt.submit(1, 0.0, 6, 5)  # caches at most 6 + 5 - 1 = 10
    with pytest.raises(ValueError, match=r"request 8\b.*11"):
        preempt.submit(8, 0.0, 6, 6)
    with pytest.raises(ValueError, match="request 1 was already"):
        preempt.submit(1, 0.0, 1, 1)
    with pytest.raises(ValueError, match="request 3"):
        preempt.submit(3, 0.0, 0, 1)
    with pytest.raises(ValueError, match="max_running"):
        SchedulerPolicy(max_batch_tokens=2, max_running=4)


# --- random runs checked from outside -------------------------------------------------------

def random_requests(seed, n=200, rate=400.0, prompt=(1, 100), output=(1, 60)):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    p = rng.integers(prompt[0], prompt[1] + 1, n)
    m = rng.integers(output[0], output[1] + 1, n)
    return [(i, float(arrival[i]), int(p[i]), int(m[i])) for i in range(n)]


def run_checked(policy: SchedulerPolicy, cap: float, reqs, seed=0):
    """Drive a batcher as an engine does (requests submitted when they arrive, a few shuffled) and
    check every iteration against an outside model. Returns (batcher, stats)."""
    b = ContinuousBatcher(policy, cap)
    req = {r[0]: r for r in reqs}
    pending = sorted(reqs, key=lambda r: (r[1], r[0]))
    rng = np.random.default_rng(seed)
    emitted = dict.fromkeys(req, 0)
    prefill_total = dict.fromkeys(req, 0)
    attempt = dict.fromkeys(req, 0)      # tokens prefilled since the last (re)admission
    target = {i: req[i][2] for i in req}  # prompt, then prompt + generated after a preemption
    cached: dict[int, int] = {}           # running requests -> tokens in their KV cache
    finished: set[int] = set()
    counts: dict[int, int] = {}
    stats = {"iterations": 0, "peak_kv": 0, "preemptions": 0, "reprefill_checked": 0, "partial_chunks": 0}
    t, k = 0.0, 0
    while k < len(pending) or not b.done:
        batch_arrivals = []
        while k < len(pending) and pending[k][1] <= t:
            batch_arrivals.append(pending[k])
            k += 1
        for i in rng.permutation(len(batch_arrivals)):
            b.submit(*batch_arrivals[i])
        batch = b.next_batch(t)
        if not batch:
            nxt = [a for a in (b.next_arrival(), pending[k][1] if k < len(pending) else None) if a is not None]
            assert b.running == 0 and nxt and min(nxt) > t, "stalled"
            t = min(nxt)
            continue
        # the batch itself
        ids = [i.request_id for i in batch]
        assert len(set(ids)) == len(ids)
        assert sum(i.tokens for i in batch) <= policy.max_batch_tokens
        if policy.order.name == "prefill_first":
            assert len({i.phase for i in batch}) == 1
        if policy.order.name == "mixed":  # decodes first
            phases = [i.phase for i in batch]
            assert phases == sorted(phases, key=lambda ph: ph != "decode")
        em = b.emitted(batch)
        before = b.preemptions()
        fin = b.commit(batch)
        after = b.preemptions()
        for rid in after:
            for _ in range(after[rid] - before.get(rid, 0)):  # preempted: its KV freed, its prompt grows
                assert rid in cached and rid not in ids
                del cached[rid]
                attempt[rid] = 0
                target[rid] = req[rid][2] + emitted[rid]
                stats["preemptions"] += 1
        counts = after
        expect_em = []
        for it in batch:
            rid, arrival, prompt, output = req[it.request_id]
            assert t >= arrival and rid not in finished
            if it.phase == "prefill":
                assert it.kv_len == attempt[rid]
                if it.kv_len == 0:
                    assert rid not in cached
                attempt[rid] += it.tokens
                prefill_total[rid] += it.tokens
                assert attempt[rid] <= target[rid]
                stats["partial_chunks"] += attempt[rid] < target[rid]
                if attempt[rid] == target[rid]:  # a (re)prefill of prompt + generated emits the next token
                    assert attempt[rid] == prompt + emitted[rid]
                    stats["reprefill_checked"] += rid in counts
                    expect_em.append(rid)
                    emitted[rid] += 1
            else:
                assert attempt[rid] == target[rid] and it.tokens == 1
                assert it.kv_len == prompt + emitted[rid] - 1
                expect_em.append(rid)
                emitted[rid] += 1
            cached[rid] = it.kv_len + it.tokens
        assert em == expect_em
        assert len(cached) <= policy.max_running
        if policy.kv_policy.preempt:
            kv = sum(cached.values())  # the iteration's peak: nothing is freed before it ends
        else:
            kv = sum(req[r][2] + req[r][3] for r in cached)
        assert kv <= cap
        stats["peak_kv"] = max(stats["peak_kv"], kv)
        for rid in fin:
            assert emitted[rid] == req[rid][3] and attempt[rid] == target[rid]
            del cached[rid]
            finished.add(rid)
        for rid in cached:
            assert emitted[rid] < req[rid][3] or attempt[rid] < target[rid]
        live = sum(cached.values()) if policy.kv_policy.preempt else sum(req[r][2] + req[r][3] for r in cached)
        assert b.kv_used_tokens == live and b.running == len(cached)
        stats["iterations"] += 1
        t += 1e-3 + 1e-5 * sum(i.tokens for i in batch)
    # conservation: every request finished with exactly its output tokens; its last (re)prefill was
    # prompt + the tokens generated before its last preemption; without preemption, exactly its prompt
    assert finished == set(req)
    for rid, (_, _, prompt, output) in req.items():
        assert emitted[rid] == output
        assert attempt[rid] == target[rid] >= prompt
        if rid not in counts:
            assert prefill_total[rid] == prompt and target[rid] == prompt
    stats["counts"] = counts
    return b, stats


def test_reserve_never_exceeds_capacity_nor_preempts():
    reqs = random_requests(1)  # prompt + output <= 160
    cap = 400
    b, s = run_checked(SchedulerPolicy(256, 32), cap, reqs)
    assert b.preemptions() == {} and s["preemptions"] == 0
    assert s["peak_kv"] > cap - 160  # the capacity bound admissions (not the budget or max_running)


def test_preempt_caps_cached_kv_and_recomputes():
    reqs = random_requests(2)  # prompt + output - 1 <= 159
    cap = 300
    b, s = run_checked(SchedulerPolicy(256, 32, kv_policy=PREEMPT), cap, reqs)
    assert s["preemptions"] > 10 and sum(b.preemptions().values()) == s["preemptions"]
    assert s["reprefill_checked"] > 0  # re-prefills of prompt + generated were seen and checked
    assert s["peak_kv"] == cap or s["peak_kv"] > cap - 100


@pytest.mark.parametrize("order,chunked,kv_policy",
                         list(itertools.product(["mixed", "prefill_first"], [True, False], ["reserve", "preempt"])))
def test_conservation_every_policy(order, chunked, kv_policy):
    reqs = random_requests(3, n=120, prompt=(1, 70), output=(1, 25))
    policy = SchedulerPolicy(96, 8, order=SERVING_ORDERS[order], chunked_prefill=chunked, kv_policy=KV_POLICIES[kv_policy])
    _, s = run_checked(policy, 200, reqs, seed=4)
    assert s["peak_kv"] > 200 - 95 and (s["preemptions"] > 0) == (kv_policy == "preempt")
    _, s = run_checked(policy, float("inf"), reqs, seed=5)
    assert (s["partial_chunks"] > 0) == chunked and s["preemptions"] == 0


@pytest.mark.parametrize("kv_policy", ["reserve", "preempt"])
def test_transferred_requests_decode_without_a_prefill(kv_policy):
    """Disaggregation: a request prefilled elsewhere joins with its prompt's KV and first token,
    then needs output - 1 decodes; the KV it holds counts from admission."""
    from moesim.workloads.batching import ContinuousBatcher, SchedulerPolicy

    b = ContinuousBatcher(SchedulerPolicy(max_batch_tokens=8, max_running=4, kv_policy=KV_POLICIES[kv_policy]), 100)
    b.submit(0, 0.0, prompt_tokens=10, output_tokens=3, transferred=True)
    first = b.next_batch(0.0)
    assert first == []  # admitted, nothing to compute yet
    b.commit(first)
    assert b.running == 1 and b.kv_used_tokens == (13 if kv_policy == "reserve" else 10)
    second = b.next_batch(1.0)
    assert [(i.phase, i.kv_len) for i in second] == [("decode", 10)]
    assert b.commit(second) == []
    third = b.next_batch(2.0)
    assert [(i.phase, i.kv_len) for i in third] == [("decode", 11)]
    assert b.commit(third) == [0] and b.done
    with pytest.raises(ValueError, match="output_tokens >= 2"):
        b.submit(1, 0.0, 10, 1, transferred=True)


@pytest.mark.parametrize("kv_policy", ["reserve", "preempt"])
def test_a_cached_prefix_is_attended_to_not_prefilled(kv_policy):
    """Prefix caching: a 10-token prompt with 6 tokens cached prefills only the last 4, over the 6
    cached ones (kv_len 6), and emits its first token from that chunk; the KV held counts the
    prefix (preempt: 6 + 4 cached after the chunk; reserve: prompt + output)."""
    b = ContinuousBatcher(SchedulerPolicy(max_batch_tokens=8, max_running=4, kv_policy=KV_POLICIES[kv_policy]), 100)
    b.submit(0, 0.0, 10, 3, cached_tokens=6)
    batch = b.next_batch(0.0)
    assert batch == [BatchItem(0, "prefill", 4, 6)]
    assert b.emitted(batch) == [0]
    b.commit(batch)
    assert b.kv_used_tokens == (10 if kv_policy == "preempt" else 13)
    batch = b.next_batch(1.0)
    assert batch == [BatchItem(0, "decode", 1, 10)]
    with pytest.raises(ValueError, match="cached_tokens"):
        b.submit(1, 0.0, 5, 2, cached_tokens=5)  # the last prompt token is always computed
