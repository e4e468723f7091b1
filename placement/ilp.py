"""The integer program for expert placement (PuLP; HiGHS when installed, else the bundled CBC).

Per MoE layer, with x[e,d] = 1 if device d holds a copy of expert e and f[e,d] the share of
e's tokens that copy serves:

    minimise   T + w * sum_{e,d} f[e,d] * (C_dispatch[e,d] + C_affinity[e,d]) / D
    subject to sum_d f[e,d] = 1              every expert served in full
               f[e,d] <= x[e,d]              only by devices holding a copy
               sum_e x[e,d] <= slots[d]      memory
               sum_{e,d} x[e,d] <= E + R     redundant-copy budget
               T >= sum_e fixed*x[e,d] + per_token*load[e]*f[e,d]   for every device d

T is the bottleneck device's expert time (the problem's linear time model), C_dispatch[e,d]
the cost of moving e's tokens from their source devices to d (dispatch + combine), and
C_affinity[e,d] the cost of moving tokens that were at layer l-1's experts (placed already) to
d: solving layers in order makes inter-layer affinity a linear term (ExFlow and MoETuner solve
the same co-location in one quadratic program; the sequential form scales to 256 experts).
With `bottleneck_slack` a second solve minimises traffic while keeping T within (1 + slack) of
the load-only optimum. Every solve is warm-started from the best of the EPLB greedy, contiguous
and round-robin placements on its objective and keeps it when the solver finds nothing better,
so the ILP is never worse than those on its own objective; each solve reports status,
objective, best bound and gap.

Layers too big for one MILP (experts x devices above `flat_limit`; 256 x 64 has 16k binaries
and HiGHS does not improve on the greedy in a minute) are solved by neighbourhood
decomposition: repeatedly re-solve, exactly, the MILP restricted to a few devices (the
slowest, the least loaded, and random others for traffic) with everything else fixed, keeping
each improvement. The bound then comes from the LP relaxation of the whole layer.
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pulp

from moesim import interrupts
from moesim.placement.baselines import contiguous, eplb_global, round_robin
from moesim.placement.ilp_matrix import (as_scenarios, cbc_stopped_on_interrupt, quiet_stdout, run_interruptibly,
                                         solve_layer_highs)
from moesim.placement.placement import Placement, from_share_matrices
from moesim.placement.problem import ExpertTimeModel, PlacementProblem
from moesim.placement.renaming import keep_copies_in_place


@dataclass(frozen=True)
class IlpOptions:
    solver: str = "auto"  # auto | highs | cbc
    time_limit: float = 10.0  # seconds per subproblem
    traffic_weight: float = 1.0  # weight of the all-to-all estimate against the bottleneck time
    affinity: bool = True  # cost the layer-to-layer flow (needs the previous layer's placement)
    bottleneck_slack: float | None = None  # two-phase: traffic at T <= (1 + slack) * T_load_only
    decomposition: str = "auto"  # auto | flat | neighbourhood
    flat_limit: int = 4096  # experts x devices above which `auto` uses neighbourhoods
    neighbourhood: int = 8  # devices re-solved together in one neighbourhood MILP
    seed: int = 0
    gap: float = 1e-4  # relative gap at which a solve stops
    threads: int | None = None
    msg: bool = False
    backend: str = "auto"  # auto (HiGHS: numpy matrices, CBC: PuLP) | matrix | pulp
    worst_weight: float = 0.0  # scenarios: 0 = mean of the scenario bottlenecks, 1 = the worst one


@dataclass
class SolveReport:
    """What one subproblem's solve achieved (for the table `moesim place` prints)."""

    layer: int
    part: str  # "flat", "nodes", "node 3", ...
    solver: str
    status: str
    objective: float
    bound: float
    seconds: float
    variables: int
    constraints: int
    kept_warm_start: bool = False

    @property
    def gap(self) -> float:
        if not np.isfinite(self.bound) or self.objective <= 0:
            return float("nan")
        return max(0.0, (self.objective - self.bound) / abs(self.objective))


@dataclass
class IlpResult:
    placement: Placement
    reports: list[SolveReport] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.reports)

    @property
    def worst_gap(self) -> float:
        gaps = [r.gap for r in self.reports if np.isfinite(r.gap)]
        return max(gaps) if gaps else float("nan")

    @property
    def statuses(self) -> str:
        names = sorted({r.status for r in self.reports})
        return ",".join(names)


