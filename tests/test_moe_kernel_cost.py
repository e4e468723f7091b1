"""The fused-MoE cost form (simulator/moe_kernel_cost.py): hand calculation on the toy scenario,
its properties, the per-(kind, dtype) efficiencies, W8A16, and fitting it from a fused-MoE table.

Toy-GPU: 100 TFLOPS bf16, 1 TB/s, efficiency 1, no launch overhead, tile 1. The toy routing puts
4 rows on device 0 (expert 0) and 4 on device 1 (experts 2 and 3, 2 rows each).
"""

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.errors import ConfigError
from moesim.hardware_profiles.loader import load_device
from moesim.hardware_profiles.schema import DeviceSpec, KindEfficiency
from moesim.simulator.cost_model import CalibratedEfficiency, CostModel, profile_efficiency
from moesim.simulator.run import simulate
from moesim.validation.from_table import calibrate_from_table
from moesim.workloads.models import load_model

from conftest import toy_file

H = I = 1024
WEIGHTS = 3 * H * I * 2
ROW = (2 * H + 3 * I) * 2  # activations through an expert's GEMMs
EXPERT_DEV0 = (WEIGHTS + 4 * ROW) / 1e12
EXPERT_DEV1 = (2 * WEIGHTS + 4 * ROW) / 1e12
FLOOR = 10e-6
PASSES = (2 * H + 3 * I) * 2  # hidden_passes 2, intermediate_passes 3, bf16: bytes per routed row


def _toy(tmp_path, toy_config, kernel="fused", floor="10 us", hidden=2, inter=3):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = toy_file(tmp_path, {**toy_config, "policies": {"expert_kernel": kernel}})
    device = tmp_path / "toy-device.yaml"
    spec = yaml.safe_load(device.read_text())
    spec["moe_kernel"] = {"layer_floor": floor, "hidden_passes": hidden, "intermediate_passes": inter}
    device.write_text(yaml.safe_dump(spec))
    return simulate(path)


def _expert(result, device):
    df = result.phases
    return float(df[(df.device == device) & (df.phase == "expert")].duration_s.iloc[0])


def test_fused_expert_phase_matches_hand_calculation(tmp_path, toy_config):
    res = _toy(tmp_path, toy_config)
    # floor + GEMMs (no launch overhead on the toy) + 4 routed rows of token passes at 1 TB/s
    assert _expert(res, 0) == pytest.approx(FLOOR + EXPERT_DEV0 + 4 * PASSES / 1e12, rel=1e-9)
    assert _expert(res, 1) == pytest.approx(FLOOR + EXPERT_DEV1 + 4 * PASSES / 1e12, rel=1e-9)


def test_fused_adds_exactly_floor_and_token_passes_to_grouped(tmp_path, toy_config):
    fused = _toy(tmp_path / "f", toy_config)
    grouped = _toy(tmp_path / "g", toy_config, kernel="grouped")
    for d in (0, 1):
        assert _expert(fused, d) - _expert(grouped, d) == pytest.approx(FLOOR + 4 * PASSES / 1e12, rel=1e-9)


def test_plan_rows_and_roofline_show_the_floor_and_token_passes(tmp_path, toy_config):
    from moesim.simulator.compose import pipeline_for
    from moesim.simulator.roofline import scenario_plan

    res = _toy(tmp_path, toy_config)
    pipeline = pipeline_for(res.scenario)
    plan = scenario_plan(res.scenario, 0, pipeline)
    rows = pipeline.op_rows(plan, 0, 1)
    moe = rows[rows.phase == "expert"]
    assert set(moe.op) >= {"moe_floor", "moe_token_passes", "expert[2]", "expert[3]"}
    assert moe.time_s.sum() == pytest.approx(plan.expert[0, 1], rel=1e-12)
    floor = moe[moe.op == "moe_floor"].iloc[0]
    assert floor.time_s == pytest.approx(FLOOR) and floor.bound == "overhead"
    assert moe[moe.op == "moe_token_passes"].bytes.iloc[0] == 4 * PASSES


