"""Open a routing trace and stream it step by step, checking every row against the model.

Parquet traces are read in record batches, never whole: memory is bounded by one step plus
one batch, so traces far larger than memory can be summarized and simulated. Other formats
(`.npz`, `.jsonl`, router logits in `.npy`/`.pt`) are dumps small enough to convert in memory
(see `trace_loaders.py`) and then flow through the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moesim.errors import ConfigError, TraceError
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.trace_format import META_KEY, StepRows, TraceMeta
from moesim.yaml_io import check_file

BATCH_ROWS = 1 << 18
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Trace:
    """A routing trace opened for streaming. `steps()` yields validated StepRows in order."""

    path: Path
    meta: TraceMeta
    num_rows: int
    _parquet: pq.ParquetFile | None = None
    _table: pa.Table | None = None
    batch_rows: int = BATCH_ROWS
    _step_ids: np.ndarray | None = None

    def _batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        if self._parquet is not None:
            yield from self._parquet.iter_batches(batch_size=self.batch_rows, columns=columns)
        else:
            table = self._table if columns is None else self._table.select(columns)
            yield from table.to_batches(max_chunksize=self.batch_rows)

    def step_ids(self) -> np.ndarray:
        """The distinct step numbers in file order (one scan of the `step` column, cached)."""
        if self._step_ids is None:
            seen: list[np.ndarray] = []
            for batch in self._batches(["step"]):
                s = batch.column(0).to_numpy()
                if s.size:
                    keep = np.concatenate([[True], s[1:] != s[:-1]])
                    seen.append(s[keep])
            ids = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int32)
            if ids.size:
                ids = ids[np.concatenate([[True], ids[1:] != ids[:-1]])]
            self._step_ids = ids
        return self._step_ids

    def to_table(self) -> pa.Table:
        """The whole trace as one Arrow table with its metadata (loads it all: small traces only)."""
        table = self._table if self._table is not None else self._parquet.read()
        return table.replace_schema_metadata({META_KEY: self.meta.to_json()})

    @property
    def num_steps(self) -> int:
        return int(self.step_ids().size)

    def steps(self, validate: bool = True) -> Iterator[StepRows]:
        """Yield each step's rows in file order; rows must be sorted by step."""
        k = self.meta.top_k
        cols = ["step", "token", "source", "moe_layer"] + [f"expert_{j}" for j in range(k)]
        if self.meta.has_weights:
            cols += [f"weight_{j}" for j in range(k)]
        pending: list[pa.RecordBatch] = []
        current: int | None = None
        row = 0  # file row number of the first pending row
        for batch in self._batches(cols):
            steps = batch.column(0).to_numpy()
            if not steps.size:
                continue
            back = np.flatnonzero(steps[1:] < steps[:-1])
            if back.size or (current is not None and steps[0] < current):
                at = row + sum(b.num_rows for b in pending) + (int(back[0]) + 1 if back.size else 0)
                raise TraceError("rows are not sorted by step (a step number goes down); sort the file by "
                                 "step, e.g. with `moesim trace convert --sort`", file=self.path, where=f"row {at}")
            cuts = np.flatnonzero(steps[1:] != steps[:-1]) + 1
            start = 0
            for cut in [*cuts.tolist(), steps.size]:
                step = int(steps[start])
                if current is not None and step != current:
                    rows = self._assemble(pending, current, row)
                    row += rows.num_rows
                    pending = []
                    if validate:
                        self.check(rows)
                    yield rows
                current = step
                pending.append(batch.slice(start, cut - start))
                start = cut
        if pending:
            rows = self._assemble(pending, current, row)
            if validate:
                self.check(rows)
            yield rows

    def _assemble(self, batches: list[pa.RecordBatch], step: int, first_row: int) -> StepRows:
        table = pa.Table.from_batches(batches)
        k = self.meta.top_k

        def col(name: str) -> np.ndarray:
            return table.column(name).to_numpy()

        experts = np.stack([col(f"expert_{j}") for j in range(k)], axis=1)
        weights = np.stack([col(f"weight_{j}") for j in range(k)], axis=1) if self.meta.has_weights else None
        return StepRows(step=step, token=col("token"), source=col("source"), layer=col("moe_layer"),
                        experts=experts, weights=weights, first_row=first_row)

    def check(self, rows: StepRows) -> None:
        """Raise TraceError at the first row that breaks the format or the model's shape."""
        m = self.meta

        def fail(mask: np.ndarray, what: str) -> None:
            bad = np.flatnonzero(mask)
            if bad.size:
                i = int(bad[0])
                raise TraceError(what, file=self.path,
                                 where=f"row {rows.first_row + i}, step {rows.step}, moe_layer {int(rows.layer[i])}")

        fail((rows.layer < 0) | (rows.layer >= m.num_moe_layers),
             f"moe_layer out of range [0, {m.num_moe_layers}) ({m.num_moe_layers} MoE layers)")
        fail(((rows.experts < 0) | (rows.experts >= m.num_experts)).any(axis=1),
             f"expert id out of range [0, {m.num_experts})")
        if m.top_k > 1:
            ordered = np.sort(rows.experts, axis=1)
            fail((ordered[:, 1:] == ordered[:, :-1]).any(axis=1), "the same expert appears twice in one token's top-k")
        fail((rows.source < 0) | (rows.source >= m.num_sources),
             f"source out of range [0, {m.num_sources}) ({m.num_sources} {m.source_kind}s in the trace metadata)")
        if rows.weights is not None:
            fail(~np.isfinite(rows.weights).all(axis=1), "gate weight is not a finite number")
        per_layer = np.bincount(rows.layer.astype(np.int64), minlength=m.num_moe_layers)
        if (per_layer != per_layer[0]).any():
            bad = int(np.flatnonzero(per_layer != per_layer[0])[0])
            raise TraceError(f"every token must have one row per MoE layer, but moe_layer {bad} has "
                             f"{per_layer[bad]} rows and moe_layer 0 has {per_layer[0]}",
                             file=self.path, where=f"step {rows.step}")
        key = rows.token.astype(np.int64) * m.num_moe_layers + rows.layer
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(key[order][1:] == key[order][:-1])
        if dup.size:
            i, j = int(order[dup[0]]), int(order[dup[0] + 1])
            raise TraceError(f"token {int(rows.token[i])} appears twice at this layer (rows {rows.first_row + i} "
                             f"and {rows.first_row + j})", file=self.path,
                             where=f"row {rows.first_row + i}, step {rows.step}, moe_layer {int(rows.layer[i])}")