def available_solvers() -> list[str]:
    names = pulp.listSolvers(onlyAvailable=True)
    return [n for n, key in (("highs", "HiGHS"), ("cbc", "PULP_CBC_CMD")) if key in names]


def pick_solver(name: str) -> str:
    have = available_solvers()
    if name == "auto":
        if not have:
            raise ValueError("no MILP solver found: PuLP's bundled CBC is missing and highspy is not installed "
                             "(pip install highspy)")
        return have[0]
    if name not in ("highs", "cbc"):
        raise ValueError(f"unknown solver '{name}'; choose auto, highs or cbc")
    if name not in have:
        hint = "pip install highspy" if name == "highs" else "reinstall pulp (it bundles CBC)"
        raise ValueError(f"solver '{name}' is not available here ({hint}); available: {have or 'none'}")
    return name


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS interface plus a warm start from the variables' initial values."""

    def callSolver(self, lp):  # noqa: N802 (PuLP's name)
        import highspy

        values = [v.varValue if v.varValue is not None else 0.0 for v in lp.variables()]
        sol = highspy.HighsSolution()
        sol.col_value = values
        sol.value_valid = True
        lp.solverModel.setSolution(sol)
        run_interruptibly(lp.solverModel)




def _run_solver(prob: pulp.LpProblem, solver: str, opts: IlpOptions) -> tuple[str, float]:
    """Solve; return (status, best lower bound)."""
    if solver == "highs":
        s = _WarmHiGHS(msg=opts.msg, timeLimit=opts.time_limit, gapRel=opts.gap, threads=opts.threads)
        with quiet_stdout(not opts.msg):
            prob.solve(s)
        interrupts.check()
        info = prob.solverModel.getInfo()
        status = prob.solverModel.modelStatusToString(prob.solverModel.getModelStatus())
        bound = float(info.mip_dual_bound)
        return status, bound if np.isfinite(bound) else float("-inf")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "cbc.log"
        with warnings.catch_warnings():  # PuLP 3 deprecates its bundled CBC; it is still the no-install solver
            warnings.simplefilter("ignore", DeprecationWarning)
            s = pulp.PULP_CBC_CMD(msg=False, timeLimit=opts.time_limit, gapRel=opts.gap, warmStart=True,
                                  threads=opts.threads, logPath=str(log))
        with cbc_stopped_on_interrupt():
            prob.solve(s)
            interrupts.check()  # PuLP's bare `except: pass` around closing CBC's log can swallow the signal
        text = log.read_text() if log.exists() else ""
    status = pulp.LpStatus[prob.status]
    m = re.search(r"^Result - (.+)$", text, re.M)
    if m:
        status = m.group(1).strip()
    bound = float("-inf")
    b = re.search(r"^Lower bound:\s+([-\d.eE+]+)", text, re.M)
    if b:
        bound = float(b.group(1))
    elif "Optimal solution found" in text and prob.objective is not None:
        bound = float(pulp.value(prob.objective))
    return status, bound


def _layer_costs(problem: PlacementProblem, layer: int, prev_shares: np.ndarray | None,
                 opts: IlpOptions) -> np.ndarray:
    """(E, D) traffic cost of serving all of expert e's tokens on device d, per device."""
    c = problem.token_cost
    if problem.time_model.unit == "tokens":  # tokens: an inter-node move counts as one token of work
        c = c / c.max() if c.max() > 0 else c
    cost = problem.dispatch[layer].T @ c  # (E, D): sum_s dispatch[s, e] * c[s, d]
    if opts.affinity and prev_shares is not None and layer > 0 and problem.flow.shape[0] >= layer:
        flow = problem.flow[layer - 1] / problem.top_k  # token moves into each next-layer expert
        cost = cost + flow.T @ (prev_shares @ c)  # sum_i flow[i, j] sum_d0 prev[i, d0] c[d0, d]
    return cost / problem.num_devices


