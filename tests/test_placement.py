"""Expert placement: the ILP against brute force, constraints of every method, files, simulation."""

from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from conftest import in_background
from moesim.cli import main
from moesim.placement import load_placement_file, save_placement_file
from moesim.placement.baselines import BASELINES
from moesim.placement.evaluate import check_placement, score
from moesim.placement.ilp import IlpOptions, available_solvers, solve_ilp
from moesim.placement.methods import compare_methods, run_method
from moesim.placement.placement import from_share_matrices
from moesim.placement.problem import ExpertTimeModel, PlacementProblem, problem_from_routing
from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SOLVERS = available_solvers()


def small_problem(load, devices, slots, redundant=0, cost=None, fixed=0.0, nodes=1) -> PlacementProblem:
    load = np.asarray(load, dtype=float)[None, :]
    E = load.shape[1]
    dispatch = np.repeat(load[:, None, :] / devices, devices, axis=1)
    node_of = np.arange(devices) * nodes // devices
    c = np.zeros((devices, devices)) if cost is None else np.asarray(cost, dtype=float)
    return PlacementProblem(load, dispatch, np.zeros((0, E, E)), 2, node_of, c, np.full(devices, slots), redundant,
                            ExpertTimeModel(fixed, 1.0, "tokens"))


def best_split(load, copies: list[tuple[int, ...]], devices: int, fixed: float) -> float:
    """Optimal min-max device time for fixed copy sets: bisection on T with a max-flow check."""
    counts = np.zeros(devices)
    for devs in copies:
        counts[list(devs)] += 1
    lo, hi = 0.0, float(sum(load)) + fixed * len(copies)
    total = float(sum(load))
    for _ in range(60):
        T = (lo + hi) / 2
        g = nx.DiGraph()
        for e, devs in enumerate(copies):
            g.add_edge("s", f"e{e}", capacity=float(load[e]))
            for d in devs:
                g.add_edge(f"e{e}", f"d{d}", capacity=float("inf"))
        for d in range(devices):
            g.add_edge(f"d{d}", "t", capacity=max(0.0, T - fixed * counts[d]))
        ok = nx.maximum_flow_value(g, "s", "t") >= total - 1e-9 and (fixed * counts <= T + 1e-12).all()
        lo, hi = (lo, T) if ok else (T, hi)
    return hi


def closed_form_split(load, on: np.ndarray, fixed: float) -> np.ndarray:
    """best_split's optimum in closed form for many copy sets at once; on[n, e, d]: copy set n puts a copy of
    expert e on device d. By max-flow min-cut (Hall's condition) the tokens fit under T iff every expert
    set A fits on the devices N(A) holding its copies, load(A) <= sum over N(A) of (T - fixed * copies on d),
    and fixed * copies on d <= T everywhere: T* is the largest of those bounds."""
    E = on.shape[1]
    per = on.sum(axis=1)  # copies per device
    bound = fixed * per.max(axis=1)
    for r in range(1, E + 1):
        for A in itertools.combinations(range(E), r):
            near = on[:, list(A)].any(axis=1)  # N(A)
            bound = np.maximum(bound, (sum(load[e] for e in A) + fixed * (per * near).sum(axis=1))
                               / near.sum(axis=1))
    return bound


@lru_cache(maxsize=None)
def brute_force(load: tuple, devices: int, slots: int, redundant: int, fixed: float = 0.0) -> float:
    """Enumerate every copy set within slots and budget; the best optimal split wins.

    Copy sets are priced by closed_form_split (a max-flow bisection for each of ~10^4 copy sets took
    seconds); the winner is priced again by best_split's max-flow, and the two must agree."""
    E = len(load)
    subsets = [s for r in range(1, devices + 1) for s in itertools.combinations(range(devices), r)]
    member = np.array([[d in s for d in range(devices)] for s in subsets])  # (subset, device)
    choice = np.array(list(itertools.product(range(len(subsets)), repeat=E)))  # (copy set, expert) -> subset
    on = member[choice]
    per = on.sum(axis=1)
    ok = (per <= slots).all(axis=1) & (per.sum(axis=1) <= E + redundant)
    bound = closed_form_split(load, on[ok], fixed)
    i = int(np.argmin(bound))
    winner = [subsets[j] for j in choice[ok][i]]
    assert best_split(load, winner, devices, fixed) == pytest.approx(bound[i], rel=1e-6, abs=1e-6)
    return float(bound[i])


