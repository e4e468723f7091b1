"""Contract tests that guard the seams: one source for the phase list (reports included), SimPy's
delayed-success mechanism the network relies on, `hardware.scale` reaching every device the
roofline compares, config names becoming objects in compose.py only (a new dispatch algorithm or
overlap schedule is its own code plus one line there), and plans that are plain data (built in a
forked child or a thread, the run is the same)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import simpy

from moesim.errors import ConfigError
from moesim.hardware_profiles import load_device
from moesim.reports import compare_report, run_report
from moesim.simulator.config import config_from_dict
from moesim.simulator.network import Arrival
from moesim.simulator.phases import PHASES
from moesim.simulator.roofline import scenario_roofline
from moesim.simulator.scenario import resolve

from conftest import EXAMPLES, ROOT, example_config, toy_file


def test_reports_order_and_colour_every_phase_the_engine_records():
    assert run_report.PHASE_ORDER == list(PHASES)
    assert compare_report.PHASE_ORDER is run_report.PHASE_ORDER
    missing = [p for p in PHASES if p not in run_report.PHASE_COLORS]
    assert not missing, f"phases without a colour: {missing}"
    colours = [run_report.PHASE_COLORS[p] for p in PHASES]
    assert len(set(colours)) == len(colours), "two phases share a colour"


def test_an_arrival_fires_after_its_delay_with_no_value():
    env = simpy.Environment()
    seen = []

    def waiter(ev):
        value = yield ev
        seen.append((env.now, value))

    ev = Arrival(env)
    env.process(waiter(ev))
    env.run(until=0.5)
    ev.fire_after(1.5)
    env.run()
    assert seen == [(2.0, None)]
    late = Arrival(env)
    env.process(waiter(late))
    late.fire_after(-1.0)  # a time already past fires now, never in the past
    env.run()
    assert seen[-1] == (2.0, None)


def test_hardware_scale_reaches_the_other_devices_of_the_roofline():
    cfg = example_config("mixtral-decode-8xh100.yaml")
    base = resolve(config_from_dict(cfg, EXAMPLES))
    cfg["hardware"]["scale"] = {"memory_bandwidth": 2.0, "flops": 2.0}
    fast = resolve(config_from_dict(cfg, EXAMPLES))
    other = [load_device("MI300X")]
    t0 = scenario_roofline(base, others=other)
    t1 = scenario_roofline(fast, others=other)
    slow_mi, fast_mi = (t[t["device"] == "MI300X"]["time_s"].sum() for t in (t0, t1))
    slow_h, fast_h = (t[t["device"] == base.device.name]["time_s"].sum() for t in (t0, t1))
    assert fast_mi < 0.7 * slow_mi  # twice the roofs (less the fixed overheads); unscaled it was equal
    assert fast_mi / slow_mi == pytest.approx(fast_h / slow_h, rel=0.15)  # the same what-if on both devices


# ---- names become objects in compose.py only ----------------------------------------------------

PRODUCTION = ["simulator", "studies", "reports", "moesim", "placement", "workloads", "validation", "kernels",
              "hardware_profiles"]
STAGE_OBJECTS = {"Direct", "Dedup", "Hierarchical", "LowLatency", "TokenStays", "AllGather", "SEQUENTIAL",
                 "TWO_BATCH", "SHORTCUT", "Fastest", "Threshold", "CoProcess", "UNIFORM", "ZIPF", "FIXED", "TRACE",
                 "SYNTHETIC", "LOAD_MATRIX", "GROUPED", "PER_EXPERT", "LFU", "PINNED", "OraclePrefetch",
                 "AffinityPrefetch", "PredictorPrefetch", "PREFILL_FIRST", "PREEMPT"}


def outside_compose():
    """(path, AST node) of every node of every production module but compose.py."""
    for folder in PRODUCTION:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "compose.py":
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                    yield path.relative_to(ROOT), node


def test_dispatch_algorithms_and_schedules_are_built_in_compose_only():
    """No production module but compose.py imports an algorithm's class, a schedule, a unit rule,
    a routing generator, a kernel form, a cache or prefetch policy or a serving order other than
    the defaults: nothing else can keep its own table of names (before issue 25 five files re-read
    the algorithm's name)."""
    def sibling(path: Path, module: str | None) -> bool:  # a rule built on another of its own package
        return module is not None and "/".join(module.split(".")[1:-1]) == path.parent.as_posix()

    found = [f"{path}: {a.name}" for path, node in outside_compose() if isinstance(node, ast.ImportFrom)
             and not sibling(path, node.module) for a in node.names if a.name in STAGE_OBJECTS]
    assert found == []


COMPOSED = {"Engine", "OffloadManager", "IterationCache", "StepPipeline", "StepCosts", "FixedBatch"}


def test_the_engine_and_what_it_runs_are_composed_in_compose_only():
    """Only compose.py constructs the engine, its offload manager, the iteration cache, the step
    pipeline and its costs (before issue 25 the engine's constructor composed most of them)."""
    found = [f"{path}:{node.lineno}: {node.func.id}(...)" for path, node in outside_compose()
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in COMPOSED]
    assert found == []


@dataclass(frozen=True)
class Teleport:
    """A test's own dispatch algorithm: direct traffic, priced as DeepEP's low-latency kernels."""

    name: str = "teleport"
    comm_kind: str = "low_latency"
    stages: int = 1
    flow_from_top1: bool = False

    def row_cost(self, p):
        return p.base

    def inter_node_rows_per_row(self, p):
        return 1.0

    def __call__(self, device_rows, rows, slot_device, tokens, layout, token_ids=None):
        from moesim.simulator.dispatch import Traffic

        return Traffic([device_rows * layout.dispatch_bytes], [np.transpose(device_rows, (0, 2, 1)) * layout.combine_bytes])


def _toy_two_nodes(tmp_path: Path, **policies) -> Path:
    cfg = {"name": "toy-2x2", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
           "parallelism": {"ep": 4, "tp": 1, "dp": 4},
           "workload": {"phase": "decode", "batch_size": 16, "kv_len": 99, "steps": 3,
                        "routing": {"generator": "zipf", "alpha": 1.2}},
           "policies": policies, "outputs": {"trace_steps": 0}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    return toy_file(tmp_path, cfg)


def test_a_new_dispatch_algorithm_is_its_class_and_one_line_in_compose(tmp_path, monkeypatch):
    """Plugged in by one line of compose's table, the test's algorithm is what the config check,
    the engine, the op rows, the placement problem and the run estimate all use: it runs exactly
    as low_latency (the same traffic and kernel kind) in each of them."""
    from moesim.simulator import compose
    from moesim.simulator.roofline import scenario_op_rows
    from moesim.simulator.run import simulate
    from moesim.simulator.run_estimate import estimate_run
    from moesim.simulator.scenario import load_scenario
    from moesim.studies.placement_inputs import pair_token_cost

    monkeypatch.setitem(compose.DISPATCH_ALGORITHMS, "teleport", lambda sc: Teleport())  # the one line
    new = load_scenario(_toy_two_nodes(tmp_path / "new", dispatch={"algorithm": "teleport"}))
    old = load_scenario(_toy_two_nodes(tmp_path / "old", dispatch={"algorithm": "low_latency"}))
    got, want = simulate(new), simulate(old)
    assert got.summary["step_latency_s"] == want.summary["step_latency_s"]
    np.testing.assert_array_equal(got.raw.end, want.raw.end)
    comm = [scenario_op_rows(sc, 0, 1, 0).query("kind == 'comm'")[["bytes", "time_s"]] for sc in (new, old)]
    assert comm[0].equals(comm[1]) and len(comm[0])
    np.testing.assert_array_equal(pair_token_cost(new), pair_token_cost(old))
    assert estimate_run(new).memory_bytes == estimate_run(old).memory_bytes


def shared_first_program(shape):
    """A test's own overlap schedule: the shared experts run before the dispatch leaves (nothing
    overlaps the all-to-all)."""
    from moesim.simulator.program import Program, compute, submit, wait

    out = []
    for layer, moe in enumerate(shape.is_moe):
        out.append(compute("attention", layer))
        if not moe:
            out.append(compute("dense_ffn", layer))
            continue
        out += [compute("shared_expert", layer), submit("dispatch", layer), wait("dispatch", "dispatch", layer),
                compute("expert", layer), submit("combine", layer), wait("combine", "combine", layer)]
    return Program(tuple(out))


def test_a_new_overlap_schedule_is_its_program_and_one_line_in_compose(tmp_path, monkeypatch):
    """Plugged in by one line of compose's table, the test's schedule passes the config check and
    runs on the one interpreter: the same plans cost the same compute, its shared experts end
    before its dispatch starts, and hiding nothing it is never faster than overlap none."""
    from moesim.simulator import compose
    from moesim.simulator.overlap.schedules import Schedule
    from moesim.simulator.phases import PHASE_INDEX
    from moesim.simulator.run import simulate

    monkeypatch.setitem(compose.OVERLAP_SCHEDULES, "shared_first", Schedule("shared_first", shared_first_program))
    new = simulate(_toy_two_nodes(tmp_path / "new", overlap="shared_first"))
    old = simulate(_toy_two_nodes(tmp_path / "old", overlap="none"))
    dur_new, dur_old = (r.raw.end - r.raw.start for r in (new, old))
    for phase in ("attention", "shared_expert", "expert"):
        i = PHASE_INDEX[phase]
        np.testing.assert_allclose(np.nan_to_num(dur_new[..., i]), np.nan_to_num(dur_old[..., i]), rtol=1e-12)
    shared, dispatch = PHASE_INDEX["shared_expert"], PHASE_INDEX["dispatch"]
    moe = ~np.isnan(new.raw.start[..., dispatch])
    assert (new.raw.end[..., shared][moe] <= new.raw.start[..., dispatch][moe] + 1e-15).all()
    assert np.nanmax(new.raw.end) >= np.nanmax(old.raw.end) * (1 - 1e-12)


@dataclass(frozen=True)
class Alternate:
    """A test's own unit rule: every op of a chain on the accelerator; expert copy j of a device's
    layer on unit j mod K, all units at once."""

    units: tuple
    name: str = "alternate"

    def part(self, rows_on, handoff):
        return rows_on(self.units[0]), []

    def experts(self, options):
        from moesim.simulator.unit_rules import ExpertSplit

        Lm, J, ep = options.onehot.shape
        slot_unit = np.broadcast_to(np.arange(J) % len(self.units), (Lm, J)).copy()
        present = np.stack([np.einsum("lj,ljd->ld", (slot_unit == k).astype(float), options.onehot) > 0
                            for k in range(len(self.units))])
        return ExpertSplit(slot_unit, present)


def test_a_new_unit_rule_is_its_class_and_one_line_in_compose(tmp_path, monkeypatch, toy_config):
    """Plugged in by one line of compose's table, the test's rule passes the config check (a unit
    name or a rule's name) and runs from YAML: the plan puts the copies where the rule says and a
    device's expert time is its slower unit's."""
    from moesim.simulator import compose
    from moesim.simulator.compose import pipeline_for
    from moesim.simulator.roofline import scenario_plan
    from moesim.simulator.run import simulate
    from moesim.simulator.scenario import load_scenario
    from test_compute_units import toy_pim

    monkeypatch.setitem(compose.UNIT_RULES, "alternate", lambda sc: Alternate(tuple(sc.machine.units.values())))
    sc = load_scenario(toy_pim(tmp_path, toy_config, expert="alternate"))
    pipe = pipeline_for(sc)
    plan = scenario_plan(sc, 0, pipe)
    assert plan.slot_unit[0, 0].tolist() == [0, 1, 0, 1]
    for d in range(2):
        rows = pipe.op_rows(plan, 0, d).query("phase == 'expert'")
        per_unit = rows.groupby(rows.unit.str.replace(" link", "")).time_s.sum()
        assert plan.expert[0, d] == pytest.approx(per_unit.max(), rel=1e-12)
    assert simulate(sc).summary["step_latency_s"]["mean"] > 0
    with pytest.raises(ConfigError, match="unit .alternate. is not a unit"):  # without its line, not a rule
        monkeypatch.delitem(compose.UNIT_RULES, "alternate")
        load_scenario(toy_pim(tmp_path / "again", toy_config, expert="alternate"))


def test_plans_built_in_a_forked_child_or_a_thread_give_the_same_run(monkeypatch):
    """Plans are plain data (no back-reference to the pipeline): pickled through the plan feed's
    pipe they replay exactly as the thread's."""
    from moesim.simulator import plan_feed
    from moesim.simulator.compose import engine_for
    from moesim.simulator.metrics import summarize

    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["steps"] = 12
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    runs = {}
    for name, minimum in (("process", 1), ("thread", 10**9)):
        monkeypatch.setattr(plan_feed, "MIN_STEPS_FOR_PROCESS", minimum)
        monkeypatch.setenv("MOESIM_PLAN_FEED", name)
        engine = engine_for(sc)
        kind = type(engine._feed).__name__
        runs[name] = (kind, engine.run())
    assert runs["process"][0] == "ProcessFeed" and runs["thread"][0] == "ThreadFeed"
    a, b = runs["process"][1], runs["thread"][1]
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.end, b.end)
    assert summarize(sc, a).summary == summarize(sc, b).summary


# ---- one memory ledger ------------------------------------------------------------------------

@pytest.mark.parametrize("moe_tp", [1, 2])
def test_every_memory_figure_comes_from_the_one_ledger(moe_tp):
    """The scenario's estimate, a study's re-placed scenario (the same placement), the placement
    problem's expert slots and the serving ranks' budget agree: before issue 25 the budget was
    written four times and a re-placed MoE-TP scenario counted whole experts on every shard."""
    from moesim.simulator.serving.setup import rank_memory
    from moesim.studies.placement_inputs import expert_bytes, memory_slots
    from moesim.studies.placement_study import with_placement

    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["parallelism"] = {"tp": 1, "moe_tp": moe_tp}
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    again = with_placement(sc, sc.placement)
    np.testing.assert_array_equal(again.memory.per_device, sc.memory.per_device)
    assert again.memory.total == sc.memory.total
    capacity = sc.device.memory.capacity
    assert sc.memory_budget == pytest.approx(capacity * (1 - cfg["policies"].get("memory_reserve", 0.1)))
    other = float((sc.memory.per_device - sc.memory.expert_weights).max())
    assert memory_slots(sc) == int((sc.memory_budget - other) // expert_bytes(sc))

    serving = example_config("serving-mixtral-8xh100.yaml")
    ssc = resolve(config_from_dict(serving, EXAMPLES))
    mem = rank_memory(ssc)
    assert mem.capacity - mem.runtime_reserve == pytest.approx(ssc.memory_budget, rel=1e-15)
    assert mem.weights + mem.activations + mem.comm_buffers + mem.kv_cache == pytest.approx(ssc.memory_budget)


def test_resolving_leaves_the_validated_config_as_it_was():
    """A value resolution derives (a trace's mean tokens per device) goes into the scenario's copy
    of the config, not into the file's validated config (issue 25: resolve mutated it)."""
    from moesim.simulator.config import load_config

    sf = load_config(EXAMPLES / "tiny-moe-trace-8xh100.yaml")
    before = sf.config.model_dump()
    sc = resolve(sf)
    assert sf.config.model_dump() == before and sf.config.workload.tokens_per_device is None
    assert sc.config.workload.tokens_per_device == int(sc.moe_tokens.mean()) > 0


# ---- every named slot of the config: its table in compose.py, its name compared nowhere else ----

def _models(model, seen=None):
    """Every pydantic model reachable from `model` through its fields."""
    import typing

    from pydantic import BaseModel

    seen = seen if seen is not None else set()
    if model in seen:
        return seen
    seen.add(model)
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models(t, seen)
            stack.extend(typing.get_args(t))
    return seen


def slot_tables() -> dict[str, str]:
    """`Model.field` -> the compose table its config check reads, for every named slot of the config."""
    import typing

    from moesim.simulator.config import ScenarioConfig

    out = {}
    for model in _models(ScenarioConfig):
        for name, info in model.model_fields.items():
            metadata = list(info.metadata)
            for t in [info.annotation, *typing.get_args(info.annotation)]:
                metadata += list(getattr(t, "__metadata__", ()))
            for m in metadata:
                table = getattr(getattr(m, "func", None), "table", None)
                if table is not None:
                    out[f"{model.__name__}.{name}"] = table
    return out


def compose_tables() -> dict[str, dict]:
    from moesim.simulator import compose

    return {name: value for name, value in vars(compose).items() if name.isupper() and isinstance(value, dict)}


def test_every_named_slot_of_the_config_is_checked_against_its_table_in_compose():
    """Each table of compose.py is what one config field's check reads (policies.units' rules
    are read by the scenario's unit check, since a unit's name is also allowed there)."""
    slots = slot_tables()
    assert set(slots.values()) | {"UNIT_RULES"} == set(compose_tables())
    assert {"RoutingConfig.generator", "PlacementConfig.policy", "DispatchConfig.algorithm",
            "PoliciesConfig.overlap", "PoliciesConfig.expert_kernel", "CacheConfig.policy", "PrefetchConfig.policy",
            "SchedulerConfig.order", "SchedulerConfig.kv_policy"} <= set(slots)


def test_no_module_but_compose_compares_a_slot_with_one_of_its_names():
    """Outside compose.py no production code compares a named slot's value with one of the names
    (before issue 25 routing, placement, kernel form, cache, prefetch and serving order each
    branched on their names where used)."""
    tables = compose_tables()
    names = {n for table in tables.values() for n in table}
    fields = {slot.split(".")[1] for slot in slot_tables()} | {"attention", "dense_ffn", "shared_expert", "expert"}

    def is_slot(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr in fields

    def literals(node) -> set:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(literals(e) for e in node.elts)) if node.elts else set()
        return set()

    found = []
    for path, node in outside_compose():
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_slot(s) for s in sides) and names & set().union(*(literals(s) for s in sides)):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def _decode_first(decodes, prefills, items):
    """A test's own serving order: an iteration with decodes runs only decodes."""
    decodes()
    if not items:
        prefills()


def test_a_new_serving_order_is_its_function_and_one_line_in_compose(monkeypatch):
    """Plugged in by one line of compose's table, the test's order passes the config check and
    the scheduler runs it: once a request decodes, no iteration mixes prefill with decode work,
    and every request still finishes with all its tokens."""
    import pandas as pd

    from moesim.simulator import compose
    from moesim.simulator.serving.config import ServingConfig
    from moesim.simulator.serving.source import ServingSource
    from moesim.workloads.batching import IterationOrder
    from test_serving import drive

    monkeypatch.setitem(compose.SERVING_ORDERS, "decode_first", IterationOrder("decode_first", _decode_first))
    cfg = ServingConfig(arrivals={"process": "poisson", "rate": 1.0}, prompt_tokens={"dist": "fixed", "value": 1},
                        output_tokens={"dist": "fixed", "value": 1}, num_requests=3,
                        scheduler={"max_batch_tokens": 16, "max_running": 4, "order": "decode_first"})
    requests = pd.DataFrame({"request_id": [0, 1, 2], "arrival_s": [0.0, 0.5, 1.5], "prompt_tokens": [3, 2, 4],
                             "output_tokens": [3, 2, 2]})
    source = ServingSource(cfg, requests, replicas=1, tp=1, kv_capacity_tokens=1000.0,
                           policy=compose.scheduler_policy(cfg))
    drive(source, 1.0)
    kinds = [{item.phase for item in it.batches[0]} for it in source.iterations]
    assert all(len(k) == 1 for k in kinds) and {"decode"} in kinds and {"prefill"} in kinds
    emitted = sum(len(it.emitted[0]) for it in source.iterations)
    assert emitted == int(requests.output_tokens.sum())
    monkeypatch.delitem(compose.SERVING_ORDERS, "decode_first")
    with pytest.raises(ValueError, match="unknown scheduler order 'decode_first'"):
        ServingConfig(arrivals={"process": "poisson", "rate": 1.0}, prompt_tokens={"dist": "fixed", "value": 1},
                      output_tokens={"dist": "fixed", "value": 1}, num_requests=1, scheduler={"order": "decode_first"})


def test_every_subpackage_is_listed_for_a_wheel():
    """A folder with an __init__.py under a mapped package is in pyproject's `packages`, or a
    non-editable install (a wheel) leaves it out while the editable one still imports it."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for name, folder in tool["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder)
            found.add(".".join([name, *rel.parts]))
    assert not found - listed, f"subpackages missing from pyproject packages: {sorted(found - listed)}"
