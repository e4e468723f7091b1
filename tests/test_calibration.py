"""Calibration: the fit recovers known efficiencies (with outliers), a small real CPU calibration beats
the datasheet profile on held-out GEMMs, the calibrated profile loads and drives the cost model, and
bad input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("scipy")

from moesim.cli import main  # noqa: E402
from moesim.errors import MoesimError  # noqa: E402
from moesim.hardware_profiles import load_device  # noqa: E402
from moesim.hardware_profiles.schema import KindEfficiency  # noqa: E402
from moesim.simulator.cost_model import CostModel  # noqa: E402
from moesim.validation.calibrate import run_calibration  # noqa: E402
from moesim.reports.calibration_report import write_calibration_report  # noqa: E402
from moesim.validation.errors import error_stats  # noqa: E402
from moesim.validation.fit import calibrated_cost, fit_profile  # noqa: E402
from moesim.validation.machine import cpu_datasheet_profile  # noqa: E402
from moesim.validation.measure import GridConfig, OpSpec  # noqa: E402
from moesim.validation.predict import predict  # noqa: E402
from moesim.validation.timing import summarize  # noqa: E402

from conftest import DATA  # noqa: E402


def _gemm_specs(tokens, shapes, split="fit"):
    return [OpSpec("gemm", split, m=m, k=k, n=n) for k, n in shapes for m in tokens]


def test_fit_recovers_known_efficiencies_despite_outliers():
    """Times generated from a known model (tile 16) are fitted back; two 3x outliers barely move it."""
    device = cpu_datasheet_profile().model_copy(update={"gemm_tile": 16})
    truth = {"gemm": KindEfficiency(compute_max=0.6, rows_half=12.0, memory_max=0.5, bytes_half=2e5, overhead=8e-6)}
    specs = _gemm_specs((1, 2, 4, 8, 16, 32, 64, 128, 256, 512), ((512, 1024), (1024, 512), (2048, 2048)))
    measured = predict(specs, calibrated_cost(device, truth), "fp32", 4)
    noisy = measured.copy()
    noisy[[3, 17]] *= 3.0
    fit = fit_profile(specs, noisy, device.model_copy(update={"gemm_tile": 8}), "fp32", 4)
    tiled = device.model_copy(update={"gemm_tile": fit.gemm_tile})
    pred = predict(specs, calibrated_cost(tiled, fit.kinds), "fp32", 4)
    clean = np.ones(len(specs), dtype=bool)
    clean[[3, 17]] = False
    assert error_stats(pred[clean], measured[clean])["mape"] < 0.03
    # extrapolation beyond the grid (4x the largest token count, another shape) stays close
    far = _gemm_specs((2048, 4096), ((4096, 1024),))
    assert error_stats(predict(far, calibrated_cost(tiled, fit.kinds), "fp32", 4),
                       predict(far, calibrated_cost(device, truth), "fp32", 4))["mape"] < 0.05


TINY = GridConfig(tokens=(1, 2, 4, 8, 16, 32, 64, 128), slice_tokens=(256, 512), shapes=((256, 512), (512, 256)),
                  other_shapes=((384, 768),), copy_bytes=tuple(2 ** p for p in range(16, 25, 2)),
                  grouped=((8, 64, 1),), moe_layers=((16, 128, 256, 4, 2),), holdout_share=0.25,
                  timing={"warmup": 2, "min_reps": 7, "min_time": 0.01})


def test_small_cpu_calibration_beats_the_datasheet_on_held_out_gemms(tmp_path):
    cal = run_calibration("cpu", grid=TINY, out_dir=tmp_path, threads=1)
    write_calibration_report(cal)  # the CLI writes it after the run (reports sit above validation)
    held = cal.table[(cal.table["kind"] == "gemm") & cal.table["split"].isin(["holdout_random", "holdout_slice"])]
    before = error_stats(held["sim_before_s"].to_numpy(), held["measured_s"].to_numpy())
    after = error_stats(held["sim_after_s"].to_numpy(), held["measured_s"].to_numpy())
    assert after["n"] >= 8
    assert after["mape"] < before["mape"], (before, after)
    for name in ("measurements.csv", "machine.json", "errors.csv", "report.html", "report.md",
                 "predicted-vs-measured.png", f"{cal.profile.name}.yaml"):
        assert (tmp_path / name).exists(), name
    # the written profile loads and its fitted efficiencies drive the cost model
    spec = load_device(tmp_path / f"{cal.profile.name}.yaml")
    assert spec.calibration is not None and "gemm" in spec.calibration.kinds
    assert spec.calibration.versions["torch"]
    t = CostModel(spec).times("gemm", 2 * 64 * 256 * 512, (64 * 256 + 256 * 512 + 64 * 512) * 4, 64, "fp32")
    row = cal.table[(cal.table["kind"] == "gemm") & (cal.table["m"] == 64) & (cal.table["k"] == 256)]
    assert float(t) == pytest.approx(float(row["sim_after_s"].iloc[0]), rel=1e-9)
    assert main(["roofline", "--model", "OLMoE-1B-7B", "--device", str(tmp_path / f"{cal.profile.name}.yaml"),
                 "--out", str(tmp_path / "roof")]) == 0
    assert "measured points" in (tmp_path / "roof" / "roofline.md").read_text()  # the profile's own measurements
    # a cluster naming the calibrated profile simulates with its fitted costs
    (tmp_path / "cluster.yaml").write_text(
        f"name: calibrated-box\nnode: {{device: {cal.profile.name}.yaml, devices_per_node: 1, "
        "intra_node: {topology: none, link: PCIe4-x16}}\n")
    cfg = {"model": str(DATA / "toy" / "toy-model.yaml"), "hardware": {"cluster": "cluster.yaml"},
           "parallelism": {"ep": 1},
           "workload": {"phase": "decode", "batch_size": 1, "kv_len": 16, "steps": 1}, "outputs": {"trace_steps": 0}}
    (tmp_path / "sc.yaml").write_text(__import__("yaml").safe_dump(cfg))
    from moesim.simulator.run import simulate

    result = simulate(tmp_path / "sc.yaml")
    assert result.scenario.cost.efficiency.__class__.__name__ == "CalibratedEfficiency"
    assert result.summary["step_latency_s"]["mean"] > 0


def test_timing_summary_and_bad_input(tmp_path, capsys):
    t = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median == 3.0 and t.reps == 5
    with pytest.raises(MoesimError, match="unknown calibration device"):
        run_calibration("tpu", out_dir=tmp_path)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(MoesimError, match="sees no CUDA"):
            run_calibration("cuda", out_dir=tmp_path)
    with pytest.raises(MoesimError, match="gpu profile but the calibration runs on the cpu"):
        run_calibration("cpu", profile="H100-SXM", out_dir=tmp_path)
    with pytest.raises(SystemExit) as stop:  # argparse refuses it, naming the option and the choices
        main(["calibrate", "--device", "cpu", "--dtype", "int3", "--out", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "invalid choice" in err and "bfloat16" in err


def test_gpu_path_parts_that_run_on_the_cpu():
    """The CUDA grid adds host<->device copies and the Triton grouped GEMM; the link fit recovers a
    known latency and bandwidth; the Triton op is predicted as the engine's per-expert GEMMs."""
    from moesim.validation.fit import _fit_link
    from moesim.validation.measure import SMALL, calibration_grid

    kinds = {s.kind for s in calibration_grid(SMALL, "cuda")}
    assert {"h2d", "d2h", "grouped_gemm_triton", "copy", "gemm", "moe_layer"} <= kinds
    assert "h2d" not in {s.kind for s in calibration_grid(SMALL, "cpu")}
    specs = [OpSpec("h2d", "fit", nbytes=2 ** p) for p in range(12, 28, 2)]
    times = np.array([8e-6 + s.nbytes / 24e9 for s in specs])
    link = _fit_link(specs, times)
    assert link["latency"] == pytest.approx(8e-6, rel=0.02) and link["bandwidth"] == pytest.approx(24e9, rel=0.02)
    assert predict(specs[:1], CostModel(load_device("H100-SXM")), "bf16", 2, {"h2d": link})[0] == pytest.approx(
        times[0], rel=0.02)
    counts = (0, 5, 70, 1)
    tri, ref = OpSpec("grouped_gemm_triton", "e2e", k=256, n=512, counts=counts), \
        OpSpec("grouped_gemm", "fit", k=256, n=512, counts=counts)
    cost = CostModel(load_device("H100-SXM"))
    assert predict([tri], cost, "bf16", 2)[0] == predict([ref], cost, "bf16", 2)[0]
