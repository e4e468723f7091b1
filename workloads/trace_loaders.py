"""Convert routing dumps that are not Parquet traces into the trace table (in memory).

Accepted dumps (see docs/routing.md, "Routing traces"):
- `.npz` with dense `topk_ids` (layers, tokens, k) or (steps, layers, tokens, k), optional
  `topk_weights` of the same shape and `source` (tokens,) or (steps, tokens); or dense
  `router_logits` (layers, tokens, experts) or (steps, layers, tokens, experts); or the long
  columns `step`, `token`, `source`, `moe_layer`, `experts` (rows, k), optional `weights`.
- `.npy`: router logits as above.
- `.pt` / `.pth`: a torch tensor of router logits, or a dict with the `.npz` keys (needs torch).
- `.jsonl`: one JSON object per token: {"step", "token", "source", "experts": [[ids] per MoE
  layer], "weights": optional, same shape}; or one per (token, layer) with a "moe_layer" key.
Router logits become top-k by value, with softmax probabilities as gate weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from moesim.errors import TraceError
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.trace_format import StepRows, TraceMeta, rows_to_table


def logits_to_topk(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, weights) of the top_k largest logits along the last axis, largest first; weights
    are the softmax probabilities of the chosen experts (ties go to the lower expert id)."""
    logits = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    return order, np.take_along_axis(probs, order, axis=-1)


