"""A node of several compute units (issue 25): the cluster syntax, old host files unchanged, per-part
unit choice costed by hand on a toy xPU + PIM node, fastest's Op/B rule, experts on a unit, and the
memory a unit of its own memory takes off the accelerator."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.errors import ConfigError
from moesim.hardware_profiles import load_cluster
from moesim.hardware_profiles.schema import ClusterSpec
from moesim.simulator.compose import pipeline_for
from moesim.simulator.config import config_from_dict
from moesim.simulator.machine import build_machine
from moesim.simulator.roofline import scenario_op_rows, scenario_plan
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario, resolve

from conftest import EXAMPLES, example_config, toy_file

TOY_PIM = {"name": "Toy-PIM", "kind": "pim", "memory": {"capacity": "100 GB", "bandwidth": "4 TB/s"},
           "compute": {"bf16": "10 TFLOPS"}, "efficiency": {"compute": 1.0, "memory": 1.0}, "overhead": "0 us",
           "gemm_tile": 1, "moe_kernel": {"layer_floor": "0 us", "hidden_passes": 0, "intermediate_passes": 0}}
TOY_HANDOFF = {"name": "Toy-Handoff", "kind": "pim", "bandwidth": "1 TB/s", "latency": "1 us", "efficiency": 1.0}
LAT, BW = 1e-6, 1e12  # the toy hand-off link
TOKEN_BYTES = 1024 * 2  # the toy model's hidden size in bf16


def toy_pim(tmp_path: Path, toy_config: dict, memory: str = "accelerator", **units) -> Path:
    """The toy scenario on a toy-2 node whose devices each have a toy PIM beside them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = toy_file(tmp_path, {**toy_config, "policies": {"units": units}, "hardware": {"cluster": "pim-cluster.yaml"}})
    (tmp_path / "toy-pim.yaml").write_text(yaml.safe_dump(TOY_PIM))
    (tmp_path / "toy-handoff.yaml").write_text(yaml.safe_dump(TOY_HANDOFF))
    cluster = yaml.safe_load((tmp_path / "toy-cluster.yaml").read_text())
    cluster["node"]["units"] = [{"name": "pim", "device": "toy-pim.yaml", "link": "toy-handoff.yaml",
                                 "memory": memory}]
    (tmp_path / "pim-cluster.yaml").write_text(yaml.safe_dump(cluster))
    return path


def test_hidden_size_is_what_the_hand_calculations_assume(tmp_path, toy_config):
    sc = load_scenario(toy_file(tmp_path, toy_config))
    assert sc.model.hidden_size * 2 == TOKEN_BYTES


# ---- the cluster syntax ------------------------------------------------------------------------

HOST_CLUSTERS = ["gh200", "gpu-host-pcie", "rtx4090-workstation", "dgx-h100", "h800-4x8", "ascend-910b-8"]


@pytest.mark.parametrize("name", HOST_CLUSTERS)
def test_a_host_as_a_unit_is_the_old_node_host(name):
    """The bundled host-CPU nodes are now written as units; the same node in the old node.host
    syntax resolves to the same units, memory tiers and routes."""
    new = load_cluster(name)
    spec = new.model_dump()
    host = next(u for u in spec["node"]["units"] if u["name"] == "host")
    spec["node"]["units"] = [u for u in spec["node"]["units"] if u["name"] != "host"]
    spec["node"]["host"] = {"device": host["device"], "count": host["count"], "link": host["link"]}
    old = ClusterSpec.model_validate(spec)
    a, b = build_machine(new), build_machine(old)
    def facts(machine):
        return {k: (u.label, u.device, u.latency, u.bandwidth, u.memory_capacity, u.shared_by, u.cost.device)
                for k, u in machine.units.items()}

    assert facts(a) == facts(b) and a.tiers == b.tiers
    assert a.routes.link_names == b.routes.link_names
    np.testing.assert_array_equal(a.routes.link_bandwidth, b.routes.link_bandwidth)
    assert a.host is not None and a.host.label == "host CPU" and a.host_cost is a.units["host"].cost


