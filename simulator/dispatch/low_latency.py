"""Low-latency dispatch (DeepEP low-latency kernels, decode): every (token, expert) row goes
straight to its expert's GPU by RDMA (no deduplication, no NVLink forwarding), and each
dispatch or combine kernel pays a fixed floor (launch, signalling, polling) whatever it carries:
the cluster profile's `low_latency` floor (`comm_cost`), or `kernel_latency` where a config sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic


@dataclass(frozen=True)
class LowLatency:
    kernel_latency: float | None = None  # seconds per dispatch or combine kernel (None: the profile's floor)
    name: str = "low_latency"
    comm_kind: str = "low_latency"
    comm_sms: int = 0  # DeepEP's low-latency kernels receive by a hook, holding no SM while compute runs (its README)
    stages: int = 1
    flow_from_top1: bool = False

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return p.base  # one row per (token, expert), as direct

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return 1.0

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        return Traffic([device_rows * layout.dispatch_bytes],
                       [np.transpose(device_rows, (0, 2, 1)) * layout.combine_bytes],
                       kernel_latency=self.kernel_latency)
