"""`moesim place --rebalance-from FILE`: is each new placement worth moving to from the one in force?

A `repair` row joins the methods: the placement in force fixed by the moves that pay within the
horizon (placement/repair.py). Each method's placement is first renamed to keep the most copies
where the current placement has them (placement/renaming.py: balance unchanged, fewer bytes
moved), then the rebalance rule
(placement/rebalance.py) weighs its expected step-time gain over `horizon_steps` against the
wall time of moving the weights over the cluster's links.
"""

from __future__ import annotations

import time

import pandas as pd

from moesim.placement.evaluate import check_placement, score
from moesim.placement.methods import MethodResult
from moesim.placement.placement import Placement, from_share_matrices
from moesim.placement.rebalance import copy_price, model_expert_bytes, rebalance_decision
from moesim.placement.repair import repair_placement
from moesim.placement.renaming import keep_copies_in_place
from moesim.studies.placement_inputs import pair_bandwidth


def rebalance_from(study, current: Placement, horizon_steps: int) -> pd.DataFrame:
    """One row per method: the rule's verdict on moving from `current` to its (renamed) placement.

    Adds the `repair` result to the study and renames every method's placement in place (so the
    written files move least). Needs the modelled-time objective: the rule compares seconds with seconds."""
    problem = study.problem
    if problem.time_model.unit != "s":
        raise ValueError("--rebalance-from weighs seconds of expert time against seconds of weight transfer: "
                         "use --objective time (the default), not tokens")
    if horizon_steps < 1:
        raise ValueError(f"--horizon-steps must be >= 1, got {horizon_steps}")
    try:
        check_placement(current, problem)
    except ValueError as err:
        raise ValueError(f"the current placement does not fit this problem: {err}") from None
    now = current.shares()
    bw = pair_bandwidth(study.scenario)
    expert_bytes = model_expert_bytes(study.scenario.model)
    load = problem.load_history if problem.load_history is not None else problem.load
    t0 = time.perf_counter()
    fixed, _ = repair_placement(now, problem.load, problem.time_model, copy_price(expert_bytes, bw, horizon_steps),
                                problem.slots, problem.budget)
    repaired = from_share_matrices(fixed)
    check_placement(repaired, problem)
    study.results.append(MethodResult("repair", repaired, score(repaired, problem), time.perf_counter() - t0))
    rows = []
    for r in study.results:
        renamed = keep_copies_in_place(now, r.placement.shares(), problem.node_of, problem.slots)
        r.placement = from_share_matrices(renamed)
        r.score = score(r.placement, problem)
        verdict = rebalance_decision(now, renamed, load, problem.time_model, expert_bytes, bw, horizon_steps)
        rows.append({"method": r.method, "verdict": "move" if verdict.move else "stay",
                     "copies_moved": verdict.copies_moved, "gb_moved": verdict.bytes_moved / 1e9,
                     "move_s": verdict.cost_s, "gain_us_per_step": verdict.step_gain_s * 1e6,
                     "gain_s_over_horizon": verdict.gain_s, "horizon_steps": horizon_steps})
    return pd.DataFrame(rows)
