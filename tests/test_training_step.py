"""A training step on the step pipeline (issue 28): forward, backward and gradient sync checked
by hand on a 2-device toy, the backward's all-to-alls against the forward's, determinism and
monotonicity in link bandwidth."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.simulator.phases import PHASES
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario

from conftest import toy_file

LINK_BW = 100e9  # toy-link.yaml: 100 GB/s, efficiency 1.0, 1 us


def train_config(**training) -> dict:
    return {"name": "toy-train", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster.yaml"},
            "parallelism": {"ep": 2, "tp": 1, "dp": 2},
            "workload": {"phase": "train", "batch_size": 1, "seq_len": 128, "steps": 2,
                         "routing": {"generator": "uniform"}},
            "training": {"global_batch": 2, "bucket_params": 10**12, **training},
            "outputs": {"trace_steps": 0}}


def run(tmp_path, cfg: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return simulate(load_scenario(toy_file(tmp_path, cfg)))


def spans(result, phase: str, mb: int = 0, step: int = 0):
    """(L, N) start and end of a phase in a step's micro-batch."""
    raw = result.raw
    i = PHASES.index(phase)
    return raw.start[step, :, :, mb, i], raw.end[step, :, :, mb, i]


def test_two_device_step_matches_a_hand_count(tmp_path):
    """Backward compute is 2x the forward's GEMMs (data + weight gradients), 2.5x the attention
    core; the experts' backward 2x their forward; one bucket's ring all-reduce over dp = 2 sends
    every dense gradient byte to the peer: S / bandwidth + path latency + one ring step."""
    r = run(tmp_path, train_config())
    plan = r.raw.plans[0]
    ops = plan.layer_ops[0][0]
    hand = sum((2.5 if o.op.name == "attn_core" else 2.0) * o.cost.time for o in ops.attention)
    st, en = spans(r, "attention_bwd")
    assert en[0, 0] - st[0, 0] == pytest.approx(hand, rel=1e-12)
    st_e, en_e = spans(r, "expert_bwd")
    st_f, en_f = spans(r, "expert")
    np.testing.assert_allclose(en_e - st_e, 2.0 * (en_f - st_f), rtol=1e-12)
    # dense gradients per rank, by hand (toy-moe8: h 1024, 8 heads of 128, 8 KV heads, 8 experts, vocab 1000)
    h = 1024
    attention = h * (8 + 2 * 8) * 128 + 8 * 128 * h
    per_layer = attention + 2 * h + h * 8  # + two norms + router
    dense = 2 * per_layer + 1000 * h + 1000 * h + h  # + embedding, LM head, final norm
    S = dense * 2.0  # bf16 gradients
    st_g, en_g = spans(r, "grad_sync")
    _, bwd_end = spans(r, "attention_bwd")
    ready = float(bwd_end[0].max())  # the bucket closes at layer 0: both ranks' last backward op
    assert float(en_g[0].max()) == pytest.approx(ready + S / LINK_BW + 1e-6 + 1e-6, rel=1e-9)
    assert r.summary["training"]["microbatches"] == 1
    assert 0 < r.summary["training"]["mfu"] <= r.summary["training"]["hfu"] < 1


def test_backward_all_to_alls_carry_the_forward_bytes(tmp_path):
    """Four all-to-alls per MoE layer: every byte the forward's dispatch and combine move, the
    backward moves again (its routing is the forward's); the rest is the gradient ring."""
    r = run(tmp_path, train_config())
    plans = r.raw.plans
    off = ~np.eye(2, dtype=bool)
    a2a = sum(float(p.dispatch[:, off].sum() + p.combine[:, off].sum()) for p in plans)
    h = 1024
    dense = 2 * (h * 24 * 128 + 8 * 128 * h + 2 * h + 8 * h) + 2000 * h + h
    ring = 2 * dense * 2.0 * len(plans)  # each of the 2 ranks sends S each step
    assert a2a > 0
    assert float(r.raw.fabric.link_bytes.sum()) == pytest.approx(2 * a2a + ring, rel=1e-12)


def test_training_is_deterministic_and_slower_on_slower_links(tmp_path):
    base = train_config(zero_stage=1)
    a, b = run(tmp_path / "a", base), run(tmp_path / "b", base)
    assert a.summary["training"]["step_time_s"] == b.summary["training"]["step_time_s"]
    np.testing.assert_array_equal(np.nan_to_num(a.raw.end), np.nan_to_num(b.raw.end))
    times = []
    for scale in (4.0, 1.0, 0.25):
        cfg = train_config(zero_stage=1)
        cfg["hardware"]["scale"] = {"link_bandwidth": scale}
        times.append(run(tmp_path / f"s{scale}", cfg).summary["training"]["step_time_s"])
    assert times[0] < times[1] < times[2]


