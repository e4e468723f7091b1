"""The routing-trace format: one Parquet row per (step, token, MoE layer), and its writer.

Columns (wide, so any Parquet tool reads them and a reader can stream a few at a time):

    step       int32   simulation step (a forward pass / decode iteration); rows sorted by it
    token      int64   token id, unique within a step (the same token at every MoE layer)
    source     int32   where the token comes from: a device rank or a request id (see meta)
    moe_layer  int16   index among the model's MoE layers (0 = first MoE layer), not the
                       model's layer number
    expert_0..expert_{k-1}  int16  the token's top-k expert ids at that layer, distinct
    weight_0..weight_{k-1}  float32  gate weights (optional; all or none)

File metadata (key `moesim.trace`, JSON) records the model name, MoE layer count, expert
count, top-k, what `source` means and how many sources there are. A Parquet file without it
is still readable: the model given at load time fills in the gaps, and every row is checked
against it either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"moesim.trace"
FORMAT_VERSION = 1
ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class TraceMeta:
    """What a trace says about itself (stored as Parquet file metadata)."""

    num_moe_layers: int
    num_experts: int
    top_k: int
    num_sources: int
    source_kind: Literal["device", "request"] = "device"
    model: str | None = None
    has_weights: bool = False
    note: str = ""
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "TraceMeta":
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class StepRows:
    """All rows of one step, as numpy arrays (n rows; experts and weights are (n, k))."""

    step: int
    token: np.ndarray
    source: np.ndarray
    layer: np.ndarray
    experts: np.ndarray
    weights: np.ndarray | None = None
    first_row: int = 0  # row number of the first row in the file (for error messages)

    @property
    def num_rows(self) -> int:
        return int(self.token.size)

    def counts(self, num_layers: int, num_devices: int, num_experts: int,
               device: np.ndarray | None = None) -> np.ndarray:
        """counts[l, d, e]: assignments of tokens on device d to expert e at MoE layer l.

        `device` gives each row's device (default: the row's source)."""
        dev = self.source if device is None else device
        base = (self.layer.astype(np.int64) * num_devices + dev.astype(np.int64)) * num_experts
        flat = (base[:, None] + self.experts.astype(np.int64)).ravel()
        size = num_layers * num_devices * num_experts
        out = np.bincount(flat, minlength=size)
        if out.size != size:
            raise ValueError("layer, device or expert ids outside the range given")
        return out.reshape(num_layers, num_devices, num_experts)

    def token_experts(self, num_layers: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(token ids in ascending order, per-layer (tokens, k) expert ids aligned to them)."""
        order = np.lexsort((self.token, self.layer))
        tokens_per_layer = self.num_rows // num_layers
        experts = self.experts[order].reshape(num_layers, tokens_per_layer, -1)
        return self.token[order[:tokens_per_layer]], list(experts)


def arrow_schema(top_k: int, with_weights: bool) -> pa.Schema:
    fields = [pa.field("step", pa.int32()), pa.field("token", pa.int64()), pa.field("source", pa.int32()),
              pa.field("moe_layer", pa.int16())]
    fields += [pa.field(f"expert_{j}", pa.int16()) for j in range(top_k)]
    if with_weights:
        fields += [pa.field(f"weight_{j}", pa.float32()) for j in range(top_k)]
    return pa.schema(fields)


def rows_to_table(rows: StepRows, meta: TraceMeta) -> pa.Table:
    """One step's rows as an Arrow table in the trace schema."""
    n = rows.num_rows
    cols = {
        "step": np.full(n, rows.step, dtype=np.int32),
        "token": rows.token.astype(np.int64, copy=False),
        "source": rows.source.astype(np.int32, copy=False),
        "moe_layer": rows.layer.astype(np.int16, copy=False),
    }
    for j in range(meta.top_k):
        cols[f"expert_{j}"] = rows.experts[:, j].astype(np.int16, copy=False)
    if meta.has_weights:
        if rows.weights is None:
            raise ValueError(f"step {rows.step} has no gate weights but the trace meta says it has")
        for j in range(meta.top_k):
            cols[f"weight_{j}"] = rows.weights[:, j].astype(np.float32, copy=False)
    schema = arrow_schema(meta.top_k, meta.has_weights).with_metadata({META_KEY: meta.to_json()})
    return pa.Table.from_pydict(cols, schema=schema)


class TraceWriter:
    """Streams steps into a Parquet trace (one step at a time; memory bounded by a step)."""

    def __init__(self, path: str | Path, meta: TraceMeta, row_group_rows: int = ROW_GROUP_ROWS):
        if meta.num_experts > np.iinfo(np.int16).max:
            raise ValueError(f"{meta.num_experts} experts do not fit the int16 expert columns")
        self.path = Path(path)
        self.meta = meta
        self.row_group_rows = row_group_rows
        schema = arrow_schema(meta.top_k, meta.has_weights).with_metadata({META_KEY: meta.to_json()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self._last_step = -1
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows_written = 0

    def write_step(self, rows: StepRows) -> None:
        if rows.step <= self._last_step:
            raise ValueError(f"steps must be written in increasing order: {rows.step} after {self._last_step}")
        self._last_step = rows.step
        self._pending.append(rows_to_table(rows, self.meta))
        self._pending_rows += rows.num_rows
        self.rows_written += rows.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        # small steps are batched so row groups stay large enough to read efficiently
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self.row_group_rows)
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_trace(path: str | Path, meta: TraceMeta, steps) -> Path:
    """Write an iterable of StepRows as a Parquet trace; returns the path."""
    with TraceWriter(path, meta) as w:
        for rows in steps:
            w.write_step(rows)
    return Path(path)
