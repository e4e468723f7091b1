"""Robust placement under drifting loads: in-sample vs out-of-sample balance per method.

    python benchmarks/bench_placement_robust.py [--quick] [--time-limit 0.8] [--layers 58]

DeepSeek-V3 scale (256 experts, top-8, 58 MoE layers; `--quick`: 8 layers) on 32 GPUs with 32
redundant slots and 64 GPUs with 64, nodes of 8. Loads come from the synthetic routing
generator with drift (AR(1) on log-popularity) and batch variance; 16 windows of 4 steps.
Every method plans on windows 0-7 and is scored on them (in-sample) and on windows 8-15
(out-of-sample), as max/mean device load (1 = balanced):

- eplb: DeepSeek EPLB's greedy on the planning mean load;
- ilp_load: the single-scenario ILP (bottleneck only) on the planning mean load;
- ilp_robust: one placement for the 8 planning windows as scenarios (0.5 mean + 0.5 worst);
- ilp_robust_drift: the same over 8 windows drawn from the generator's drift model ahead of the
  last planning window (the model's parameters taken as fitted).

It also prints total and per-layer solve time with the worst gap, and the rebalance rule's
verdict on moving from EPLB's placement to the robust one.

A static placement cannot follow a drifting load, so a second table re-plans after every
scoring window on what has been seen so far (the latest windows) and moves only when the
rebalance rule says the expected gain over the next window beats the wall time of moving the
weights (placement/rebalance_schedule.py); candidates are EPLB's or the robust ILP's plan on
the latest windows with devices renamed to keep copies in place, or the ILP re-planning from
the placement in force with every copy it moves priced at its transfer time spread over the
horizon (`plan_rebalance`). A window stands for `--window-serving-steps` decode
steps (default 1000, SGLang's default rebalance period), which sets the horizon the rule weighs;
`--window-serving-steps 10` shows the rule refusing moves that cannot pay back. The case
64/32 (64 GPUs, 32 redundant) is the issue's speed case (full robust placement in <= 60 s).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from moesim.placement.baselines import eplb_global
from moesim.placement.ilp import IlpOptions
from moesim.placement.methods import run_method
from moesim.placement.out_of_sample import evaluate_out_of_sample
from moesim.placement.problem import problem_from_routing
from moesim.placement.rebalance import copy_price, expected_step_time, plan_rebalance, rebalance_decision
from moesim.placement.repair import repair_placement
from moesim.placement.renaming import keep_copies_in_place
from moesim.placement.rebalance_schedule import replay_rebalancing
from moesim.placement.scenarios import sample_drift_scenarios, window_loads
from moesim.workloads.synthetic_routing import DriftConfig, RoutingModelConfig, SyntheticRouting

E, TOP_K, PER_NODE, TOKENS = 256, 8, 8, 256  # DeepSeek-V3 routing; decode tokens per GPU per step
HIDDEN, INTER = 7168, 2048  # DeepSeek-V3 expert shape; fp8 weights
EXPERT_BYTES = 3 * HIDDEN * INTER * 1.0
SECONDS_PER_TOKEN = 2 * 3 * HIDDEN * INTER / 400e12  # one routed assignment at ~400 TFLOP/s fp8 (H100)
NVLINK, IB = 450e9, 50e9
CASES = {"32/32": (32, 32), "64/64": (64, 64), "64/32": (64, 32)}  # GPUs / redundant slots
DRIFT = DriftConfig(sigma=0.05, rho=0.99)
BATCH_CONCENTRATION = 50_000.0
WINDOWS, PLAN, WINDOW_STEPS = 16, 8, 4


def routing_model() -> RoutingModelConfig:
    return RoutingModelConfig(popularity={"kind": "zipf", "alpha": 0.8}, drift=DRIFT,
                              batch_concentration=BATCH_CONCENTRATION)


def topology(D: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node_of, token_cost, bandwidth) for D GPUs in nodes of 8: NVLink inside, 400 Gb/s IB across."""
    node_of = np.arange(D) // PER_NODE
    bw = np.where(node_of[:, None] == node_of[None, :], NVLINK, IB)
    cost = 2 * HIDDEN * 2 / bw
    np.fill_diagonal(cost, 0.0)
    return node_of, cost, bw