def test_micro_batches_recompute_and_zero_add_their_work(tmp_path):
    """Four micro-batches accumulate before one reduction; full recomputation reruns the forward;
    ZeRO-1 reduce-scatters (half the all-reduce's bytes) and all-gathers the parameters after."""
    one = run(tmp_path / "one", train_config())
    four = run(tmp_path / "four", {**train_config(), "training": {"global_batch": 8, "bucket_params": 10**12}})
    assert four.summary["training"]["microbatches"] == 4
    fb = float(spans(one, "attention_bwd")[1][0].max())  # one micro-batch's forward and backward
    assert four.summary["training"]["step_time_s"] > one.summary["training"]["step_time_s"] + 2.5 * fb
    assert all(np.isfinite(spans(four, "attention_bwd", mb)[1]).all() for mb in range(4))
    full = run(tmp_path / "full", train_config(recompute="full"))
    st, en = spans(full, "recompute")
    fwd = sum(spans(full, p)[1] - spans(full, p)[0] for p in ("attention", "expert"))
    np.testing.assert_allclose(en - st, fwd, rtol=1e-12)
    assert full.summary["training"]["hfu"] > full.summary["training"]["mfu"]
    zero = run(tmp_path / "zero", train_config(zero_stage=1))
    st_p, en_p = spans(zero, "param_gather")
    assert np.all(en_p[0] > st_p[0])
    st_g, en_g = spans(zero, "grad_sync")
    st_a, en_a = spans(one, "grad_sync")
    assert float((en_g - st_g)[0].max()) < float((en_a - st_a)[0].max())


