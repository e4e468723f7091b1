"""What a run's summary and tables read of a step's all-to-all traffic, kept in place of its
(MoE layers, N, N) byte arrays once every device has left the step, so a long run's memory does
not grow by those arrays every step (`Engine._forget`; 0.9 MB a step at EP32).

`traffic_totals(plan, inter)` gives the same numbers for a plan that still holds its arrays and
for one whose arrays were released: each is computed by the one expression its reader used on
the arrays, so a released step's summary and tables are identical to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import MoesimError

ROLES = ("dispatch", "combine")


@dataclass(frozen=True)
class TrafficTotals:
    """A finished step's traffic, reduced: per role (dispatch, combine) the off-device and
    inter-node bytes, bytes per MoE layer (own device included), bytes per (src, dst) pair over the
    layers, and which (layer, src, dst) pairs combine anything (packed bits)."""

    off_device: dict[str, float]
    inter_node: dict[str, float]
    layer_bytes: dict[str, np.ndarray]  # (Lm,)
    pair_bytes: dict[str, np.ndarray]  # (N, N)
    combine_senders_bits: np.ndarray  # np.packbits of (Lm, N, N) combine > 0
    shape: tuple[int, int, int]
    kind: str | None = None

    def combine_senders(self) -> np.ndarray:
        """(Lm, N, N): True where a layer's combine sends from src to dst."""
        count = int(np.prod(self.shape))
        return np.unpackbits(self.combine_senders_bits, count=count).astype(bool).reshape(self.shape)

    def total(self, which: str) -> np.ndarray:
        raise MoesimError(f"step traffic ({which}) was reduced to its totals once every device left the step "
                          "(simulator/traffic_totals.py); read traffic_totals(plan, ...) or keep the first steps' "
                          "full plans (engine.KEEP_FULL_PLANS)")


def reduce_traffic(traffic, inter: np.ndarray) -> TrafficTotals:
    """The totals of a plan's full traffic (`inter`: (N, N) pairs on different nodes)."""
    totals = {role: traffic.total(role) for role in ROLES}
    n = totals["dispatch"].shape[1]
    off = ~np.eye(n, dtype=bool)
    lm = totals["dispatch"].shape[0]
    pairs = {r: t.sum(axis=0) for r, t in totals.items()}  # (N, N): the off-device sums read these, not (Lm, N, N)
    return TrafficTotals(
        off_device={r: float(p[off].sum()) for r, p in pairs.items()},
        inter_node={r: float(p[inter].sum()) for r, p in pairs.items()},
        layer_bytes={r: t.reshape(lm, -1).sum(axis=1) for r, t in totals.items()},
        pair_bytes=pairs,
        combine_senders_bits=np.packbits(totals["combine"] > 0, axis=None),
        shape=tuple(totals["combine"].shape), kind=getattr(traffic, "kind", None))


def merge_totals(parts: list[TrafficTotals]) -> TrafficTotals:
    """One step's totals from its micro-batches' (`step_plan.merge_microbatches` of released plans:
    bytes add up, a pair combines where any micro-batch's does)."""
    first = parts[0]
    senders = np.logical_or.reduce([p.combine_senders() for p in parts])
    return TrafficTotals(
        off_device={r: sum(p.off_device[r] for p in parts) for r in ROLES},
        inter_node={r: sum(p.inter_node[r] for p in parts) for r in ROLES},
        layer_bytes={r: sum(p.layer_bytes[r] for p in parts) for r in ROLES},
        pair_bytes={r: sum(p.pair_bytes[r] for p in parts) for r in ROLES},
        combine_senders_bits=np.packbits(senders, axis=None), shape=first.shape, kind=first.kind)


def traffic_totals(plan, inter: np.ndarray) -> TrafficTotals:
    """A plan's traffic totals, whether it still holds its arrays or holds only the totals."""
    tr = plan.traffic
    return tr if isinstance(tr, TrafficTotals) else reduce_traffic(tr, inter)