def recent_scenarios(seen: np.ndarray, seed: int) -> np.ndarray:
    """What the next window may look like: the last two windows seen, and six drift-model draws
    one window ahead of the last one."""
    ahead = sample_drift_scenarios(seen, 6, DRIFT, BATCH_CONCENTRATION, horizon=WINDOW_STEPS,
                                   window_steps=WINDOW_STEPS, seed=seed + len(seen))
    return np.concatenate([seen[-2:], ahead])


def rebalancing_table(problem, windows: np.ndarray, bw: np.ndarray, opts: IlpOptions, seed: int,
                      serving_steps: int) -> None:
    """Re-plan after every scoring window; move when the rule says so (see the module docstring)."""
    def eplb_latest(seen, current=None):
        return eplb_global(replace(problem, load=seen[-1])).shares()

    def robust_latest(seen, current=None):
        return run_method("ilp_robust", replace(problem, load=seen[-1]), opts, seed,
                          scenarios=recent_scenarios(seen, seed)).placement.shares()

    def move_aware(horizon):
        def plan(seen, current=None):
            latest = replace(problem, load=seen[-1])
            if current is None:
                return eplb_latest(seen)
            return plan_rebalance(latest, current, EXPERT_BYTES, bw, horizon, SECONDS_PER_TOKEN,
                                  opts).placement.shares()
        return plan

    def rule(horizon):
        return lambda current, candidate, seen: rebalance_decision(
            current, candidate, seen[-1], problem.time_model, EXPERT_BYTES, bw, horizon,
            time_per_unit=SECONDS_PER_TOKEN)

    def repaired(horizon):
        price = copy_price(EXPERT_BYTES, bw, horizon, SECONDS_PER_TOKEN)  # tokens of work per copy

        def plan(seen, current=None):
            if current is None:
                return eplb_latest(seen)
            return repair_placement(current, seen[-1], problem.time_model, price)[0]
        return plan

    def align(current, candidate):
        return keep_copies_in_place(current, candidate, problem.node_of, problem.slots)

    runs = [(f"eplb, rule over {serving_steps} steps", eplb_latest, serving_steps, None),
            (f"eplb, kept in place, {serving_steps} steps", eplb_latest, serving_steps, align),
            ("eplb, kept in place, 10 steps", eplb_latest, 10, align),
            (f"ilp_robust, kept in place, {serving_steps}", robust_latest, serving_steps, align),
            (f"ilp, moves priced, {serving_steps} steps", move_aware(serving_steps), serving_steps, None),
            ("ilp, moves priced, 10 steps", move_aware(10), 10, None),
            (f"repair in place, {serving_steps} steps", repaired(serving_steps), serving_steps, None),
            ("repair in place, 10 steps", repaired(10), 10, None)]
    print(f"  re-planned after every window on the latest windows; a window = {serving_steps} decode steps:")
    print(f"  {'method':36s} {'out-of-sample':>13s} {'worst':>7s} {'moves':>7s} {'GB moved':>9s} "
          f"{'move s':>7s} {'move/serve':>10s} {'plan s':>7s}")
    for label, planner, horizon, renaming in runs:
        r = replay_rebalancing(label, windows, PLAN, planner, rule(horizon), renaming)
        serve_s = expected_step_time(eplb_latest(windows[:PLAN]), windows[PLAN:], problem.time_model) \
            * SECONDS_PER_TOKEN * horizon * (WINDOWS - PLAN)
        print(f"  {r.method:36s} {r.out_of_sample:13.4f} {r.worst_out_of_sample:7.4f} {r.moves:3d}/{r.decisions:<3d} "
              f"{r.bytes_moved / 1e9:9.1f} {r.move_seconds:7.3f} {r.move_seconds / serve_s:10.2%} "
              f"{r.plan_seconds:7.1f}")


