"""How long calibrating from a ~20,000-row fused-MoE table takes (issue 17: "Fits cache their
expanded specs so 20k-row tables fit in seconds").

What: synthesises a generic-schema table (validation/from_table.py) of `fused_moe` rows shaped like
a silicon fused-MoE table, then times `moesim.validation.from_table.calibrate_from_table` on it
(reading, split assignment, the fit, before/after predictions and the files it writes) over
`--repeats` runs, and prints the median, min and max next to the recovered floor and the held-out
error. It also times the prediction path with and without the cached expansion (`predict`, which
expands its specs on every call, against `PreparedOps`, which expands them once), so the gain from
caching is a measured figure.

The table: tokens 1..16384 (powers of two and 1.5x between them); Mixtral-8x7B (hidden 4096,
expert width 14336, 8 experts, top-2), Qwen3-30B-A3B (2048, 768, 128, top-8) and DeepSeek-V3
(7168, 2048, 256, top-8); EP degrees 1..256 that divide the expert count, a device holding E/EP
consecutive experts whose token counts come from one routing draw (`routed_counts`, balanced
alpha 0 and power-law alpha 1.2) of all m tokens at the model's top-k; bf16, fp8 and W8A16 (bf16
compute, fp8 weights). Times are the simulator's own fused form on H100-SXM with a known truth
(layer floor 30 us, grouped-GEMM efficiency bf16 0.55 / fp8 0.3) and 3% lognormal noise, so the
fit's recovered floor and held-out error say whether it found that truth.

Run: python benchmarks/bench_fit_speed.py [--rows 20000] [--repeats 3] [--seed 0] [--breakdown]
(--breakdown: one more run stage by stage: reading the CSV, the fit and how many predictions it
made, one prediction of every row.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.hardware_profiles.loader import load_device
from moesim.hardware_profiles.schema import DeviceSpec
from moesim.simulator.cost_model import CostModel
from moesim.validation.fit import PreparedOps, TableOp, fit_table_ops, predict_ops
from moesim.validation.from_table import assign_splits, calibrate_from_table, read_table, to_ops
from moesim.validation.measure import OpSpec, routed_counts
from moesim.validation.predict import predict

PROFILE = "H100-SXM"
TRUTH_FLOOR = 30e-6
TRUTH_COMPUTE = {"bf16": 0.55, "fp8": 0.3}
NOISE = 0.03  # lognormal sigma of the drawn times
ALPHAS = (0.0, 1.2)  # balanced and power-law routing
# (dtype, operand bytes, weight dtype in the table, weight bytes where they differ)
VARIANTS = (("bf16", 2, "", None), ("fp8", 1, "", None), ("bf16", 2, "fp8", 1))


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    inter: int
    experts: int
    top_k: int


MODELS = (Model("Mixtral-8x7B", 4096, 14336, 8, 2), Model("Qwen3-30B-A3B", 2048, 768, 128, 8),
          Model("DeepSeek-V3", 7168, 2048, 256, 8))


def token_counts() -> list[int]:
    """1..16384: the powers of two and 1.5x each (3, 6, 12, ...)."""
    pows = [2 ** p for p in range(15)]
    return sorted(set(pows) | {3 * p // 2 for p in pows[1:-1]})


def ep_degrees(experts: int) -> list[int]:
    return [ep for ep in (2 ** p for p in range(9)) if experts % ep == 0]


def truth_device() -> DeviceSpec:
    base = load_device(PROFILE)
    kernel = base.moe_kernel.model_copy(update={"layer_floor": TRUTH_FLOOR, "compute": dict(TRUTH_COMPUTE)})
    return base.model_copy(update={"moe_kernel": kernel, "calibration": None})


def sample_slices(rows: int, rng: np.random.Generator) -> list[tuple[Model, int, int, float, int, int]]:
    """`rows` device slices (model, EP, tokens, alpha, variant index, rank), spread evenly over the
    (model, EP, tokens, alpha, variant) grid: each cell takes as many ranks as the total needs
    (at most EP), then a seeded subsample keeps exactly `rows`."""
    cells = [(mdl, ep, t, a, v) for mdl in MODELS for ep in ep_degrees(mdl.experts) for t in token_counts()
             for a in ALPHAS for v in range(len(VARIANTS))]
    per_cell = 1
    while sum(min(per_cell, c[1]) for c in cells) < rows and per_cell < max(c[1] for c in cells):
        per_cell += 1
    out = [(*c, int(r)) for c in cells for r in rng.choice(c[1], size=min(per_cell, c[1]), replace=False)]
    keep = np.sort(rng.choice(len(out), size=min(rows, len(out)), replace=False))
    return [out[i] for i in keep]


def routing_draws(slices: list, seed: int) -> dict[tuple[str, int, float], np.ndarray]:
    """One routing draw per (model, tokens, alpha) that the slices use; EP ranks slice it."""
    need = dict.fromkeys((mdl, t, a) for mdl, _, t, a, _, _ in slices)
    return {(mdl.name, t, a): np.array(routed_counts(mdl.experts, t, mdl.top_k, seed + 7919 * i, a))
            for i, (mdl, t, a) in enumerate(need)}


def build_table(rows: int, seed: int) -> tuple[pd.DataFrame, list[TableOp]]:
    """The synthetic fused-MoE table (generic schema) and its TableOps, times drawn from the truth."""
    rng = np.random.default_rng(seed)
    slices = sample_slices(rows, rng)
    draws = routing_draws(slices, seed)
    records, ops = [], []
    for mdl, ep, t, alpha, v, rank in slices:
        local = mdl.experts // ep
        counts = tuple(int(c) for c in draws[(mdl.name, t, alpha)][rank * local:(rank + 1) * local])
        dtype, elem, wdtype, welem = VARIANTS[v]
        ops.append(TableOp(OpSpec("fused_moe", "", m=t, k=mdl.hidden, n=mdl.inter, counts=counts, top_k=mdl.top_k),
                           dtype, elem, weight_elem=welem))
        records.append({"kind": "fused_moe", "dtype": dtype, "weight_dtype": wdtype, "m": t, "k": mdl.hidden,
                        "n": mdl.inter, "top_k": mdl.top_k, "tokens_per_expert": " ".join(map(str, counts)),
                        "shape": f"{mdl.name}/EP{ep}"})
    times = predict_ops(ops, CostModel(truth_device())) * np.exp(NOISE * rng.standard_normal(len(ops)))
    table = pd.DataFrame.from_records(records)
    table.insert(len(table.columns) - 1, "time_s", times)
    return table, ops


@contextmanager
def counting_predictions() -> Iterator[list[int]]:
    """Count `PreparedOps.predict` calls (each one evaluation of a trial fit) while inside."""
    calls = [0]
    original = PreparedOps.predict

    def counted(self: PreparedOps, *args, **kwargs) -> np.ndarray:
        calls[0] += 1
        return original(self, *args, **kwargs)

    PreparedOps.predict = counted
    try:
        yield calls
    finally:
        PreparedOps.predict = original


def stage_breakdown(csv: Path) -> dict[str, float]:
    """Seconds of calibrate_from_table's stages, run one by one once: reading the table, splits and
    ops, the fit (and how many predictions it made), and one prediction of every row."""
    out: dict[str, float] = {}
    base = load_device(PROFILE)
    t0 = time.perf_counter()
    rows = read_table(csv)
    t1 = time.perf_counter()
    assign_splits(rows, 0)
    ops = to_ops(rows)
    t2 = time.perf_counter()
    with counting_predictions() as calls:
        fit_table_ops(ops, np.array([r["time_s"] for r in rows]), base)
    t3 = time.perf_counter()
    predict_ops(ops, CostModel(base))
    t4 = time.perf_counter()
    out.update({"read_table (CSV -> rows)": t1 - t0, "assign_splits + to_ops": t2 - t1, "fit_table_ops": t3 - t2,
                "one predict_ops of every row": t4 - t3, "predictions the fit made": float(calls[0])})
    out["seconds per fit prediction"] = out["fit_table_ops"] / max(calls[0], 1)
    return out


def time_fits(csv: Path, out: Path, repeats: int) -> tuple[list[float], object]:
    """Wall seconds of each `calibrate_from_table` run, and the last run's Calibration."""
    seconds, cal = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        cal = calibrate_from_table(csv, PROFILE, out / f"run{r}")
        seconds.append(time.perf_counter() - t0)
    return seconds, cal