def _pipeline_run(tmp_path, microbatches: int, pp: int = 4):
    """A 4-layer toy, every layer alike, one layer per stage on 4 devices, links with no latency and
    (nearly) unbounded bandwidth: the uniform case of the 1F1B formula."""
    import yaml

    model = {"name": "Toy-Uniform4", "num_layers": 4, "hidden_size": 1024, "vocab_size": 1000,
             "dense_intermediate_size": 1024, "activation": "swiglu",
             "attention": {"type": "gqa", "num_heads": 8, "num_kv_heads": 8, "head_dim": 128},
             "moe": {"num_experts": 4, "top_k": 1, "expert_intermediate_size": 1024}, "dtype": "bf16"}
    cfg = {"name": "toy-pp", "model": "toy-uniform4.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
           "parallelism": {"ep": 1, "tp": 1, "dp": 4 // pp, "pp": pp},
           "workload": {"phase": "train", "batch_size": 1, "seq_len": 64, "steps": 1,
                        "routing": {"generator": "fixed", "counts": [[64, 0, 0, 0]] * 4}},
           "training": {"global_batch": microbatches * (4 // pp)}, "policies": {"small_ops": False},
           "outputs": {"trace_steps": 0}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = toy_file(tmp_path, cfg)
    (tmp_path / "toy-uniform4.yaml").write_text(yaml.safe_dump(model))
    for name in ("toy-link.yaml", "toy-nic.yaml"):
        link = yaml.safe_load((tmp_path / name).read_text())
        link.update(latency="0 us", bandwidth="1e9 GB/s")
        (tmp_path / name).write_text(yaml.safe_dump(link))
    return simulate(load_scenario(path))


@pytest.mark.parametrize("microbatches", [1, 4, 8])
def test_1f1b_bubble_matches_its_formula(tmp_path, microbatches):
    """p = 4 uniform stages, M micro-batches: stage 0's last backward ends at (M + p - 1)(t_f + t_b),
    a bubble of (p - 1) / (M + p - 1) (Narayanan et al. 2021)."""
    r = _pipeline_run(tmp_path, microbatches)
    st, en = r.raw.start[0], r.raw.end[0]
    one = lambda d, phase, mb=0: en[d, d, mb, PHASES.index(phase)] - st[d, d, mb, PHASES.index(phase)]
    tf = one(0, "attention") + one(0, "expert")
    tb = one(0, "attention_bwd") + one(0, "expert_bwd")
    for d in range(1, 4):  # the stages are alike
        assert one(d, "attention") + one(d, "expert") == pytest.approx(tf, rel=1e-12)
    p, M = 4, microbatches
    pipeline = en[0, 0, M - 1, PHASES.index("attention_bwd")] - np.nanmin(st)
    assert pipeline == pytest.approx((M + p - 1) * (tf + tb), rel=1e-6)
    assert 1 - M * (tf + tb) / pipeline == pytest.approx((p - 1) / (M + p - 1), rel=1e-5)
    assert r.summary["training"]["pipeline_stages"] == 4
    assert r.summary["training"]["time_share_by_kind"]["pipeline_wait"] > 0
    # each stage ran only its own layer's forward, once per micro-batch
    ran = np.isfinite(en[:, :, :, PHASES.index("attention")])
    assert (ran.sum(axis=2) == np.eye(4, dtype=int) * M).all()


def test_pipeline_sends_each_micro_batch_across_each_boundary_both_ways(tmp_path):
    r = _pipeline_run(tmp_path, 2)
    h, tokens = 1024, 64
    sent = 3 * 2 * 2 * tokens * h * 2.0  # 3 boundaries, activations and gradients, 2 micro-batches, bf16
    pairs = r.raw.fabric._pair_bytes.reshape(4, 4)  # bytes per (source, destination); dp = 1: no gradient ring
    assert float(pairs.sum()) == pytest.approx(sent, rel=1e-12)
    assert all(pairs[s, s + 1] == pairs[s + 1, s] == 2 * 2 * tokens * h for s in range(3))
    two = _pipeline_run(tmp_path / "pp2", 2, pp=2)
    assert two.summary["training"]["pipeline_stages"] == 2


def test_training_costs_the_lm_head_over_every_token(tmp_path):
    """Every token of a training sequence is a target: the LM head's GEMM has seq_len x batch rows
    (inference costs each sequence's last token only)."""
    r = run(tmp_path, train_config())
    last = r.raw.plans[0].layer_ops[-1][0]
    head = [o for o in last.attention if o.op.name == "lm_head"]
    assert len(head) == 1 and head[0].op.rows == 128  # batch 1 x seq_len 128
    assert head[0].op.flops == pytest.approx(2 * 128 * 1024 * 1000)


def test_zero3_gathers_each_layer_before_its_forward_and_backward(tmp_path):
    """ZeRO-3 on dp = 2: every micro-batch gathers each layer's dense parameters (half from the peer)
    before its forward and again before its backward; gradients are reduce-scattered (half of S
    each way); no gather after the optimizer. Memory holds half the dense parameters."""
    r = run(tmp_path, {**train_config(zero_stage=3), "training": {"global_batch": 4, "bucket_params": 10**12,
                                                                  "zero_stage": 3}})
    h = 1024
    per_layer = h * 24 * 128 + 8 * 128 * h + 2 * h + 8 * h
    layers = [per_layer + 1000 * h, per_layer + 1000 * h + h]  # embedding in layer 0, LM head and final norm in 1
    M = 2
    gathers = 2 * M * sum(layers) * 2.0 / 2 * 2  # passes x micro-batches x bf16 halves x both ranks
    scatter = sum(layers) * 2.0 / 2 * 2  # the gradient reduce-scatter: half of S from each rank
    off = ~np.eye(2, dtype=bool)
    a2a = sum(float(p.dispatch[:, off].sum() + p.combine[:, off].sum()) for p in r.raw.plans)
    steps = len(r.raw.plans)
    assert float(r.raw.fabric.link_bytes.sum()) == pytest.approx(2 * a2a + steps * (gathers + scatter), rel=1e-12)
    st, en = spans(r, "param_gather")
    assert np.isfinite(en).all() and np.isfinite(spans(r, "param_gather_bwd")[1]).all()
    assert r.summary["training"]["time_share_by_kind"]["parameter_gather"] > 0
    zero0 = run(tmp_path / "z0", train_config())
    assert r.scenario.memory.weights < zero0.scenario.memory.weights


def test_routing_imbalance_shows_as_straggler_time_in_training(tmp_path):
    """Balanced routing: nobody waits for a slower peer; skewed routing: the busy experts' device
    makes the others wait in the forward's combine and the backward's combine and dispatch (its
    recomputed and backward experts), and the step is slower."""
    balanced = train_config(recompute="full")
    balanced["workload"]["routing"] = {"generator": "fixed", "counts": [[32] * 8, [32] * 8]}
    skewed = train_config(recompute="full")
    skewed["workload"]["routing"] = {"generator": "fixed", "counts": [[96, 64, 32, 32, 16, 8, 8, 0]] * 2}
    b, s = run(tmp_path / "b", balanced), run(tmp_path / "s", skewed)
    share = lambda r: r.summary["training"]["time_share_by_kind"]["straggler_wait"]
    assert share(b) == pytest.approx(0.0, abs=1e-9)
    assert share(s) > 0.01
    waits = [float(np.nansum(spans(s, p)[1] - spans(s, p)[0])) for p in ("straggler_wait", "straggler_wait_bwd",
                                                                          "peer_wait_bwd")]
    assert all(w > 0 for w in waits)
    assert s.summary["training"]["step_time_s"] > b.summary["training"]["step_time_s"]


def test_run_report_has_a_training_section(tmp_path):
    from moesim.reports.run_report import write_run_report
    from moesim.simulator.run import write_run_dir

    r = run(tmp_path / "cfg", train_config(zero_stage=1))
    run_dir = write_run_dir(r, tmp_path / "run")
    report = write_run_report(run_dir, tmp_path / "report")
    md = (report.parent / "report.md").read_text()
    assert "## Training step" in md and "MFU (model FLOPs)" in md and "backward compute" in md
    assert f"{r.summary['training']['mfu']:.1%}" in md