def run_case(name: str, D: int, R: int, layers: int, opts: IlpOptions, seed: int, rolling_opts: IlpOptions,
             serving_steps: int) -> None:
    src = SyntheticRouting(routing_model(), E, TOP_K, layers, seed)
    node_of, cost, bw = topology(D)
    tokens = np.full(D, TOKENS)
    t0 = time.perf_counter()
    windows = window_loads(src, tokens, layers, WINDOWS, WINDOW_STEPS)
    problem = problem_from_routing(src, tokens, layers, node_of=node_of, token_cost=cost, redundant=R,
                                   steps=PLAN * WINDOW_STEPS)
    print(f"\n{name}: {layers} layers x {E} experts, slots {problem.slots[0]} per GPU; "
          f"loads generated in {time.perf_counter() - t0:.1f} s")
    results = {}

    def keep(key, result):
        results[key] = result
        return result

    planners = {
        "eplb": lambda plan: keep("eplb", run_method("eplb", problem, opts, seed)),
        "ilp_load": lambda plan: keep("ilp_load", run_method("ilp_load", problem, opts, seed)),
        "ilp_robust": lambda plan: keep("ilp_robust", run_method("ilp_robust", problem, opts, seed, scenarios=plan)),
        "ilp_robust_drift": lambda plan: keep("ilp_robust_drift", run_method(
            "ilp_robust", problem, opts, seed, scenarios=sample_drift_scenarios(
                plan, 8, DRIFT, BATCH_CONCENTRATION, horizon=(WINDOWS - PLAN) * WINDOW_STEPS // 2,
                window_steps=WINDOW_STEPS, seed=seed))),
    }
    rows = evaluate_out_of_sample(windows, PLAN, planners)
    print(f"  {'method':17s} {'in-sample':>9s} {'out-of-sample':>13s} {'worst window':>12s} "
          f"{'solve s':>8s} {'s/layer':>8s} {'gap':>7s}")
    for r in rows:
        gap = "      -" if np.isnan(r.gap) else f"{r.gap:7.2%}"
        print(f"  {r.method:17s} {r.in_sample:9.4f} {r.out_of_sample:13.4f} {r.worst_out_of_sample:12.4f} "
              f"{r.seconds:8.1f} {r.seconds / layers:8.3f} {gap}")
    by = {r.method: r for r in rows}
    best = min(("ilp_robust", "ilp_robust_drift"), key=lambda m: by[m].out_of_sample)
    print(f"  goal (out-of-sample max/mean <= 1.15 where EPLB > 1.25): EPLB {by['eplb'].out_of_sample:.4f}, "
          f"best robust ({best}) {by[best].out_of_sample:.4f}")
    current = eplb_global(problem).shares()
    candidate = results[best].placement.shares()
    for horizon in (100, 10_000):
        rep = rebalance_decision(current, candidate, windows[:PLAN], problem.time_model, EXPERT_BYTES, bw,
                                 horizon, time_per_unit=SECONDS_PER_TOKEN)
        print(f"  rebalance EPLB -> {best} over {horizon} steps: {rep.summary()}")
    rebalancing_table(problem, windows, bw, rolling_opts, seed, serving_steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 layers, 64 GPUs only (< 60 s)")
    ap.add_argument("--layers", type=int, default=None, help="MoE layers (default 58; 8 with --quick)")
    ap.add_argument("--time-limit", type=float, default=0.7, help="ILP seconds per layer")
    ap.add_argument("--rolling-time-limit", type=float, default=0.1,
                    help="ILP seconds per layer when re-planning after every window")
    ap.add_argument("--window-serving-steps", type=int, default=1000,
                    help="decode steps one window stands for (the rebalance rule's horizon)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated GPUs/redundant cases, e.g. 64/32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    layers = args.layers or (8 if args.quick else 58)
    opts = IlpOptions(time_limit=args.time_limit, traffic_weight=0.0, seed=args.seed)
    wanted = [c.strip() for c in args.cases.split(",")]
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    cases = {k: CASES[k] for k in wanted if not args.quick or CASES[k] == (64, 64)}
    rolling = IlpOptions(time_limit=args.rolling_time_limit, traffic_weight=0.0, seed=args.seed)
    print(f"drift sigma {DRIFT.sigma} rho {DRIFT.rho}, batch concentration {BATCH_CONCENTRATION:g}, "
          f"{WINDOWS} windows of {WINDOW_STEPS} steps (plan on {PLAN}, score on {WINDOWS - PLAN}), "
          f"ILP time limit {args.time_limit:g} s per layer")
    for D, R in cases.values():
        run_case(f"{D} GPUs, {R} redundant", D, R, layers, opts, args.seed, rolling, args.window_serving_steps)


if __name__ == "__main__":
    main()
