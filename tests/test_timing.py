"""Timing arithmetic on a fake clock (per-launch time from N launches per sample, sample counts, the
host-floor report), and on a GPU, when there is one, that batched timing gets under the host floor."""

from __future__ import annotations

import pytest

from moesim.validation import timing as tm


def test_per_launch_divides_by_n_after_the_fixed_sample_cost():
    # 100 launches of 10 us each plus a 5 us event-pair/graph-launch cost per sample
    totals = [5e-6 + 100 * 10e-6, 5e-6 + 100 * 11e-6, 5e-6 + 100 * 9e-6, 5e-6 + 100 * 10e-6]
    t = tm.per_launch(totals, 100, floor=5e-6)
    assert t.median == pytest.approx(10e-6)
    assert t.launches == 100 and t.reps == 4 and t.method == "cuda_graph"
    assert t.p10 < t.median < t.p90
    assert t.spread == pytest.approx((10.25e-6 - 9.75e-6) / 10e-6)  # IQR of 9, 10, 10, 11 over the median
    # without subtracting the floor the estimate is biased by floor / n
    assert tm.per_launch(totals, 100).median == pytest.approx(10.05e-6)
    # a floor larger than a sample never gives a negative time
    assert tm.per_launch([1e-6], 1, floor=5e-6).median == 0.0
    with pytest.raises(ValueError, match=">= 1"):
        tm.per_launch([1.0], 0)


def test_launches_for_targets_the_batch_time():
    assert tm.launches_for(20e-6, batch_time=2e-3, max_launches=100) == 100
    assert tm.launches_for(1e-3, batch_time=2e-3) == 2
    assert tm.launches_for(10e-3, batch_time=2e-3) == 1
    assert tm.launches_for(0.0, max_launches=50) == 50


def test_sample_loop_counts_samples_on_a_fake_clock():
    clock = iter([1e-3] * 1000)
    t = tm.sample_loop(lambda: next(clock), n=10, floor=0.0, min_reps=3, min_time=0.02, max_reps=100,
                       method="back_to_back")
    assert t.reps == 20  # 20 samples of 1 ms reach min_time 20 ms
    assert t.median == pytest.approx(1e-4) and t.method == "back_to_back"
    t = tm.sample_loop(lambda: 1.0, n=1, floor=0.0, min_reps=3, min_time=0.02, max_reps=100, method="x")
    assert t.reps == 3  # min_reps when one sample already exceeds min_time
    t = tm.sample_loop(lambda: 1e-9, n=1, floor=0.0, min_reps=3, min_time=10.0, max_reps=7, method="x")
    assert t.reps == 7  # capped


def test_cpu_path_is_one_call_per_perf_counter_pair(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(tm.time, "perf_counter", lambda: now[0])
    durations = iter([9.0, 9.0] + [2.0, 3.0, 4.0, 5.0, 6.0] * 10)  # two warm-up calls, then the reps

    def fn():
        now[0] += next(durations)

    t = tm.time_op(fn, "cpu", warmup=2, min_reps=5, min_time=1.0)
    assert (t.median, t.reps, t.launches, t.method) == (4.0, 5, 1, "perf_counter")


def test_floor_summary():
    f = tm.floor_summary(single=33e-6, back_to_back=13e-6, graph=4e-6, n=100, sample_floor=3e-6)
    assert f["host_floor_s"] == pytest.approx(29e-6) and f["launches"] == 100
    assert f["cuda_graph_per_launch_s"] == 4e-6 and f["graph_sample_floor_s"] == 3e-6


def test_gpu_batched_timing_beats_one_launch_per_event_pair():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    a = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16)
    t = tm.time_op(lambda: torch.matmul(a, b), "cuda", warmup=3, min_reps=5, min_time=0.01)
    assert t.method == "cuda_graph" and t.launches > 1
    floor = tm.host_floor("bfloat16", n=50, reps=5)
    assert floor["cuda_graph_per_launch_s"] < floor["one_per_event_pair_s"]
    assert t.median < floor["one_per_event_pair_s"]
    host = tm.time_op(lambda: torch.cuda.synchronize(), "cuda", warmup=1, min_reps=3, min_time=0.0, graph=False)
    assert host.method == "back_to_back"
