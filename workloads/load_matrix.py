"""Read measured expert-load matrices: layers x experts token counts or shares, one or more windows.

Serving engines record how many tokens each expert of each MoE layer received (SGLang's expert
distribution recorder, vLLM's EPLB load window). `read_load_matrix` turns such files into a
`LoadHistory` (windows, layers, experts) that placement and the `load_matrix` routing generator
use; several files are a history of windows, concatenated in the order given.

Formats (by suffix):
- `.csv`: rows = layers, columns = experts. A header is optional (detected when a field of
  the first row is not a number); with one, a `layer` (or `moe_layer`) column names each row's
  layer and a `window` column puts several windows in one file (rows grouped by window, sorted
  by layer). A header with `expert` and one of `count` / `share` / `load` is the long format
  below. Without a header every column is an expert.
- `.npy`: a 2-D (layers, experts) or 3-D (windows, layers, experts) numeric array.
- `.parquet` / `.pq`: long format, one row per (window?, layer, expert) with a `count`, `share`
  or `load` column (missing pairs are 0; the expert count is the largest id + 1, padded to the
  model's), or wide format as in CSV.
- `.json` / `.pt` (the latter needs torch), by key:
  - SGLang: `logical_count`, (layers, experts) or (forward passes, layers, experts). This is
    the `--init-expert-location` JSON/.pt that `compute_initial_expert_location_metadata`
    reads and the dict the `stat` recorder mode dumps (`_StatAccumulator.dump`), both in
    sglang `python/sglang/srt/eplb/expert_location.py` / `expert_distribution.py`. SGLang counts
    every decoder layer, so a file with the model's total layer count keeps its MoE layers.
    Also the `per_pass` dump: `records` (one per forward pass, each with
    `global_physical_count` (layers, physical experts)) and `last_physical_to_logical_map`.
  - vLLM: `expert_load_window` (window, MoE layers, physical experts) or `expert_load_pass` /
    `expert_load_view` (MoE layers, physical experts), with optional `physical_to_logical_map`
    (MoE layers, physical experts) to fold redundant copies onto their logical expert. These are
    the `EplbModelState` tensors of vllm `vllm/distributed/eplb/eplb_state.py`; vLLM keeps them
    in memory only, so the file is a JSON (or torch.save) of those tensors under those names.
  - a bare 2-D or 3-D list.
  All-zero windows of these dumps (unfilled slots of SGLang's circular buffer or vLLM's window)
  are dropped.

Values must be finite and non-negative; integral values are `counts`, others `shares` (each
layer's row is normalized when used, so shares may sum to 1 or to top_k). `match_model` checks
a history against a model: expert count, MoE layer count, no all-zero layer, and at least
top_k experts with load in every layer (what any top-k routing produces).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from moesim.errors import ConfigError
from moesim.workloads.model_spec import ModelSpec
from moesim.yaml_io import check_file, read_text_file

SUFFIXES = {".csv": "csv", ".npy": "npy", ".parquet": "parquet", ".pq": "parquet", ".json": "json",
            ".pt": "pt", ".pth": "pt"}
_VALUE_COLUMNS = ("count", "share", "load")
_LAYER_COLUMNS = ("layer", "moe_layer")


@dataclass(frozen=True)
class LoadHistory:
    """Expert loads (windows, layers, experts) with where they came from."""

    loads: np.ndarray  # (W, L, E) float64, finite and non-negative
    kind: str  # "counts", "shares" or "mixed" (files of both)
    sources: tuple[str, ...]  # the file of each window
    formats: tuple[str, ...]  # the format of each file read, in order
    layer_ids: tuple[int, ...] | None = None  # the layer each row is, when the file names them
    sparse_experts: bool = False  # long format: experts past the largest id seen may exist (load 0)
    dropped_windows: int = 0  # all-zero windows of engine dumps left out

    @property
    def num_windows(self) -> int:
        return self.loads.shape[0]

    @property
    def num_layers(self) -> int:
        return self.loads.shape[1]

    @property
    def num_experts(self) -> int:
        return self.loads.shape[2]

    def shares(self) -> np.ndarray:
        """(W, L, E) each window's loads normalized per layer (all-zero rows stay 0)."""
        total = self.loads.sum(axis=2, keepdims=True)
        return np.divide(self.loads, total, out=np.zeros_like(self.loads), where=total > 0)

    def mean_shares(self) -> np.ndarray:
        """(L, E) the mean over windows of the per-layer shares."""
        return self.shares().mean(axis=0)

    def describe(self) -> dict[str, Any]:
        """Provenance for outputs: files, formats, shape and kind."""
        return {"files": list(dict.fromkeys(self.sources)), "formats": list(self.formats), "kind": self.kind,
                "windows": self.num_windows, "layers": self.num_layers, "experts": self.num_experts,
                "dropped_windows": self.dropped_windows}