def as_ids(values: Any, name: str, path: Path) -> np.ndarray:
    """An array of whole-number ids (expert, source, step, ...); floats must be integral."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and not arr.size:
        return arr.astype(np.int64)
    bad = ""
    if arr.dtype.kind == "f":
        flat = arr.ravel()
        i = int(np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))[0])
        bad = f"; entry {[int(j) for j in np.unravel_index(i, arr.shape)]} is {float(flat[i])!r}"
    raise TraceError(f"'{name}' must hold integer ids, got {arr.dtype} values{bad}", file=path, where=name)


def dense_to_table(ids: np.ndarray, weights: np.ndarray | None, source: np.ndarray | None, num_experts: int,
                   path: Path, model_name: str | None = None, num_sources: int | None = None) -> pa.Table:
    """Dense (steps, layers, tokens, k) expert ids -> trace table (one step after another)."""
    ids = as_ids(ids, "topk_ids", path)
    if ids.ndim == 3:
        ids = ids[None]
        weights = None if weights is None else weights[None]
        source = None if source is None else np.asarray(source)[None] if np.ndim(source) == 1 else source
    if ids.ndim != 4:
        raise TraceError(f"topk_ids must have shape (layers, tokens, k) or (steps, layers, tokens, k); got {ids.shape}",
                         file=path, where="topk_ids")
    steps, layers, tokens, k = ids.shape
    if weights is not None and weights.shape != ids.shape:
        raise TraceError(f"topk_weights has shape {weights.shape}, topk_ids {ids.shape}", file=path,
                         where="topk_weights")
    if source is None:
        source = np.zeros((steps, tokens), dtype=np.int64)
    source = as_ids(source, "source", path)
    if source.ndim == 1:
        source = np.broadcast_to(source, (steps, tokens))
    if source.shape != (steps, tokens):
        raise TraceError(f"source has shape {source.shape}, expected (tokens,)=({tokens},) or (steps, tokens)",
                         file=path, where="source")
    meta = TraceMeta(num_moe_layers=layers, num_experts=num_experts, top_k=k,
                     num_sources=num_sources or int(source.max()) + 1, model=model_name,
                     has_weights=weights is not None)
    tables = []
    for s in range(steps):
        rows = StepRows(step=s, token=np.tile(np.arange(tokens), layers), source=np.tile(source[s], layers),
                        layer=np.repeat(np.arange(layers), tokens), experts=ids[s].reshape(-1, k),
                        weights=None if weights is None else weights[s].reshape(-1, k))
        tables.append(rows_to_table(rows, meta))
    return pa.concat_tables(tables)


def long_to_table(cols: dict[str, np.ndarray], num_experts: int, path: Path, model_name: str | None,
                  num_sources: int | None = None) -> pa.Table:
    """Long columns (one entry per token-layer row) -> trace table, sorted by step."""
    experts = as_ids(cols["experts"], "experts", path)
    if experts.ndim != 2:
        raise TraceError(f"experts must be (rows, k); got shape {experts.shape}", file=path, where="experts")
    n, k = experts.shape
    for name in ("step", "token", "source", "moe_layer"):
        if name not in cols:
            raise TraceError(f"missing '{name}' (long form needs step, token, source, moe_layer, experts)",
                             file=path, where=name)
        if np.shape(cols[name]) != (n,):
            raise TraceError(f"'{name}' has shape {np.shape(cols[name])}, expected ({n},) like experts",
                             file=path, where=name)
        cols = {**cols, name: as_ids(cols[name], name, path)}
    weights = cols.get("weights")
    order = np.argsort(np.asarray(cols["step"]), kind="stable")
    layers = int(np.max(cols["moe_layer"])) + 1 if n else 0
    meta = TraceMeta(num_moe_layers=layers, num_experts=num_experts, top_k=k,
                     num_sources=num_sources or (int(np.max(cols["source"])) + 1 if n else 1), model=model_name,
                     has_weights=weights is not None)
    steps = np.asarray(cols["step"])[order]
    tables = []
    cuts = np.flatnonzero(np.diff(steps)) + 1
    for part in np.split(order, cuts):
        if not part.size:
            continue
        rows = StepRows(step=int(np.asarray(cols["step"])[part[0]]), token=np.asarray(cols["token"])[part],
                        source=np.asarray(cols["source"])[part], layer=np.asarray(cols["moe_layer"])[part],
                        experts=experts[part], weights=None if weights is None else np.asarray(weights)[part])
        tables.append(rows_to_table(rows, meta))
    if not tables:
        raise TraceError("the dump has no rows", file=path)
    return pa.concat_tables(tables)


def _from_arrays(arrays: dict[str, Any], model: ModelSpec | None, path: Path) -> pa.Table:
    name = model.name if model else None
    if "router_logits" in arrays:
        logits = np.asarray(arrays["router_logits"])
        if logits.dtype.kind not in "iuf":
            raise TraceError(f"router_logits must be numbers, got {logits.dtype}", file=path, where="router_logits")
        if logits.ndim not in (3, 4):
            raise TraceError(f"router_logits must be (layers, tokens, experts) or (steps, layers, tokens, experts); "
                             f"got {logits.shape}", file=path, where="router_logits")
        if model is None:
            raise TraceError("router logits need the model (for top-k); pass --model", file=path)
        if logits.shape[-1] != model.moe.num_experts:
            raise TraceError(f"router_logits has {logits.shape[-1]} experts on its last axis but {model.name} "
                             f"has {model.moe.num_experts}", file=path, where="router_logits")
        if not np.isfinite(logits).all():
            i = np.unravel_index(int(np.flatnonzero(~np.isfinite(logits).ravel())[0]), logits.shape)
            raise TraceError(f"router_logits{[int(j) for j in i]} is {float(logits[i])!r}; logits must be finite "
                             "numbers", file=path,
                             where="router_logits")
        ids, weights = logits_to_topk(logits, model.moe.top_k)
        return dense_to_table(ids, weights.astype(np.float32), arrays.get("source"), model.moe.num_experts, path, name)
    experts = model.moe.num_experts if model else None
    if "topk_ids" in arrays:
        ids = as_ids(arrays["topk_ids"], "topk_ids", path)
        if not ids.size:
            raise TraceError("topk_ids is empty", file=path, where="topk_ids")
        return dense_to_table(ids, None if arrays.get("topk_weights") is None else np.asarray(arrays["topk_weights"]),
                              arrays.get("source"), experts or int(ids.max()) + 1, path, name)
    if "experts" in arrays:
        ex = as_ids(arrays["experts"], "experts", path)
        if not ex.size:
            raise TraceError("the dump has no rows", file=path, where="experts")
        return long_to_table({k: np.asarray(v) for k, v in arrays.items()}, experts or int(np.max(ex)) + 1, path, name)
    raise TraceError(f"found keys {sorted(arrays)}; expected router_logits, topk_ids or the long columns "
                     "(step, token, source, moe_layer, experts)", file=path)


def _jsonl_int(obj: dict, key: str, default: int | None, path: Path, lineno: int) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TraceError(f"'{key}' must be a whole number >= 0, got {value!r}", file=path, where=f"line {lineno}")
    return value


def _jsonl_ids(ids: Any, path: Path, lineno: int, what: str) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in ids):
        raise TraceError(f"{what} must be a list of integer expert ids, got {ids!r}", file=path,
                         where=f"line {lineno}")
    return ids


def _jsonl_weights(w: Any, k: int, path: Path, lineno: int) -> list[float]:
    if not isinstance(w, list) or len(w) != k or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in w):
        raise TraceError(f"'weights' must give {k} numbers per MoE layer like 'experts', got {w!r}", file=path,
                         where=f"line {lineno}")
    return w


def _load_jsonl(path: Path, model: ModelSpec | None) -> pa.Table:
    cols: dict[str, list] = {"step": [], "token": [], "source": [], "moe_layer": [], "experts": [], "weights": []}
    per_step_token: dict[int, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise TraceError(f"not valid JSON ({err.msg})", file=path, where=f"line {lineno}") from None
            if not isinstance(obj, dict) or "experts" not in obj:
                raise TraceError("each line must be an object with an 'experts' field", file=path,
                                 where=f"line {lineno}")
            step = _jsonl_int(obj, "step", 0, path, lineno)
            token = _jsonl_int(obj, "token", None, path, lineno)
            if token is None:
                token = per_step_token.get(step, 0)
                per_step_token[step] = token + 1
            source = _jsonl_int(obj, "source", 0, path, lineno)
            ex, w = obj["experts"], obj.get("weights")
            per_layer = "moe_layer" in obj
            layer_no = _jsonl_int(obj, "moe_layer", 0, path, lineno) if per_layer else None
            layers = [ex] if per_layer else ex
            wl = [w] if per_layer else w
            if not isinstance(layers, list) or not all(isinstance(e, list) for e in layers):
                raise TraceError("'experts' must be a list of expert ids per MoE layer (a list of lists), or a "
                                 "list of ids with a 'moe_layer' key", file=path, where=f"line {lineno}")
            if wl is not None and (not isinstance(wl, list) or len(wl) != len(layers)):
                raise TraceError(f"'weights' must have the shape of 'experts' ({len(layers)} MoE layers)", file=path,
                                 where=f"line {lineno}")
            for i, ids in enumerate(layers):
                ids = _jsonl_ids(ids, path, lineno, "'experts'" if per_layer else f"'experts'[{i}]")
                cols["step"].append(step)
                cols["token"].append(int(token))
                cols["source"].append(source)
                cols["moe_layer"].append(layer_no if per_layer else i)
                cols["experts"].append(ids)
                if wl is not None:
                    cols["weights"].append(_jsonl_weights(wl[i], len(ids), path, lineno))
    if not cols["experts"]:
        raise TraceError("the file has no rows (no JSON lines)", file=path)
    ks = {len(e) for e in cols["experts"]}
    if len(ks) != 1:
        raise TraceError(f"tokens list different numbers of experts {sorted(ks)}; top-k must be constant",
                         file=path, where="experts")
    arrays = {k: np.asarray(v) for k, v in cols.items() if k != "weights"}
    if cols["weights"]:
        if len(cols["weights"]) != len(cols["experts"]):
            raise TraceError("'weights' must be given on every line or none", file=path, where="weights")
        arrays["weights"] = np.asarray(cols["weights"], dtype=np.float32)
    return _from_arrays(arrays, model, path)


def load_dump(path: Path, model: ModelSpec | None) -> pa.Table:
    """Any supported non-Parquet dump -> trace table with moesim metadata."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
            except Exception as err:  # noqa: BLE001 - a corrupt zip, a pickled array, ...: the user's file
                raise TraceError(f"could not read the file as .npz ({type(err).__name__}: {err})", file=path) from None
            return _from_arrays(arrays, model, path)
        if suffix == ".npy":
            try:
                logits = np.load(path, allow_pickle=False)
            except Exception as err:  # noqa: BLE001
                raise TraceError(f"could not read the file as .npy ({type(err).__name__}: {err})", file=path) from None
            return _from_arrays({"router_logits": logits}, model, path)
        if suffix in (".pt", ".pth"):
            try:
                import torch
            except ImportError:
                raise TraceError("reading .pt needs torch: pip install 'moesim[calibrate]' or save as .npz",
                                 file=path) from None
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - corrupt or pickled with objects torch will not load
                raise TraceError(f"could not read the file as a torch tensor ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''})", file=path) from None
            if isinstance(obj, torch.Tensor):
                obj = {"router_logits": obj}
            if not isinstance(obj, dict):
                raise TraceError(f"expected a tensor or a dict of tensors, got {type(obj).__name__}", file=path)
            return _from_arrays({k: v.float().numpy() if k in ("router_logits", "topk_weights", "weights")
                                 else v.numpy() for k, v in obj.items()}, model, path)
        if suffix == ".jsonl":
            return _load_jsonl(path, model)
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as err:
        if isinstance(err, TraceError):
            raise
        raise TraceError(f"could not read the file ({err})", file=path) from None
    raise TraceError(f"unknown trace format '{suffix}'; use .parquet, .npz, .npy, .pt or .jsonl", file=path)