def test_an_offloading_run_is_the_same_on_the_old_host_syntax(tmp_path):
    """offload.hybrid.attention: host runs on the host unit: the run on a cluster file that still
    says node.host is the run on the bundled (units) file, bit for bit."""
    cfg = example_config("offload-mixtral-4090-lru.yaml")
    cfg["offload"]["hybrid"] = {"attention": "host", "cold_experts": "host"}
    cfg["workload"]["steps"] = 3
    spec = load_cluster("rtx4090-workstation").model_dump(exclude_defaults=True)
    host = spec["node"].pop("units")[0]
    spec["node"]["host"] = {k: host[k] for k in ("device", "count", "link")}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(spec))
    new = simulate(resolve(config_from_dict(copy.deepcopy(cfg), EXAMPLES)))
    cfg["hardware"]["cluster"] = str(tmp_path / "old.yaml")
    old = simulate(resolve(config_from_dict(cfg, EXAMPLES)))
    np.testing.assert_array_equal(new.raw.end, old.raw.end)
    assert new.summary["step_latency_s"] == old.summary["step_latency_s"]
    rows = scenario_op_rows(new.scenario, 0, 1, 0)
    assert set(rows[rows.phase == "attention"].unit) >= {"host CPU", "host link"}


def test_the_duplex_bundle_has_a_pim_beside_every_xpu():
    m = build_machine(load_cluster("duplex-h100-pim-8"))
    assert list(m.units) == ["accelerator", "pim"]
    pim = m.units["pim"]
    assert pim.device.kind == "pim" and pim.memory_capacity is None and pim.shared_by == 1
    assert pim.bandwidth == pytest.approx(3.35e12 * 0.8)  # the shared HBM's external interface


# ---- per-part unit choice, by hand -------------------------------------------------------------

def test_attention_on_the_pim_is_its_ops_on_the_pim_plus_the_hand_off(tmp_path, toy_config):
    """Every attention op costed on the PIM's roofline; the layer pays 2 x (latency + tokens x
    token bytes / bandwidth) to hand the activations over and back."""
    sc = load_scenario(toy_pim(tmp_path, toy_config, attention="pim"))
    (tmp_path / "base").mkdir()
    base = load_scenario(toy_file(tmp_path / "base", toy_config))
    pipe = pipeline_for(sc)
    plan = scenario_plan(sc, 0, pipe)
    rows = pipe.op_rows(plan, 0, 0)
    att = rows[rows.phase == "attention"]
    on_pim = att[att.unit == "pim"]
    assert len(on_pim) and set(att.unit) <= {"pim", "pim link", "device"}
    tokens = sc.batch_per_replica  # decode: one token per sequence
    crossing = att[att.op == "pim_link_crossing"].time_s.sum()
    assert crossing == pytest.approx(2 * (LAT + tokens * TOKEN_BYTES / BW), rel=1e-12)
    pim = sc.machine.units["pim"].cost
    for r in on_pim.itertuples():
        t = max(r.flops / pim.device.compute["bf16"], r.bytes / pim.device.memory.bandwidth)
        assert r.time_s == pytest.approx(t, rel=1e-9)
    assert plan.attention[0, 0] == pytest.approx(att.time_s.sum(), rel=1e-12)  # the engine adds exactly these
    np.testing.assert_allclose(plan.expert, scenario_plan(base, 0).expert)  # the experts stayed on the xPU


def test_experts_on_the_pim_are_costed_there_with_their_rows_handed_over(tmp_path, toy_config):
    sc = load_scenario(toy_pim(tmp_path, toy_config, expert="pim"))
    pipe = pipeline_for(sc)
    plan = scenario_plan(sc, 0, pipe)
    rows = pipe.op_rows(plan, 0, 1)
    moe = rows[rows.phase == "expert"]
    assert set(moe.unit) == {"pim", "pim link"}
    assert moe.time_s.sum() == pytest.approx(plan.expert[0, 1], rel=1e-12)
    routed = plan.rows_computed[0, 1]
    assert moe[moe.op == "pim_link_crossing"].time_s.sum() == pytest.approx(2 * (LAT + routed * TOKEN_BYTES / BW))


