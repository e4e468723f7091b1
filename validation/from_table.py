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
   | experts, tokens_per_expert | grouped_gemm / fused_moe / moe_layer: tokens per expert of the device's (local) experts as space-separated integers, or `experts` alone (all experts of the layer: m x top_k rows spread evenly, or drawn from `distribution`, for fused_moe / moe_layer; m rows for grouped_gemm) |
   | top_k | moe_layer, fused_moe: experts per token; the token passes run over the rows that reach the device, the sum of tokens_per_expert (`moe_kernel_cost.routed_rows`, as the engine charges them) |
   | weight_dtype | fused_moe: the experts' weight dtype where it differs from `dtype` (fp8 weights under bf16 compute: W8A16; `dtype` fp8 is W8A8) |
   | kernel | optional, fused_moe / grouped_gemm: the kernel family that ran the row: blank, `fused` or `triton_fused` (the profile's `moe_kernel`), a name of the profile's `moe_kernels` (cutlass_grouped, deepgemm_contiguous, deepgemm_masked, ...), or for grouped_gemm rows `grouped` (one launch) / `per_expert` (one launch per expert, as a blank kernel) |
   | quant | optional, fp8 rows (dtype fp8, or weight_dtype fp8): `per_tensor`, `per_channel` or `block` (128x128 block scales, DeepSeek-V3 style); with the dtype part of the fit key |
   | ep, moe_tp | optional, fused_moe / grouped_gemm: expert-parallel and MoE tensor-parallel degree of the measured layer (whole numbers >= 1, default 1) |
   | distribution, draws, seed | optional, with `experts` and no `tokens_per_expert`: `uniform` or `zipf:<s>` (0 < s <= 10), expanded into per-expert counts over `draws` draws (default 1, at most 1000) from numpy default_rng(`seed`) (default 0) |
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

   The MoE columns, precisely. A fused_moe / grouped_gemm row is ONE device's part of the layer:
   - `ep` = E: the layer has `experts` experts over E devices; the device measured holds the first
     experts/E of them (device 0 of a contiguous placement; `experts` must divide by E). Where the
     row gives `experts` alone, the m x top_k rows (m for grouped_gemm) of all m tokens are spread
     over all experts (evenly, or by `distribution`) and the device keeps its experts' counts, so
     it receives about m x top_k / E rows (exactly that share when spread evenly and E divides the
     experts; the first experts take any remainder). `m` stays the layer's tokens. Where
     `tokens_per_expert` is given, those are already the local experts' counts and `ep` does not
     change them (with `experts` also given, it must be len(tokens_per_expert) x ep).
   - `moe_tp` = T: every expert is split T ways along its width; `n` is the full expert width and
     the device computes n / T of it (`n` must divide by T); its rows are all the rows its experts
     receive (TP shards see every row of their experts).
   - `distribution` (`expand_distribution`): every token picks top_k distinct experts with
     probability proportional to the weights (uniform, or rank r weighted r**-s with the ranks dealt
     to experts by one seeded permutation); each of `draws` draws counts the rows per expert, the
     counts are averaged per expert over the draws (the ranks stay with their experts, so the skew
     survives the average) and rounded to integers summing to exactly m x top_k; under `ep` the
     device then keeps its experts' part of that average. `draws` and `seed` need `distribution`.
   - `kernel`: rows of each family are fitted apart (below); fused_moe rows of a family are its
     fused form (floor, passes from `moe_kernels.FAMILY`, GEMMs at kind `grouped_gemm.FAMILY`), a
     grouped_gemm row of `grouped` or a family is its GEMMs under one launch of that kind.
   - `quant`: each fp8 scaling mode of a family and dtype is fitted apart where the rows have
     several (`grouped_gemm.FAMILY@fp8/block`, `gemm@fp8/per_tensor`, ...); errors.csv and the
     verdict report each as `KIND[KERNEL DTYPE/QUANT]`. The engine has no quant mode: its
     `KIND@DTYPE` key holds the fit of rows without a quant, else of the commonest mode.
   A `moe_layer` row (the torch layer, all experts on one device) takes none of ep, moe_tp, kernel.

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
form (floor, token-pass efficiency, grouped GEMM per dtype: validation/fit.py `fit_fused`), once per
kernel family present: rows of no kernel (or `fused`) fit the profile's `moe_kernel` and
`grouped_gemm@DTYPE` (written to `calibration.moe_kernel` and `calibration.kinds`); rows of a family
F fit F's own floor, token-pass scale and `grouped_gemm.F@DTYPE` (written to the calibrated profile's
`moe_kernels.F`, whose `compute` figures of the fitted dtypes are dropped so the engine costs F's
GEMMs by the fit, and to `calibration.kinds`). `policies.expert_kernel: F` then reads them as
before. errors.csv adds a row per (split, kind[kernel]) and the verdict a clause per kernel. A bad
table is a ConfigError naming the file, the column and the line.
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
QUANTS = ("per_tensor", "per_channel", "block")  # fp8 scaling: one scale, one per output channel, 128x128 blocks
FUSED_KERNELS = ("fused", "triton_fused")  # the profile's own fused kernel (moe_kernel): as a blank `kernel`
GEMM_KERNELS = ("grouped", "per_expert")  # launch forms of GEMM-only rows (grouped_gemm), no floor or passes
DISTRIBUTIONS = ("uniform", "zipf:<s>")
DRAWS_MAX = 1000


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
    """`total` rows over `experts` experts as evenly as integers allow (the first ones take the extra)."""
    base, extra = divmod(total, experts)
    return tuple(base + (1 if e < extra else 0) for e in range(experts))