def time_prediction_paths(ops: list[TableOp], calls: int = 3) -> dict[str, float]:
    """Seconds of `calls` un-cached `predict` calls (each expands the specs) on the largest
    (dtype, elem, weight) group, of expanding it once (PreparedOps), and of `calls` cached predictions."""
    groups: dict[tuple, list[TableOp]] = {}
    for op in ops:
        groups.setdefault((op.dtype, op.elem, op.weight_elem), []).append(op)
    (dtype, elem, welem), group = max(groups.items(), key=lambda kv: len(kv[1]))
    specs = [op.spec for op in group]
    cost = CostModel(load_device(PROFILE))
    t0 = time.perf_counter()
    for _ in range(calls):
        plain = predict(specs, cost, dtype, elem, weight_elem=welem)
    t1 = time.perf_counter()
    prepared = PreparedOps(group)
    t2 = time.perf_counter()
    for _ in range(calls):
        cached = prepared.predict(cost)
    t3 = time.perf_counter()
    if not np.allclose(plain, cached, rtol=1e-12):
        raise AssertionError("cached and un-cached predictions differ")
    return {"rows": len(group), "label": f"{dtype}/{elem}B" + (f" weights {welem}B" if welem else ""),
            "uncached": t1 - t0, "prepare": t2 - t1, "cached": t3 - t2, "calls": calls}


