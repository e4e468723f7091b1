"""Calibrate a device profile from an external table of op timings (no torch, no GPU needed).

`calibrate_from_table(path, profile, out_dir, seed=0)` reads measured op times, assigns the same
held-out splits `moesim calibrate` uses, fits the cost model (validation/fit.py) on the `fit`
split, predicts every row before (datasheet profile) and after (calibrated), and writes what
`run_calibration` writes: measurements.csv (every row, its split, FLOPs, bytes, measured_s,
sim_before_s, sim_after_s), errors.csv and <profile>-calibrated.yaml; it returns a
`Calibration` whose `facts` let `reports.calibration_report.write_calibration_report` write the
report. `path` may be a list of tables (they are concatenated; splits are assigned per table).

Three table formats are read:

1. The generic schema, one row per measured op (CSV, header required):

   | column | meaning |
   |---|---|
   | kind | gemm, grouped_gemm, fused_moe, moe_layer, attention, copy, h2d or d2h |
   | dtype | fp32, bf16, fp16 or fp8 (torch names float32, bfloat16, float16, float8_e4m3fn too); default bf16 |
   | m, k, n | gemm: rows (tokens) x in x out; grouped_gemm / fused_moe / moe_layer: m total tokens, k hidden, n expert width |
   | experts, tokens_per_expert | grouped_gemm / fused_moe / moe_layer: tokens per expert as space-separated integers, or `experts` alone (m x top_k rows spread evenly for fused_moe / moe_layer, m for grouped_gemm) |
   | top_k | moe_layer, fused_moe: experts per token; the token passes run over the rows that reach the device, the sum of tokens_per_expert (`moe_kernel_cost.routed_rows`, as the engine charges them) |
   | weight_dtype | fused_moe: the experts' weight dtype where it differs from `dtype` (fp8 weights under bf16 compute) |
   | flops, bytes | attention: FLOPs and bytes as the engine counts its attention core (simulator/ops.py); `m` its rows (tokens) |
   | copy_bytes | copy / h2d / d2h: bytes copied |
   | time_s | measured seconds (median of repetitions), > 0 |
   | split | optional: fit, holdout_random, holdout_slice or e2e; blank or absent = assigned |
   | spread | optional: run-to-run spread of the measurement (the noise floor column of errors.csv) |

   How rows map onto the simulator's ops (validation/predict.py): a gemm is one engine `gemm` op;
   a grouped_gemm one `gemm` per non-empty expert (as the engine costs each expert); a `fused_moe`
   row (a device's part of an MoE layer run as serving systems run it: a fused-MoE Triton kernel,
   DeepEP + grouped GEMM; `m` all tokens routed, `tokens_per_expert` those of the local experts,
   `k` hidden, `n` expert width) is the engine's fused form (simulator/moe_kernel_cost.py): the
   layer floor + one grouped-GEMM launch + per expert with c > 0 tokens its gate/up/down work
   (6 c k n FLOPs, its three weight matrices read once) + the token passes over m x top_k rows;
   a `moe_layer` is the torch layer's
   kernels (router, softmax/top-k, permute, per-expert gate/up/down, SwiGLU, unpermute);
   `attention` one engine `attention` op; copies one `copy` op; h2d/d2h the fitted link.

2. `moesim calibrate`'s own measurements.csv (columns kind, split, m, k, n, experts, top_k, counts,
   copy_bytes, measured_s, spread, ...): its splits are kept; dtype from a `dtype` column, else the
   `dtype` argument (default bf16).

3. An ops.csv (columns kind, method, dtype, m, k, n, batch, heads, kv_heads, head_dim, seq,
   kv_len, median_s, ...; ../shared measurements ops/ops.py): `gemm` rows keep their dtype (fp8
   rows are e4m3 GEMMs, 1-byte operands), `attention_prefill` (causal) and `attention_decode`
   rows become attention ops with the engine's FLOPs and bytes for that GQA shape; `floor_gemm`
   rows (host/launch floors, not kernels) and rows with an `error` are skipped.

Splits, where a table does not give them: moe_layer rows are `e2e` (predicted by composing
fitted ops, never fitted); GEMM and grouped rows whose token count is among the top quarter of
the table's distinct token counts are `holdout_slice` (a token range left out entirely), and so
are fused_moe rows in the top quarter of theirs; of the rest a random quarter per kind and dtype
(seeded; at least 3 left to fit) is `holdout_random`. Fused rows that fit calibrate the fused
form (floor, token-pass efficiency, grouped GEMM per dtype: validation/fit.py `fit_fused`). A bad table is a ConfigError naming the file, the column and the line.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import ConfigError
from moesim.hardware_profiles.schema import CalibrationSpec, DeviceSpec
from moesim.simulator.cost_model import CostModel
from moesim.validation.calibrate import Calibration, replace_profile, verdict, write_profile
from moesim.validation.errors import error_table
from moesim.validation.fit import FUSED_FORM, MODEL_FORM, TableOp, calibrated_cost, fit_table_ops, predict_ops
from moesim.validation.measure import OpSpec
from moesim.validation.residuals import held_out_residuals
from moesim.yaml_io import check_file

KINDS = ("gemm", "grouped_gemm", "grouped_gemm_triton", "fused_moe", "moe_layer", "attention", "copy", "h2d", "d2h")
SPLITS = ("fit", "holdout_random", "holdout_slice", "e2e")
DTYPES = {"fp32": ("fp32", 4), "float32": ("fp32", 4), "torch.float32": ("fp32", 4),
          "bf16": ("bf16", 2), "bfloat16": ("bf16", 2), "torch.bfloat16": ("bf16", 2),
          "fp16": ("fp16", 2), "float16": ("fp16", 2), "torch.float16": ("fp16", 2),
          "fp8": ("fp8", 1), "float8_e4m3fn": ("fp8", 1), "torch.float8_e4m3fn": ("fp8", 1), "e4m3": ("fp8", 1)}
GROUPED = ("grouped_gemm", "grouped_gemm_triton", "fused_moe", "moe_layer")
HOLDOUT_SHARE = 0.25


def _read_csv(path: Path) -> pd.DataFrame:
    check_file(path, "op timing table (CSV)")  # missing, a folder, a symlink loop
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ConfigError("the file is empty; expected a CSV with a header (kind, dtype, m, k, n, ..., time_s)",
                          file=path) from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"not a readable CSV file ({type(err).__name__}: {first})", file=path) from None
    if not len(df):
        raise ConfigError("has a header but no rows of op timings", file=path)
    df.columns = [str(c).strip() for c in df.columns]
    return df


class _Rows:
    """Typed access to a table's cells, with errors that name file, column and line."""

    def __init__(self, path: Path, df: pd.DataFrame):
        self.path, self.df = path, df
        self.cells = {c: df[c].tolist() for c in df.columns}  # cell by cell through pandas is 10 s on 20k rows

    def bad(self, i: int, col: str, need: str, got: object) -> ConfigError:
        return ConfigError(f"row {i} (line {i + 2}): expected {need}, got {got!r}", file=self.path, field=col)

    def text(self, i: int, col: str) -> str:
        return str(self.cells[col][i]).strip() if col in self.cells else ""

    def num(self, i: int, col: str, *, need: str = "a number > 0", integer: bool = False, minimum: float = 0.0,
            strict: bool = True, default: float | None = None) -> float:
        if integer and need == "a number > 0":
            need = "a whole number > 0"
        raw = self.text(i, col)
        if raw == "":
            if default is not None:
                return default
            if col not in self.df.columns:
                raise ConfigError(f"lacks column {col}, needed by row {i} (line {i + 2}, kind "
                                  f"{self.text(i, 'kind') or '?'})", file=self.path, field=col)
            raise self.bad(i, col, need, raw)
        try:
            v = float(raw)
        except ValueError:
            raise self.bad(i, col, need, raw) from None
        if not np.isfinite(v) or (v <= minimum if strict else v < minimum) or (integer and v != int(v)):
            raise self.bad(i, col, need, raw)
        return v

    def counts(self, i: int, col: str = "tokens_per_expert") -> tuple[int, ...]:
        raw = self.text(i, col)
        try:
            out = tuple(int(float(x)) for x in raw.replace(",", " ").split())
        except ValueError:
            raise self.bad(i, col, "space-separated token counts (integers >= 0)", raw) from None
        if any(c < 0 for c in out):
            raise self.bad(i, col, "space-separated token counts (integers >= 0)", raw)
        return out