def test_fastest_sends_low_op_per_byte_ops_to_the_pim_and_never_slows_a_part(tmp_path, toy_config):
    """Decode attention's core (a few FLOPs per byte of KV) runs faster on the 4 TB/s PIM; the
    fastest split is never slower than the xPU alone, and at prefill the GEMMs stay on the xPU."""
    xpu = load_scenario(toy_pim(tmp_path / "x", toy_config))
    auto = load_scenario(toy_pim(tmp_path / "a", toy_config, attention="fastest"))
    px, pa = scenario_plan(xpu, 0), scenario_plan(auto, 0)
    assert (pa.attention <= px.attention * (1 + 1e-12)).all() and (pa.attention < px.attention).any()
    rows = scenario_op_rows(auto, 0, 0, 0)
    assert rows.loc[rows.op == "attn_core", "unit"].tolist() == ["pim"]
    prefill = copy.deepcopy(toy_config)
    prefill["workload"] = {"phase": "prefill", "batch_size": 4, "seq_len": 512, "steps": 1,
                           "routing": {"generator": "uniform"}}
    rows = scenario_op_rows(load_scenario(toy_pim(tmp_path / "p", prefill, attention="fastest")), 0, 0, 0)
    projections = rows[rows.op.str.endswith("proj")]
    assert len(projections) and (projections.unit == "device").all()  # compute-bound: the xPU's 100 TFLOPS


# ---- memory on units ---------------------------------------------------------------------------

def test_experts_on_a_unit_of_its_own_memory_leave_the_accelerator(tmp_path, toy_config):
    """The weights of experts a host-like unit runs live in its memory: the accelerator's ledger
    drops them and the summary names where they went; a unit too small is a config error."""
    xpu = load_scenario(toy_pim(tmp_path / "x", toy_config, memory="own"))
    own = load_scenario(toy_pim(tmp_path / "o", toy_config, memory="own", expert="pim"))
    moved = float(xpu.memory.expert_weights.max())
    assert moved > 0 and dict(own.memory.on_units) == {"pim": pytest.approx(moved)}
    np.testing.assert_allclose(own.memory.per_device, xpu.memory.per_device - xpu.memory.expert_weights)
    shared = load_scenario(toy_pim(tmp_path / "s", toy_config, memory="accelerator", expert="pim"))
    assert shared.memory.on_units == () and shared.memory.total == xpu.memory.total  # PIM reads the HBM
    small = toy_pim(tmp_path / "t", toy_config, memory="own", expert="pim")
    pim = yaml.safe_load((small.parent / "toy-pim.yaml").read_text())
    pim["memory"]["capacity"] = "1 KB"
    (small.parent / "toy-pim.yaml").write_text(yaml.safe_dump(pim))
    with pytest.raises(ConfigError, match="kept on unit 'pim'") as err:
        load_scenario(small)
    assert err.value.field == "policies.units.expert"


def test_a_gh200_with_attention_on_grace_keeps_the_kv_cache_in_lpddr5x():
    """MoE-Lens-style: attention on the host unit moves the KV cache to Grace's memory."""
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardware"] = {"cluster": "gh200"}
    cfg["parallelism"] = {"tp": 1, "ep": 1, "dp": 1}
    cfg["workload"].update({"batch_size": 8, "steps": 2})
    cfg["precision"] = {"bits": 4}
    gpu = resolve(config_from_dict(copy.deepcopy(cfg), EXAMPLES))
    cfg["policies"] = {"units": {"attention": "host"}}
    grace = resolve(config_from_dict(cfg, EXAMPLES))
    assert dict(grace.memory.on_units) == {"host": pytest.approx(gpu.memory.kv_cache)}
    assert grace.memory.total == pytest.approx(gpu.memory.total - gpu.memory.kv_cache)
    rows = scenario_op_rows(grace, 0, 0, 0)
    assert "host CPU" in set(rows.unit) and "host_link_crossing" in set(rows.op)


