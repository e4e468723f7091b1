"""The op timing table's MoE columns (validation/from_table.py): kernel, quant, ep, moe_tp and the
token distribution; per-family fits, what the calibrated profile stores, and how rows are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.errors import ConfigError
from moesim.hardware_profiles import load_device
from moesim.hardware_profiles.schema import DeviceSpec, MoeKernelSpec
from moesim.simulator.cost_model import CostModel
from moesim.simulator.moe_kernel_cost import KernelForm, MoeKernelCost, routed_rows
from moesim.validation.fit import predict_ops
from moesim.validation.from_table import (calibrate_from_table, expand_distribution, local_counts, read_table,
                                          to_ops)

K, N, EXPERTS, TOP_K = 7168, 2048, 256, 8
SHAPES = ((K, N), (2048, 4096))  # two hidden : width ratios tell the token passes from the GEMMs' row bytes
PLANTED = {"cutlass_grouped": (25e-6, 2.2, 0.42), "deepgemm_masked": (9e-6, 0.6, 0.55)}  # floor, pass scale, fp8 eff


@pytest.fixture(scope="module")
def h100() -> DeviceSpec:
    return load_device("H100-SXM")


def write(tmp: Path, rows: list[dict], name: str = "t.csv") -> Path:
    path = tmp / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def planted(base: DeviceSpec, families=PLANTED) -> DeviceSpec:
    """`base` with each family's floor, passes (scaled) and fp8 efficiency replaced by the planted ones."""
    fams = {f: MoeKernelSpec(layer_floor=floor, hidden_passes=base.moe_kernels[f].hidden_passes * s,
                             intermediate_passes=base.moe_kernels[f].intermediate_passes * s, compute={"fp8": eff})
            for f, (floor, s, eff) in families.items()}
    return base.model_copy(update={"moe_kernels": {**base.moe_kernels, **fams}})


def timed_table(tmp: Path, base: DeviceSpec, families=PLANTED, noise: float = 0.0, quant: str = "",
                held: bool = False) -> Path:
    """fused_moe rows of every family over EP 1..64 and 1..32k tokens (up to 1k rows per expert: the
    GEMMs turn compute-bound), timed by the planted profile; `held`: every fourth row held out."""
    rows = [dict(kind="fused_moe", dtype="fp8", kernel=f, m=m, k=k, n=n, experts=EXPERTS, top_k=TOP_K, ep=ep,
                 quant=quant, time_s=1.0, split="fit")
            for f in families for k, n in SHAPES for ep in (1, 4, 16, 64)
            for m in (1, 8, 64, 256, 1024, 4096, 16384, 32768)]
    for j, r in enumerate(rows):
        r["split"] = "holdout_random" if held and j % 4 == 3 else "fit"
    path = write(tmp, rows, "untimed.csv")
    truth = predict_ops(to_ops(read_table(path)), CostModel(planted(base, families)))
    rng = np.random.default_rng(1)
    for r, t in zip(rows, truth):
        r["time_s"] = float(t * np.exp(rng.normal(0, noise))) if noise else float(t)
    return write(tmp, rows)


def test_planted_token_pass_scale_recovered(tmp_path, h100):
    cal = calibrate_from_table(timed_table(tmp_path, h100), h100, tmp_path / "out")
    for family, (floor, scale, eff) in PLANTED.items():
        fitted = cal.profile.moe_kernels[family]
        base = h100.moe_kernels[family]
        assert fitted.intermediate_passes / base.intermediate_passes == pytest.approx(scale, rel=0.04), family
        assert fitted.layer_floor == pytest.approx(floor + h100.overhead, rel=0.05), family  # its launch folded in
        gemm = cal.profile.calibration.kinds[f"grouped_gemm.{family}@fp8"]
        assert gemm.compute_max == pytest.approx(eff, rel=0.05), family
    held = cal.errors[(cal.errors["split"] == "fit") & (cal.errors["kind"] == "all")]
    assert float(held["after_mape"].iloc[0]) < 0.01