def parse_distribution(text: str) -> float | None:
    """The Zipf exponent of a `distribution` cell: 0.0 for `uniform`, s for `zipf:<s>` (s > 0);
    None where the text is neither."""
    if text == "uniform":
        return 0.0
    if text.startswith("zipf:"):
        try:
            s = float(text[5:])
        except ValueError:
            return None
        return s if np.isfinite(s) and 0 < s <= 10 else None
    return None


def _round_conserving(mean: np.ndarray, total: int) -> tuple[int, ...]:
    """Integers near `mean` summing to `total`: floors, then one more to the largest remainders
    (ties to the lower expert index)."""
    base = np.floor(mean).astype(int)
    short = int(total - base.sum())
    if short > 0:
        order = np.lexsort((np.arange(mean.size), -(mean - base)))
        base[order[:short]] += 1
    return tuple(int(c) for c in base)


def expand_distribution(tokens: int, top_k: int, experts: int, distribution: str, draws: int = 1,
                        seed: int = 0) -> tuple[int, ...]:
    """Per-expert row counts of `tokens` tokens each routed to `top_k` distinct experts of `experts`,
    under `distribution` (`uniform`, or `zipf:<s>`: the expert of popularity rank r, 1-based, has
    weight r**-s), deterministically from numpy default_rng(seed):

    1. the popularity ranks are dealt to the experts by one permutation (the rng's first draw), so
       the hot experts are not always the lowest-numbered ones (uniform: no permutation needed);
    2. each of `draws` draws routes every token to top_k distinct experts, sampled without
       replacement in proportion to the weights (Gumbel top-k), and counts each expert's rows;
    3. the per-expert counts are averaged over the draws (the mean count of each expert, which keeps
       the skew: the ranks stay with their experts) and rounded to integers that sum to exactly
       tokens x top_k (`_round_conserving`).
    """
    rng = np.random.default_rng(seed)
    s = parse_distribution(distribution)
    if s is None:
        raise ValueError(f"unknown distribution {distribution!r}")
    weights = np.arange(1, experts + 1, dtype=float) ** -s
    weights = weights[rng.permutation(experts)] if s > 0 else weights
    logw = np.log(weights / weights.sum())
    total = np.zeros(experts)
    chunk = max(1, 2 ** 22 // experts)  # tokens per block: at most 4M keys in memory
    for _ in range(draws):
        for start in range(0, tokens, chunk):
            n = min(chunk, tokens - start)
            keys = logw + rng.gumbel(size=(n, experts))
            chosen = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k] if top_k < experts else \
                np.broadcast_to(np.arange(experts), (n, experts))
            total += np.bincount(chosen.ravel(), minlength=experts)
    return _round_conserving(total / draws, tokens * top_k)


