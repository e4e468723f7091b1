"""All-gather dispatch (Megatron-Core's `allgather` token dispatcher): every device of an EP group
receives every token of the group, keeps the rows of its own experts, and a reduce-scatter
returns each token's partial outputs to its device.

Traffic does not depend on routing or placement: in each MoE layer a device sends its T_s tokens
to each of the other ep - 1 devices of its group (dispatch) and, for each token of device s,
one partial output row back to s (combine, the reduce-scatter). It wins where the group is
small and tokens pick many of its devices (top-k near ep), and loses to all-to-all dispatch
as ep grows. Its kernels are priced with the `all_to_all` kind's floors and message-size
efficiency (an NCCL all-gather / reduce-scatter of the same message sizes; the cluster profile
has no kind of its own for them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic

NAME = "all_gather"


def group_pairs(num_devices: int, ep: int) -> np.ndarray:
    """(N, N) 1 where two different devices share an EP group (groups are contiguous)."""
    group = np.arange(num_devices) // ep
    return ((group[:, None] == group[None, :]) & ~np.eye(num_devices, dtype=bool)).astype(float)


@dataclass(frozen=True)
class AllGather:
    name: str = NAME
    comm_kind: str = "all_to_all"
    stages: int = 1
    flow_from_top1: bool = False

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return np.zeros_like(p.base)  # every token goes everywhere: no placement moves a byte

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return 0.0

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        Lm, n = device_rows.shape[0], device_rows.shape[1]
        sent = np.asarray(tokens, dtype=float)[:, None] * group_pairs(n, layout.ep)  # [s, d]: T_s to every peer
        dispatch = np.broadcast_to(sent * layout.dispatch_bytes, (Lm, n, n)).copy()
        combine = np.broadcast_to(sent.T * layout.combine_bytes, (Lm, n, n)).copy()  # [d, s]: T_s partials to s
        return Traffic([dispatch], [combine])