def report_fit(cal, seconds: list[float]) -> None:
    spec = cal.profile.calibration
    print(f"fit seconds         median {np.median(seconds):.2f}  min {min(seconds):.2f}  max {max(seconds):.2f}"
          f"  ({len(seconds)} runs of calibrate_from_table)")
    floor = spec.moe_kernel.layer_floor if spec.moe_kernel is not None else float("nan")
    launch = CostModel(truth_device()).overhead("grouped_gemm", "bf16")  # the fit folds it into the floor
    print(f"fitted floor        {floor * 1e6:.1f} us (truth {TRUTH_FLOOR * 1e6:.0f} us, {floor / TRUTH_FLOOR - 1:+.1%}; "
          f"truth floor + grouped launch {(TRUTH_FLOOR + launch) * 1e6:.0f} us, "
          f"{floor / (TRUTH_FLOOR + launch) - 1:+.1%})")
    for dtype, truth in TRUTH_COMPUTE.items():
        k = spec.kinds.get(f"grouped_gemm@{dtype}")
        if k is not None:
            print(f"grouped_gemm@{dtype:<5} c_max {k.compute_max:.3f} rows_half {k.rows_half:.2f} "
                  f"(truth: constant {truth})")
    splits = cal.table.groupby("split").size().to_dict()
    print("rows per split      " + ", ".join(f"{s} {n}" for s, n in sorted(splits.items())))
    val = spec.validation
    for split in ("holdout_random", "holdout_slice", "e2e"):
        if f"{split}_mape_after" in val:
            print(f"held-out MAPE       {split:<15} datasheet {val[f'{split}_mape_before']:.1%}"
                  f" -> calibrated {val[f'{split}_mape_after']:.1%}")


def report_paths(p: dict) -> None:
    n = p["calls"]
    print(f"prediction path     largest group ({p['label']}, {p['rows']} rows), {n} calls each:")
    print(f"  predict (expands every call)      {p['uncached']:.3f} s ({p['uncached'] / n * 1e3:.0f} ms/call)")
    print(f"  PreparedOps: expand once          {p['prepare']:.3f} s")
    print(f"  PreparedOps.predict               {p['cached']:.3f} s ({p['cached'] / n * 1e3:.1f} ms/call)")
    print(f"  per call: {p['uncached'] / max(p['cached'], 1e-12):.0f}x faster cached")


def dtype_mix(table: pd.DataFrame) -> str:
    sizes = table.groupby(["dtype", "weight_dtype"]).size()
    return ", ".join(f"{d}{' weights ' + w if w else ''} {n}" for (d, w), n in sizes.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000, help="fused_moe rows in the table (default 20000)")
    ap.add_argument("--repeats", type=int, default=3, help="calibrate_from_table runs to time (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--breakdown", action="store_true",
                    help="also time calibrate_from_table's stages once (reading, fit, prediction)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_fit_speed_") as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        table, ops = build_table(args.rows, args.seed)
        csv = tmpdir / "fused_moe.csv"
        table.to_csv(csv, index=False)
        gen = time.perf_counter() - t0
        print(f"rows                {len(table)} fused_moe ({dtype_mix(table)})")
        print(f"distinct shapes     {table['shape'].nunique()} (model x EP), "
              f"{table[['k', 'n', 'top_k', 'm']].drop_duplicates().shape[0]} (hidden, width, top-k, tokens), "
              f"{table['m'].nunique()} token counts {table['m'].min()}..{table['m'].max()}")
        print(f"generation seconds  {gen:.2f} (routing draws, truth times, CSV)")
        seconds, cal = time_fits(csv, tmpdir, args.repeats)
        report_fit(cal, seconds)
        if args.breakdown:
            print("stage breakdown     (one more run, stage by stage)")
            for name, value in stage_breakdown(csv).items():
                print(f"  {name:<34} {value:.0f}" if name.startswith("predictions") else
                      f"  {name:<34} {value:.3f} s")
    report_paths(time_prediction_paths(ops))


if __name__ == "__main__":
    main()
