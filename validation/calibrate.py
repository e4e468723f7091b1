"""`moesim calibrate`: measure the grid, fit the efficiencies, write the calibrated profile and report.

Outputs in the run folder: measurements.csv (raw: every op, its split, FLOPs, bytes, median,
p10/p90, spread, repetitions) and machine.json; <profile>.yaml, the datasheet profile plus a
`calibration` section (fitted models, machine, library versions, held-out errors) that
`moesim simulate` and `moesim roofline` accept as a device; errors.csv and the validation
report (report.html/.md with predicted-versus-measured plots).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from moesim.errors import MoesimError
from moesim.hardware_profiles.schema import CalibrationSpec, DeviceSpec
from moesim.simulator.cost_model import CostModel
from moesim.validation.errors import error_table
from moesim.validation.fit import MODEL_FORM, calibrated_cost, fit_profile
from moesim.validation.machine import cpu_datasheet_profile, cuda_datasheet_profile, describe_machine
from moesim.validation.measure import DTYPE_BYTES, FULL, SMALL, GridConfig, OpSpec, calibration_grid, measure
from moesim.validation.predict import predict

SIM_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Calibration:
    profile: DeviceSpec  # calibrated
    baseline: DeviceSpec  # datasheet
    table: pd.DataFrame  # one row per measured op with simulated times before/after
    errors: pd.DataFrame
    out_dir: Path
    facts: list[tuple[str, str]]  # how it was measured, for the report (reports/calibration_report.py)


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


def run_calibration(device: str = "cpu", size: str = "small", dtype: str = "float32", profile: str | None = None,
                    out_dir: str | Path = "runs/calibrate", grid: GridConfig | None = None,
                    progress: Callable[[str], None] | None = None, threads: int | None = None) -> Calibration:
    check_device(device)
    if dtype not in DTYPE_BYTES:
        raise MoesimError(f"unknown dtype '{dtype}'; choose {', '.join(DTYPE_BYTES)}")
    import torch

    if threads:
        torch.set_num_threads(threads)
    base = baseline_profile(device, profile)
    grid = grid or (FULL if size == "full" else SMALL)
    specs = calibration_grid(grid, device)
    measured = list(measure(specs, device, dtype, grid.timing, progress))
    specs, timings = [m[0] for m in measured], [m[1] for m in measured]
    elem, sim_dtype = DTYPE_BYTES[dtype], SIM_DTYPE[dtype]
    table = _rows(specs, timings, elem)
    meas = table["measured_s"].to_numpy()
    fit = fit_profile(specs, meas, base, sim_dtype, elem)
    table["sim_before_s"] = predict(specs, CostModel(base), sim_dtype, elem)
    tiled = base.model_copy(update={"gemm_tile": fit.gemm_tile})
    table["sim_after_s"] = predict(specs, calibrated_cost(tiled, fit.kinds), sim_dtype, elem, fit.links)
    errors = error_table(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine, versions = describe_machine(device)
    table.to_csv(out / "measurements.csv", index=False)
    (out / "machine.json").write_text(json.dumps({"machine": machine, "versions": versions}, indent=2))
    held = errors[(errors["kind"] == "all") & (errors["split"] != "fit")]
    calibration = CalibrationSpec(
        kinds=fit.kinds, links=fit.links, machine=machine, versions=versions, measurements="measurements.csv",
        date=datetime.date.today().isoformat(), model_form=MODEL_FORM,
        validation={f"{r.split}_mape_after": float(r.after_mape) for r in held.itertuples()}
        | {f"{r.split}_mape_before": float(r.before_mape) for r in held.itertuples()})
    calibrated = replace_profile(tiled, calibration)
    write_profile(calibrated, out / f"{calibrated.name}.yaml")
    errors.to_csv(out / "errors.csv", index=False)
    facts = [("device", f"{device}: {machine.get('gpu', machine['cpu'])} ({machine['cpu_cores']} CPU cores, "
                        f"{machine['torch_threads']} torch threads)"),
             ("libraries", ", ".join(f"{k} {v}" for k, v in versions.items())),
             ("datasheet profile", base.name), ("calibrated profile", f"{calibrated.name}.yaml"),
             ("grid", f"{size}: {len(specs)} measured ops in {dtype}"),
             ("load average at start", machine["load_average_at_start"] + " (other work on the machine "
                                       "inflates CPU timings; calibrate on an idle machine)"),
             ("model form", MODEL_FORM), ("source", "measured times (torch, medians of repetitions) against the "
                                                   "simulator's cost function")]
    return Calibration(calibrated, base, table, errors, out, facts)


def replace_profile(base: DeviceSpec, calibration: CalibrationSpec) -> DeviceSpec:
    return base.model_copy(update={"name": f"{base.name}-calibrated", "calibration": calibration,
                                   "notes": (base.notes + " " if base.notes else "")
                                   + "Efficiencies and overheads fitted by moesim calibrate (see calibration)."})


def write_profile(spec: DeviceSpec, path: Path) -> None:
    """The calibrated profile as YAML that `load_device(path)` reads back."""
    data = spec.model_dump(mode="json", exclude_none=True)
    path.write_text("# Written by `moesim calibrate`: the datasheet profile plus fitted efficiencies.\n"
                    + yaml.safe_dump(data, sort_keys=False))