def _meta_against_model(meta: TraceMeta | None, model: ModelSpec | None, path: Path,
                        scanned: dict[str, int] | None) -> TraceMeta:
    """Fill a missing meta from the model (or a scan) and check the two agree."""
    if model is not None:
        want = {"num_moe_layers": len(model.moe_layers), "num_experts": model.moe.num_experts,
                "top_k": model.moe.top_k}
        if meta is not None:
            for key, value in want.items():
                got = getattr(meta, key)
                if got != value:
                    raise TraceError(f"the trace has {key}={got} but model {model.name} has {value}; "
                                     "record the trace with the same model or pass the matching model",
                                     file=path, where=f"metadata {key}")
            return meta
    if meta is not None:
        return meta
    if scanned is None:
        raise TraceError("no moesim metadata in the file and no model given to check it against", file=path)
    layers = len(model.moe_layers) if model else scanned["num_moe_layers"]
    experts = model.moe.num_experts if model else scanned["num_experts"]
    top_k = scanned["top_k"]
    if model is not None and top_k != model.moe.top_k:
        raise TraceError(f"the file has {top_k} expert_* columns but model {model.name} routes top-{model.moe.top_k}",
                         file=path, where="columns expert_*")
    return TraceMeta(num_moe_layers=layers, num_experts=experts, top_k=top_k,
                     num_sources=scanned["num_sources"], model=model.name if model else None,
                     has_weights=scanned["has_weights"])