def read_load_matrix(paths: str | Path | Sequence[str | Path], model: ModelSpec | None = None) -> LoadHistory:
    """Read one load file or several (a history of windows, in order); with `model`, check and fit
    each to the model (`match_model`). Raises ConfigError naming the file and the field."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ConfigError("no load matrix file given", field="loads")
    parts = []
    for p in items:
        h = _read_one(Path(p))
        parts.append(match_model(h, model) if model is not None else h)
    first = parts[0]
    for h in parts[1:]:
        if h.loads.shape[1:] != first.loads.shape[1:]:
            raise ConfigError(f"{h.num_layers} layers x {h.num_experts} experts, but {first.sources[0]} has "
                              f"{first.num_layers} x {first.num_experts}; every file of a history must match",
                              file=h.sources[0], field="shape")
    kinds = {h.kind for h in parts}
    return LoadHistory(np.concatenate([h.loads for h in parts]), kinds.pop() if len(kinds) == 1 else "mixed",
                       sum((h.sources for h in parts), ()), sum((h.formats for h in parts), ()),
                       first.layer_ids, first.sparse_experts, sum(h.dropped_windows for h in parts))


def match_model(h: LoadHistory, model: ModelSpec) -> LoadHistory:
    """The history fitted to the model's MoE layers and experts, or a ConfigError saying why not."""
    path, E, moe = h.sources[0], model.moe.num_experts, model.moe_layers
    loads = h.loads
    if h.num_experts != E and not (h.sparse_experts and h.num_experts < E):
        hint = (" (physical experts? give physical_to_logical_map to fold replicas)"
                if h.num_experts > E and any(f.startswith("vllm") or f.startswith("sglang") for f in h.formats) else "")
        raise ConfigError(f"{h.num_experts} experts per layer, but model {model.name} has {E}{hint}",
                          file=path, field="shape")
    if h.num_experts < E:
        loads = np.concatenate([loads, np.zeros((*loads.shape[:2], E - h.num_experts))], axis=2)
    if h.num_layers != len(moe):
        if h.layer_ids is not None and set(moe) <= set(h.layer_ids):
            loads = loads[:, [h.layer_ids.index(layer) for layer in moe]]
        elif h.num_layers == model.num_layers:  # every decoder layer (SGLang): keep the MoE ones
            loads = loads[:, moe]
        else:
            raise ConfigError(f"{h.num_layers} layers, but model {model.name} has {len(moe)} MoE layers "
                              f"(of {model.num_layers} layers)", file=path, field="shape")
    live = (loads > 0).sum(axis=2)  # (W, L) experts with load
    for w, layer in zip(*np.nonzero(live < model.moe.top_k)):
        where = f"window {w}, layer {layer}" if loads.shape[0] > 1 else f"layer {layer}"
        what = ("every expert has load 0 (an all-zero layer)" if live[w, layer] == 0 else
                f"only {live[w, layer]} experts have load, fewer than the model's top_k={model.moe.top_k}")
        raise ConfigError(f"{what}; a window's layer needs top_k experts with load",
                          file=_window_file(h, w), field=where)
    return replace(h, loads=loads, layer_ids=None, sparse_experts=False)


def _window_file(h: LoadHistory, w: int) -> str:
    return h.sources[w] if w < len(h.sources) else h.sources[0]


