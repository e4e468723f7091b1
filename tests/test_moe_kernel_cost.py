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

def _fused_table(path, floor=30e-6, eff=0.5, seed=0):
    """A fused-MoE table drawn from the form itself on H100-SXM (floor, grouped efficiency), 2% noise."""
    from moesim.validation.measure import OpSpec, routed_counts
    from moesim.validation.predict import predict

    base = load_device("H100-SXM")
    truth = base.model_copy(update={"moe_kernel": base.moe_kernel.model_copy(update={"layer_floor": floor,
                                                                                      "compute": {"bf16": eff}})})
    rng = np.random.default_rng(seed)
    rows = []
    for shape, (h, inter, experts, k) in {"mixtral": (4096, 14336, 8, 2), "dsv3": (7168, 2048, 32, 8)}.items():
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
    assert set(cal.table.split) == {"fit", "holdout_random", "holdout_slice"}  # the top token range left out
    assert spec.validation["holdout_slice_mape_after"] < 0.08
    assert spec.validation["holdout_random_mape_after"] < 0.08
    # the datasheet's grouped efficiency (0.7, not 0.5) misses the compute-bound token range left out
    assert spec.validation["holdout_slice_mape_after"] < spec.validation["holdout_slice_mape_before"] / 3
    # the profile written carries the fit, and loads
    written = DeviceSpec(**yaml.safe_load((tmp_path / "out" / "H100-SXM-calibrated.yaml").read_text()))
    assert written.calibration.moe_kernel is not None and "grouped_gemm@bf16" in written.calibration.kinds


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
