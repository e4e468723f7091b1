"""`fastest`: each op on the unit that finishes it first, its activations' hand-off included, so
Duplex's Op/B rule emerges from the costs. A chain of ops goes to the accelerator and at most one
other unit (one hand-off there and back); a device's routed experts run as one kernel, wholly on
the unit that finishes the device's layer first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.machine import ComputeUnit
from moesim.simulator.unit_rules import ExpertOptions, ExpertSplit, Handoff, PartChoice, RowsOn, mixed


@dataclass(frozen=True)
class Fastest:
    """The unit that finishes first, among `units` (the accelerator first)."""

    units: tuple[ComputeUnit, ...]
    name: str = "fastest"

    def part(self, rows_on: RowsOn, handoff: Handoff) -> PartChoice:
        home_rows = rows_on(self.units[0])
        best = (home_rows, [], sum(r.cost.time for r in home_rows))
        for unit in self.units[1:]:
            candidate = mixed(home_rows, unit, rows_on, handoff, lambda h, t: t.cost.time < h.cost.time)
            if candidate[2] < best[2]:
                best = candidate
        return best[0], best[1]

    def experts(self, options: ExpertOptions) -> ExpertSplit:
        totals = np.stack([options.whole_layer(k)[0] for k in range(len(self.units))])  # (K, Lm, ep)
        return options.per_device(np.argmin(totals, axis=0))