def test_fastest_experts_run_each_devices_layer_on_the_unit_that_finishes_first(tmp_path, toy_config):
    """Duplex's expert co-processing, per device and layer: under fastest each device's expert time
    is the smaller of its time on the xPU and on the PIM (hand-off included), and its op rows
    name the unit that ran it."""
    # device 0 computes 4095 rows of expert 0 (compute-bound: the xPU's 100 TFLOPS win), device 1
    # one row of expert 3 (weight reads: the PIM's 4 TB/s win)
    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["routing"]["counts"] = [[2048, 0, 0, 0], [2047, 0, 0, 1]]
    cfg["workload"]["batch_size"] = 2048
    plans = {}
    for name in ("accelerator", "pim", "fastest"):
        sc = load_scenario(toy_pim(tmp_path / name, cfg, expert=name))
        pipe = pipeline_for(sc)
        plans[name] = (sc, pipe, scenario_plan(sc, 0, pipe))
    xpu, pim, auto = (plans[k][2].expert for k in ("accelerator", "pim", "fastest"))
    np.testing.assert_array_equal(auto, np.minimum(xpu, pim))
    sc, pipe, plan = plans["fastest"]
    assert xpu[0, 0] < pim[0, 0] and pim[0, 1] < xpu[0, 1]  # one device each way
    for d in range(2):
        want = "pim" if pim[0, d] < xpu[0, d] else "device"
        rows = pipe.op_rows(plan, 0, d)
        assert set(rows[rows.phase == "expert"].unit) - {"pim link"} == {want}
        assert rows[rows.phase == "expert"].time_s.sum() == pytest.approx(plan.expert[0, d], rel=1e-12)


def test_a_fixed_op_per_byte_threshold_splits_ops_and_expert_layers_by_their_intensity(tmp_path, toy_config):
    """threshold: ops under the given FLOP/B go to the rule's unit, the rest stay on the xPU; a
    device's expert layer goes by its FLOPs per weight byte (the heavy device stays home)."""
    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["routing"]["counts"] = [[2048, 0, 0, 0], [2047, 0, 0, 1]]
    cfg["workload"]["batch_size"] = 2048
    path = toy_pim(tmp_path, cfg, attention="threshold", expert="threshold")
    text = yaml.safe_load(path.read_text())
    text["policies"]["units"]["threshold"] = {"unit": "pim", "op_per_byte": 16}
    path.write_text(yaml.safe_dump(text))
    sc = load_scenario(path)
    pipe = pipeline_for(sc)
    plan = scenario_plan(sc, 0, pipe)
    rows = pipe.op_rows(plan, 0, 0)
    compute = rows[(rows.phase == "attention") & rows.unit.isin(["pim", "device"]) & (rows.bytes > 0)]
    for r in compute.itertuples():
        if r.op in ("input_norm", "post_attention_norm", "router", "embedding", "final_norm", "lm_head"):
            continue  # these always stay on the accelerator
        assert r.unit == ("pim" if r.flops / r.bytes < 16 else "device"), r.op
    expert_units = [set(pipe.op_rows(plan, 0, d).query("phase == 'expert'").unit) - {"pim link"} for d in (0, 1)]
    assert expert_units == [{"device"}, {"pim"}]  # 4095 rows: ~Op/B 4095; one row: ~1


