"""`moesim place` as a library call: build the problem from a scenario, run placement methods,
optionally simulate each placement, and write placement files and tables.

The placement is fitted on routing steps the simulation does not replay where the routing
source has them (generators always; traces when they have more steps than are simulated), so
the simulated step time is an out-of-sample check; otherwise the study says it is in-sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from moesim import json_io
from moesim.placement import save_placement_file
from moesim.placement.ilp import IlpOptions
from moesim.placement.methods import MethodResult, compare_methods, results_table
from moesim.placement.placement import Placement
from moesim.placement.problem import PlacementProblem
from moesim.studies.placement_inputs import problem_from_scenario
from moesim.workloads.routing_statistics import statistics_window
from moesim.simulator.memory_ledger import resident_memory
from moesim.simulator.scenario import Scenario


@dataclass
class PlacementStudy:
    scenario: Scenario
    problem: PlacementProblem
    results: list[MethodResult]
    in_sample: bool
    simulated: dict[str, dict] = field(default_factory=dict)  # method -> summary metrics

    def table(self) -> pd.DataFrame:
        df = results_table(self.results)
        if self.simulated:
            df["sim_step_s"] = [self.simulated[r.method]["step_latency_s"]["mean"] for r in self.results]
            df["sim_straggler"] = [self.simulated[r.method]["straggler_ratio"]["mean"] for r in self.results]
            df["sim_inter_node_bytes"] = [inter_node_bytes_per_step(self.simulated[r.method]) for r in self.results]
            df["sim_inter_node_share"] = [inter_node_payload_share(self.simulated[r.method]) for r in self.results]
        return df


def inter_node_bytes_per_step(summary: dict) -> float:
    """Dispatch + combine payload bytes that crossed nodes per simulated step (one run's summary):
    what a node-aware placement (with local replica choice) is meant to cut."""
    pay = summary["all_to_all_payload_bytes"]
    return (pay["dispatch_inter_node"] + pay["combine_inter_node"]) / max(int(summary["steps"]), 1)


def inter_node_payload_share(summary: dict) -> float:
    """Share of the dispatch payload that left its device which also left its node (0 if none left)."""
    pay = summary["all_to_all_payload_bytes"]
    return pay["dispatch_inter_node"] / pay["dispatch"] if pay["dispatch"] else 0.0


def with_placement(sc: Scenario, placement: Placement) -> Scenario:
    """The scenario with another placement (memory re-estimated for the new copies)."""
    memory, offload = resident_memory(sc.model, placement, sc.tp, sc.moe_tp, sc.batch_per_replica,
                                      sc.config.workload, int(sc.moe_tokens.max()), sc.precision,
                                      sc.offload.config if sc.offload is not None else None, sc.machine,
                                      sc.memory_budget, sc.config.policies.units)
    return replace(sc, placement=placement, memory=memory, offload=offload)


def fit_window(sc: Scenario, steps: int) -> tuple[int, bool]:
    """First routing step to fit the placement on, and whether that overlaps the simulated steps."""
    first, _, in_sample = statistics_window(sc.routing, sc.steps, steps)
    return first, in_sample


def run_study(sc: Scenario, methods: list[str], *, steps: int = 16, redundant: int = 0, slots: int | None = None,
              time_model: str = "time", options: IlpOptions | None = None, simulate: bool = False,
              progress: Callable[[str], None] | None = None) -> PlacementStudy:
    """Build the scenario's placement problem, run each method, and (optionally) simulate each."""
    first, in_sample = fit_window(sc, steps)
    problem = problem_from_scenario(sc, steps, redundant, slots, time_model, first_step=first)
    problem.check()
    results = []
    for name in methods:
        if progress:
            progress(f"placing with {name}")
        layer_progress = (lambda done, total, name=name: progress(f"placing with {name}: layer {done}/{total}")) \
            if progress else None
        results.extend(compare_methods(problem, [name], options, seed=sc.seed, progress=layer_progress))
    study = PlacementStudy(sc, problem, results, in_sample)
    if simulate:
        from moesim.simulator.run import simulate as run_simulation

        for r in results:
            if progress:
                progress(f"simulating {r.method}")
            study.simulated[r.method] = run_simulation(with_placement(sc, r.placement)).summary
    return study


def write_study(study: PlacementStudy, out: str | Path, best: str | None = None) -> Path:
    """placement-<method>.yaml for every method, placement.yaml (the best), methods.csv, problem.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for r in study.results:
        save_placement_file(r.placement, out / f"placement-{r.method}.yaml")
    table = study.table()
    table.to_csv(out / "methods.csv", index=False)
    chosen = best or pick_best(study)
    save_placement_file(next(r for r in study.results if r.method == chosen).placement, out / "placement.yaml")
    p = study.problem
    info = {
        "chosen": chosen,
        "in_sample": study.in_sample,
        "experts": p.num_experts, "devices": p.num_devices, "nodes": p.num_nodes, "layers": p.num_layers,
        "slots_per_device": p.slots.tolist(), "redundant": p.redundant, "top_k": p.top_k,
        "time_model": {"fixed": p.time_model.fixed, "per_token": p.time_model.per_token, "unit": p.time_model.unit},
        "provenance": p.provenance,
        "ilp_reports": {r.method: [vars(x) for x in r.ilp.reports] for r in study.results if r.ilp},
    }
    json_io.write(out / "problem.json", info, indent=2)
    return out


def pick_best(study: PlacementStudy) -> str:
    """Lowest simulated step time when simulated, else lowest modelled bottleneck time + traffic."""
    if study.simulated:
        return min(study.simulated, key=lambda m: study.simulated[m]["step_latency_s"]["mean"])
    return min(study.results, key=lambda r: r.score.bottleneck_time + r.score.traffic_time).method