def test_closed_form_split_matches_max_flow_on_random_copy_sets():
    """The brute force's pricing against the max-flow bisection, copy set by copy set."""
    rng = np.random.default_rng(0)
    for _ in range(25):
        devices, E = int(rng.integers(2, 5)), int(rng.integers(1, 6))
        load = rng.integers(1, 12, size=E).astype(float)
        copies = [tuple(rng.choice(devices, size=int(rng.integers(1, devices + 1)), replace=False))
                  for _ in range(E)]
        on = np.array([[[d in c for d in range(devices)] for c in copies]])
        fixed = float(rng.choice([0.0, 1.5, 4.0]))
        assert closed_form_split(load, on, fixed)[0] == pytest.approx(best_split(load, copies, devices, fixed),
                                                                      rel=1e-6, abs=1e-6), (load, copies, fixed)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", [
    dict(load=[10, 3, 2, 1], devices=3, slots=2, redundant=1, fixed=0.0),
    dict(load=[9, 7, 4, 4, 1], devices=3, slots=2, redundant=1, fixed=1.5),
    dict(load=[12, 2, 1], devices=2, slots=3, redundant=2, fixed=2.0),
])
def test_ilp_matches_brute_force_on_bottleneck(case, solver):
    p = small_problem(case["load"], case["devices"], case["slots"], case["redundant"], fixed=case["fixed"])
    expected = brute_force(tuple(case["load"]), case["devices"], case["slots"], case["redundant"], case["fixed"])
    res = solve_ilp(p, IlpOptions(solver=solver, traffic_weight=0.0, time_limit=20, decomposition="flat"))
    got = score(res.placement, p).bottleneck_time
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert res.reports[0].gap <= 1e-3


@pytest.mark.parametrize("solver", SOLVERS)
def test_ilp_matches_brute_force_with_traffic(solver):
    """No replicas: every assignment of 5 experts to 3 devices (2 nodes), bottleneck + traffic."""
    load = np.array([8.0, 6.0, 5.0, 3.0, 2.0])
    rng = np.random.default_rng(4)
    D = 3
    cost = np.array([[0, 1, 4], [1, 0, 4], [4, 4, 0]], dtype=float)
    p = small_problem(load, D, slots=2, cost=cost, nodes=2)
    dispatch = rng.dirichlet(np.ones(D), size=5).T * load  # uneven sources: placement changes traffic
    p = PlacementProblem(p.load, dispatch[None], p.flow, p.top_k, np.array([0, 0, 1]), cost, p.slots, 0, p.time_model)
    w = 1.0
    c = (dispatch.T @ (cost / cost.max())) / D  # the ILP's normalised traffic cost in token units
    best = np.inf
    for assign in itertools.product(range(D), repeat=5):
        per = np.bincount(assign, minlength=D)
        if (per > 2).any():
            continue
        dev = np.bincount(assign, weights=load, minlength=D)
        best = min(best, dev.max() + w * c[np.arange(5), assign].sum())
    res = solve_ilp(p, IlpOptions(solver=solver, traffic_weight=w, time_limit=20, decomposition="flat"))
    assert res.reports[0].objective == pytest.approx(best, rel=1e-6)


def skewed_problem(experts=64, devices=16, per_node=8, redundant=8, layers=2, affinity=0.6, seed=0):
    r = SyntheticRouting(RoutingModelConfig(popularity={"kind": "zipf", "alpha": 0.9}, affinity=affinity),
                         experts, 4, layers, seed)
    node_of = np.arange(devices) // per_node
    cost = np.where(node_of[:, None] == node_of[None, :], 1e-6, 5e-6)
    np.fill_diagonal(cost, 0)
    return problem_from_routing(r, np.full(devices, 32), layers, node_of=node_of, token_cost=cost,
                                redundant=redundant, steps=3)


def test_every_method_places_every_expert_within_slots_and_budget():
    p = skewed_problem()
    opts = IlpOptions(time_limit=1, decomposition="neighbourhood")  # "ilp" stops at the limit: a feasible incumbent
    results = compare_methods(p, list(BASELINES) + ["ilp_load", "ilp"], opts)
    for r in results:
        shares = r.placement.shares()
        assert np.allclose(shares.sum(axis=2), 1.0), r.method
        copies = (shares > 0).sum(axis=1)
        assert (copies <= p.slots).all(), r.method
        assert (copies.sum(axis=1) <= p.budget).all(), r.method
        total = np.einsum("le,led->l", p.load, shares)  # token conservation
        assert np.allclose(total, p.load.sum(axis=1)), r.method
    by = {r.method: r for r in results}
    # exact bottleneck objective: never worse than the greedy it starts from, better than no balancing
    assert by["ilp_load"].score.bottleneck_tokens <= by["eplb"].score.bottleneck_tokens + 1e-9
    assert by["eplb"].score.bottleneck_tokens < by["contiguous"].score.bottleneck_tokens


