"""`moesim calibrate --dtype float8_e4m3fn` (validation/fp8_ops.py): refused on a CPU with a reason; its
scaled-matmul runners and the scaling sweep smoke-tested on the CPU (torch runs per-tensor and
row-wise scaled matmul there; the timings themselves only mean something on a GPU)."""

import pytest

torch = pytest.importorskip("torch")

from moesim.errors import MoesimError  # noqa: E402
from moesim.validation import fp8_ops  # noqa: E402
from moesim.validation.calibrate import run_calibration  # noqa: E402
from moesim.validation.measure import DTYPE_BYTES, OpSpec, _runner  # noqa: E402

QUICK = {"warmup": 1, "min_reps": 2, "min_time": 0.0}


def test_fp8_on_the_cpu_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(MoesimError, match="no fp8 units"):
        run_calibration("cpu", "small", "float8_e4m3fn", out_dir=tmp_path / "cal")
    assert not (tmp_path / "cal").exists()
    assert DTYPE_BYTES["float8_e4m3fn"] == 1


@pytest.mark.parametrize("quant", ["per_tensor", "per_channel"])
def test_scaled_gemm_matches_a_plain_matmul(quant):
    a = torch.randn(32, 128).to(torch.float8_e4m3fn)
    b = torch.randn(64, 128).to(torch.float8_e4m3fn).t()
    got = fp8_ops.scaled_gemm(a, b, quant)().float()
    want = a.float() @ b.float()  # unit scales: the product of the fp8 values
    assert torch.allclose(got, want, rtol=2e-2, atol=1e-1)


def test_runners_cover_the_grid_kinds_in_fp8():
    dtype = torch.float8_e4m3fn
    out = _runner(OpSpec("gemm", "fit", m=5, k=128, n=64), "cpu", dtype)()
    assert out.shape == (16, 64)  # rows padded to the 16 fp8 tensor cores take
    outs = _runner(OpSpec("grouped_gemm", "fit", m=9, k=128, n=64, counts=(4, 0, 5)), "cpu", dtype)()
    assert len(outs) == 2  # one scaled GEMM per expert with tokens


def test_the_scaling_sweep_times_each_mode_or_says_why_not():
    df = fp8_ops.quant_sweep([(16, 128, 256)], "cpu", QUICK, lambda b: 1,
                             modes=("per_tensor", "per_channel", "block"))
    assert list(df["quant"]) == ["per_tensor", "per_channel", "block"]
    assert set(df.columns) >= {"kind", "dtype", "quant", "m", "k", "n", "time_s", "error"}
    timed = df["time_s"].notna()
    assert timed[df["quant"] != "block"].all()  # torch's CPU build runs these two
    assert ((df["error"] != "") | timed).all() and ((df["error"] == "") == timed).all()  # a time or a reason


def test_an_unknown_scaling_is_an_error():
    with pytest.raises(ValueError, match="per_tensor, per_channel, block"):
        fp8_ops._scales("per_group", 16, 128, 128, "cpu")


def test_the_sweep_feeds_a_table_calibration_with_a_fit_per_scaling(tmp_path):
    """fp8_scalings.csv (the timed modes) is a --from-table table: each scaling gets its own fit."""
    from moesim.validation.from_table import calibrate_from_table

    df = fp8_ops.quant_sweep([(16 * i, 256, 512) for i in range(1, 19)], "cpu", QUICK,
                             lambda b: 1, modes=("per_tensor", "per_channel"))
    df.drop(columns="error").to_csv(tmp_path / "fp8_scalings.csv", index=False)
    cal = calibrate_from_table(tmp_path / "fp8_scalings.csv", "H100-SXM", tmp_path / "out")
    kinds = set(cal.profile.calibration.kinds)
    assert {"gemm@fp8/per_tensor", "gemm@fp8/per_channel"} <= kinds