def _check_columns(schema: pa.Schema, path: Path) -> tuple[int, bool]:
    """(top_k, has_weights) from the columns; error on a missing required column or one whose
    type cannot hold what it should (ids are integers, gate weights numbers)."""
    names = schema.names
    for need in ("step", "token", "source", "moe_layer", "expert_0"):
        if need not in names:
            raise TraceError(f"missing column '{need}' (a trace has step, token, source, moe_layer, "
                             f"expert_0..expert_(k-1) and optionally weight_0..); found {names}",
                             file=path, where=f"column {need}")
    k = 0
    while f"expert_{k}" in names:
        k += 1
    w = sum(1 for j in range(k) if f"weight_{j}" in names)
    if w not in (0, k):
        raise TraceError(f"gate weights must be given for all {k} experts or none; found {w} weight_* columns",
                         file=path, where="columns weight_*")
    ids = ["step", "token", "source", "moe_layer"] + [f"expert_{j}" for j in range(k)]
    for name in ids:
        kind = schema.field(name).type
        if not pa.types.is_integer(kind):
            raise TraceError(f"column '{name}' must hold integers, but its type is {kind}", file=path,
                             where=f"column {name}")
    for name in (f"weight_{j}" for j in range(k if w == k else 0)):
        kind = schema.field(name).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise TraceError(f"column '{name}' must hold numbers, but its type is {kind}", file=path,
                             where=f"column {name}")
    return k, w == k


def _scan(batches: Iterator[pa.RecordBatch], k: int, has_weights: bool) -> dict[str, int]:
    """Maxima of the id columns, for a file that carries no metadata (one streaming pass)."""
    top = {"source": -1, "moe_layer": -1, "expert": -1}
    for batch in batches:
        names = batch.schema.names
        for name in ("source", "moe_layer"):
            col = batch.column(names.index(name)).to_numpy()
            if col.size:
                top[name] = max(top[name], int(col.max()))
        for j in range(k):
            col = batch.column(names.index(f"expert_{j}")).to_numpy()
            if col.size:
                top["expert"] = max(top["expert"], int(col.max()))
    return {"num_sources": top["source"] + 1, "num_moe_layers": top["moe_layer"] + 1,
            "num_experts": top["expert"] + 1, "top_k": k, "has_weights": has_weights}


def open_trace(path: str | Path, model: ModelSpec | None = None, *, batch_rows: int = BATCH_ROWS,
               num_sources: int | None = None, source_kind: str | None = None) -> Trace:
    """Open a trace file of any supported format, checked against `model` when given.

    Parquet streams; `.npz`, `.jsonl`, `.npy` and `.pt` are converted in memory first.
    `num_sources` / `source_kind` override what a dump without metadata cannot say.
    """
    path = Path(path)
    try:
        check_file(path, "file")
    except ConfigError as err:  # missing, a symlink loop, a folder: a trace error like the rest
        raise TraceError(err.detail, file=path) from None
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise TraceError(f"not a readable Parquet file ({err})", file=path) from None
        schema = pf.schema_arrow
        k, has_weights = _check_columns(schema, path)
        raw = (schema.metadata or {}).get(META_KEY)
        meta = TraceMeta.from_json(raw) if raw else None
        scanned = None
        if meta is None:
            cols = ["source", "moe_layer"] + [f"expert_{j}" for j in range(k)]
            scanned = _scan(pf.iter_batches(batch_size=batch_rows, columns=cols), k, has_weights)
        trace = Trace(path=path, meta=None, num_rows=pf.metadata.num_rows, _parquet=pf,  # type: ignore[arg-type]
                      batch_rows=batch_rows)
    else:
        from moesim.workloads.trace_loaders import load_dump

        table = load_dump(path, model)
        k, has_weights = _check_columns(table.schema, path)
        raw = (table.schema.metadata or {}).get(META_KEY)
        meta = TraceMeta.from_json(raw) if raw else None
        scanned = None
        if meta is None:
            scanned = _scan(iter(table.to_batches()), k, has_weights)
        trace = Trace(path=path, meta=None, num_rows=table.num_rows, _table=table,  # type: ignore[arg-type]
                      batch_rows=batch_rows)
    if trace.num_rows == 0:
        raise TraceError("the trace has no rows", file=path)
    meta = _meta_against_model(meta, model, path, scanned)
    if num_sources is not None:
        meta = replace(meta, num_sources=num_sources)
    if source_kind is not None:
        meta = replace(meta, source_kind=source_kind)  # type: ignore[arg-type]
    if meta.top_k != k:
        raise TraceError(f"metadata says top_k={meta.top_k} but the file has {k} expert_* columns",
                         file=path, where="columns expert_*")
    trace.meta = meta
    return trace