def _even(total: int, experts: int) -> tuple[int, ...]:
    base, extra = divmod(total, experts)
    return tuple(base + (1 if e < extra else 0) for e in range(experts))


def _row(kind: str, dtype: str, time_s: float, line: int, source: str, split: str = "", spread: float = np.nan,
         shape: str = "", **kw) -> dict:
    return {"kind": kind, "dtype": dtype, "time_s": time_s, "line": line, "source": source, "split": split,
            "spread": spread, "shape": shape, **kw}


def _generic(path: Path, df: pd.DataFrame, time_col: str, default_dtype: str) -> list[dict]:
    """Rows of the generic schema (and of a `moesim calibrate` measurements.csv) as normalised dicts."""
    if "kind" not in df.columns or time_col not in df.columns:
        missing = [c for c in ("kind", time_col) if c not in df.columns]
        raise ConfigError(f"lacks column(s) {', '.join(missing)}; an op timing table has the columns kind, dtype, "
                          "m, k, n, experts, tokens_per_expert, top_k, flops, bytes, copy_bytes, time_s, split "
                          f"(see moesim.validation.from_table); found {', '.join(df.columns) or 'none'}",
                          file=path, field=missing[0])
    r = _Rows(path, df)
    counts_col = "counts" if "counts" in df.columns and "tokens_per_expert" not in df.columns else "tokens_per_expert"
    out = []
    for i in range(len(df)):
        kind = r.text(i, "kind")
        if kind not in KINDS:
            raise r.bad(i, "kind", " | ".join(KINDS), kind)
        dt = r.text(i, "dtype") or default_dtype
        if dt not in DTYPES:
            raise r.bad(i, "dtype", " | ".join(sorted({v[0] for v in DTYPES.values()})), dt)
        split = r.text(i, "split")
        if split and split not in SPLITS:
            raise r.bad(i, "split", " | ".join(SPLITS) + " or blank", split)
        t = r.num(i, time_col)
        spread = r.num(i, "spread", need="a number >= 0", strict=False, default=np.nan) if "spread" in df.columns \
            else np.nan
        row = _row(kind, dt, t, i + 2, str(path), split, spread, r.text(i, "shape"))
        if kind == "gemm":
            row.update(m=r.num(i, "m", integer=True), k=r.num(i, "k", integer=True), n=r.num(i, "n", integer=True))
        elif kind in GROUPED:
            row.update(k=r.num(i, "k", integer=True), n=r.num(i, "n", integer=True))
            counts = r.counts(i, counts_col)
            if not counts:
                experts = int(r.num(i, "experts", integer=True,
                                    need=f"an integer > 0 (or {counts_col} given)"))
                tokens = int(r.num(i, "m", integer=True))
                routed = kind in ("moe_layer", "fused_moe")  # every token goes to top_k experts: m x top_k rows
                counts = _even(tokens * (int(r.num(i, "top_k", integer=True, default=1)) if routed else 1), experts)
            row.update(counts=counts, m=r.num(i, "m", integer=True, default=float(sum(counts))),
                       experts=len(counts))
            if kind == "moe_layer":
                row.update(top_k=r.num(i, "top_k", integer=True))
            elif kind == "fused_moe":
                row.update(top_k=r.num(i, "top_k", integer=True, default=0.0) if "top_k" in df.columns else 0)
                wd = r.text(i, "weight_dtype")
                if wd and wd not in DTYPES:
                    raise r.bad(i, "weight_dtype", " | ".join(sorted({v[0] for v in DTYPES.values()})) + " or blank", wd)
                row.update(weight_dtype=wd)
        elif kind == "attention":
            row.update(m=r.num(i, "m", need="the attention's rows (tokens), > 0"), flops=r.num(i, "flops"),
                       bytes=r.num(i, "bytes"))
        else:
            col = "copy_bytes" if "copy_bytes" in df.columns else "bytes"
            row.update(copy_bytes=r.num(i, col, integer=True, need="bytes copied, an integer > 0"))
        out.append(row)
    return out


