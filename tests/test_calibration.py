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


@pytest.fixture(scope="module")
def small_cpu_calibration(tmp_path_factory):
    """One small real CPU calibration for the module, with its report, in a folder of its own."""
    out = tmp_path_factory.mktemp("calibration")
    cal = run_calibration("cpu", grid=TINY, out_dir=out, threads=1)
    write_calibration_report(cal)  # the CLI writes it after the run (reports sit above validation)
    return cal, out


def test_small_cpu_calibration_beats_the_datasheet_on_held_out_gemms(small_cpu_calibration):
    cal, tmp_path = small_cpu_calibration
    held = cal.table[(cal.table["kind"] == "gemm") & cal.table["split"].isin(["holdout_random", "holdout_slice"])]
    before = error_stats(held["sim_before_s"].to_numpy(), held["measured_s"].to_numpy())
    after = error_stats(held["sim_after_s"].to_numpy(), held["measured_s"].to_numpy())
    assert after["n"] >= 8
    assert after["mape"] < before["mape"], (before, after)
    # a verdict per held-out split; its warnings reach the profile YAML (notes and a header)
    assert cal.verdict.startswith(("The calibrated profile", "No held-out"))
    text = (tmp_path / f"{cal.profile.name}.yaml").read_text()
    for w in cal.warnings:
        assert f"# WARNING: {w}" in text and w in load_device(tmp_path / f"{cal.profile.name}.yaml").notes
    assert ("verdict", cal.verdict) in cal.facts
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


@pytest.mark.slow  # the roofline command's charts take seconds
def test_roofline_of_a_calibrated_profile_shows_its_own_measurements(small_cpu_calibration, tmp_path):
    cal, folder = small_cpu_calibration
    assert main(["roofline", "--model", "OLMoE-1B-7B", "--device", str(folder / f"{cal.profile.name}.yaml"),
                 "--out", str(tmp_path / "roof")]) == 0
    assert "measured points" in (tmp_path / "roof" / "roofline.md").read_text()  # the profile's own measurements


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


def _key(s):
    return (s.kind, s.m, s.k, s.n, s.counts, s.nbytes, s.experts, s.shape)


def test_model_grid_has_the_models_gemm_shapes_and_clean_splits():
    """Mixtral-8x7B and DeepSeek-V3 shapes exactly as their specs give them; fit <= 512 tokens, the slice
    above it up to 8192; random hold-out disjoint from the fit; skewed top-k grouped GEMMs; MoE layers."""
    from moesim.validation.measure import calibration_grid, model_gemm_shapes, model_grid
    from moesim.workloads.models import load_model

    mix, ds = load_model("Mixtral-8x7B"), load_model("DeepSeek-V3")
    assert model_gemm_shapes(mix) == {"expert_gate_up": (4096, 2 * 14336), "expert_down": (14336, 4096),
                                      "qkv_proj": (4096, (32 + 2 * 8) * 128), "o_proj": (32 * 128, 4096),
                                      "router": (4096, 8)}  # no dense layers: no dense FFN shapes
    assert model_gemm_shapes(ds) == {  # the shared expert (7168 -> 2x2048) repeats the routed one: kept once
        "expert_gate_up": (7168, 2 * 2048), "expert_down": (2048, 7168),
        "dense_gate_up": (7168, 2 * 18432), "dense_down": (18432, 7168),
        "q_down": (7168, 1536), "q_up": (1536, 128 * (128 + 64)), "kv_down": (7168, 512 + 64),
        "kv_up": (512, 128 * (128 + 128)), "o_proj": (128 * 128, 7168), "router": (7168, 256)}
    grid = model_grid([mix, ds], "cuda", "bfloat16")
    assert max(grid.tokens) == 512 and grid.slice_tokens == (1024, 2048, 4096, 8192)
    assert (4096, 4096) in grid.other_shapes and (16384, 7168) in grid.other_shapes  # o_proj held out
    specs = calibration_grid(grid, "cuda")
    by = {split: [s for s in specs if s.split == split] for split in ("fit", "holdout_random", "holdout_slice", "e2e")}
    fit_keys = {_key(s) for s in by["fit"]}
    assert not fit_keys & {_key(s) for s in by["holdout_random"]}
    assert not fit_keys & {_key(s) for s in by["holdout_slice"]}
    gemms_fit = [s for s in by["fit"] if s.kind == "gemm"]
    assert {(s.k, s.n) for s in gemms_fit} == {kn for kn in grid.shapes}
    assert not {(s.k, s.n) for s in gemms_fit} & set(grid.other_shapes)
    assert max(s.m for s in by["fit"] + by["holdout_random"] if s.kind in ("gemm", "grouped_gemm")) <= 512
    slice_shapes = [s for s in by["holdout_slice"] if (s.k, s.n) in grid.shapes]
    assert slice_shapes and min(s.m for s in slice_shapes) > 512 and max(s.m for s in slice_shapes) == 8192
    for s in [s for s in specs if s.kind == "grouped_gemm"]:
        model = mix if s.shape.startswith("Mixtral") else ds
        assert len(s.counts) == model.moe.num_experts and s.top_k == model.moe.top_k
        assert sum(s.counts) == s.m * s.top_k and max(s.counts) <= s.m
        assert (s.k, s.n) in ((model.hidden_size, 2 * model.moe.expert_intermediate_size),
                              (model.moe.expert_intermediate_size, model.hidden_size))
        if s.m >= 512:
            assert max(s.counts) > 1.3 * s.m * s.top_k / len(s.counts)  # skewed, not uniform
    layers = {(s.shape, s.m, s.k, s.n, s.experts, s.top_k) for s in by["e2e"] if s.kind == "moe_layer"}
    assert ("Mixtral-8x7B", 4096, 4096, 14336, 8, 2) in layers and ("DeepSeek-V3", 512, 7168, 2048, 256, 8) in layers
    assert {"h2d", "d2h", "grouped_gemm_triton"} <= {s.kind for s in specs}
    assert "h2d" not in {s.kind for s in calibration_grid(model_grid([mix], "cpu", "float32"), "cpu")}


