"""`auto` dispatch: the kernels a serving framework picks per iteration (SGLang's DeepEP auto mode):
DeepEP's normal kernels (hierarchical) for an iteration that carries prefill chunks, its
low-latency kernels for a decode-only one. A whole EP group switches together (every rank joins
each all-to-all), so one prefill chunk anywhere makes the iteration normal.

The plan of each step carries the kind its kernels were costed as (`Traffic.kind`), so the
engine applies that kind's floors. Placement prices rows as the decode kernels do (the steady
state it places for), and the SMs held while compute overlaps are the decode kernels' (none):
a per-iteration SM share is not modelled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchAlgorithm, DispatchLayout, RowPricing, TokenIds, Traffic


@dataclass(frozen=True)
class ByPhase:
    """`prefill` for steps with prefill work, `decode` for the rest."""

    prefill: DispatchAlgorithm
    decode: DispatchAlgorithm
    name: str = "auto"
    comm_sms: int = 0
    flow_from_top1: bool = False

    @property
    def comm_kind(self) -> str:
        return self.decode.comm_kind

    @property
    def stages(self) -> int:
        return max(self.prefill.stages, self.decode.stages)

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return self.decode.row_cost(p)

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return self.decode.inter_node_rows_per_row(p)

    def for_step(self, inp) -> DispatchAlgorithm:
        """The algorithm of one step: prefill where any device's step carries prefill tokens."""
        if inp.phase == "prefill" or any(mix.prefill_batch for mix in inp.attention or ()):
            return self.prefill
        return self.decode

    def traffic(self, inp, *args, **kwargs) -> Traffic:
        """The step's traffic under its algorithm, marked with that algorithm's comm kind."""
        algo = self.for_step(inp)
        return dataclasses.replace(algo(*args, **kwargs), kind=algo.comm_kind)

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        return dataclasses.replace(self.decode(device_rows, rows, slot_device, tokens, layout, token_ids),
                                   kind=self.decode.comm_kind)
