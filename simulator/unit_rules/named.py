"""A part on the one unit the config names (`policies.units.<part>: <unit>`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.machine import ComputeUnit
from moesim.simulator.unit_rules import ExpertOptions, ExpertSplit, Handoff, PartChoice, RowsOn


@dataclass(frozen=True)
class Named:
    """Every op of the part on `units[0]`."""

    units: tuple[ComputeUnit, ...]
    name: str = "named"

    def part(self, rows_on: RowsOn, handoff: Handoff) -> PartChoice:
        return rows_on(self.units[0]), handoff(self.units[0])

    def experts(self, options: ExpertOptions) -> ExpertSplit:
        Lm, J, ep = options.onehot.shape
        return ExpertSplit(np.zeros((Lm, J), dtype=np.int64), np.ones((1, Lm, ep), dtype=bool))
