"""Simulated time of a measured op: expand it into the elementary ops the simulator costs, then sum.

A GEMM is one `gemm` op; a grouped GEMM one `gemm` per non-empty group (as the engine costs each
expert); a device copy one `copy` op. A whole MoE layer is composed the way the torch layer runs:
router GEMM, per expert the gate, up and down GEMMs and the SwiGLU elementwise pass, plus the
permute and unpermute copies. Host<->device copies use the fitted link (or the datasheet link).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.cost_model import CostModel
from moesim.validation.measure import OpSpec


@dataclass
class Elementary:
    """Flattened elementary ops of many measured ops; `owner[i]` says which measured op op i belongs to."""

    kind: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray
    rows: np.ndarray
    owner: np.ndarray


def expand(specs: list[OpSpec], elem: int) -> Elementary:
    kind, flops, nbytes, rows, owner = [], [], [], [], []

    def gemm(i: int, m: float, k: int, n: int) -> None:
        if m > 0:
            kind.append("gemm")
            flops.append(2.0 * m * k * n)
            nbytes.append(float((m * k + k * n + m * n) * elem))
            rows.append(float(m))
            owner.append(i)

    def copy(i: int, b: float) -> None:
        kind.append("copy")
        flops.append(0.0)
        nbytes.append(float(b))
        rows.append(0.0)
        owner.append(i)

    for i, s in enumerate(specs):
        if s.kind == "gemm":
            gemm(i, s.m, s.k, s.n)
        elif s.kind in ("grouped_gemm", "grouped_gemm_triton"):
            for c in s.counts:
                gemm(i, c, s.k, s.n)
        elif s.kind == "copy":
            copy(i, 2.0 * s.nbytes)
        elif s.kind == "moe_layer":
            gemm(i, s.m, s.k, s.experts)  # router
            rows_routed = s.m * s.top_k
            copy(i, 2.0 * rows_routed * s.k * elem)  # permute: gather the routed rows
            for c in s.counts:
                if c > 0:
                    gemm(i, c, s.k, s.n)  # gate
                    gemm(i, c, s.k, s.n)  # up
                    copy(i, 3.0 * c * s.n * elem)  # silu(gate) * up
                    gemm(i, c, s.n, s.k)  # down
            copy(i, 2.0 * rows_routed * s.k * elem)  # unpermute and weight
        # h2d / d2h are costed from the link, not the device (see predict)
    return Elementary(np.array(kind), np.array(flops), np.array(nbytes), np.array(rows), np.array(owner, dtype=int))


def predict(specs: list[OpSpec], cost: CostModel, dtype: str, elem: int,
            links: dict[str, dict[str, float]] | None = None) -> np.ndarray:
    """Simulated seconds of every spec under `cost` (NaN where it cannot say, e.g. an unfitted link)."""
    ops = expand(specs, elem)
    out = np.zeros(len(specs))
    for kind in np.unique(ops.kind):
        sel = ops.kind == kind
        t = cost.times(str(kind), ops.flops[sel], ops.nbytes[sel], ops.rows[sel], dtype)
        out += np.bincount(ops.owner[sel], weights=t, minlength=len(specs))
    for i, s in enumerate(specs):
        if s.kind in ("h2d", "d2h"):
            link = (links or {}).get(s.kind)
            out[i] = link["latency"] + s.nbytes / link["bandwidth"] if link else np.nan
    return out