def test_a_device_without_rows_still_pays_the_floor(tmp_path, toy_config):
    cfg = {**toy_config, "workload": {**toy_config["workload"],
                                      "routing": {"generator": "fixed", "counts": [[4, 0, 0, 0], [4, 0, 0, 0]]}}}
    res = _toy(tmp_path, cfg)
    assert _expert(res, 1) == pytest.approx(FLOOR, rel=1e-9)  # its experts 2, 3 get no rows


def test_more_routed_rows_never_cost_less():
    from moesim.simulator.moe_kernel_cost import FUSED, MoeKernelCost

    kernel = MoeKernelCost(CostModel(load_device("H100-SXM")), FUSED, 7168, 2048, 2, "bf16")
    t = kernel.fixed_and_tokens(np.arange(0, 100000, 997, dtype=float))
    assert (np.diff(t) > 0).all() and t[0] == pytest.approx(kernel.floor)


def test_efficiency_per_kind_and_dtype_wins_over_kind():
    base = load_device("H100-SXM")
    eff = CalibratedEfficiency({"gemm": KindEfficiency(compute_max=0.8, rows_half=0, memory_max=0.9, bytes_half=0,
                                                       overhead=1e-6),
                                "gemm@fp8": KindEfficiency(compute_max=0.3, rows_half=0, memory_max=0.9, bytes_half=0,
                                                           overhead=1e-6)}, profile_efficiency(base))
    rows = np.array([1024.0])
    assert np.ravel(eff.compute("gemm", rows, "fp8"))[0] == pytest.approx(0.3)
    assert np.ravel(eff.compute("gemm", rows, "bf16"))[0] == pytest.approx(0.8)
    # a grouped GEMM the calibration did not fit falls back to the GEMM fit of its dtype
    assert np.ravel(eff.compute("grouped_gemm", rows, "fp8"))[0] == pytest.approx(0.3)
    assert eff.fitted_key("grouped_gemm", "bf16") == "gemm"


def test_grouped_gemm_has_its_own_datasheet_efficiency_per_dtype():
    base = load_device("H100-SXM")
    spec = base.model_copy(update={"moe_kernel": base.moe_kernel.model_copy(update={"compute": {"fp8": 0.3}})})
    cost = CostModel(spec)
    big = (2 * 8192 * 7168 * 2048, 7168 * 2048, 8192)
    grouped = cost.terms("grouped_gemm", *big, "fp8")[0]
    plain = cost.terms("gemm", *big, "fp8")[0]
    assert float(grouped / plain) == pytest.approx(base.efficiency.compute / 0.3)


def test_w8a16_reads_fp8_weights_but_computes_at_bf16_peak():
    from moesim.simulator.expert_precision import expert_precision
    from moesim.simulator.step_costs import StepCosts

    model = load_model("DeepSeek-V3")
    w8a16 = model.model_copy(update={"expert_compute_dtype": "bf16"})
    base = load_device("H100-SXM")  # without the profile's lower fp8 grouped-GEMM efficiency
    plain = base.model_copy(update={"moe_kernel": base.moe_kernel.model_copy(update={"compute": {}})})
    from moesim.simulator.machine import ComputeUnit

    unit = ComputeUnit("accelerator", "device", plain, CostModel(plain), 0.0, float("inf"), None, 1)
    machine = type("M", (), {"cost": unit.cost, "accelerator": unit, "units": {"accelerator": unit}})()
    a = StepCosts(model, machine, 1, expert_precision(model, None))
    b = StepCosts(w8a16, machine, 1, expert_precision(w8a16, None))
    assert a.expert_dtype == "fp8" and b.expert_dtype == "bf16"
    tokens, experts = np.array([[4096.0]]), np.array([[0]])
    fa, ma, wa, _ = a.expert_terms(tokens, experts)
    fb, mb, wb, _ = b.expert_terms(tokens, experts)
    assert fa == fb and ma == mb  # the same work and the same fp8 weight bytes
    assert wb > wa  # compute-bound at 4096 rows: bf16 tensor cores are half as fast as fp8 ones


