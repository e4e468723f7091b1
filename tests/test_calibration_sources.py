"""Calibration from external sources: op timing tables (validation/from_table.py), nccl-tests logs
(validation/nccl_tests.py) and the bundled measured H100 profile."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("scipy")

from moesim.errors import ConfigError  # noqa: E402
from moesim.hardware_profiles import load_device  # noqa: E402
from moesim.hardware_profiles.schema import KindEfficiency  # noqa: E402
from moesim.validation.fit import calibrated_cost, predict_ops  # noqa: E402
from moesim.validation.from_table import calibrate_from_table, read_table, to_ops  # noqa: E402
from moesim.validation.nccl_tests import fit_collectives, parse_nccl_tests  # noqa: E402

MEASURED = Path(__file__).resolve().parents[1] / "hardware_profiles" / "measurements" / "h100-2026-11-26"
TRUE = {"gemm": KindEfficiency(compute_max=0.8, rows_half=24.0, memory_max=0.9, bytes_half=2e6, overhead=9e-6),
        "copy": KindEfficiency(compute_max=0.7, rows_half=1.0, memory_max=0.85, bytes_half=5e5, overhead=6e-6),
        "attention": KindEfficiency(compute_max=0.55, rows_half=16.0, memory_max=0.8, bytes_half=1e6,
                                    overhead=1.2e-5)}


def _known_table(path: Path, with_attention: bool) -> None:
    """A generic-schema table whose times are a known calibrated H100 profile's own predictions."""
    rows = []
    for k, n in ((4096, 14336), (14336, 4096), (2048, 1408)):
        for m in (2 ** p for p in range(15)):  # 1..16384: the fit range reaches the compute-bound sizes
            rows.append({"kind": "gemm", "dtype": "bf16", "m": m, "k": k, "n": n})
            if with_attention:
                rows.append({"kind": "gemm", "dtype": "fp8", "m": m, "k": k, "n": n})
    for e, counts in ((8, "5 0 17 3 40 1 0 9"), (4, "64 32 0 128")):
        rows.append({"kind": "grouped_gemm", "dtype": "bf16", "k": 4096, "n": 14336, "tokens_per_expert": counts})
    for b in (2 ** p for p in range(16, 28, 2)):
        rows.append({"kind": "copy", "dtype": "bf16", "copy_bytes": b})
    rows.append({"kind": "moe_layer", "dtype": "bf16", "m": 512, "k": 4096, "n": 14336, "experts": 8, "top_k": 2})
    rows.append({"kind": "fused_moe", "dtype": "bf16", "m": 64, "k": 4096, "n": 14336, "experts": 8})
    if with_attention:
        for t in (16, 64, 256, 1024, 4096, 16384):
            rows.append({"kind": "attention", "dtype": "bf16", "m": t, "flops": 4.0 * t * 2048 * 32 * 128,
                         "bytes": 2.0 * t * 6 * 1024 + 2 * 8 * 128 * 2048.0 * 2})
    df = pd.DataFrame(rows).assign(time_s=1.0)
    df.to_csv(path, index=False)
    ops = to_ops([dict(r, split="fit") for r in read_table(path)])
    true = load_device("H100-SXM").model_copy(update={"gemm_tile": 16})
    df["time_s"] = predict_ops(ops, calibrated_cost(true, TRUE))
    df.to_csv(path, index=False)


@pytest.mark.parametrize("with_attention", [False, True])
def test_from_table_recovers_a_known_profile(tmp_path, with_attention):
    table = tmp_path / "ops.csv"
    _known_table(table, with_attention)
    cal = calibrate_from_table(table, "H100-SXM", tmp_path / "out")
    val = cal.profile.calibration.validation
    assert val["holdout_random_mape_after"] < 0.01 and val["holdout_slice_mape_after"] < 0.01
    assert val["e2e_mape_after"] < 0.01  # composed MoE layer and fused-MoE rows, never fitted
    assert val["holdout_slice_mape_before"] > 0.05  # the datasheet profile is not the truth
    assert set(cal.table["split"]) == {"fit", "holdout_random", "holdout_slice", "e2e"}
    assert cal.table.loc[cal.table["split"] == "holdout_slice", "m"].min() == 2048  # the top 4 of 15 token counts
    assert ("attention" in cal.profile.calibration.kinds) == with_attention
    for name in ("measurements.csv", "errors.csv", "H100-SXM-calibrated.yaml"):
        assert (tmp_path / "out" / name).exists()
    again = load_device(tmp_path / "out" / "H100-SXM-calibrated.yaml")
    assert again.calibration.validation == pytest.approx(val)
    assert {"sim_before_s", "sim_after_s", "measured_s", "split"} <= set(pd.read_csv(tmp_path / "out" /
                                                                                        "measurements.csv").columns)


def test_report_from_a_table(tmp_path):
    from moesim.reports.calibration_report import write_calibration_report

    table = tmp_path / "ops.csv"
    _known_table(table, False)
    write_calibration_report(calibrate_from_table(table, "H100-SXM", tmp_path / "out"))
    assert (tmp_path / "out" / "report.md").exists()