def _attention_cost(prefill: bool, batch: float, hq: float, hkv: float, hd: float, length: float
                    ) -> tuple[float, float, float]:
    """(rows, FLOPs, bytes) of a GQA attention core as simulator/ops.py counts it (bf16 activations and cache)."""
    ab = kvb = 2
    if prefill:
        rows, pairs = batch * length, batch * length * (length + 1) / 2
        mem = rows * (hq * hd * 2 + 2 * hkv * hd) * ab + rows * 2 * hkv * hd * kvb
    else:
        rows, pairs = batch, batch * (length + 1)
        mem = pairs * 2 * hkv * hd * kvb + rows * (hq * hd * 2 + 2 * hkv * hd) * ab
    return rows, pairs * 2 * hq * (hd + hd), mem


def _ops_csv(path: Path, df: pd.DataFrame) -> list[dict]:
    """Rows of an ops.csv (ops/ops.py): gemm (bf16, fp8) and attention_prefill/decode."""
    r = _Rows(path, df)
    out = []
    for i in range(len(df)):
        kind = r.text(i, "kind")
        if kind == "floor_gemm" or r.text(i, "error"):
            continue  # host/launch floors, failed measurements
        dt = r.text(i, "dtype") or "bf16"
        if dt not in DTYPES:
            raise r.bad(i, "dtype", " | ".join(sorted({v[0] for v in DTYPES.values()})), dt)
        t = r.num(i, "median_s")
        spread = np.nan
        if r.text(i, "p90_s"):
            spread = max(r.num(i, "p90_s") / t - 1.0, 0.0)
        if kind == "gemm":
            out.append(_row("gemm", dt, t, i + 2, str(path), spread=spread,
                            shape=f"{int(r.num(i, 'k'))}x{int(r.num(i, 'n'))}", m=r.num(i, "m", integer=True),
                            k=r.num(i, "k", integer=True), n=r.num(i, "n", integer=True)))
        elif kind in ("attention_prefill", "attention_decode"):
            prefill = kind == "attention_prefill"
            rows, flops, nbytes = _attention_cost(prefill, r.num(i, "batch"), r.num(i, "heads"), r.num(i, "kv_heads"),
                                                  r.num(i, "head_dim"), r.num(i, "seq" if prefill else "kv_len"))
            out.append(_row("attention", dt, t, i + 2, str(path), spread=spread, shape=kind, m=rows, flops=flops,
                            bytes=nbytes))
        else:
            raise r.bad(i, "kind", "gemm | attention_prefill | attention_decode | floor_gemm (skipped)", kind)
    return out