def test_bad_moe_kernel_and_compute_dtype_are_named():
    base = load_device("H100-SXM").model_dump()
    with pytest.raises(ValueError, match=r"compute\.fp8 must be a fraction"):
        DeviceSpec(**{**base, "moe_kernel": {"compute": {"fp8": 1.5}}})
    with pytest.raises(ValueError, match=r"unknown dtype 'fp9'"):
        DeviceSpec(**{**base, "moe_kernel": {"compute": {"fp9": 0.5}}})
    with pytest.raises(ValueError, match="layer_floor"):
        DeviceSpec(**{**base, "moe_kernel": {"layer_floor": -1}})
    with pytest.raises(ValueError, match="expert_compute_dtype 'mxfp4'"):
        load_model("DeepSeek-V3").model_validate({**load_model("DeepSeek-V3").model_dump(),
                                                  "expert_compute_dtype": "mxfp4"})


# ---- fitting the form from a fused-MoE table ------------------------------------------------

def _fused_table(path, floor=30e-6, eff=0.5, seed=0, passes=1.0, shapes=None):
    """A fused-MoE table drawn from the form itself on H100-SXM (floor, grouped efficiency, the
    token passes scaled by `passes`), 2% noise."""
    from moesim.validation.measure import OpSpec, routed_counts
    from moesim.validation.predict import predict

    base = load_device("H100-SXM")
    truth = base.model_copy(update={"moe_kernel": base.moe_kernel.model_copy(update={
        "layer_floor": floor, "compute": {"bf16": eff}, "hidden_passes": base.moe_kernel.hidden_passes * passes,
        "intermediate_passes": base.moe_kernel.intermediate_passes * passes})})
    rng = np.random.default_rng(seed)
    rows = []
    shapes = shapes or {"mixtral": (4096, 14336, 8, 2), "dsv3": (7168, 2048, 32, 8)}
    for shape, (h, inter, experts, k) in shapes.items():
        for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
            counts = routed_counts(experts, t, k, t + len(shape), 0.5)
            spec = OpSpec("fused_moe", "", m=t, k=h, n=inter, counts=counts, top_k=k)
            time = float(predict([spec], CostModel(truth), "bf16", 2)[0]) * (1 + 0.02 * rng.standard_normal())
            rows.append({"kind": "fused_moe", "dtype": "bf16", "m": t, "k": h, "n": inter, "top_k": k,
                         "tokens_per_expert": " ".join(map(str, counts)), "time_s": time, "shape": shape})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_fit_from_a_fused_table_recovers_the_floor_and_predicts_held_out_rows(tmp_path):
    table = tmp_path / "fused.csv"
    _fused_table(table)
    cal = calibrate_from_table(table, "H100-SXM", tmp_path / "out")
    spec = cal.profile.calibration
    assert spec.moe_kernel.layer_floor == pytest.approx(30e-6, rel=0.15)
    assert cal.verdict and spec.verdict == cal.verdict and "beats the datasheet" in cal.verdict  # issue 26: none
    assert set(cal.table.split) == {"fit", "holdout_random", "holdout_slice"}  # the top token range left out
    # the table has the profile's own token passes: fitting their coefficient too costs the
    # extrapolation a little (7.6% -> 9.0%); on a table whose passes are 2.5x it wins (9.1% -> 7.0%)
    assert spec.validation["holdout_slice_mape_after"] < 0.10
    assert spec.validation["holdout_random_mape_after"] < 0.08
    # the datasheet's grouped efficiency (0.7, not 0.5) misses the compute-bound token range left out
    assert spec.validation["holdout_slice_mape_after"] < spec.validation["holdout_slice_mape_before"] / 2.5
    # the profile written carries the fit, and loads
    written = DeviceSpec(**yaml.safe_load((tmp_path / "out" / "H100-SXM-calibrated.yaml").read_text()))
    assert written.calibration.moe_kernel is not None and "grouped_gemm@bf16" in written.calibration.kinds


# many small experts (Qwen3-30B-A3B-like, and an EP slice of DeepSeek-V3): the experts stay
# weight-bound over most token counts, so the rows' passes are what grows with the rows
PASS_BOUND_SHAPES = {"qwen3": (2048, 768, 128, 8), "dsv3-ep8": (7168, 2048, 32, 8)}


