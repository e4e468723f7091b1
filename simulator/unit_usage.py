"""Which compute unit ran what: summary.json's `units` for a scenario that sends parts of a layer
to units beside the accelerator (model output, read from the op rows of the engine's plan of the
first step, every layer and device)."""

from __future__ import annotations

from typing import Any

from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import StepPipeline, StepPlan

PARTS = ("attention", "dense_ffn", "shared_expert", "expert")


def uses_units(sc: Scenario) -> bool:
    """Whether the scenario asks for any part off the accelerator (offloading's host attention included)."""
    units = sc.config.policies.units
    hybrid = sc.offload is not None and sc.offload.config.hybrid.attention == "host"
    return hybrid or any(getattr(units, p) != "accelerator" for p in PARTS)


def unit_usage(sc: Scenario, pipeline: StepPipeline, plan: StepPlan) -> dict[str, Any]:
    """The rule of each part, and each unit's share (by unit name) of the step's compute time and of
    its hand-offs."""
    rows = pipeline.op_rows(plan)
    name = {u.label: u.name for u in sc.machine.units.values()}
    rows = rows.assign(unit=rows["unit"].map(lambda label: name.get(label, label)))
    compute = rows[rows["kind"] != "comm"]
    handoff = rows[(rows["kind"] == "comm") & rows["unit"].str.endswith(" link")]
    total = float(compute["time_s"].sum()) + float(handoff["time_s"].sum())
    by_unit = compute.groupby("unit")["time_s"].sum()
    by_part = {p: {u: float(t) for u, t in compute[compute["phase"] == p].groupby("unit")["time_s"].sum().items()}
               for p in PARTS if (compute["phase"] == p).any()}
    cfg = sc.config.policies.units
    return {
        "rules": {p: getattr(cfg, p) for p in PARTS},
        "step": plan.step,
        "compute_share": {u: float(t) / total if total else 0.0 for u, t in by_unit.items()},
        "handoff_share": float(handoff["time_s"].sum()) / total if total else 0.0,
        "seconds_by_part": by_part,
        "source": "model (op rows of the engine's plan of the step, every layer and device)",
    }