def read_table(path: str | Path, dtype: str = "bf16") -> list[dict]:
    """One table's rows, normalised (kind, dtype, time_s, m, k, n, counts, ..., line, source, split)."""
    path = Path(path)
    df = _read_csv(path)
    cols = set(df.columns)
    if {"median_s", "method", "kind"} <= cols:
        return _ops_csv(path, df)
    if "measured_s" in cols and "time_s" not in cols:
        return _generic(path, df, "measured_s", dtype)
    return _generic(path, df, "time_s", dtype)


def assign_splits(rows: list[dict], seed: int = 0) -> None:
    """Give rows without a split one (see the module docstring), in place."""
    rng = np.random.default_rng(seed)
    todo = [r for r in rows if not r["split"]]
    for r in todo:
        if r["kind"] == "moe_layer":
            r["split"] = "e2e"
    for kinds in (("gemm", "grouped_gemm"), ("fused_moe",)):  # each family leaves its own top token range out
        tokens = sorted({int(r["m"]) for r in todo if r["kind"] in kinds and not r["split"]})
        if len(tokens) >= 3:
            top = tokens[-max(1, int(round(HOLDOUT_SHARE * len(tokens)))):]
            for r in todo:
                if r["kind"] in kinds and not r["split"] and int(r["m"]) >= top[0]:
                    r["split"] = "holdout_slice"
    rest = [r for r in todo if not r["split"]]
    for kind in dict.fromkeys((r["kind"], r["dtype"]) for r in rest):
        idx = [j for j, r in enumerate(rest) if (r["kind"], r["dtype"]) == kind]
        take = min(int(round(HOLDOUT_SHARE * len(idx))), max(len(idx) - 3, 0))
        held = set(rng.choice(idx, size=take, replace=False).tolist()) if take else set()
        for j in idx:
            rest[j]["split"] = "holdout_random" if j in held else "fit"