def _device_times(shares: np.ndarray, load: np.ndarray, tm: ExpertTimeModel) -> np.ndarray:
    """Expert time per device: (D,) for loads (E,), (S, D) for scenario loads (S, E)."""
    held = (shares > 1e-9).astype(float)
    return tm.fixed * ((load > 0).astype(float) @ held) + tm.per_token * load @ shares


def _bottleneck(times: np.ndarray, lam: float = 0.0) -> float:
    """The bottleneck term: the slowest device; over scenarios (1 - lam) x mean + lam x worst."""
    if times.ndim == 1:
        return float(times.max())
    peaks = times.max(axis=1)
    return float((1.0 - lam) * peaks.mean() + lam * peaks.max())


def _objective(shares: np.ndarray, load: np.ndarray, cost: np.ndarray, tm: ExpertTimeModel, w: float,
               lam: float = 0.0, copy_cost: np.ndarray | None = None) -> float:
    """Bottleneck + weighted traffic (+ the cost of every copy held where `copy_cost` prices it)."""
    moved = 0.0 if copy_cost is None else float(copy_cost[shares > 1e-9].sum())
    return _bottleneck(_device_times(shares, load, tm), lam) + w * float((shares * cost).sum()) + moved


def _variable(prob: pulp.LpProblem, name: str, low: float | None, high: float | None,
              cat: str = "Continuous") -> pulp.LpVariable:
    """A model variable (PuLP >= 3.3 attaches it to the problem; older PuLP builds it free-standing)."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, high, cat=cat)
    return pulp.LpVariable(name, low, high, cat=cat)


def use_matrix_backend(solver: str, opts: IlpOptions) -> bool:
    """HiGHS gets the numpy-matrix model unless `backend="pulp"` asks for the PuLP build."""
    if opts.backend not in ("auto", "matrix", "pulp"):
        raise ValueError(f"unknown ILP backend '{opts.backend}'; choose auto, matrix or pulp")
    if opts.backend == "matrix" and "highs" not in available_solvers():
        raise ValueError("the matrix backend needs HiGHS (pip install highspy)")
    return opts.backend == "matrix" or (opts.backend == "auto" and solver == "highs")


def solve_layer(load: np.ndarray, cost: np.ndarray, slots: np.ndarray, budget: int, tm: ExpertTimeModel,
                warm: np.ndarray, opts: IlpOptions, solver: str, weight: float,
                max_bottleneck: float | None = None, relax: bool = False, t_floor: np.ndarray | None = None,
                copy_cost: np.ndarray | None = None) -> tuple[np.ndarray, str, float, float, int, int]:
    """One flat MILP (or its LP relaxation): (shares (E, D), status, objective, bound, #vars, #constraints).

    Loads (S, E) are scenarios sharing the placement (objective weighted by `opts.worst_weight`);
    HiGHS solves the numpy-matrix build (ilp_matrix), CBC the PuLP one (one scenario only)."""
    scenarios = as_scenarios(load)
    if use_matrix_backend(solver, opts) or (relax and "highs" in available_solvers() and opts.backend != "pulp"):
        return solve_layer_highs(scenarios, cost, slots, budget, tm, warm, opts, weight, max_bottleneck, relax,
                                 opts.worst_weight, t_floor, copy_cost=copy_cost)
    if scenarios.shape[0] > 1:
        raise ValueError("the multi-scenario (robust) ILP needs HiGHS (pip install highspy)")
    return solve_layer_pulp(scenarios[0], cost, slots, budget, tm, warm, opts, solver, weight, max_bottleneck, relax,
                            None if t_floor is None else float(np.max(t_floor)), copy_cost)


def solve_layer_pulp(load: np.ndarray, cost: np.ndarray, slots: np.ndarray, budget: int, tm: ExpertTimeModel,
                     warm: np.ndarray, opts: IlpOptions, solver: str, weight: float,
                     max_bottleneck: float | None = None, relax: bool = False, t_floor: float | None = None,
                     copy_cost: np.ndarray | None = None) -> tuple[np.ndarray, str, float, float, int, int]:
    """The PuLP build of one layer's MILP (CBC's path; HiGHS's too with `backend="pulp"`)."""
    E, D = cost.shape
    prob = pulp.LpProblem("expert_placement", pulp.LpMinimize)
    cat = "Continuous" if relax else "Binary"
    x = [[_variable(prob, f"x_{e}_{d}", 0, 1, cat) for d in range(D)] for e in range(E)]
    f = [[_variable(prob, f"f_{e}_{d}", 0, 1) for d in range(D)] for e in range(E)]
    T = _variable(prob, "T", max(0.0, t_floor or 0.0), None)
    moves = [] if copy_cost is None else [(x[e][d], float(copy_cost[e, d]))
                                          for e in range(E) for d in range(D) if copy_cost[e, d] != 0]
    prob += pulp.LpAffineExpression([(T, 1.0)] + [(f[e][d], weight * float(cost[e, d]))
                                                  for e in range(E) for d in range(D) if cost[e, d] != 0] + moves)
    for e in range(E):
        prob += pulp.LpAffineExpression([(f[e][d], 1.0) for d in range(D)]) == 1, f"serve_{e}"
        for d in range(D):
            prob += f[e][d] - x[e][d] <= 0, f"copy_{e}_{d}"
    for d in range(D):
        prob += pulp.LpAffineExpression([(x[e][d], 1.0) for e in range(E)]) <= int(slots[d]), f"slots_{d}"
        terms = [(T, -1.0)]
        terms += [(x[e][d], tm.fixed) for e in range(E) if tm.fixed and load[e] > 0]
        terms += [(f[e][d], tm.per_token * float(load[e])) for e in range(E) if load[e] > 0]
        prob += pulp.LpAffineExpression(terms) <= 0, f"time_{d}"
        if max_bottleneck is not None:
            prob += pulp.LpAffineExpression(terms[1:]) <= max_bottleneck, f"cap_{d}"
    prob += pulp.LpAffineExpression([(x[e][d], 1.0) for e in range(E) for d in range(D)]) <= budget, "budget"
    held = (warm > 1e-9)
    for e in range(E):
        for d in range(D):
            x[e][d].setInitialValue(1 if held[e, d] else 0)
            f[e][d].setInitialValue(min(1.0, max(0.0, float(warm[e, d]))))
    T.setInitialValue(max(float(_device_times(warm, load, tm).max()), t_floor or 0.0))
    if relax:
        status, bound = _run_solver(prob, "highs" if "highs" in available_solvers() else solver, opts)
        obj = float(pulp.value(prob.objective) or np.nan)
        return np.full((E, D), np.nan), status, obj, obj, len(prob.variables()), prob.numConstraints()
    status, bound = _run_solver(prob, solver, opts)
    values = np.array([[f[e][d].varValue or 0.0 for d in range(D)] for e in range(E)])
    xs = np.array([[x[e][d].varValue or 0.0 for d in range(D)] for e in range(E)]) > 0.5
    shares = np.where(xs, np.clip(values, 0, 1), 0.0)
    ok = (shares.sum(axis=1) > 1 - 1e-6).all() and (xs.sum(axis=0) <= slots).all() and xs.sum() <= budget
    if ok:
        shares /= shares.sum(axis=1, keepdims=True)
    else:
        shares = np.full((E, D), np.nan)  # no usable solution: the caller keeps the warm start
    return shares, status, float(pulp.value(prob.objective) or np.nan), bound, len(prob.variables()), \
        prob.numConstraints()


def _solve_part(load, cost, slots, budget, tm, warm, opts, solver, layer, part, copy_cost=None
                ) -> tuple[np.ndarray, list[SolveReport]]:
    """Solve one subproblem (optionally two-phase) and keep the warm start if it is better."""
    reports = []
    cap = None
    weight, lam = opts.traffic_weight, opts.worst_weight
    if opts.bottleneck_slack is not None:
        t0 = time.perf_counter()
        shares, status, obj, bound, nv, nc = solve_layer(load, cost, slots, budget, tm, warm, opts, solver, 0.0)
        if np.isnan(shares).any():
            shares = warm
        best_t = _objective(shares, load, cost, tm, 0.0, lam)
        reports.append(SolveReport(layer, part + " (load)", solver, status, best_t, bound,
                                   time.perf_counter() - t0, nv, nc))
        cap = _objective(shares, load, cost, tm, 0.0, 1.0) * (1 + opts.bottleneck_slack)  # every scenario's
        if _objective(warm, load, cost, tm, 0.0, 1.0) > cap:  # greedy no longer feasible: warm-start phase 1
            warm = shares
    t0 = time.perf_counter()
    shares, status, obj, bound, nv, nc = solve_layer(load, cost, slots, budget, tm, warm, opts, solver, weight, cap,
                                                     copy_cost=copy_cost)
    kept = bool(np.isnan(shares).any())
    ours = np.inf if kept else _objective(shares, load, cost, tm, weight, lam, copy_cost)
    theirs = _objective(warm, load, cost, tm, weight, lam, copy_cost)
    if ours > theirs + 1e-12 * max(1.0, abs(theirs)):
        shares, kept = warm, True
    final = _objective(shares, load, cost, tm, weight, lam, copy_cost)
    reports.append(SolveReport(layer, part, solver, status, final, min(bound, final), time.perf_counter() - t0,
                               nv, nc, kept))
    return shares, reports


def _simple_bound(load: np.ndarray, cost: np.ndarray, tm: ExpertTimeModel, weight: float, lam: float = 0.0
                  ) -> float:
    """Every expert needs a copy and every token a device: T >= (fixed x E_active + per_token x total) / D
    (per scenario, combined as the objective combines them); each expert's traffic is at least its
    cheapest device's."""
    loads = as_scenarios(load)
    T = (tm.fixed * (loads > 0).sum(axis=1) + tm.per_token * loads.sum(axis=1)) / cost.shape[1]
    return _bottleneck(T[:, None], lam) + weight * float(cost.min(axis=1).sum())


def _better(obj: float, times: np.ndarray, best_obj: float, best_times: np.ndarray) -> bool:
    """Lexicographic acceptance: a lower objective, or an equal one with a lower sorted device-time
    profile (fewer devices at the bottleneck), so the search can cross plateaus of min-max."""
    tol = 1e-9 * max(1.0, abs(best_obj))
    if abs(obj - best_obj) > tol:
        return obj < best_obj
    a, b = np.sort(times, axis=None)[::-1], np.sort(best_times, axis=None)[::-1]
    diff = np.flatnonzero(np.abs(a - b) > 1e-9 * max(1.0, float(b.max())))
    return bool(diff.size) and a[diff[0]] < b[diff[0]]


def _load_neighbourhood(shares: np.ndarray, load: np.ndarray, tm: ExpertTimeModel, m: int,
                        rng: np.random.Generator) -> np.ndarray:
    """The slowest and the least-loaded devices plus random others: room to move the bottleneck's load."""
    times = _device_times(shares, load, tm)
    order = np.argsort(-(times if times.ndim == 1 else times.max(axis=0)), kind="stable")
    pick = list(order[: max(1, m // 4)]) + list(order[::-1][: max(1, m // 4)])
    rest = [d for d in rng.permutation(shares.shape[1]) if d not in pick]
    return np.array(sorted(set(pick) | set(rest[: m - len(set(pick))])))


def _traffic_neighbourhood(shares: np.ndarray, cost: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """A device drawn by its traffic cost, plus the devices where its experts would cost least:
    the exchanges that can cut dispatch and affinity traffic."""
    D = shares.shape[1]
    spent = (shares * cost).sum(axis=0)
    p = spent / spent.sum() if spent.sum() > 0 else np.full(D, 1.0 / D)
    d0 = int(rng.choice(D, p=p))
    saving = shares[:, d0] @ (cost[:, d0:d0 + 1] - cost)  # (D,) what moving d0's experts to d would save
    saving[d0] = -np.inf
    others = [int(d) for d in np.argsort(-saving, kind="stable")[: m - 1]]
    return np.array(sorted({d0, *others}))


def _solve_neighbourhoods(load: np.ndarray, cost: np.ndarray, slots: np.ndarray, budget: int,
                          tm: ExpertTimeModel, warm: np.ndarray, opts: IlpOptions, solver: str, layer: int,
                          cap: float | None = None, copy_cost: np.ndarray | None = None
                          ) -> tuple[np.ndarray, list[SolveReport]]:
    """Large layers: LP bound of the whole layer, then exact MILPs over small device neighbourhoods
    (with `cap`, every device's expert time stays within it)."""
    t_start = time.perf_counter()
    E, D = cost.shape
    weight, lam = opts.traffic_weight, opts.worst_weight
    lp_opts = replace(opts, time_limit=max(0.1, opts.time_limit / 4))
    if weight == 0 and cap is None and copy_cost is None:  # shares 1/D everywhere balance every scenario: the LP is the simple bound
        lp_obj, nv, nc = float("-inf"), 2 * E * D + as_scenarios(load).shape[0], E * D + E + D + 1
    else:
        _, status, lp_obj, _, nv, nc = solve_layer(load, cost, slots, budget, tm, warm, lp_opts, solver, weight,
                                                   cap, relax=True, copy_cost=copy_cost)
        if status not in ("Optimal", "Optimal solution found"):  # an unfinished LP proves nothing
            lp_obj = float("-inf")
    lp_obj = max(lp_obj, _simple_bound(load, cost, tm, weight, lam))
    best = warm.copy()
    best_obj = _objective(best, load, cost, tm, weight, lam, copy_cost)
    if use_matrix_backend(solver, opts):  # re-split the warm start's replicas optimally (an LP: copies fixed)
        polished, *_ = solve_layer_highs(load, cost, slots, budget, tm, warm, lp_opts, weight, cap,
                                         worst_weight=lam, fixed_copies=warm > 1e-9)
        if not np.isnan(polished).any() and _objective(polished, load, cost, tm, weight, lam, copy_cost) < best_obj:
            best, best_obj = polished, _objective(polished, load, cost, tm, weight, lam, copy_cost)
    rng = np.random.default_rng((opts.seed, layer))
    m = min(opts.neighbourhood, D)
    sub_opts = replace(opts, time_limit=min(5.0, max(0.5, opts.time_limit / 10)))
    tries = improved = stale = 0
    while time.perf_counter() - t_start < opts.time_limit and stale < 3 * D // m + 3:
        if best_obj - lp_obj <= opts.gap * abs(best_obj):
            break
        if weight > 0 and tries % 2:
            devs = _traffic_neighbourhood(best, cost, m, rng)
        else:
            devs = _load_neighbourhood(best, load, tm, m, rng)
        inside = best[:, devs]
        portion = inside.sum(axis=1)
        mine = np.flatnonzero(portion > 1e-9)
        held_outside = int((np.delete(best, devs, axis=1) > 1e-9).sum())
        sub_budget = budget - held_outside
        sub_load = load[..., mine] * portion[mine]
        sub_cost = cost[np.ix_(mine, devs)] * portion[mine][:, None]
        sub_warm = inside[mine] / portion[mine][:, None]
        outside = np.delete(_device_times(best, load, tm), devs, axis=-1)
        floor = outside.max(axis=-1) if outside.shape[-1] else None  # the rest of the layer's bottleneck
        left = opts.time_limit - (time.perf_counter() - t_start)  # the layer's limit holds, not one more sub-solve
        shares, st, *_ = solve_layer(sub_load, sub_cost, slots[devs], sub_budget, tm, sub_warm,
                                     replace(sub_opts, time_limit=max(0.05, min(sub_opts.time_limit, left))),
                                     solver, weight, cap, t_floor=floor,
                                     copy_cost=None if copy_cost is None else copy_cost[np.ix_(mine, devs)])
        tries += 1
        if np.isnan(shares).any():
            stale += 1
            continue
        cand = best.copy()
        cand[np.ix_(mine, devs)] = shares * portion[mine][:, None]
        obj = _objective(cand, load, cost, tm, weight, lam, copy_cost)
        if _better(obj, _device_times(cand, load, tm), best_obj, _device_times(best, load, tm)):
            best, best_obj, improved, stale = cand, obj, improved + 1, 0
        else:
            stale += 1
    status = f"neighbourhoods: {improved} improving of {tries}"
    report = SolveReport(layer, "neighbourhood", solver, status, best_obj, min(lp_obj, best_obj),
                         time.perf_counter() - t_start, nv, nc, kept_warm_start=improved == 0)
    return best, [report]


def solve_ilp(problem: PlacementProblem, options: IlpOptions | None = None, progress=None,
              scenarios: np.ndarray | None = None, move_from: np.ndarray | None = None,
              copy_cost: float = 0.0) -> IlpResult:
    """Solve every MoE layer in order (affinity to the layer before); return the placement and reports.

    `scenarios` (S, L, E): loads the placement must serve together (robust objective, weighted
    by `options.worst_weight`); the problem's mean load otherwise. `move_from` (L, E, D): the
    placement in force; every copy it lacks then costs `copy_cost` (objective units, e.g. the
    weight transfer's seconds spread over the steps the plan will serve), so re-planning moves
    only the copies that pay for themselves, and the current placement is one of the warm starts."""
    opts = options or IlpOptions()
    problem.check()
    solver = pick_solver(opts.solver)
    use_matrix_backend(solver, opts)  # validates the backend name
    if scenarios is not None:
        scenarios = np.asarray(scenarios, dtype=float)
        if scenarios.ndim != 3 or scenarios.shape[1:] != problem.load.shape:
            raise ValueError(f"scenarios must have shape (S, {problem.num_layers}, {problem.num_experts}), "
                             f"got {scenarios.shape}")
        if (scenarios < 0).any() or not np.isfinite(scenarios).all():
            raise ValueError("scenario loads must be finite and non-negative")
    if not 0.0 <= opts.worst_weight <= 1.0:
        raise ValueError(f"worst_weight must be in [0, 1], got {opts.worst_weight}")
    lam = opts.worst_weight
    if opts.decomposition not in ("auto", "flat", "neighbourhood"):
        raise ValueError(f"unknown decomposition '{opts.decomposition}'; choose auto, flat or neighbourhood")
    E, D, L = problem.num_experts, problem.num_devices, problem.num_layers
    large = opts.decomposition == "neighbourhood" or (opts.decomposition == "auto" and E * D > opts.flat_limit)
    starts = [eplb_global(problem).shares()]
    if move_from is not None:
        move_from = np.asarray(move_from, dtype=float)
        if move_from.shape != (L, E, D):
            raise ValueError(f"move_from must have shape ({L}, {E}, {D}), got {move_from.shape}")
        if copy_cost < 0:
            raise ValueError(f"copy_cost must be >= 0, got {copy_cost}")
    for layout in (contiguous, round_robin):  # load-blind layouts win in memory-bound decode (no replica reads)
        try:
            starts.append(layout(problem).shares())
        except ValueError:
            pass
    if move_from is not None:  # every start renamed to keep the most copies in place, and staying put
        starts = [keep_copies_in_place(move_from, st, problem.node_of, problem.slots) for st in starts]
        starts.append(move_from)
    shares = np.zeros((L, E, D))
    reports: list[SolveReport] = []
    tm = problem.time_model
    for l in range(L):
        prev = shares[l - 1] if l > 0 else None
        cost = _layer_costs(problem, l, prev, opts)
        load = problem.load[l] if scenarios is None else scenarios[:, l, :]
        moves = None if move_from is None else np.where(move_from[l] > 1e-9, 0.0, copy_cost)
        warm = min((st[l] for st in starts),
                   key=lambda w: _objective(w, load, cost, tm, opts.traffic_weight, lam, moves))
        if large and opts.bottleneck_slack is not None:
            load_only = replace(opts, traffic_weight=0.0, bottleneck_slack=None)
            first, rep = _solve_neighbourhoods(load, cost, problem.slots, problem.budget, tm, warm,
                                               load_only, solver, l)
            rep[0].part += " (load)"
            reports.extend(rep)
            cap = _objective(first, load, cost, tm, 0.0, 1.0) * (1 + opts.bottleneck_slack)
            shares[l], rep = _solve_neighbourhoods(load, cost, problem.slots, problem.budget, tm, first,
                                                   opts, solver, l, cap, moves)
        elif large:
            shares[l], rep = _solve_neighbourhoods(load, cost, problem.slots, problem.budget, tm,
                                                   warm, opts, solver, l, copy_cost=moves)
        else:
            shares[l], rep = _solve_part(load, cost, problem.slots, problem.budget, tm,
                                         warm, opts, solver, l, "flat", moves)
        reports.extend(rep)
        if progress:
            progress(l + 1, L)
    return IlpResult(from_share_matrices(shares), reports)