def test_per_kernel_fits_are_separate(tmp_path, h100):
    both = calibrate_from_table(timed_table(tmp_path, h100, noise=0.02, held=True), h100, tmp_path / "both")
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    one = {"cutlass_grouped": PLANTED["cutlass_grouped"]}
    alone = calibrate_from_table(timed_table(alone_dir, h100, one, noise=0.02, held=True), h100,
                                 tmp_path / "alone-out")
    a, b = both.profile.moe_kernels["cutlass_grouped"], alone.profile.moe_kernels["cutlass_grouped"]
    assert a.layer_floor == pytest.approx(b.layer_floor, rel=1e-6)
    assert a.hidden_passes == pytest.approx(b.hidden_passes, rel=1e-6)
    kinds = both.profile.calibration.kinds
    assert kinds["grouped_gemm.cutlass_grouped@fp8"] != kinds["grouped_gemm.deepgemm_masked@fp8"]
    assert both.profile.moe_kernels["deepgemm_masked"] != a
    assert "grouped_gemm@fp8" not in kinds  # the profile's fused kernel was not measured: not fitted
    labels = set(both.errors["kind"])
    assert {"fused_moe[cutlass_grouped]", "fused_moe[deepgemm_masked]"} <= labels
    assert "cutlass_grouped" in both.verdict and "deepgemm_masked" in both.verdict


def test_calibrated_profile_is_read_by_the_engine(tmp_path, h100):
    cal = calibrate_from_table(timed_table(tmp_path, h100), h100, tmp_path / "out")
    profile = load_device(tmp_path / "out" / f"{cal.profile.name}.yaml")
    fitted = profile.moe_kernels["cutlass_grouped"]
    assert "fp8" not in fitted.compute  # the fit's grouped_gemm.cutlass_grouped@fp8 costs it, not the datasheet
    cost = CostModel(profile)
    form = KernelForm("cutlass_grouped", grouped=True, floor_and_passes=True, family="cutlass_grouped")
    assert MoeKernelCost(cost, form, K, N, 2, "bf16").floor == pytest.approx(fitted.layer_floor)
    eff = float(np.ravel(cost.efficiency.compute("grouped_gemm.cutlass_grouped", np.array([1e6]), "fp8"))[0])
    assert eff == pytest.approx(PLANTED["cutlass_grouped"][2], rel=0.05)
    assert "moe_kernels.cutlass_grouped" in profile.sources


def test_efficiencies_never_exceed_one(tmp_path, h100):
    hot = {"deepgemm_masked": (9e-6, 1.0, 1.0)}  # the planted kernel at full peak: the fit stops at 1
    rows = pd.read_csv(timed_table(tmp_path, h100, hot))
    rows["time_s"] *= 0.7  # faster than the datasheet's peak allows
    path = write(tmp_path, rows.to_dict("records"), "fast.csv")
    cal = calibrate_from_table(path, h100, tmp_path / "out")
    for key, fit in cal.profile.calibration.kinds.items():
        if key.startswith("grouped_gemm"):
            assert fit.compute_max <= 1.0, key
    for spec in cal.profile.moe_kernels.values():
        assert all(0 < e <= 1 for e in spec.compute.values())


def test_quant_modes_fit_apart(tmp_path, h100):
    one = {"cutlass_grouped": PLANTED["cutlass_grouped"]}
    block = pd.read_csv(timed_table(tmp_path, h100, one, quant="block"))
    slow = {"cutlass_grouped": (25e-6, 2.2, 0.25)}
    per_tensor = pd.read_csv(timed_table(tmp_path, h100, slow, quant="per_tensor"))
    path = write(tmp_path, pd.concat([block, per_tensor]).to_dict("records"), "quant.csv")
    cal = calibrate_from_table(path, h100, tmp_path / "out")
    kinds = cal.profile.calibration.kinds
    assert kinds["grouped_gemm.cutlass_grouped@fp8/block"].compute_max > \
        kinds["grouped_gemm.cutlass_grouped@fp8/per_tensor"].compute_max
    assert "grouped_gemm.cutlass_grouped@fp8" in kinds  # the engine's key: the commoner mode's fit
    assert {"fused_moe[cutlass_grouped fp8/block]", "fused_moe[cutlass_grouped fp8/per_tensor]"} <= \
        set(cal.errors["kind"])
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert "fused_moe[cutlass_grouped fp8/block]" in set(errors["kind"])


def test_distribution_expansion_is_deterministic_and_conserves_rows():
    a = expand_distribution(1000, 8, 256, "zipf:1.2", draws=3, seed=7)
    assert a == expand_distribution(1000, 8, 256, "zipf:1.2", draws=3, seed=7)
    assert a != expand_distribution(1000, 8, 256, "zipf:1.2", draws=3, seed=8)
    assert sum(a) == 1000 * 8 and len(a) == 256 and min(a) >= 0
    u = expand_distribution(1000, 8, 256, "uniform", draws=3, seed=7)
    assert sum(u) == 8000 and max(a) > 2 * max(u)  # the skew survives the average over draws
    assert max(expand_distribution(5, 8, 8, "zipf:2", seed=0)) == 5  # top_k = experts: every token on every expert


