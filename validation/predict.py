"""Simulated time of a measured op: expand it into the elementary ops the simulator costs, then sum.

A GEMM is one `gemm` op; a grouped GEMM one `gemm` per non-empty group (as the engine costs each
expert); a device copy one `copy` op. A whole MoE layer is composed the way the torch layer runs:
the router GEMM and its softmax/top-k passes, the permutation, per expert the gate, up and down
GEMMs, the SwiGLU elementwise passes and the unpermute; Python interpreter time between kernels
is not an op and is not predicted. Host<->device copies use the fitted link (or the datasheet link).
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
        elif s.kind == "moe_layer":  # the kernels the torch GroupedMoE forward launches, in order
            rows_routed = s.m * s.top_k
            gemm(i, s.m, s.k, s.experts)  # router logits
            for b in (2 * s.m * s.experts * 4, s.m * s.experts * 4, 2 * rows_routed * 4, 2 * rows_routed * 4):
                copy(i, b)  # softmax, top-k, renormalise (sum, divide)
            for b in (2 * rows_routed * 8, 2 * rows_routed * 8, 2 * rows_routed * 8):
                copy(i, b)  # argsort, bincount, row index
            copy(i, 2.0 * rows_routed * s.k * elem)  # permute: gather the routed rows
            live = [c for c in s.counts if c > 0]
            for width_in, width_out in ((s.k, s.n), (s.k, s.n), (s.n, s.k)):  # gate, up, down grouped GEMMs
                for c in live:
                    gemm(i, c, width_in, width_out)
                copy(i, 2.0 * rows_routed * width_out * elem)  # concatenating the groups' outputs
            copy(i, 2.0 * rows_routed * s.n * elem)  # silu(gate)
            copy(i, 3.0 * rows_routed * s.n * elem)  # * up
            copy(i, 2.0 * rows_routed * 8)  # inverse permutation
            copy(i, 2.0 * rows_routed * s.k * elem)  # unpermute: gather back
            copy(i, 2.0 * rows_routed * s.k * 4)  # weight by the gates (fp32)
            copy(i, (rows_routed + s.m) * s.k * 4)  # sum the k outputs
            copy(i, 2.0 * s.m * s.k * elem)  # cast back
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
