"""`moesim calibrate`: measure the grid, fit the efficiencies, write the calibrated profile and report.

Outputs in the run folder: measurements.csv (raw: every op, its split, FLOPs, bytes, median,
p10/p90, spread, repetitions) and machine.json; <profile>.yaml, the datasheet profile plus a
`calibration` section (fitted models, machine, library versions, held-out errors) that
`moesim simulate` and `moesim roofline` accept as a device; errors.csv and the validation
report (report.html/.md with predicted-versus-measured plots).

The grid: `grid` if given, else one shaped like `models`, else on a GPU with `--size full` one
shaped like Mixtral-8x7B and DeepSeek-V3 (measure.model_grid), else SMALL / FULL. On a GPU the host
floor (timing.host_floor) goes to machine.json and the facts.

The verdict (`verdict`): does the calibrated profile beat the datasheet on each held-out split
(random, slice, e2e)? Warnings: a split worse after calibration, a busy machine (load average at
start above half the cores), measurements noisier than the fit error (the fit cannot be told from
noise), GEMMs timed at the host floor. They go to the Calibration, the facts and the profile's notes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from moesim.errors import MoesimError
from moesim.hardware_profiles.schema import CalibrationSpec, DeviceSpec
from moesim.simulator.cost_model import CostModel
from moesim.validation.errors import error_table
from moesim.validation.fp8_ops import FP8, fp8_refusal, quant_sweep
from moesim.validation.fit import FUSED_FORM, MODEL_FORM, calibrated_cost, fit_profile
from moesim.validation.machine import busy_warning, cpu_datasheet_profile, cuda_datasheet_profile, describe_machine
from moesim.validation.measure import (DEFAULT_GPU_MODELS, DTYPE_BYTES, FP8_KINDS, FULL, SMALL, GridConfig, OpSpec,
                                       calibration_grid, measure, model_grid)
from moesim.validation.predict import predict
from moesim.validation.residuals import held_out_residuals

SIM_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8"}


@dataclass
class Calibration:
    profile: DeviceSpec  # calibrated
    baseline: DeviceSpec  # datasheet
    table: pd.DataFrame  # one row per measured op with simulated times before/after
    errors: pd.DataFrame
    out_dir: Path
    facts: list[tuple[str, str]]  # how it was measured, for the report (reports/calibration_report.py)
    verdict: str = ""  # one sentence: does the calibrated profile beat the datasheet on held-out data?
    warnings: list[str] = field(default_factory=list)


def check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda"):
        raise MoesimError(f"unknown calibration device '{device}'; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise MoesimError(f"--device cuda but torch {torch.__version__} sees no CUDA GPU "
                          f"(built with CUDA {torch.version.cuda}); use --device cpu or run on a GPU machine")


def baseline_profile(device: str, profile: str | None) -> DeviceSpec:
    from moesim.hardware_profiles import load_device

    if profile:
        spec = load_device(profile)
        if device == "cuda" and spec.kind == "cpu" or device == "cpu" and spec.kind != "cpu":
            raise MoesimError(f"profile '{spec.name}' is a {spec.kind} profile but the calibration runs on the "
                              f"{device}; pass a matching --profile")
        return spec
    return cuda_datasheet_profile() if device == "cuda" else cpu_datasheet_profile()


def _rows(specs: list[OpSpec], timings: list, elem: int) -> pd.DataFrame:
    out = []
    for s, t in zip(specs, timings):
        flops, nbytes = s.flops_bytes(elem)
        out.append({"kind": s.kind, "split": s.split, "shape": s.shape, "m": s.m, "k": s.k, "n": s.n,
                    "experts": s.experts, "top_k": s.top_k, "counts": " ".join(map(str, s.counts)),
                    "copy_bytes": s.nbytes, "flops": flops, "bytes": nbytes, "measured_s": t.median,
                    "p10_s": t.p10, "p90_s": t.p90, "spread": t.spread, "reps": t.reps})
    return pd.DataFrame(out)


SPLIT_LABEL = {"holdout_random": "random", "holdout_slice": "slice", "e2e": "e2e"}


def verdict(errors: pd.DataFrame, load_average: float | None = None, cores: int = 0,
            at_floor: tuple[int, int] | None = None) -> tuple[str, list[str]]:
    """(verdict sentence, warnings) from the error table's per-split rows (kind "all").

    Better on a split: after-calibration MAPE below the datasheet's. Warnings: any held-out split
    worse; load average at start > 0.5 x `cores`; the fit split's noise floor (median spread) above its
    error after calibration; `at_floor` = (GEMMs within 1.5x of the host floor, GEMMs) when over 10%."""
    rows = errors[errors["kind"] == "all"].set_index("split")
    better, worse, warnings = [], [], []
    for split, label in SPLIT_LABEL.items():
        if split not in rows.index:
            continue
        before, after = float(rows.at[split, "before_mape"]), float(rows.at[split, "after_mape"])
        if not (math.isfinite(before) and math.isfinite(after)):
            continue
        text = f"{label} {before:.0%} -> {after:.0%}"
        (better if after < before else worse).append(text)
        if after >= before:
            warnings.append(f"held-out {label} split: MAPE {after:.1%} after calibration is not better than the "
                            f"datasheet's {before:.1%}")
    busy = busy_warning(load_average, cores)
    if busy:
        warnings.append(busy)
    if "fit" in rows.index:
        noise, fit_err = float(rows.at["fit", "noise_floor"]), float(rows.at["fit", "after_mape"])
        if math.isfinite(noise) and math.isfinite(fit_err) and noise > fit_err:
            warnings.append(f"noisy measurements: median spread {noise:.1%} exceeds the fit error {fit_err:.1%}, "
                            "so the fit cannot be told from noise (was the machine busy?)")
    if at_floor and at_floor[1] and at_floor[0] > 0.1 * at_floor[1]:
        warnings.append(f"{at_floor[0]} of {at_floor[1]} GEMMs timed within 1.5x of the host floor: they measure "
                        "launch overhead, not kernels")
    if not better and not worse:
        sentence = "No held-out data: cannot tell whether the calibrated profile beats the datasheet."
    elif not worse:
        sentence = f"The calibrated profile beats the datasheet on every held-out split ({', '.join(better)} MAPE)."
    elif not better:
        sentence = (f"The calibrated profile is worse than the datasheet on every held-out split "
                    f"({', '.join(worse)} MAPE): do not use it.")
    else:
        sentence = (f"The calibrated profile beats the datasheet on {', '.join(better)} but not on "
                    f"{', '.join(worse)} (MAPE): check before using it.")
    if busy or any(w.startswith("noisy") for w in warnings):
        sentence += " The measurements may be inflated by other work; rerun on an idle machine."
    return sentence, warnings


def _at_floor(specs: list[OpSpec], timings: list, floor: float | None) -> tuple[int, int] | None:
    """(GEMMs whose per-launch time is within 1.5x of the host floor, GEMMs) or None without a floor."""
    if not floor or not math.isfinite(floor):
        return None
    gemms = [t.median for s, t in zip(specs, timings) if s.kind == "gemm"]
    return sum(t <= 1.5 * floor for t in gemms), len(gemms)


def choose_grid(device: str, size: str, dtype: str, grid: GridConfig | None, models: list | None) -> tuple[GridConfig, str]:
    """The grid to measure and its description (see the module docstring)."""
    if grid is not None:
        return grid, f"{size} (given grid)"
    if models:
        names = [m if isinstance(m, str) else m.name for m in models]
        return model_grid(list(models), device, dtype), "model-shaped: " + ", ".join(names)
    if device == "cuda" and size == "full":
        return model_grid(list(DEFAULT_GPU_MODELS), device, dtype), \
            "full, model-shaped: " + ", ".join(DEFAULT_GPU_MODELS)
    return (FULL if size == "full" else SMALL), size


def run_calibration(device: str = "cpu", size: str = "small", dtype: str = "float32", profile: str | None = None,
                    out_dir: str | Path = "runs/calibrate", grid: GridConfig | None = None,
                    progress: Callable[[str], None] | None = None, threads: int | None = None,
                    models: list | None = None) -> Calibration:
    """Measure, fit, validate and write a calibrated profile. `models`: ModelSpecs or bundled names
    whose shapes the grid takes (ignored when `grid` is given)."""
    check_device(device)
    if dtype not in DTYPE_BYTES:
        raise MoesimError(f"unknown dtype '{dtype}'; choose {', '.join(DTYPE_BYTES)}")
    if dtype == FP8:
        refusal = fp8_refusal(device)
        if refusal:
            raise MoesimError(refusal)
    import torch

    if threads:
        torch.set_num_threads(threads)
    base = baseline_profile(device, profile)
    machine, versions = describe_machine(device)  # before measuring: the load average at start
    grid, grid_name = choose_grid(device, size, dtype, grid, models)
    specs = calibration_grid(grid, device)
    if dtype == FP8:  # scaled-matmul GEMMs and experts (per-tensor scales); the torch MoE layers have no fp8 path
        specs = [s for s in specs if s.kind in FP8_KINDS]
    floor = None
    if device == "cuda":
        from moesim.validation.timing import host_floor

        floor = host_floor(dtype)
    elem, sim_dtype = DTYPE_BYTES[dtype], SIM_DTYPE[dtype]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "measurements.partial.csv"  # every row as it is measured: a cut-off run keeps its data
    measured = []
    for n, (spec, timing) in enumerate(measure(specs, device, dtype, grid.timing, progress)):
        measured.append((spec, timing))
        _rows([spec], [timing], elem).to_csv(partial, mode="a" if n else "w", header=not n, index=False)
    specs, timings = [m[0] for m in measured], [m[1] for m in measured]
    table = _rows(specs, timings, elem)
    meas = table["measured_s"].to_numpy()
    fit = fit_profile(specs, meas, base, sim_dtype, elem)
    table["sim_before_s"] = predict(specs, CostModel(base), sim_dtype, elem)
    tiled = base.model_copy(update={"gemm_tile": fit.gemm_tile, "moe_kernel": fit.moe_kernel or base.moe_kernel})
    table["sim_after_s"] = predict(specs, calibrated_cost(tiled, fit.kinds), sim_dtype, elem, fit.links)
    errors = error_table(table)
    load = _float(machine.get("load_average_at_start"))
    sentence, warnings = verdict(errors, load, int(machine.get("cpu_cores", 0) or 0),
                                 _at_floor(specs, timings, floor and floor["one_per_event_pair_s"]))
    table.to_csv(out / "measurements.csv", index=False)
    partial.unlink(missing_ok=True)
    if dtype == FP8:  # the other scalings of the same GEMMs, for `moesim calibrate --from-table`
        from moesim.validation.measure import _copies, rotate_bytes

        shapes = sorted({(s.m, s.k, s.n) for s in specs if s.kind == "gemm" and s.split == "fit"})
        pool = rotate_bytes(device)
        sweep = quant_sweep(shapes, device, grid.timing, lambda b: _copies(b, pool))
        sweep[sweep["error"] == ""].drop(columns="error").to_csv(out / "fp8_scalings.csv", index=False)
        for quant, why in sweep[sweep["error"] != ""].groupby("quant")["error"].first().items():
            warnings.append(f"fp8 {quant} scales: torch refused them on this GPU ({why}); fp8_scalings.csv has none")
    methods = sorted({t.method for t in timings})
    timing_info = {"methods": methods, "host_floor": floor} if floor else {"methods": methods}
    (out / "machine.json").write_text(json.dumps({"machine": machine, "versions": versions, "timing": timing_info,
                                                  "verdict": sentence, "warnings": warnings}, indent=2))
    held = errors[(errors["kind"] == "all") & (errors["split"] != "fit")]
    calibration = CalibrationSpec(
        kinds=fit.kinds, links=fit.links, machine=machine, versions=versions, measurements="measurements.csv",
        date=datetime.date.today().isoformat(),
        model_form=MODEL_FORM + ("; " + FUSED_FORM if fit.moe_kernel is not None else ""), moe_kernel=fit.moe_kernel,
        validation={f"{r.split}_mape_after": float(r.after_mape) for r in held.itertuples()}
        | {f"{r.split}_mape_before": float(r.before_mape) for r in held.itertuples()},
        residuals=held_out_residuals(table),
        verdict=sentence, warnings=warnings)
    calibrated = replace_profile(tiled, calibration, sentence, warnings)
    write_profile(calibrated, out / f"{calibrated.name}.yaml", warnings)
    errors.to_csv(out / "errors.csv", index=False)
    facts = [("device", f"{device}: {machine.get('gpu', machine['cpu'])} ({machine['cpu_cores']} CPU cores, "
                        f"{machine['torch_threads']} torch threads)"),
             ("libraries", ", ".join(f"{k} {v}" for k, v in versions.items())),
             ("datasheet profile", base.name), ("calibrated profile", f"{calibrated.name}.yaml"),
             ("grid", f"{grid_name}: {len(specs)} measured ops in {dtype}"),
             ("load average at start", machine["load_average_at_start"] + " (other work on the machine "
                                       "inflates CPU timings; calibrate on an idle machine)"),
             ("timing", ", ".join(methods) + (" (per launch: N launches between one CUDA-event pair, divided by N)"
                                              if device == "cuda" else " (one call per repetition)")),
             ("model form", MODEL_FORM), ("source", "measured times (torch, medians of repetitions) against the "
                                                   "simulator's cost function")]
    if dtype == FP8:
        facts.append(("fp8", "GEMMs and experts through torch scaled matmul with per-tensor scales (fitted); the same "
                             "GEMM shapes with per-channel and 128-block scales in fp8_scalings.csv (fit them with "
                             "`moesim calibrate --from-table fp8_scalings.csv`); MoE layers are not run in fp8"))
    if floor:
        facts.append(("host floor", f"16x1024x2048 GEMM: {floor['one_per_event_pair_s'] * 1e6:.1f} us with one "
                                    f"launch per event pair, {floor['back_to_back_per_launch_s'] * 1e6:.1f} us each "
                                    f"for {int(floor['launches'])} back to back, "
                                    f"{floor['cuda_graph_per_launch_s'] * 1e6:.1f} us each in a CUDA graph"))
    facts.append(("verdict", sentence))
    facts.extend(("warning", w) for w in warnings)
    return Calibration(calibrated, base, table, errors, out, facts, sentence, warnings)


def _float(text: object) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def replace_profile(base: DeviceSpec, calibration: CalibrationSpec, verdict_text: str = "",
                    warnings: list[str] | None = None) -> DeviceSpec:
    """The calibrated profile; the verdict and warnings are in its calibration section and its `notes`."""
    notes = (base.notes + " " if base.notes else "") + "Efficiencies and overheads fitted by moesim calibrate " \
        "(see calibration)."
    if verdict_text:
        notes += " Verdict: " + verdict_text
    if warnings:
        notes += " Calibration warnings: " + " | ".join(warnings)
    return base.model_copy(update={"name": f"{base.name}-calibrated", "calibration": calibration, "notes": notes})


def write_profile(spec: DeviceSpec, path: Path, warnings: list[str] | None = None) -> None:
    """The calibrated profile as YAML that `load_device(path)` reads back; warnings also head the file."""
    data = spec.model_dump(mode="json", exclude_none=True)
    head = "# Written by `moesim calibrate`: the datasheet profile plus fitted efficiencies.\n"
    head += "".join(f"# WARNING: {w}\n" for w in warnings or [])
    path.write_text(head + yaml.safe_dump(data, sort_keys=False))