def _coprocess_plans(tmp_path, toy_config, counts):
    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["routing"]["counts"] = counts
    cfg["workload"]["batch_size"] = sum(map(sum, counts)) // 2
    out = {}
    for rule in ("accelerator", "fastest", "co_process"):
        sc = load_scenario(toy_pim(tmp_path / rule, cfg, expert=rule))
        pipe = pipeline_for(sc)
        out[rule] = (pipe, scenario_plan(sc, 0, pipe))
    return out


def test_co_process_runs_a_hot_expert_on_the_xpu_beside_a_cold_one_on_the_pim(tmp_path, toy_config):
    """Duplex's co-processing: device 0 holds a hot expert (4000 rows) and a cold one (2 rows).
    co_process keeps the hot one on the xPU and sends the cold one to the PIM; the two units run
    at once, so the layer takes the slower unit's rows (a hand sum of the op rows, hand-off
    included), less than fastest, which can only move the whole layer."""
    plans = _coprocess_plans(tmp_path, toy_config, [[2000, 1, 0, 0], [2000, 1, 0, 0]])
    pipe, plan = plans["co_process"]
    assert plan.slot_unit[0, 0, :2].tolist() == [0, 1]  # expert 0 on the xPU, expert 1 on the PIM
    rows = pipe.op_rows(plan, 0, 0).query("phase == 'expert'")
    by_unit = rows.groupby("unit").time_s.sum()
    assert set(rows[rows.op.str.startswith("expert[")].groupby("unit").op.apply(tuple).items()) == \
        {("device", ("expert[0]",)), ("pim", ("expert[1]",))}
    assert plan.expert[0, 0] == pytest.approx(max(by_unit["device"], by_unit["pim"] + by_unit["pim link"]), rel=1e-12)
    fastest = plans["fastest"][1].expert[0, 0]
    assert fastest == plans["accelerator"][1].expert[0, 0]  # moving the whole layer does not pay here
    assert plan.expert[0, 0] < fastest * (1 - 1e-3)
    assert plan.unit_time[3, :, 0, 0].tolist() == pytest.approx([by_unit["device"], by_unit["pim"] + by_unit["pim link"]])


@pytest.mark.parametrize("counts", [[[200, 100, 0, 0], [200, 100, 0, 0]], [[1, 1, 1, 1], [1, 1, 1, 1]],
                                    [[2000, 1, 0, 3], [1990, 1, 13, 0]]])
def test_co_process_never_loses_to_moving_the_whole_layer(tmp_path, toy_config, counts):
    """Where splitting buys nothing, co_process runs each device's layer as fastest does (both
    experts warm on the xPU; every expert cold, the whole layer on the PIM); it is never slower."""
    plans = _coprocess_plans(tmp_path, toy_config, counts)
    co, fastest = plans["co_process"][1].expert, plans["fastest"][1].expert
    assert (co <= fastest * (1 + 1e-12)).all()
    if counts[0] != [2000, 1, 0, 3]:
        np.testing.assert_array_equal(co, fastest)


def test_threshold_without_its_rule_is_a_config_error(tmp_path, toy_config):
    with pytest.raises(ConfigError, match="threshold needs policies.units.threshold"):
        load_scenario(toy_pim(tmp_path, toy_config, attention="threshold"))


def test_the_summary_says_which_unit_ran_what(tmp_path, toy_config):
    """summary.json's units: shares of the run's compute by unit and of hand-offs add up to 1, and
    the seconds by part and unit are the op rows of every step's plan (hand sum), hand-offs apart."""
    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["steps"] = 3
    res = simulate(load_scenario(toy_pim(tmp_path, cfg, attention="pim")))
    units = res.summary["units"]
    assert units["rules"]["attention"] == "pim" and set(units["compute_share"]) == {"accelerator", "pim"}
    assert sum(units["compute_share"].values()) + units["handoff_share"] == pytest.approx(1.0)
    assert units["steps"] == 3
    pipe = pipeline_for(res.scenario)
    rows = pd.concat([pipe.op_rows(p) for p in res.raw.plans])
    compute = rows[rows.kind != "comm"].replace({"unit": {"device": "accelerator"}})
    want = compute.groupby(["phase", "unit"]).time_s.sum()
    got = {(part, unit): t for part, by in units["seconds_by_part"].items() for unit, t in by.items()}
    assert got == pytest.approx({k: v for k, v in want.items() if v > 0}, rel=1e-9)
    crossing = rows[rows.unit.str.endswith(" link")].time_s.sum()
    total = sum(got.values()) + crossing
    assert units["handoff_share"] == pytest.approx(crossing / total, rel=1e-9)
    (tmp_path / "plain").mkdir()
    assert "units" not in simulate(load_scenario(toy_file(tmp_path / "plain", toy_config))).summary