def test_the_fitted_token_term_recovers_a_planted_coefficient(tmp_path):
    """A table whose token passes cost 2.5x the profile's (a dearer kernel than the profile
    assumes), its grouped GEMMs at the datasheet efficiency: the fit recovers the passes within
    15% and no fitted efficiency exceeds 1 (issue 26: the coefficient was fixed, ceilings went up
    to 20x). Where the fitted rows never leave the weight-bound regime the passes trade against
    the compute ceiling, which the prior then holds near the datasheet (measured: planted 2.5 with
    a 0.5 ceiling fits 2.6-2.7)."""
    table = tmp_path / "fused.csv"
    _fused_table(table, passes=2.5, shapes=PASS_BOUND_SHAPES, eff=0.7)
    spec = calibrate_from_table(table, "H100-SXM", tmp_path / "out").profile.calibration
    base = load_device("H100-SXM").moe_kernel
    assert spec.moe_kernel.hidden_passes == pytest.approx(2.5 * base.hidden_passes, rel=0.15)
    assert spec.moe_kernel.intermediate_passes / spec.moe_kernel.hidden_passes == pytest.approx(
        base.intermediate_passes / base.hidden_passes)
    for kind in spec.kinds.values():
        assert kind.compute_max <= 1.0 and kind.memory_max <= 1.0


def test_a_table_row_and_the_engine_count_the_same_routed_rows():
    """The token passes of a fused row run over the rows that reach the device, the sum of its
    local experts' counts (an EP slice of 8 tokens x top-2 holds 8 of the 16 rows): the table fit
    and the engine count them with one function."""
    from moesim.simulator.moe_kernel_cost import device_rows, routed_rows
    from moesim.validation.measure import OpSpec
    from moesim.validation.predict import expand

    spec = OpSpec("fused_moe", "fit", m=8, k=64, n=32, counts=(3, 5), top_k=2)
    assert expand([spec], 2).fused_rows[0] == routed_rows(spec.counts) == 8.0
    slot_tokens = np.array([[3.0, 5.0, 7.0]])
    onehot = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # copies 0 and 1 on device 0, copy 2 on device 1
    np.testing.assert_array_equal(device_rows(slot_tokens, onehot), [[routed_rows([3, 5]), routed_rows([7])]])


def test_fused_rows_with_fp8_weights_under_bf16_compute_read_fewer_bytes(tmp_path):
    from moesim.validation.fit import TableOp
    from moesim.validation.measure import OpSpec

    spec = OpSpec("fused_moe", "fit", m=1, k=7168, n=2048, counts=(1,) * 8, top_k=8)
    bf16 = TableOp(spec, "bf16", 2)
    w8 = TableOp(spec, "bf16", 2, weight_elem=1)
    from moesim.validation.fit import predict_ops

    t = predict_ops([bf16, w8], CostModel(load_device("H100-SXM")))
    assert t[1] < t[0] * 0.6  # one-token decode reads the weights: half the bytes, about half the time


