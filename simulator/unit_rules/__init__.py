"""Rules that choose the compute unit of each part of a layer (`policies.units`).

A rule holds the units a part may run on (the accelerator first) and answers two questions:
which unit runs each op of a chain of ops (attention, a dense FFN, a shared expert), and which
unit runs each routed expert copy of a device's layer. Experts on different units of one device
run at once: the device's expert time is the slowest unit's (`ExpertSplit`). A new rule is its
own file here plus one line in `compose.UNIT_RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from moesim.simulator.machine import ComputeUnit

if TYPE_CHECKING:
    from moesim.simulator.step_costs import OpRow

RowsOn = Callable[[ComputeUnit], list]  # a unit -> every op of the part costed there (OpRow)
Handoff = Callable[[ComputeUnit], list]  # a unit -> the hand-offs to it and back, [(phase, Crossing)]
PartChoice = tuple[list, list]  # the part's rows, each on its unit; the hand-offs it takes


@dataclass(frozen=True)
class ExpertSplit:
    """Which candidate unit computes each expert copy (`slot_unit`, (Lm, J)), and which units take
    a device's layer at all (`present`, (K, Lm, ep): a present unit pays its launch and floor)."""

    slot_unit: np.ndarray
    present: np.ndarray


@dataclass
class ExpertOptions:
    """A group's expert copies of every MoE layer and the kernel of each candidate unit; each
    kernel's cost of a device's whole layer is computed once, when a rule asks."""

    kernels: tuple  # ExpertKernel per candidate unit, the rule's order
    slot_tokens: np.ndarray  # (Lm, J)
    slot_expert: np.ndarray  # (Lm, J)
    onehot: np.ndarray  # (Lm, J, ep): which device holds copy j
    _whole: dict = field(default_factory=dict)

    def whole_layer(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(total, per-copy time, hand-off) of every device's layer run wholly on unit k."""
        if k not in self._whole:
            self._whole[k] = self.kernels[k].device_time(self.slot_tokens, self.slot_expert, self.onehot)
        return self._whole[k]

    def makespan(self, split: ExpertSplit) -> np.ndarray:
        """(Lm, ep) seconds of each device's layer under `split`: its units run at once."""
        return np.max([k.device_time(self.slot_tokens, self.slot_expert, self.onehot, split.slot_unit == i,
                                     split.present[i])[0] for i, k in enumerate(self.kernels)], axis=0)

    def per_device(self, pick: np.ndarray) -> ExpertSplit:
        """The split that runs each device's layer wholly on the unit `pick[l, d]` names."""
        slot_unit = np.einsum("ljd,ld->lj", self.onehot, pick.astype(float)).round().astype(np.int64)
        present = pick[None] == np.arange(len(self.kernels))[:, None, None]
        return ExpertSplit(slot_unit, present)


class UnitRule(Protocol):
    """How one part of a layer chooses among `units` (the accelerator first)."""

    name: str
    units: tuple[ComputeUnit, ...]

    def part(self, rows_on: RowsOn, handoff: Handoff) -> PartChoice:
        """The part's ops, each on its unit, and the hand-offs taken; `rows_on(unit)` costs every op
        of the part there; `handoff(unit)` is the activations' way there and back."""

    def experts(self, options: ExpertOptions) -> ExpertSplit:
        """Which unit computes each routed expert copy of every device's layer."""


def op_per_byte(row: OpRow) -> float:
    """An op's arithmetic intensity (FLOPs per byte moved; infinite for an op that moves nothing)."""
    return row.op.flops / row.op.bytes if row.op.bytes else float("inf")


def mixed(home: list[OpRow], unit: ComputeUnit, rows_on: RowsOn, handoff: Handoff,
          take: Callable[[OpRow, OpRow], bool]) -> tuple[list[OpRow], list, float]:
    """Each op on `unit` where take(its row at home, its row there), else at home; the hand-off
    once if any op moved; the part's total time (ops of a part depend on each other: they add)."""
    rows = [t if take(h, t) else h for h, t in zip(home, rows_on(unit))]
    cross = handoff(unit) if any(r is not h for r, h in zip(rows, home)) else []
    return rows, cross, sum(r.cost.time for r in rows) + sum(c.time for _, c in cross)