def _read_one(path: Path) -> LoadHistory:
    """One file as a LoadHistory (no model checks)."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"unknown load matrix format '{path.suffix}'; use one of {', '.join(sorted(SUFFIXES))}",
                          file=path, field="format")
    check_file(path, "load matrix file")
    layer_ids, sparse, dropped = None, False, 0
    if fmt == "csv":
        arr, layer_ids, sparse, fmt = _from_frame(*_read_csv(path), path, "csv")
    elif fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise ConfigError(f"not a readable Parquet file ({err})", file=path, field="format") from None
        arr, layer_ids, sparse, fmt = _from_frame(df, [f"row {i}" for i in range(len(df))], path, "parquet")
    elif fmt == "npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # a pickled, truncated or foreign file
            raise ConfigError(f"not a numeric .npy array ({type(err).__name__}: {err})", file=path,
                              field="array") from None
        arr = _stack(_dense(raw, path, "array"), path, "array")
    else:
        obj = _read_json(path) if fmt == "json" else _read_torch(path)
        arr, fmt = _from_object(obj, path, fmt)
        keep = arr.reshape(arr.shape[0], -1).sum(axis=1) > 0
        if fmt.startswith(("sglang", "vllm")) and not keep.all():
            if not keep.any():
                raise ConfigError("every window of the dump is all zero (nothing was recorded)", file=path,
                                  field="loads")
            arr, dropped = arr[keep], int((~keep).sum())
    integral = bool(np.all(arr == np.round(arr)))
    return LoadHistory(arr, "counts" if integral else "shares", (str(path),) * arr.shape[0], (fmt,),
                       layer_ids, sparse, dropped)


def _check_values(values: np.ndarray, path: Path, where: Callable[[tuple[int, ...]], str]) -> None:
    """Every value finite and non-negative, else an error at the first bad one."""
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        v = values[at]
        what = "NaN" if math.isnan(v) else "infinite" if math.isinf(v) else "negative"
        raise ConfigError(f"a load must be a finite non-negative number, found {what} value {v!r}", file=path,
                          field=where(at))


def _dense(value: Any, path: Path, field: str) -> np.ndarray:
    """A nested list or array as a float array, with ragged rows and bad values located."""
    if not isinstance(value, np.ndarray):
        _check_ragged(value, path, field, ())
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.ndim == 0:
        raise ConfigError(f"expected a numeric array, got {arr.dtype} of shape {arr.shape}", file=path, field=field)
    arr = arr.astype(np.float64)
    _check_values(arr, path, lambda at: f"{field}{list(at)}")
    return arr


def _check_ragged(value: Any, path: Path, field: str, at: tuple[int, ...]) -> None:
    """Nested lists must be rectangular: name the first row whose length differs."""
    if not isinstance(value, (list, tuple)) or not value or not isinstance(value[0], (list, tuple)):
        return
    n = len(value[0])
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or len(row) != n:
            got = len(row) if isinstance(row, (list, tuple)) else "a scalar"
            raise ConfigError(f"ragged rows: {field}{list(at) + [i]} has {got} entries, {field}{list(at) + [0]} "
                              f"has {n}", file=path, field=f"{field}{list(at) + [i]}")
        _check_ragged(row, path, field, at + (i,))


def _stack(arr: np.ndarray, path: Path, field: str) -> np.ndarray:
    """(layers, experts) -> (1, layers, experts); (windows, layers, experts) as is."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ConfigError(f"expected (layers, experts) or (windows, layers, experts), got shape {arr.shape}",
                          file=path, field=field)
    return arr


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A CSV as a float frame (named columns if it has a header) and the line of each row."""
    text = read_text_file(path, "CSV load matrix", max_bytes=None)
    reader = csv.reader(io.StringIO(text, newline=""))
    lines = [(i + 1, row) for i, row in enumerate(reader) if row and not row[0].lstrip().startswith("#")]
    if not lines:
        raise ConfigError("the file has no rows", file=path, field="line 1")
    header = None
    if any(not _is_number(x) for x in lines[0][1]):
        header = _header(lines[0][1], path)
        lines = lines[1:]
    width = len(header) if header is not None else len(lines[0][1]) if lines else 0
    rows = []
    for no, row in lines:
        if len(row) != width:
            first = "the header has" if header else "the first row has"
            raise ConfigError(f"ragged rows: {len(row)} values where {first} {width}", file=path, field=f"line {no}")
        for j, x in enumerate(row):
            if not _is_number(x):
                col = f"column '{header[j]}'" if header else f"column {j + 1}"
                raise ConfigError(f"'{x}' is not a number ({col})", file=path, field=f"line {no}")
        rows.append([float(x) for x in row])
    if not rows:
        raise ConfigError("the file has a header but no rows", file=path, field="line 2")
    df = pd.DataFrame(rows, columns=header if header is not None else [f"column {j + 1}" for j in range(width)])
    return df, [f"line {no}" for no, _ in lines]


def _header(row: list[str], path: Path) -> list[str]:
    """The first CSV row as column names. A row that mixes numbers with text other than the known
    column names (layer, window, expert, count, ...) is a row of loads with a text cell, not a
    header (expert columns may be named by number: `layer,0,1,2,3`)."""
    names = [x.strip().lower() for x in row]
    known = {"window", "expert", *_LAYER_COLUMNS, *_VALUE_COLUMNS}
    if any(_is_number(x) for x in names):
        text = next((j for j, x in enumerate(names) if not _is_number(x) and x not in known), None)
        if text is not None:
            raise ConfigError(f"'{row[text]}' is not a number (column {text + 1}); the first row mixes numbers and "
                              "text, so it is neither a header nor a row of loads", file=path, field="line 1")
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _from_frame(df: pd.DataFrame, labels: list[str], path: Path,
                fmt: str) -> tuple[np.ndarray, tuple[int, ...] | None, bool, str]:
    """A wide or long table as (windows, layers, experts): returns (array, layer ids, sparse, format)."""
    df = df.rename(columns=lambda c: str(c).strip().lower())
    seen: set[str] = set()
    for j, col in enumerate(df.columns):
        if col == "" or col in seen:
            what = f"column {j + 1} has no name" if col == "" else f"column '{col}' appears twice"
            raise ConfigError(f"{what} in the header; every column needs its own name", file=path,
                              field=f"column {j + 1}")
        seen.add(col)
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            raise ConfigError(f"column '{col}' must hold numbers, but its type is {df[col].dtype}", file=path,
                              field=f"column '{col}'")
    values = df.to_numpy(dtype=np.float64)
    _check_values(values, path, lambda at: f"{labels[at[0]]}, {_column(df.columns[at[1]])}")
    if len(df) == 0:
        raise ConfigError("the table has no rows", file=path, field="rows")
    value_col = next((c for c in _VALUE_COLUMNS if c in df.columns), None)
    layer_col = next((c for c in _LAYER_COLUMNS if c in df.columns), None)
    if "expert" in df.columns and value_col is not None:
        if layer_col is None:
            raise ConfigError("the long format needs a 'layer' column next to 'expert' and "
                              f"'{value_col}'", file=path, field="columns")
        return (*_from_long(df, labels, path, layer_col, value_col), f"{fmt}-long")
    window = _ids(df, "window", labels, path) if "window" in df.columns else np.zeros(len(df), dtype=np.int64)
    layer = _ids(df, layer_col, labels, path) if layer_col else None
    experts = [c for c in df.columns if c not in ("window", layer_col)]
    if not experts:
        raise ConfigError("no expert columns (every column is 'window' or 'layer')", file=path, field="columns")
    mats, layer_ids = [], None
    for w in np.unique(window):
        rows = np.flatnonzero(window == w)
        if layer is not None:
            ids = layer[rows]
            dup = _first_duplicate(ids)
            if dup is not None:
                raise ConfigError(f"layer {ids[dup]} appears twice in window {w}", file=path, field=labels[rows[dup]])
            rows = rows[np.argsort(ids, kind="stable")]
            ids = tuple(int(i) for i in np.sort(ids))
            if layer_ids is not None and ids != layer_ids:
                raise ConfigError(f"window {w} has layers {list(ids)}, the first window {list(layer_ids)}",
                                  file=path, field=labels[rows[0]])
            layer_ids = ids
        if mats and len(rows) != mats[0].shape[0]:
            raise ConfigError(f"window {w} has {len(rows)} layer rows, the first window {mats[0].shape[0]}",
                              file=path, field=labels[rows[0]])
        mats.append(df[experts].to_numpy(dtype=np.float64)[rows])
    return np.stack(mats), layer_ids, False, f"{fmt}-wide"


def _column(name: str) -> str:
    """A column as named in errors: "column 3" for a header-less CSV, else "column 'name'"."""
    return name if name.startswith("column ") else f"column '{name}'"


def _from_long(df: pd.DataFrame, labels: list[str], path: Path, layer_col: str,
               value_col: str) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """Long rows (window?, layer, expert, value) as a dense (windows, layers, experts) array."""
    window = _ids(df, "window", labels, path) if "window" in df.columns else np.zeros(len(df), dtype=np.int64)
    layer, expert = _ids(df, layer_col, labels, path), _ids(df, "expert", labels, path)
    key = np.unique(np.stack([window, layer, expert], axis=1), axis=0, return_inverse=True)[1].ravel()
    dup = _first_duplicate(key)
    if dup is not None:
        raise ConfigError(f"(window {window[dup]}, layer {layer[dup]}, expert {expert[dup]}) appears twice",
                          file=path, field=labels[dup])
    windows, w_idx = np.unique(window, return_inverse=True)
    layers, l_idx = np.unique(layer, return_inverse=True)
    out = np.zeros((windows.size, layers.size, int(expert.max()) + 1))
    out[w_idx, l_idx, expert] = df[value_col].to_numpy(dtype=np.float64)
    return out, tuple(int(i) for i in layers), True


def _ids(df: pd.DataFrame, col: str, labels: list[str], path: Path) -> np.ndarray:
    """A column of whole-number ids (window, layer, expert)."""
    v = df[col].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(v != np.round(v))
    if bad.size:
        raise ConfigError(f"column '{col}' must hold whole numbers, found {v[bad[0]]!r}", file=path,
                          field=labels[bad[0]])
    return v.astype(np.int64)


def _first_duplicate(ids: np.ndarray) -> int | None:
    """Index of the first value seen before, or None."""
    _, first = np.unique(ids, return_index=True)
    if first.size == ids.size:
        return None
    return int(np.setdiff1d(np.arange(ids.size), first)[0])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path, "JSON load dump", max_bytes=None))
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON ({err.msg})", file=path, field=f"line {err.lineno}") from None


def _read_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError("reading a .pt load dump needs torch (pip install torch), or save it as .json",
                          file=path, field="format") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files
        first = str(err).splitlines()[0] if str(err) else "empty or truncated"
        raise ConfigError(f"not a readable torch file ({type(err).__name__}: {first})", file=path,
                          field="format") from None
    return _to_numpy(obj)


def _to_numpy(obj: Any) -> Any:
    """Tensors inside a loaded torch object as numpy arrays (dicts and lists walked)."""
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_numpy(v) for v in obj]
    return obj


def _from_object(obj: Any, path: Path, fmt: str) -> tuple[np.ndarray, str]:
    """A JSON or torch object as (windows, layers, experts) and the format it was recognised as."""
    if isinstance(obj, (list, np.ndarray)):
        return _stack(_dense(obj, path, "loads"), path, "loads"), fmt
    if not isinstance(obj, dict):
        raise ConfigError(f"expected an object or a list, got {type(obj).__name__}", file=path, field="loads")
    if "logical_count" in obj:
        return _stack(_dense(obj["logical_count"], path, "logical_count"), path, "logical_count"), f"sglang-{fmt}"
    if "records" in obj and "last_physical_to_logical_map" in obj:
        mapping = _dense(obj["last_physical_to_logical_map"], path, "last_physical_to_logical_map")
        passes = [_dense(r.get("global_physical_count") if isinstance(r, dict) else None, path,
                         f"records[{i}].global_physical_count") for i, r in enumerate(obj["records"])]
        if not passes:
            raise ConfigError("the dump has no records", file=path, field="records")
        return _fold(np.stack(passes), mapping, path, "records"), f"sglang-{fmt}"
    for key in ("expert_load_window", "expert_load_pass", "expert_load_view"):
        if key in obj:
            loads = _stack(_dense(obj[key], path, key), path, key)
            if "physical_to_logical_map" in obj:
                loads = _fold(loads, _dense(obj["physical_to_logical_map"], path, "physical_to_logical_map"), path, key)
            return loads, f"vllm-{fmt}"
    raise ConfigError(f"no load matrix key among {sorted(obj)[:12]}; expected SGLang 'logical_count' (or 'records' "
                      "with 'last_physical_to_logical_map') or vLLM 'expert_load_window' / 'expert_load_pass' / "
                      "'expert_load_view'", file=path, field="keys")


def _fold(physical: np.ndarray, mapping: np.ndarray, path: Path, field: str) -> np.ndarray:
    """(W, L, P) physical-expert loads summed onto logical experts by a (L, P) map (-1: unused slot)."""
    if mapping.ndim == 1:
        mapping = np.broadcast_to(mapping, physical.shape[1:])
    if mapping.shape != physical.shape[1:] or np.any(mapping != np.round(mapping)):
        raise ConfigError(f"the physical-to-logical map has shape {mapping.shape} (whole numbers), loads "
                          f"{physical.shape[1:]} per window", file=path, field=field)
    m = mapping.astype(np.int64)
    W, L, _ = physical.shape
    out = np.zeros((W, L, int(m.max()) + 1))
    for layer in range(L):
        used = m[layer] >= 0
        np.add.at(out[:, layer], (slice(None), m[layer][used]), physical[:, layer][:, used])
    return out