def test_a_bad_weight_dtype_in_a_table_names_the_column_and_line(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("kind,dtype,weight_dtype,m,k,n,top_k,tokens_per_expert,time_s\n"
                     "fused_moe,bf16,fp9,2,64,32,1,1 1,1e-5\n")
    with pytest.raises(ConfigError, match=r"weight_dtype.*line 2|line 2.*weight_dtype|row 0 \(line 2\)"):
        calibrate_from_table(table, "H100-SXM", tmp_path / "o")


# ---- kernel families (issue 26) ---------------------------------------------------------------

def _family_toy(tmp_path, toy_config, kernel: str, families: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = toy_file(tmp_path, {**toy_config, "policies": {"expert_kernel": kernel}})
    device = tmp_path / "toy-device.yaml"
    spec = yaml.safe_load(device.read_text())
    spec["moe_kernel"] = {"layer_floor": "10 us", "hidden_passes": 2, "intermediate_passes": 3}
    spec["moe_kernels"] = families
    device.write_text(yaml.safe_dump(spec))
    return path


def test_a_kernel_family_brings_its_own_floor_passes_and_compute_efficiency(tmp_path, toy_config):
    """The toy's device 0 under a family with floor 4 us, no hidden pass, one intermediate pass:
    floor + its expert's weight read + 4 rows of one intermediate pass (hand calculation); a
    compute-bound expert under the family's 0.5 compute efficiency costs twice its work at 1.0."""
    from moesim.simulator.compose import pipeline_for
    from moesim.simulator.roofline import scenario_plan
    from moesim.simulator.scenario import load_scenario

    fam = {"deepgemm_masked": {"layer_floor": "4 us", "hidden_passes": 0, "intermediate_passes": 1,
                               "compute": {"bf16": 0.5}}}
    sc = load_scenario(_family_toy(tmp_path / "a", toy_config, "deepgemm_masked", fam))
    plan = scenario_plan(sc, 0, pipeline_for(sc))
    rows, ab = 4, 2
    flops = 2 * 3 * H * I * rows  # three GEMMs of the expert, 4 rows
    gemm = max(flops / (100e12 * 0.5), (WEIGHTS + rows * ROW) / 1e12)
    assert plan.expert[0, 0] == pytest.approx(4e-6 + gemm + rows * I * ab / 1e12, rel=1e-9)
    fused = load_scenario(_family_toy(tmp_path / "b", toy_config, "fused", fam))
    fplan = scenario_plan(fused, 0, pipeline_for(fused))
    assert fplan.expert[0, 0] == pytest.approx(10e-6 + max(flops / 100e12, (WEIGHTS + rows * ROW) / 1e12)
                                               + rows * PASSES / 1e12, rel=1e-9)
    rows_table = pipeline_for(sc).op_rows(plan, 0, 0)
    assert any("moe_kernels.deepgemm_masked" in s for s in rows_table.source)


def test_a_family_the_device_does_not_describe_is_a_config_error(tmp_path, toy_config):
    with pytest.raises(ConfigError) as err:
        simulate(_family_toy(tmp_path, toy_config, "deepgemm_contiguous", {}))
    assert err.value.field == "policies.expert_kernel" and "moe_kernels.deepgemm_contiguous" in str(err.value)


def test_deepgemm_prefill_on_h800_costs_its_published_efficiency():
    """DeepSeek-V3 prefill on H800: DeepGEMM's contiguous layout (0.6 of fp8 peak, its README) makes
    the compute-bound expert layers cheaper than the Triton fused kernels' 0.3; every family's
    efficiency stays within (0, 1]."""
    from moesim.simulator.config import config_from_dict

    from conftest import EXAMPLES, example_config

    times = {}
    for kernel in ("fused", "deepgemm_contiguous"):
        cfg = example_config("deepseek-v3-prefill-4x8-h800.yaml")
        cfg["workload"]["steps"] = 1
        cfg["policies"]["expert_kernel"] = kernel
        times[kernel] = simulate(config_from_dict(cfg, EXAMPLES)).summary["step_latency_s"]["mean"]
    assert times["deepgemm_contiguous"] < 0.9 * times["fused"]
    for name in ("H100-SXM", "H800"):
        for family, spec in load_device(name).moe_kernels.items():
            assert all(0 < e <= 1 for e in spec.compute.values()), (name, family)


def test_a_familys_own_efficiency_wins_over_a_calibration_of_other_kernels():
    """A calibration that fitted `grouped_gemm` (the project's own kernels) does not replace a
    kernel family's published compute efficiency; the family's memory efficiency still comes from
    the fit, and a dtype the family does not give falls back to the fit."""
    from moesim.simulator.cost_model import ProfileEfficiency

    fit = KindEfficiency(compute_max=0.9, rows_half=1.0, memory_max=0.7, bytes_half=1.0, overhead=0.0)
    profile = ProfileEfficiency(0.7, 0.8, (("grouped_gemm.deepgemm_masked", "fp8", 0.5),))
    cal = CalibratedEfficiency({"grouped_gemm": fit}, profile)
    rows = np.array([1e9])
    assert cal.compute("grouped_gemm.deepgemm_masked", rows, "fp8") == 0.5
    assert cal.compute("grouped_gemm.deepgemm_masked", rows, "bf16") == pytest.approx(0.9, rel=1e-6)
    assert cal.memory("grouped_gemm.deepgemm_masked", np.array([1e12]), "fp8") == pytest.approx(0.7, rel=1e-6)