def test_the_run_estimate_counts_the_plans_per_unit_arrays(tmp_path, toy_config):
    """A run that sends parts to units keeps each part's seconds per unit and its hand-offs
    (2 x 4 parts x 2 units x L layers x 2 devices doubles) and each expert copy's unit (1 group x
    Lm MoE layers x 4 copies) per plan: the estimate grows by exactly that."""
    from moesim.simulator.run_estimate import estimate_run

    one = estimate_run(load_scenario(toy_pim(tmp_path / "a", toy_config)))
    two = estimate_run(load_scenario(toy_pim(tmp_path / "b", toy_config, attention="pim")))
    sc = load_scenario(toy_pim(tmp_path / "c", toy_config))
    L, Lm = sc.model.num_layers, len(sc.model.moe_layers)
    assert two.memory_bytes - one.memory_bytes == 2 * 4 * 2 * L * 2 * 8 + Lm * 4 * 8


def test_serving_with_attention_on_grace_budgets_the_kv_cache_in_grace_memory():
    """A serving rank whose attention runs on a unit of its own memory admits by that unit's share
    of memory (LPDDR5X on a GH200), not by what HBM leaves after the weights."""
    from moesim.simulator.serving.setup import rank_memory

    cfg = example_config("serving-mixtral-8xh100.yaml")
    cfg["hardware"] = {"cluster": "gh200"}
    cfg["parallelism"] = {"tp": 1, "ep": 1, "dp": 1}
    cfg["precision"] = {"bits": 8}
    gpu = rank_memory(resolve(config_from_dict(copy.deepcopy(cfg), EXAMPLES)))
    cfg["policies"] = {"units": {"attention": "host"}}
    grace = resolve(config_from_dict(cfg, EXAMPLES))
    mem = rank_memory(grace)
    assert mem.kv_cache == pytest.approx(grace.machine.units["host"].memory_capacity * 0.9)
    assert mem.kv_tokens > 4 * gpu.kv_tokens  # 480 GB of LPDDR5X against what 96 GB of HBM leaves


def test_a_plan_says_how_much_of_each_part_ran_on_each_unit(tmp_path, toy_config):
    """unit_time (parts, units, layers, devices) adds up to the phase arrays the engine replays."""
    sc = load_scenario(toy_pim(tmp_path, toy_config, attention="fastest", expert="pim"))
    plan = scenario_plan(sc, 0)
    split = plan.unit_time
    assert split.shape == (4, 2, sc.model.num_layers, sc.num_devices)
    for k, whole in enumerate((plan.attention, plan.dense_ffn, plan.shared_expert, plan.expert)):
        np.testing.assert_allclose(split[k].sum(axis=0), whole, rtol=1e-12, atol=1e-18)
    assert split[3, 0].sum() == 0 and split[3, 1].sum() > 0  # the experts ran on the PIM
    assert scenario_plan(load_scenario(toy_file(tmp_path, toy_config)), 0).unit_time is None


# ---- a stream per unit ---------------------------------------------------------------------------

def _duplex_two_batch(batch: int = 64) -> dict:
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardware"] = {"cluster": "duplex-h100-pim-8"}
    cfg["workload"].update({"batch_size": batch, "steps": 2})
    cfg["policies"].update({"units": {"attention": "pim"}, "overlap": "two_batch"})
    cfg["outputs"] = {"trace_steps": 0}
    return cfg


