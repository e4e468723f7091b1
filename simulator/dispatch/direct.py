"""Direct dispatch (Megatron-style all-to-all): one row per (token, expert) straight to the expert's device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic


@dataclass(frozen=True)
class Direct:
    """A token with two experts on one device is sent twice; combine returns every row."""

    name: str = "direct"
    comm_kind: str = "all_to_all"
    stages: int = 1
    flow_from_top1: bool = False

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return p.base

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return 1.0

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        return Traffic([device_rows * layout.dispatch_bytes],
                       [np.transpose(device_rows, (0, 2, 1)) * layout.combine_bytes])
