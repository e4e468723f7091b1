"""Run placement methods by name on one problem and score them side by side.

Methods: the baselines (contiguous, round_robin, random, eplb, eplb_hierarchical) and three
ILP objectives: `ilp` (bottleneck time + weighted all-to-all and affinity traffic), `ilp_load`
(bottleneck only, EPLB's goal solved exactly) and `ilp_affinity` (least traffic among
placements whose bottleneck is within `slack` of ilp_load's); `ilp_robust` serves several load
scenarios with one placement (half mean, half worst-case bottleneck; placement/scenarios.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from moesim.placement.baselines import BASELINES
from moesim.placement.evaluate import PlacementScore, check_placement, score
from moesim.placement.ilp import IlpOptions, IlpResult, solve_ilp
from moesim.placement.joint import solve_joint
from moesim.placement.placement import Placement
from moesim.placement.problem import PlacementProblem
from moesim.placement.scenarios import sample_drift_scenarios
from moesim.workloads.synthetic_routing import DriftConfig

ILP_VARIANTS = {
    "ilp": {},
    "ilp_load": {"traffic_weight": 0.0},
    "ilp_affinity": {"bottleneck_slack": 0.02},
    "ilp_robust": {"worst_weight": 0.5},
    "ilp_joint": {"bottleneck_slack": 0.02},  # ilp_affinity, then sweeps with both neighbours (placement/joint.py)
}
ROBUST = {"ilp_robust"}
DEFAULT_DRIFT = DriftConfig(sigma=0.1, rho=0.95)  # scenarios when neither given nor in the problem's history
METHODS = [*BASELINES, *ILP_VARIANTS]


@dataclass
class MethodResult:
    method: str
    placement: Placement
    score: PlacementScore
    seconds: float
    ilp: IlpResult | None = None

    def as_row(self) -> dict:
        row = {"method": self.method, **self.score.as_row(), "solve_s": self.seconds}
        if self.ilp is not None:
            row["gap"] = self.ilp.worst_gap
            row["status"] = self.ilp.statuses
        else:
            row["gap"] = float("nan")
            row["status"] = "heuristic"
        return row


def robust_scenarios(problem: PlacementProblem, scenarios: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Scenarios for a robust method: given, else the problem's load history, else 8 drift-model draws."""
    if scenarios is not None:
        return np.asarray(scenarios, dtype=float)
    history = getattr(problem, "load_history", None)
    if history is not None:
        return np.asarray(history, dtype=float)
    return sample_drift_scenarios(problem.load, 8, DEFAULT_DRIFT, seed=seed)


def run_method(name: str, problem: PlacementProblem, options: IlpOptions | None = None, seed: int = 0,
               progress=None, scenarios: np.ndarray | None = None) -> MethodResult:
    """Place with one method, check the placement against the problem, and score it.

    `scenarios` (S, L, E) are the loads a robust method plans for (see robust_scenarios)."""
    if name not in METHODS:
        raise ValueError(f"unknown placement method '{name}'; choose from {', '.join(METHODS)}")
    t0 = time.perf_counter()
    ilp = None
    if name in BASELINES:
        placement = BASELINES[name](problem, seed)
    else:
        opts = replace(options or IlpOptions(), **ILP_VARIANTS[name])
        sc = robust_scenarios(problem, scenarios, seed) if name in ROBUST else None
        ilp = solve_joint(problem, opts, progress) if name == "ilp_joint" else solve_ilp(problem, opts, progress, sc)
        placement = ilp.placement
    seconds = time.perf_counter() - t0
    check_placement(placement, problem)
    return MethodResult(name, placement, score(placement, problem), seconds, ilp)


def compare_methods(problem: PlacementProblem, methods: list[str], options: IlpOptions | None = None,
                    seed: int = 0, progress=None) -> list[MethodResult]:
    """Every method on the same problem; a method that cannot place (e.g. slots too few for
    contiguous) raises with its name."""
    out = []
    for name in methods:
        try:
            out.append(run_method(name, problem, options, seed, progress))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return out


def results_table(results: list[MethodResult]) -> pd.DataFrame:
    df = pd.DataFrame([r.as_row() for r in results])
    return df.replace({np.inf: np.nan})