def test_units_compute_at_once_where_the_micro_batches_allow():
    """Two-batch overlap with attention on the PIM: one micro-batch's attention runs on the PIM while
    the other's experts run on the xPU, so the step is shorter than with one stream per device,
    and no compute phase is shorter than the seconds its plan gives it."""
    from moesim.simulator.compose import engine_for
    from moesim.simulator.metrics import summarize
    from moesim.simulator.phases import PHASE_INDEX

    sc = resolve(config_from_dict(_duplex_two_batch(), EXAMPLES))
    engine = engine_for(sc)
    assert engine.unit_streams
    raw = engine.run()
    single = engine_for(sc)
    single.unit_streams = False  # the same plans through one stream per device
    one = single.run()
    assert np.nanmax(raw.end) < np.nanmax(one.end) * (1 - 1e-3)
    att, exp = PHASE_INDEX["attention"], PHASE_INDEX["expert"]
    s, e = raw.start, raw.end  # (steps, layers, devices, micro-batches, phases)
    overlap = np.minimum(e[..., 1, att], e[..., 0, exp]) - np.maximum(s[..., 1, att], s[..., 0, exp])
    assert np.nanmax(overlap) > 0  # mb1's attention (PIM) beside mb0's experts (xPU)
    plan = raw.plans[0]  # the step's micro-batches merged: their phase seconds added up
    for phase, arr in (("attention", plan.attention), ("expert", plan.expert)):
        spans = np.nan_to_num((e - s)[0, :, :, :, PHASE_INDEX[phase]], nan=0.0).sum(axis=2)
        assert (spans >= arr * (1 - 1e-9)).all()
    summary = summarize(sc, raw).summary
    assert summary["steps"] == 2 and summary["step_latency_s"]["mean"] > 0


def test_a_single_unit_run_keeps_one_stream_per_device(tmp_path, toy_config):
    from moesim.simulator.compose import engine_for

    cfg = copy.deepcopy(toy_config)
    cfg["policies"] = {"overlap": "two_batch"}
    assert not engine_for(load_scenario(toy_file(tmp_path, cfg))).unit_streams


def test_hand_offs_between_units_are_costed_and_appear_in_the_trace(tmp_path, toy_config):
    """A part on the PIM hands its activations over and back: the plan's handoff is the op rows'
    link crossing, and trace.json shows both halves on the device's hand-off track."""
    import json

    from moesim.simulator.run import write_run_dir

    cfg = copy.deepcopy(toy_config)
    sc = load_scenario(toy_pim(tmp_path, cfg, attention="pim", expert="pim"))
    res = simulate(sc)
    plan = res.raw.plans[0]
    rows = pipeline_for(sc).op_rows(plan, 0, 1)
    crossing = rows[rows.op == "pim_link_crossing"].groupby("phase").time_s.sum()
    assert plan.handoff[0, 1, 0, 1] == pytest.approx(crossing["attention"], rel=1e-12)
    assert plan.handoff[3, 1, 0, 1] == pytest.approx(crossing["expert"], rel=1e-12)
    run = write_run_dir(res, tmp_path / "run")
    events = json.loads((run / "trace.json").read_text())["traceEvents"]
    hand = [e for e in events if e.get("cat") == "hand-off" and e["pid"] == 1 and e["args"]["step"] == 0]
    assert {e["name"] for e in hand} == {"attention to pim", "attention back from pim", "expert to pim",
                                         "expert back from pim"}
    total = sum(e["dur"] for e in hand if e["name"].startswith("attention")) / 1e6
    assert total == pytest.approx(crossing["attention"], rel=1e-3)