def to_ops(rows: list[dict]) -> list[TableOp]:
    ops = []
    for r in rows:
        dtype, elem = DTYPES[r["dtype"]]
        kind, m = r["kind"], int(r.get("m", 0) or 0)
        k, n = int(r.get("k", 0) or 0), int(r.get("n", 0) or 0)
        if kind == "attention":
            ops.append(TableOp(OpSpec("attention", r["split"], m=m), dtype, elem, float(r["flops"]), float(r["bytes"])))
        elif kind == "fused_moe":  # the engine's fused form (simulator/moe_kernel_cost.py)
            welem = DTYPES[r["weight_dtype"]][1] if r.get("weight_dtype") else None
            ops.append(TableOp(OpSpec("fused_moe", r["split"], m=m, k=k, n=n, counts=r["counts"],
                                      experts=len(r["counts"]), top_k=int(r.get("top_k", 0) or 0), shape=r["shape"]),
                               dtype, elem, weight_elem=welem))
        elif kind in GROUPED:
            ops.append(TableOp(OpSpec(kind, r["split"], m=m, k=k, n=n, counts=r["counts"],
                                      experts=int(r.get("experts", 0)), top_k=int(r.get("top_k", 0) or 0),
                                      shape=r["shape"]), dtype, elem))
        elif kind == "gemm":
            ops.append(TableOp(OpSpec("gemm", r["split"], m=m, k=k, n=n, shape=r["shape"]), dtype, elem))
        else:
            ops.append(TableOp(OpSpec(kind, r["split"], nbytes=int(r["copy_bytes"])), dtype, elem))
    return ops


def _flops_bytes(op: TableOp) -> tuple[float, float]:
    return (op.flops, op.nbytes) if op.spec.kind == "attention" else op.spec.flops_bytes(op.elem)


def _baseline(profile: str | DeviceSpec | None, paths: list[Path]) -> tuple[DeviceSpec, dict, dict]:
    """The datasheet profile, and machine/versions from a machine.json beside the first table."""
    from moesim.hardware_profiles import list_profiles, load_device

    machine: dict = {}
    versions: dict = {}
    info = paths[0].parent / "machine.json"
    if info.exists():
        try:
            data = json.loads(info.read_text())
            machine = {str(k): str(v) for k, v in data.get("machine", {}).items()}
            versions = {str(k): str(v) for k, v in data.get("versions", {}).items()}
        except (ValueError, AttributeError):
            pass
    if isinstance(profile, DeviceSpec):
        return profile, machine, versions
    if profile:
        return load_device(profile), machine, versions
    gpu = machine.get("gpu", "")
    for name in list_profiles("devices"):
        stem = name.split("-")[0].lower()
        if gpu and stem and stem in gpu.lower() and "calibrated" not in name.lower():
            return load_device(name), machine, versions
    raise ConfigError("no datasheet profile to calibrate: pass profile (a bundled device name or YAML path); "
                      "no machine.json beside the table names a GPU with a bundled profile", file=paths[0])


