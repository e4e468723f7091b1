"""Which compute unit ran what: summary.json's `units` for a scenario that sends parts of a layer
to units beside the accelerator (model output: the seconds each unit spent on each part, summed
over every step the engine ran, every layer and device, from the plans' `unit_time`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import StepPlan

PARTS = ("attention", "dense_ffn", "shared_expert", "expert")  # StepPlan.unit_time's order


def uses_units(sc: Scenario) -> bool:
    """Whether the scenario asks for any part off the accelerator (offloading's host attention included)."""
    units = sc.config.policies.units
    hybrid = sc.offload is not None and sc.offload.config.hybrid.attention == "host"
    return hybrid or any(getattr(units, p) != "accelerator" for p in PARTS)


def unit_usage(sc: Scenario, plans: list[StepPlan]) -> dict[str, Any] | None:
    """The rule of each part, each unit's share (by unit name) of the run's compute seconds and
    the hand-offs' share, and the seconds of each part on each unit; None where no plan says."""
    timed = [p for p in plans if p.unit_time is not None]
    if not timed:
        return None
    busy = sum(p.unit_time.sum(axis=(2, 3)) for p in timed)  # (parts, units), hand-offs included
    handed = sum(p.handoff.sum(axis=(2, 3)) for p in timed if p.handoff is not None)
    compute = busy - handed
    names = list(sc.machine.units)
    total = float(busy.sum())
    by_unit = compute.sum(axis=0)
    cfg = sc.config.policies.units
    return {
        "rules": {p: getattr(cfg, p) for p in PARTS},
        "steps": len(timed),
        "compute_share": {u: float(by_unit[k]) / total if total else 0.0 for k, u in enumerate(names)},
        "handoff_share": float(np.sum(handed)) / total if total else 0.0,
        "seconds_by_part": {p: {u: float(compute[i, k]) for k, u in enumerate(names) if compute[i, k] > 0}
                            for i, p in enumerate(PARTS) if compute[i].sum() > 0},
        "source": "model (the seconds each unit spent on each part in the engine's plans, every step, layer "
                  "and device)",
    }