def test_affinity_objective_cuts_cross_device_flow():
    p = skewed_problem(experts=16, devices=4, per_node=4, redundant=0, layers=2, affinity=0.8)
    load_only = run_method("ilp_load", p, IlpOptions(time_limit=5))
    aware = run_method("ilp_affinity", p, IlpOptions(time_limit=5))
    assert aware.score.flow_cross_device < load_only.score.flow_cross_device
    # within the 2% slack on every layer's bottleneck
    assert aware.score.bottleneck_tokens <= load_only.score.bottleneck_tokens * 1.02 + 1e-6


def test_infeasible_inputs_are_explained():
    with pytest.raises(ValueError, match="do not fit"):
        small_problem([1, 1, 1, 1, 1], devices=2, slots=2).check()
    with pytest.raises(ValueError, match="redundant copies asked"):
        small_problem([1, 1, 1], devices=2, slots=2, redundant=2).check()
    with pytest.raises(ValueError, match="unknown placement method"):
        run_method("magic", small_problem([1, 1], 2, 1))
    with pytest.raises(ValueError, match="unknown solver"):
        solve_ilp(small_problem([1, 1], 2, 1), IlpOptions(solver="gurobi"))


def test_check_placement_rejects_broken_placements():
    p = small_problem([4, 2, 1], devices=2, slots=2)
    shares = np.zeros((1, 3, 2))
    shares[0, 0, 0] = shares[0, 1, 0] = shares[0, 2, 0] = 1.0  # three copies on a 2-slot device
    with pytest.raises(ValueError, match="slots"):
        check_placement(from_share_matrices(shares), p)


def test_placement_file_round_trips_uneven_replica_shares(tmp_path):
    shares = np.zeros((2, 3, 2))
    shares[:, 0] = [0.7, 0.3]
    shares[:, 1, 0] = 1.0
    shares[0, 2, 1] = shares[1, 2, 0] = 1.0
    pl = from_share_matrices(shares)
    save_placement_file(pl, tmp_path / "p.yaml")
    back = load_placement_file(tmp_path / "p.yaml", 3, 2, 2)
    assert np.allclose(back.shares(), shares)
    text = (tmp_path / "p.yaml").read_text()
    assert "shares" in text


def test_bad_shares_in_placement_file_name_the_field(tmp_path):
    (tmp_path / "p.yaml").write_text("experts: [[0, 1], 1]\nshares: [[0.5, 0.6], 1]\n")
    from moesim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shares\[0\]\[0\]"):
        load_placement_file(tmp_path / "p.yaml", 2, 2, 3)


def test_ilp_placement_simulates_no_slower_than_contiguous_on_skewed_trace(tmp_path):
    """The shipped trace (real routing, skewed): place, then simulate both through the CLI's library."""
    from moesim.studies.placement_study import run_study

    from moesim.simulator.scenario import load_scenario

    sc = load_scenario(EXAMPLES / "tiny-moe-trace-8xh100.yaml")
    sc.config.workload.steps = 4
    study = run_study(sc, ["contiguous", "ilp"], steps=4, redundant=4, slots=2,
                      options=IlpOptions(time_limit=5), simulate=True)
    t = {m: s["step_latency_s"]["mean"] for m, s in study.simulated.items()}
    assert t["ilp"] <= t["contiguous"] * (1 + 1e-9)
    rows = {r.method: r.score for r in study.results}
    assert rows["ilp"].bottleneck_time <= rows["contiguous"].bottleneck_time


PLACE = in_background("test_place_cli_writes_a_file_simulate_accepts", "-m", "moesim.cli", "place",
                      EXAMPLES / "mixtral-decode-8xh100.yaml", "--methods", "contiguous,eplb,ilp_load", "--steps", "2",
                      "--redundant", "8", "--slots", "2", "--time-limit", "0.05", "--out", "{out}/placed",
                      env={"COLUMNS": "200"})  # `moesim place` in a fresh Python, beside the other tests


def test_place_cli_writes_a_file_simulate_accepts(background, tmp_path):
    rc, printed, err, folder = background.run(PLACE)
    assert rc == 0, err
    out = folder / "placed"
    assert (out / "placement.yaml").exists() and (out / "methods.csv").exists()
    assert "ilp_load" in printed and "eplb" in printed
    import yaml

    cfg = yaml.safe_load((EXAMPLES / "mixtral-decode-8xh100.yaml").read_text())
    cfg["model"] = str(EXAMPLES / cfg["model"]) if cfg["model"].endswith(".yaml") else cfg["model"]
    cfg["placement"] = {"file": str(out / "placement-eplb.yaml")}
    cfg["workload"]["steps"] = 2
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_place_cli_explains_too_many_slots(tmp_path, capsys):
    rc = main(["place", str(EXAMPLES / "mixtral-decode-8xh100.yaml"), "--methods", "eplb", "--slots", "100000",
               "--out", str(tmp_path)])
    assert rc == 2
    assert "memory for" in capsys.readouterr().err