def test_default_grids_and_a_tiny_model_grid_measured_on_the_cpu():
    """--size full on a GPU is model-shaped; the small CPU grid is unchanged; a scaled-down model's grid
    runs through measure (grouped GEMMs, a MoE layer) on the CPU."""
    from moesim.validation.calibrate import choose_grid
    from moesim.validation.measure import SMALL, calibration_grid, measure, model_grid
    from moesim.workloads.model_spec import ModelSpec

    grid, name = choose_grid("cuda", "full", "bfloat16", None, None)
    assert "Mixtral-8x7B" in name and "DeepSeek-V3" in name and (7168, 4096) in grid.shapes
    assert choose_grid("cpu", "small", "float32", None, None)[0] is SMALL
    assert choose_grid("cuda", "small", "bfloat16", None, None)[0] is SMALL
    tiny = ModelSpec(name="tiny", num_layers=2, hidden_size=64, vocab_size=100, dense_intermediate_size=96,
                     attention={"type": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
                     moe={"num_experts": 8, "top_k": 2, "expert_intermediate_size": 32, "first_dense_layers": 1})
    grid = model_grid([tiny], "cpu", "float32", max_tokens=256)
    assert max(grid.tokens) == 128 and grid.slice_tokens == (256,)
    assert set(grid.shapes) == {(64, 64), (32, 64), (64, 192), (96, 64), (64, 128), (64, 8)}
    specs = calibration_grid(grid, "cpu")
    pick = [next(s for s in specs if s.kind == kind) for kind in ("gemm", "grouped_gemm", "moe_layer")]
    out = list(measure(pick, "cpu", "float32", {"warmup": 1, "min_reps": 2, "min_time": 0.0}))
    assert [s.kind for s, _ in out] == ["gemm", "grouped_gemm", "moe_layer"]
    assert all(t.median > 0 for _, t in out) and sum(out[2][0].counts) == out[2][0].m * 2


def _errors(rows):
    import pandas as pd

    return pd.DataFrame([{"split": s, "kind": "all", "before_mape": b, "after_mape": a, "noise_floor": nf}
                         for s, b, a, nf in rows])


def test_verdict_better_worse_busy_noisy():
    from moesim.validation.calibrate import verdict

    good = _errors([("fit", 0.3, 0.05, 0.02), ("holdout_random", 0.28, 0.049, 0.02),
                    ("holdout_slice", 0.31, 0.077, 0.02), ("e2e", 0.15, 0.094, 0.03)])
    text, warns = verdict(good, load_average=0.2, cores=16)
    assert "beats the datasheet on every held-out split" in text and warns == []
    # the shipped default grid on the H100: e2e 62% -> 158%
    bad = _errors([("fit", 0.5, 0.1, 0.02), ("holdout_random", 0.4, 0.1, 0.02), ("e2e", 0.62, 1.58, 0.03)])
    text, warns = verdict(bad, load_average=0.2, cores=16)
    assert "not on e2e 62% -> 158%" in text
    assert len(warns) == 1 and "e2e" in warns[0] and "158.0%" in warns[0]
    worse = _errors([("holdout_random", 0.2, 0.3, 0.01), ("e2e", 0.2, 0.25, 0.01)])
    assert "worse than the datasheet on every held-out split" in verdict(worse)[0]
    text, warns = verdict(good, load_average=12.0, cores=16)  # busy: load > 0.5 x cores
    assert "rerun on an idle machine" in text and any("busy machine" in w and "12.00" in w for w in warns)
    noisy = _errors([("fit", 0.3, 0.05, 0.08), ("holdout_random", 0.3, 0.1, 0.08)])
    text, warns = verdict(noisy, load_average=0.0, cores=16)
    assert any(w.startswith("noisy") for w in warns) and "idle machine" in text
    assert any("host floor" in w for w in verdict(good, 0.0, 16, at_floor=(30, 100))[1])
    assert verdict(good, 0.0, 16, at_floor=(5, 100))[1] == []
    assert "No held-out data" in verdict(_errors([("fit", 0.3, 0.05, 0.01)]))[0]