def test_distribution_rows_through_the_loader(tmp_path):
    row = dict(kind="fused_moe", dtype="bf16", m=300, k=64, n=128, experts=16, top_k=2, distribution="zipf:1.0",
               draws=4, seed=3, time_s=1e-4)
    first = read_table(write(tmp_path, [row, {**row, "ep": 4}]))
    again = read_table(write(tmp_path, [row, {**row, "ep": 4}], "again.csv"))
    assert [r["counts"] for r in first] == [r["counts"] for r in again]
    full, local = first[0]["counts"], first[1]["counts"]
    assert sum(full) == 300 * 2 and len(full) == 16
    assert local == full[:4] == local_counts(full, 4)


def test_experts_only_rows_spread_m_times_top_k(tmp_path):
    rows = read_table(write(tmp_path, [
        dict(kind="fused_moe", dtype="bf16", m=100, k=64, n=128, experts=8, top_k=2, time_s=1e-4),
        dict(kind="moe_layer", dtype="bf16", m=100, k=64, n=128, experts=8, top_k=2, time_s=1e-4),
        dict(kind="grouped_gemm", dtype="bf16", m=100, k=64, n=128, experts=8, time_s=1e-4)]))
    assert rows[0]["counts"] == (25,) * 8 and rows[1]["counts"] == (25,) * 8
    assert sum(rows[2]["counts"]) == 100  # a grouped GEMM's m rows, no top_k
    assert routed_rows(rows[0]["counts"]) == 200


def test_ep_and_moe_tp_change_the_rows_as_documented(tmp_path, h100):
    base = dict(kind="fused_moe", dtype="fp8", kernel="cutlass_grouped", m=1024, k=K, n=N, experts=EXPERTS,
                top_k=TOP_K, time_s=1e-3)
    rows = read_table(write(tmp_path, [base, {**base, "ep": 8}, {**base, "ep": 8, "moe_tp": 2}]))
    assert len(rows[0]["counts"]) == 256 and sum(rows[0]["counts"]) == 1024 * 8
    assert len(rows[1]["counts"]) == 32 and sum(rows[1]["counts"]) == 1024 * 8 // 8  # its share of m x top_k
    assert rows[1]["n"] == N and rows[2]["n"] == N // 2 and rows[2]["counts"] == rows[1]["counts"]
    explicit = {**base, "tokens_per_expert": " ".join(map(str, rows[1]["counts"])), "experts": ""}
    rows.append(read_table(write(tmp_path, [explicit], "explicit.csv"))[0])
    t = predict_ops(to_ops([dict(r, split="fit") for r in rows]), CostModel(h100))
    assert t[1] < t[0] and t[2] < t[1]  # fewer local experts and rows; then half-width experts
    assert t[3] == pytest.approx(t[1])  # ep=8 is the device's slice given explicitly


@pytest.mark.parametrize("cells, column", [
    ({"kernel": "magic"}, "kernel"), ({"kernel": "grouped"}, "kernel"), ({"quant": "int4"}, "quant"),
    ({"ep": "3"}, "ep"), ({"ep": "0"}, "ep"), ({"moe_tp": "1.5"}, "moe_tp"), ({"moe_tp": "3"}, "moe_tp"),
    ({"distribution": "pareto"}, "distribution"), ({"distribution": "zipf:-1"}, "distribution"),
    ({"draws": "4"}, "draws"), ({"distribution": "uniform", "draws": "0"}, "draws"),
    ({"distribution": "uniform", "tokens_per_expert": "1 2"}, "distribution"),
])
def test_bad_cells_name_file_column_and_line(tmp_path, h100, cells, column):
    row = dict(kind="fused_moe", dtype="fp8", m=64, k=K, n=N, experts=EXPERTS, top_k=TOP_K, time_s=1e-4)
    good = dict(row, split="fit")
    path = write(tmp_path, [good] * 8 + [{**row, **cells}])
    with pytest.raises(ConfigError) as err:
        calibrate_from_table(path, h100, tmp_path / "out")
    text = str(err.value)
    assert "t.csv" in text and column in text and "line 10" in text, text
    if column == "kernel" and cells["kernel"] == "magic":
        assert "cutlass_grouped" in text and "per_expert" in text  # the names the profile knows