def local_counts(counts: tuple[int, ...], ep: int) -> tuple[int, ...]:
    """The counts of the experts one device of an EP group of `ep` holds: the first experts/ep
    (device 0 of a contiguous placement, `placement.policy: contiguous`)."""
    return counts[: len(counts) // ep]


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
        if kind not in GROUPED:
            _no_moe_columns(r, i, kind)
        if kind == "gemm":
            row.update(m=r.num(i, "m", integer=True), k=r.num(i, "k", integer=True), n=r.num(i, "n", integer=True))
        elif kind in GROUPED:
            ep, moe_tp = _parallel(r, i, kind)
            n = int(r.num(i, "n", integer=True))
            if n % moe_tp:
                raise r.bad(i, "moe_tp", f"a degree that divides the expert width n = {n}", r.text(i, "moe_tp"))
            row.update(k=r.num(i, "k", integer=True), n=float(n // moe_tp), ep=ep, moe_tp=moe_tp)
            counts = _counts(r, i, kind, counts_col, ep)
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
            if kind in ("fused_moe", "grouped_gemm"):
                row.update(kernel=_kernel(r, i, kind))
            elif r.text(i, "kernel"):
                raise r.bad(i, "kernel", "blank (a kernel family names fused_moe and grouped_gemm rows only)",
                            r.text(i, "kernel"))
        elif kind == "attention":
            row.update(m=r.num(i, "m", need="the attention's rows (tokens), > 0"), flops=r.num(i, "flops"),
                       bytes=r.num(i, "bytes"))
        else:
            col = "copy_bytes" if "copy_bytes" in df.columns else "bytes"
            row.update(copy_bytes=r.num(i, col, integer=True, need="bytes copied, an integer > 0"))
        row.update(quant=_quant(r, i, kind, dt, row.get("weight_dtype", "")))
        out.append(row)
    return out


def _kernel(r: _Rows, i: int, kind: str) -> str:
    """A fused_moe / grouped_gemm row's `kernel`, normalised ("" the profile's fused kernel); the
    family names are checked against the device profile later (`check_kernels`)."""
    name = r.text(i, "kernel")
    if name in FUSED_KERNELS:
        return ""
    if kind == "fused_moe" and name in GEMM_KERNELS:
        raise r.bad(i, "kernel", "a fused kernel (fused, triton_fused, or a family of the profile's moe_kernels); "
                    f"`{name}` has no layer floor or token passes, so it names grouped_gemm rows", name)
    if name and not name.replace("_", "").replace("-", "").isalnum():
        raise r.bad(i, "kernel", "a kernel family name (letters, digits, _)", name)
    return name


def _quant(r: _Rows, i: int, kind: str, dtype: str, weight_dtype: str) -> str:
    """A row's `quant` (fp8 scaling mode); only fp8 GEMM rows (fp8 operands, or fp8 weights) have one."""
    q = r.text(i, "quant")
    if not q:
        return ""
    if q not in QUANTS:
        raise r.bad(i, "quant", " | ".join(QUANTS) + " or blank (W8A16: dtype bf16 with weight_dtype fp8)", q)
    fp8 = DTYPES[dtype][0] == "fp8" or (weight_dtype and DTYPES[weight_dtype][0] == "fp8")
    if kind not in ("gemm", "grouped_gemm", "fused_moe") or not fp8:
        raise r.bad(i, "quant", "blank: a quant mode belongs to fp8 gemm, grouped_gemm and fused_moe rows "
                    "(dtype fp8, or weight_dtype fp8)", q)
    return q


def _parallel(r: _Rows, i: int, kind: str) -> tuple[int, int]:
    """(ep, moe_tp) of a grouped row, 1 where blank; only fused_moe and grouped_gemm rows take them."""
    ep = int(r.num(i, "ep", integer=True, need="the expert-parallel degree, a whole number >= 1", default=1.0))
    tp = int(r.num(i, "moe_tp", integer=True, need="the MoE tensor-parallel degree, a whole number >= 1",
                   default=1.0))
    if kind not in ("fused_moe", "grouped_gemm"):
        for col, v in (("ep", ep), ("moe_tp", tp)):
            if v != 1:
                raise r.bad(i, col, "1 or blank (the torch moe_layer runs all experts on one device)", r.text(i, col))
    return ep, tp


def _counts(r: _Rows, i: int, kind: str, counts_col: str, ep: int) -> tuple[int, ...]:
    """The token counts of the experts on the measured device: `tokens_per_expert` as given (the
    local experts'), else `experts` with m x top_k rows (m for grouped_gemm) spread evenly or drawn
    from `distribution`, of which the device's experts/ep take theirs (`local_counts`)."""
    counts = r.counts(i, counts_col)
    dist = r.text(i, "distribution")
    for col in ("draws", "seed"):
        if r.text(i, col) and not dist:
            raise r.bad(i, col, "blank: draws and seed belong to a `distribution` (uniform or zipf:<s>)",
                        r.text(i, col))
    if counts:
        if dist:
            raise r.bad(i, "distribution", f"blank where {counts_col} gives the counts", dist)
        if ep > 1 and r.text(i, "experts") and int(r.num(i, "experts", integer=True)) != len(counts) * ep:
            raise r.bad(i, "experts", f"{len(counts)} x ep = {len(counts) * ep} ({counts_col} are the device's "
                        f"{len(counts)} local experts' counts)", r.text(i, "experts"))
        return counts
    experts = int(r.num(i, "experts", integer=True, need=f"an integer > 0 (or {counts_col} given)"))
    if experts % ep:
        raise r.bad(i, "ep", f"a degree that divides experts = {experts}", r.text(i, "ep"))
    tokens = int(r.num(i, "m", integer=True))
    routed = kind in ("moe_layer", "fused_moe")  # every token goes to top_k experts: m x top_k rows
    top_k = int(r.num(i, "top_k", integer=True, default=1)) if routed else 1
    if not dist:
        return local_counts(_even(tokens * top_k, experts), ep)
    if parse_distribution(dist) is None:
        raise r.bad(i, "distribution", "uniform or zipf:<s> with 0 < s <= 10 (e.g. zipf:1.2)", dist)
    if top_k > experts:
        raise r.bad(i, "top_k", f"at most experts = {experts}", r.text(i, "top_k"))
    draws = int(r.num(i, "draws", integer=True, default=1.0, need=f"a whole number of draws, 1..{DRAWS_MAX}"))
    if draws > DRAWS_MAX:
        raise r.bad(i, "draws", f"a whole number of draws, 1..{DRAWS_MAX}", r.text(i, "draws"))
    seed = int(r.num(i, "seed", integer=True, strict=False, default=0.0, need="a whole number >= 0"))
    return local_counts(expand_distribution(tokens, top_k, experts, dist, draws, seed), ep)


def _no_moe_columns(r: _Rows, i: int, kind: str) -> None:
    """Rows outside the grouped kinds leave the MoE-only columns blank."""
    for col in ("kernel", "ep", "moe_tp", "distribution", "draws", "seed"):
        if r.text(i, col):
            raise r.bad(i, col, f"blank for a {kind} row (it belongs to fused_moe / grouped_gemm rows)",
                        r.text(i, col))


def known_kernels(device: DeviceSpec) -> list[str]:
    """The `kernel` names a table may give for `device`: its fused kernel, its moe_kernels families,
    and the GEMM-only launch forms."""
    return list(FUSED_KERNELS) + list(device.moe_kernels) + list(GEMM_KERNELS)


def check_kernels(rows: list[dict], device: DeviceSpec) -> None:
    """Every row's kernel family is one the device profile knows (ConfigError naming file and line)."""
    known = set(known_kernels(device))
    for row in rows:
        name = row.get("kernel", "")
        if name and name not in known:
            raise ConfigError(f"row {row['line'] - 2} (line {row['line']}): unknown kernel {name!r}; profile "
                              f"'{device.name}' knows {', '.join(known_kernels(device))}",
                              file=row["source"], field="kernel")


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
                               dtype, elem, weight_elem=welem, kernel=r.get("kernel", ""), quant=r.get("quant", "")))
        elif kind in GROUPED:
            ops.append(TableOp(OpSpec(kind, r["split"], m=m, k=k, n=n, counts=r["counts"],
                                      experts=int(r.get("experts", 0)), top_k=int(r.get("top_k", 0) or 0),
                                      shape=r["shape"]), dtype, elem, kernel=r.get("kernel", ""),
                               quant=r.get("quant", "")))
        elif kind == "gemm":
            ops.append(TableOp(OpSpec("gemm", r["split"], m=m, k=k, n=n, shape=r["shape"]), dtype, elem,
                               quant=r.get("quant", "")))
        else:
            ops.append(TableOp(OpSpec(kind, r["split"], nbytes=int(r["copy_bytes"])), dtype, elem))
    return ops


def fit_label(kind: str, kernel: str, quant: str, dtype: str) -> str:
    """The errors.csv `kind` of a row's own fit: KIND[KERNEL] or KIND[KERNEL DTYPE/QUANT]; the kind
    alone where the row names neither."""
    if not kernel and not quant:
        return kind
    return f"{kind}[{kernel or 'fused'}" + (f" {dtype}/{quant}" if quant else "") + "]"


def kernel_errors(table: pd.DataFrame) -> pd.DataFrame:
    """`error_table`, plus, where rows name a kernel or quant mode, a row per (split, fit) of those:
    kind `fused_moe[cutlass_grouped]`, `fused_moe[fused fp8/block]`, ... (each family's held-out error)."""
    errors = error_table(table)
    labels = [fit_label(k, kn, q, d) for k, kn, q, d in zip(table["kind"], table["kernel"], table["quant"],
                                                              table["dtype"])]
    if all(lab == k for lab, k in zip(labels, table["kind"])):
        return errors
    extra = error_table(table.assign(kind=labels))
    extra = extra[(extra["kind"] != "all") & ~extra["kind"].isin(set(table["kind"]))]
    return pd.concat([errors, extra], ignore_index=True)


def per_kernel_verdict(errors: pd.DataFrame) -> str:
    """A sentence on each kernel family's (and quant mode's) held-out MAPE, datasheet -> calibrated,
    from `kernel_errors` (empty where the table names no kernel)."""
    from moesim.validation.calibrate import SPLIT_LABEL

    mine = errors[errors["kind"].str.contains("[", regex=False)]
    parts = []
    for label in dict.fromkeys(mine["kind"]):
        rows = mine[(mine["kind"] == label) & (mine["split"] != "fit")]
        text = ", ".join(f"{SPLIT_LABEL.get(r.split, r.split)} {r.before_mape:.0%} -> {r.after_mape:.0%}"
                         for r in rows.itertuples() if np.isfinite(r.before_mape) and np.isfinite(r.after_mape))
        if text:
            parts.append(f"{label} {text}")
    return (" Per kernel, held-out MAPE (datasheet -> calibrated): " + "; ".join(parts) + ".") if parts else ""


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
    check_kernels(rows, base)
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
    tiled = base.model_copy(update={"gemm_tile": fit.gemm_tile, "moe_kernel": fit.moe_kernel or base.moe_kernel,
                                    "moe_kernels": {**base.moe_kernels, **(fit.moe_kernels or {})}})
    table = pd.DataFrame([{
        "kind": r["kind"], "dtype": op.dtype, "split": op.spec.split, "shape": r["shape"], "m": op.spec.m,
        "k": op.spec.k, "n": op.spec.n, "experts": len(op.spec.counts) if op.spec.counts else op.spec.experts,
        "top_k": op.spec.top_k, "counts": " ".join(map(str, op.spec.counts)), "copy_bytes": op.spec.nbytes,
        "flops": _flops_bytes(op)[0], "bytes": _flops_bytes(op)[1], "measured_s": r["time_s"],
        "spread": r["spread"], "source": Path(r["source"]).name, "line": r["line"], "kernel": op.kernel,
        "quant": op.quant} for r, op in zip(rows, ops)])
    table["sim_before_s"] = predict_ops(ops, CostModel(base))
    table["sim_after_s"] = predict_ops(ops, calibrated_cost(tiled, fit.kinds), fit.links)
    errors = kernel_errors(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "measurements.csv", index=False)
    held = errors[(errors["kind"] == "all") & (errors["split"] != "fit")]
    sentence, warnings = verdict(errors)  # as a measured calibration's: better or worse on each held-out split
    sentence += per_kernel_verdict(errors)
    calibration = CalibrationSpec(
        kinds=fit.kinds, links=fit.links, machine=machine, versions=versions, measurements="measurements.csv",
        date=date or datetime.date.today().isoformat(),
        model_form=MODEL_FORM + ("; " + FUSED_FORM if fit.moe_kernel is not None or fit.moe_kernels else "")
        + ("; per kernel family (moe_kernels." + ", moe_kernels.".join(fit.moe_kernels) + ": fitted floor and "
           "passes, grouped_gemm.FAMILY@DTYPE)" if fit.moe_kernels else ""), moe_kernel=fit.moe_kernel,
        validation={f"{r.split}_mape_after": float(r.after_mape) for r in held.itertuples()}
        | {f"{r.split}_mape_before": float(r.before_mape) for r in held.itertuples()},
        residuals=held_out_residuals(table), verdict=sentence, warnings=warnings)
    calibrated = replace_profile(tiled, calibration, sentence, warnings)
    if fit.moe_kernels:  # a family's fit lives in its moe_kernels entry, where the engine reads it
        calibrated = calibrated.model_copy(update={"sources": {**calibrated.sources, **{
            f"moe_kernels.{f}": f"calibrated: fitted by moesim calibrate --from-table ({', '.join(map(str, paths))}) "
                                f"on {calibration.date}; its GEMMs: calibration.kinds grouped_gemm.{f}@DTYPE"
            for f in fit.moe_kernels}}})
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
    if fit.moe_kernels:
        facts.append(("kernel families fitted", ", ".join(
            f"{f} (floor {spec.layer_floor * 1e6:.1f} us, passes {spec.hidden_passes:.2f} x hidden + "
            f"{spec.intermediate_passes:.2f} x intermediate)" for f, spec in fit.moe_kernels.items())))
    return Calibration(calibrated, base, table, errors, out, facts, sentence, warnings)