def test_a_split_expert_layer_runs_on_its_units_at_once():
    """The stream per unit runs a device's expert copies split across two units at once (hand
    check): both units free, the part takes the longer share; the xPU busy until 5, its share
    starts then while the PIM's ran from 0; a chain of ops (attention) runs its shares in turn."""
    import simpy

    from moesim.simulator.unit_streams import _run_at_once, _run_on_units

    def run(part, busy_until: float = 0.0):
        env = simpy.Environment()
        units = [simpy.Resource(env, capacity=1) for _ in range(2)]
        st, en = [None], [None]

        def hold():
            with units[0].request() as turn:
                yield turn
                yield env.timeout(busy_until)

        if busy_until:
            env.process(hold())
        env.process(part(env, np.array([3.0, 2.0]), units, st, en, 0))
        env.run()
        return st[0], en[0]

    assert run(_run_at_once) == (0.0, 3.0)
    assert run(_run_at_once, busy_until=5.0) == (0.0, 8.0)  # the PIM's share ran 0-2 beside the wait
    assert run(_run_on_units) == (0.0, 5.0)


def test_co_process_under_two_batch_overlap_runs_on_a_stream_per_unit(tmp_path, toy_config):
    """co_process with two micro-batches: the engine runs a stream per unit, a micro-batch's expert
    phase lasts at least its slower unit's share, and the step ends."""
    from moesim.simulator.compose import engine_for
    from moesim.simulator.phases import PHASE_INDEX

    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["routing"]["counts"] = [[2000, 1, 0, 0], [2000, 1, 0, 0]]
    cfg["workload"]["batch_size"] = 2001
    path = toy_pim(tmp_path, cfg, expert="co_process")
    text = yaml.safe_load(path.read_text())
    text["policies"]["overlap"] = "two_batch"
    path.write_text(yaml.safe_dump(text))
    engine = engine_for(load_scenario(path))
    assert engine.unit_streams
    raw = engine.run()
    span = (raw.end - raw.start)[0, 0, 0, :, PHASE_INDEX["expert"]]  # step 0, layer 0, device 0, per micro-batch
    split = np.stack([p.unit_time[3, :, 0, 0] for p in raw.microbatch_plans[0]])  # (micro-batch, units)
    assert (split[0] > 0).all(), "micro-batch 0's expert layer is split across the xPU and the PIM"
    assert (span >= split.max(axis=1) * (1 - 1e-9)).all()


def test_serving_with_units_computing_at_once_serves_every_request():
    """The stream-per-unit interpreter keeps the serving hooks (arrivals, the iteration barrier,
    replayed iterations): every request finishes with all its tokens."""
    from conftest import shrink_serving

    cfg = shrink_serving(example_config("serving-mixtral-8xh100.yaml"), requests=6, output_tokens=4)
    cfg["hardware"] = {"cluster": "duplex-h100-pim-8"}
    cfg["policies"] = {"units": {"attention": "pim"}, "overlap": "two_batch"}
    res = simulate(resolve(config_from_dict(cfg, EXAMPLES)))
    req = res.requests
    assert req["finished"].all() and (req["tokens_emitted"] == req["output_tokens"]).all()
    assert res.summary["units"]["compute_share"]["pim"] > 0


def test_moesim_roofline_draws_every_unit_of_the_node(tmp_path):
    """The roofline of a Duplex scenario has the Logic-PIM's roof and ridge beside the xPU's, and
    its rows say which unit ran each op."""
    import pandas as pd

    from moesim.cli import main

    out = tmp_path / "rf"
    assert main(["roofline", str(EXAMPLES / "duplex-mixtral-decode-8.yaml"), "--out", str(out)]) == 0
    ridge = pd.read_csv(out / "ridge.csv").set_index("device")
    assert {"H100-SXM", "Logic-PIM"} <= set(ridge.index)
    assert ridge.loc["Logic-PIM", "ridge_flop_per_byte"] < ridge.loc["H100-SXM", "ridge_flop_per_byte"]
    rows = pd.read_csv(out / "roofline.csv")
    assert "pim" in set(rows[rows.device == "H100-SXM"].unit)
