"""`threshold`: a fixed Op/B rule (`policies.units.threshold: {unit, op_per_byte}`): ops under
`op_per_byte` FLOPs per byte go to the rule's unit, the rest stay on the accelerator; a device's
routed experts go by the intensity of the device's whole layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.machine import ComputeUnit
from moesim.simulator.unit_rules import ExpertOptions, ExpertSplit, Handoff, PartChoice, RowsOn, mixed, op_per_byte


@dataclass(frozen=True)
class Threshold:
    """Ops under `op_per_byte` FLOP/B on `units[1]`, the rest on the accelerator `units[0]`."""

    units: tuple[ComputeUnit, ComputeUnit]
    op_per_byte: float
    name: str = "threshold"

    def part(self, rows_on: RowsOn, handoff: Handoff) -> PartChoice:
        rows, cross, _ = mixed(rows_on(self.units[0]), self.units[1], rows_on, handoff,
                               lambda h, t: op_per_byte(h) < self.op_per_byte)
        return rows, cross

    def experts(self, options: ExpertOptions) -> ExpertSplit:
        flops, mem, _, _ = options.kernels[0].terms(options.slot_tokens, options.slot_expert)
        dev_flops, dev_bytes = (np.einsum("lj,ljd->ld", x, options.onehot) for x in (flops, mem))
        with np.errstate(divide="ignore", invalid="ignore"):
            low = dev_flops / dev_bytes < self.op_per_byte
        return options.per_device(np.where(low & (dev_bytes > 0), 1, 0))
