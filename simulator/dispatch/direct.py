"""Direct dispatch (Megatron-style all-to-all): one row per (token, expert) straight to the expert's device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, TokenIds, Traffic


@dataclass(frozen=True)
class Direct:
    """A token with two experts on one device is sent twice; combine returns every row."""

    name: str = "direct"

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        return Traffic([device_rows * layout.dispatch_bytes],
                       [np.transpose(device_rows, (0, 2, 1)) * layout.combine_bytes])
