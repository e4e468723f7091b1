"""Convert routing dumps that are not Parquet traces into the trace table (in memory).

Accepted dumps (see README "Routing traces"):
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


def dense_to_table(ids: np.ndarray, weights: np.ndarray | None, source: np.ndarray | None, num_experts: int,
                   path: Path, model_name: str | None = None, num_sources: int | None = None) -> pa.Table:
    """Dense (steps, layers, tokens, k) expert ids -> trace table (one step after another)."""
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
    source = np.asarray(source)
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
    experts = np.asarray(cols["experts"])
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
        if logits.ndim not in (3, 4):
            raise TraceError(f"router_logits must be (layers, tokens, experts) or (steps, layers, tokens, experts); "
                             f"got {logits.shape}", file=path, where="router_logits")
        if model is None:
            raise TraceError("router logits need the model (for top-k); pass --model", file=path)
        if logits.shape[-1] != model.moe.num_experts:
            raise TraceError(f"router_logits has {logits.shape[-1]} experts on its last axis but {model.name} "
                             f"has {model.moe.num_experts}", file=path, where="router_logits")
        ids, weights = logits_to_topk(logits, model.moe.top_k)
        return dense_to_table(ids, weights.astype(np.float32), arrays.get("source"), model.moe.num_experts, path, name)
    experts = model.moe.num_experts if model else None
    if "topk_ids" in arrays:
        ids = np.asarray(arrays["topk_ids"])
        return dense_to_table(ids, None if arrays.get("topk_weights") is None else np.asarray(arrays["topk_weights"]),
                              arrays.get("source"), experts or int(ids.max()) + 1, path, name)
    if "experts" in arrays:
        return long_to_table({k: np.asarray(v) for k, v in arrays.items()},
                             experts or int(np.max(arrays["experts"])) + 1, path, name)
    raise TraceError(f"found keys {sorted(arrays)}; expected router_logits, topk_ids or the long columns "
                     "(step, token, source, moe_layer, experts)", file=path)


def _load_jsonl(path: Path, model: ModelSpec | None) -> pa.Table:
    cols: dict[str, list] = {"step": [], "token": [], "source": [], "moe_layer": [], "experts": [], "weights": []}
    per_step_token: dict[int, int] = {}
    with open(path) as fh:
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
            step = int(obj.get("step", 0))
            token = obj.get("token")
            if token is None:
                token = per_step_token.get(step, 0)
                per_step_token[step] = token + 1
            source = int(obj.get("source", 0))
            ex, w = obj["experts"], obj.get("weights")
            per_layer = "moe_layer" in obj
            layers = [ex] if per_layer else ex
            wl = [w] if per_layer else w
            if not isinstance(layers, list) or not all(isinstance(e, list) for e in layers):
                raise TraceError("'experts' must be a list of expert ids per MoE layer (a list of lists), or a "
                                 "list of ids with a 'moe_layer' key", file=path, where=f"line {lineno}")
            for i, ids in enumerate(layers):
                cols["step"].append(step)
                cols["token"].append(int(token))
                cols["source"].append(source)
                cols["moe_layer"].append(int(obj["moe_layer"]) if per_layer else i)
                cols["experts"].append(ids)
                if wl is not None:
                    cols["weights"].append(wl[i])
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
            with np.load(path, allow_pickle=False) as data:
                return _from_arrays({k: data[k] for k in data.files}, model, path)
        if suffix == ".npy":
            return _from_arrays({"router_logits": np.load(path, allow_pickle=False)}, model, path)
        if suffix in (".pt", ".pth"):
            try:
                import torch
            except ImportError:
                raise TraceError("reading .pt needs torch: pip install 'moesim[calibrate]' or save as .npz",
                                 file=path) from None
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                obj = {"router_logits": obj}
            if not isinstance(obj, dict):
                raise TraceError(f"expected a tensor or a dict of tensors, got {type(obj).__name__}", file=path)
            return _from_arrays({k: v.float().numpy() if k in ("router_logits", "topk_weights", "weights")
                                 else v.numpy() for k, v in obj.items()}, model, path)
        if suffix == ".jsonl":
            return _load_jsonl(path, model)
    except (ValueError, OSError, KeyError) as err:
        if isinstance(err, TraceError):
            raise
        raise TraceError(f"could not read the file ({err})", file=path) from None
    raise TraceError(f"unknown trace format '{suffix}'; use .parquet, .npz, .npy, .pt or .jsonl", file=path)