def calibrate_from_table(path: str | Path | Sequence[str | Path | tuple[str | Path, Sequence[str]]], profile: str | DeviceSpec | None,
                         out_dir: str | Path, seed: int = 0, dtype: str = "bf16",
                         date: str | None = None) -> Calibration:
    """Fit `profile` (the datasheet profile of the measured device) to the op timings in `path`
    (one table or several), validate on the held-out splits and write measurements.csv, errors.csv
    and <profile>-calibrated.yaml into `out_dir`. `dtype` is the dtype of tables that give none; a
    `(path, kinds)` pair keeps only those kinds of that table (e.g. only the attention rows)."""
    entries = [path] if isinstance(path, (str, Path)) else list(path)
    pairs = [(Path(e[0]), set(e[1])) if isinstance(e, tuple) else (Path(e), None) for e in entries]
    paths = [p for p, _ in pairs]
    if not paths:
        raise ConfigError("no op timing table given")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; choose {', '.join(sorted({v[0] for v in DTYPES.values()}))}")
    rows: list[dict] = []
    for n, (p, keep) in enumerate(pairs):
        part = [r for r in read_table(p, dtype) if keep is None or r["kind"] in keep]
        assign_splits(part, seed + n)
        rows += part
    base, machine, versions = _baseline(profile, paths)
    ops = to_ops(rows)
    fit_rows = [i for i, op in enumerate(ops) if op.spec.split == "fit"]
    if not fit_rows:
        raise ConfigError("no row is in the fit split: nothing to calibrate on", file=paths[0], field="split")
    for op in ops:
        if op.dtype not in base.compute and op.spec.kind not in ("copy", "h2d", "d2h"):
            raise ConfigError(f"profile '{base.name}' has no {op.dtype} peak but the table has {op.dtype} rows",
                              file=paths[0], field="dtype")
    measured = np.array([r["time_s"] for r in rows], dtype=float)
    fit = fit_table_ops(ops, measured, base)
    tiled = base.model_copy(update={"gemm_tile": fit.gemm_tile, "moe_kernel": fit.moe_kernel or base.moe_kernel})
    table = pd.DataFrame([{
        "kind": r["kind"], "dtype": op.dtype, "split": op.spec.split, "shape": r["shape"], "m": op.spec.m,
        "k": op.spec.k, "n": op.spec.n, "experts": len(op.spec.counts) if op.spec.counts else op.spec.experts,
        "top_k": op.spec.top_k, "counts": " ".join(map(str, op.spec.counts)), "copy_bytes": op.spec.nbytes,
        "flops": _flops_bytes(op)[0], "bytes": _flops_bytes(op)[1], "measured_s": r["time_s"],
        "spread": r["spread"], "source": Path(r["source"]).name, "line": r["line"]} for r, op in zip(rows, ops)])
    table["sim_before_s"] = predict_ops(ops, CostModel(base))
    table["sim_after_s"] = predict_ops(ops, calibrated_cost(tiled, fit.kinds), fit.links)
    errors = error_table(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "measurements.csv", index=False)
    held = errors[(errors["kind"] == "all") & (errors["split"] != "fit")]
    sentence, warnings = verdict(errors)  # as a measured calibration's: better or worse on each held-out split
    calibration = CalibrationSpec(
        kinds=fit.kinds, links=fit.links, machine=machine, versions=versions, measurements="measurements.csv",
        date=date or datetime.date.today().isoformat(),
        model_form=MODEL_FORM + ("; " + FUSED_FORM if fit.moe_kernel is not None else ""), moe_kernel=fit.moe_kernel,
        validation={f"{r.split}_mape_after": float(r.after_mape) for r in held.itertuples()}
        | {f"{r.split}_mape_before": float(r.before_mape) for r in held.itertuples()},
        residuals=held_out_residuals(table), verdict=sentence, warnings=warnings)
    calibrated = replace_profile(tiled, calibration, sentence, warnings)
    write_profile(calibrated, out / f"{calibrated.name}.yaml", warnings)
    errors.to_csv(out / "errors.csv", index=False)
    counts = table.groupby("split").size().to_dict()
    facts = [("source", "external table(s) of measured op times: " + ", ".join(str(p) for p in paths)),
             ("device", machine.get("gpu", machine.get("cpu", "not stated by the table"))),
             ("libraries", ", ".join(f"{k} {v}" for k, v in versions.items()) or "not stated by the table"),
             ("datasheet profile", base.name), ("calibrated profile", f"{calibrated.name}.yaml"),
             ("rows", f"{len(table)} measured ops ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
                      f"dtypes {', '.join(sorted(table['dtype'].unique()))}"),
             ("model form", MODEL_FORM)]
    return Calibration(calibrated, base, table, errors, out, facts, sentence, warnings)