@pytest.mark.parametrize("text, column, line", [
    ("kind,dtype,m,k,n,time_s\ngemm,bf16,8,64,64,1e-5\ngemm,bf16,8,64,64,-3\n", "time_s", 3),
    ("kind,dtype,m,k,n,time_s\ngemm,bf16,8,64,64,1e-5\ngemm,bf16,8,64,x,1e-5\n", "n", 3),
    ("kind,dtype,m,k,n,time_s\nconv,bf16,8,64,64,1e-5\n", "kind", 2),
    ("kind,dtype,m,k,n,time_s\ngemm,int3,8,64,64,1e-5\n", "dtype", 2),
    ("kind,dtype,m,k,time_s\ngemm,bf16,8,64,1e-5\n", "n", 2),
    ("kind,dtype,k,n,tokens_per_expert,time_s\ngrouped_gemm,bf16,64,64,3 -1,1e-5\n", "tokens_per_expert", 2),
    ("kind,m,k,n\ngemm,8,64,64\n", "time_s", None),
])
def test_bad_table_names_file_column_and_line(tmp_path, text, column, line):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        calibrate_from_table(path, "H100-SXM", tmp_path / "out")
    assert err.value.field == column and err.value.file == str(path)
    if line is not None:
        assert f"line {line}" in str(err.value)


def test_missing_and_empty_tables(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        calibrate_from_table(tmp_path / "none.csv", "H100-SXM", tmp_path / "out")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        calibrate_from_table(tmp_path / "empty.csv", "H100-SXM", tmp_path / "out")


def test_ops_csv_format():
    rows = read_table(MEASURED / "ops.csv")
    kinds = {(r["kind"], r["dtype"]) for r in rows}
    assert kinds == {("gemm", "bf16"), ("gemm", "fp8"), ("attention", "bf16")}  # floor_gemm rows skipped
    assert len(rows) == 72 + 72 + 30
    prefill = next(r for r in rows if r["shape"] == "attention_prefill")
    assert prefill["m"] == 1024 and prefill["flops"] == pytest.approx(4 * 32 * 128 * 1024 * 1025 / 2)


def test_bundled_h100_profile_reproduces_its_validation(tmp_path):
    spec = load_device("H100-SXM-calibrated")
    cal = spec.calibration
    assert Path(cal.measurements).exists() and cal.versions["driver"] == "580.159.04"
    assert {"gemm", "copy", "attention"} <= set(cal.kinds)
    refit = calibrate_from_table([MEASURED / "real-shapes.csv", (MEASURED / "ops.csv", ["attention"])], "H100-SXM",
                                 tmp_path)
    for key, value in cal.validation.items():
        assert refit.profile.calibration.validation[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    assert cal.validation["holdout_random_mape_after"] < cal.validation["holdout_random_mape_before"]
    from moesim.hardware_profiles import load_cluster

    assert load_cluster("dgx-h100-calibrated").node.device == "H100-SXM-calibrated"


def _nccl_log(name: str, latency: float, bandwidth: float, factor: float, root: bool, prefix: str = "",
              wrong: str = "0") -> str:
    head = (f"{prefix}# nThread 1 nGpus 1 minBytes 1024 maxBytes 1073741824 step: 4(factor) warmup iters: 5 iters: 20\n"
            f"{prefix}#\n{prefix}#                                                       out-of-place"
            "                       in-place\n"
            f"{prefix}#       size         count      type   redop    {'root ' if root else ''}time   algbw   busbw "
            "#wrong     time   algbw   busbw #wrong\n")
    lines = []
    for p in range(10, 31, 2):
        size = 2 ** p
        t = latency + size / bandwidth
        alg = size / t / 1e9
        cells = f"{size:12d}  {size // 4:12d}     float     {'none' if 'all' in name and 'reduce' not in name else 'sum'}"
        cells += "      -1" if root else ""
        one = f"  {t * 1e6:9.2f}  {alg:6.2f}  {alg * factor:6.2f}  {wrong:>5}"
        lines.append(f"{prefix}{cells}{one}{one}")
        lines.append(f"{prefix}host:1:2 [0] NCCL INFO {size} Bytes -> Algo 1 proto 2 time 12.5")
    return head + "\n".join(lines) + f"\n{prefix}# Avg bus bandwidth    : 100.0\n"


def test_nccl_tests_parse_and_fit():
    text = ("# Collective test starting: all_reduce_perf\n" + _nccl_log("all_reduce", 18e-6, 170e9, 1.75, True)
            + "# Collective test starting: alltoall_perf\n" + _nccl_log("alltoall", 30e-6, 60e9, 0.875, True,
                                                                       wrong="N/A"))
    df = parse_nccl_tests(text)
    assert list(df.groupby("collective").size().items()) == [("all_reduce", 22), ("alltoall", 22)]
    assert set(df["place"]) == {"out", "in"} and df["wrong"].isna().sum() == 22
    fits = fit_collectives(df)
    ar, a2a = fits["all_reduce"], fits["alltoall"]
    assert ar["latency"] == pytest.approx(18e-6, rel=0.02) and ar["bandwidth"] == pytest.approx(170e9, rel=0.01)
    assert ar["bus_factor"] == pytest.approx(1.75, rel=0.01)
    assert ar["bus_bandwidth"] == pytest.approx(170e9 * 1.75, rel=0.02)
    assert a2a["latency"] == pytest.approx(30e-6, rel=0.02) and a2a["bandwidth"] == pytest.approx(60e9, rel=0.01)
    assert ar["mape"] < 0.01


def test_nccl_tests_old_format_with_rank_prefixes():
    """nccl-tests before 2.10 (no root column), mpirun's [rank] prefixes, the binary named on the command line."""
    text = "$ mpirun -np 8 ./build/all_gather_perf -b 1K -e 1G -f 4\n" + _nccl_log("all_gather", 12e-6, 300e9, 0.875,
                                                                                  False, prefix="[0] ")
    df = parse_nccl_tests(text)
    assert set(df["collective"]) == {"all_gather"} and len(df) == 22 and (df["root"] == -1).all()
    fit = fit_collectives(df, place="in")["all_gather"]
    assert fit["latency"] == pytest.approx(12e-6, rel=0.02) and fit["bandwidth"] == pytest.approx(300e9, rel=0.01)
