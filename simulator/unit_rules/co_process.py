"""`co_process`: a device's routed experts split across units that compute at once (Duplex's
co-processing: the hot experts of a layer on the xPU while its cold ones run on the Logic-PIM).

Copies are taken hottest first and each goes to the unit that would finish it earliest, given
what that unit already holds of the layer: its GEMM, its share of the launch, the fused form's
floor and token passes, and the hand-off of its rows (earliest-finish-time list scheduling). The
units then run side by side: the device's expert time is the slowest unit's. The accelerator
always takes the layer's floor (routing runs there); where one unit alone finishes a device's
layer sooner (as under `fastest`), the layer goes there whole, so co-processing never loses to
moving the whole layer. A chain of ops (attention, a dense FFN, a
shared expert) cannot split this way, its ops wait for each other: it goes as under `fastest`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.unit_rules import ExpertOptions, ExpertSplit
from moesim.simulator.unit_rules.fastest import Fastest


@dataclass(frozen=True)
class CoProcess(Fastest):
    """Expert copies of a device's layer on every unit of `units` at once, by earliest finish."""

    name: str = "co_process"

    def experts(self, options: ExpertOptions) -> ExpertSplit:
        tokens, onehot = options.slot_tokens, options.onehot
        Lm, J, ep = onehot.shape
        K = len(self.units)
        kernels = options.kernels
        slot_time = np.stack([options.whole_layer(k)[1] for k in range(K)])  # (K, Lm, J)
        device = onehot.argmax(axis=2)  # (Lm, J) the device holding copy j
        work, busy, rows = (np.zeros((K, Lm, ep)) for _ in range(3))
        slot_unit = np.zeros((Lm, J), dtype=np.int64)
        layers = np.arange(Lm)
        for j in np.argsort(-tokens, axis=1, kind="stable").T:  # the r-th hottest copy of each layer
            d, t = device[layers, j], tokens[layers, j]
            finish = np.stack([kernels[k].total(work[k, layers, d] + slot_time[k, layers, j],
                                                busy[k, layers, d] + (t > 0), rows[k, layers, d] + t)
                               for k in range(K)])  # (K, Lm): when each unit would be done with it
            pick = np.where(t > 0, np.argmin(finish, axis=0), 0)
            work[pick, layers, d] += slot_time[pick, layers, j]
            busy[pick, layers, d] += t > 0
            rows[pick, layers, d] += t
            slot_unit[layers, j] = pick
        present = busy > 0
        present[0] = True
        split = ExpertSplit(slot_unit, present)
        totals = np.stack([options.whole_layer(k)[0] for k in range(K)])  # each device's layer wholly on unit k
        whole = options.per_device(np.argmin(totals, axis=0))  # where that is faster (as fastest would)
        better = totals.min(axis=0) < options.makespan(split)  # (Lm, ep)
        return ExpertSplit(np.where(better[layers[:, None], device], whole.slot_unit, slot_unit),
                           np.where(better[None], whole.present, present))
