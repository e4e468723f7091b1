"""The routing generators a scenario may name (`workload.routing.generator`), each with its facts.

A generator builds the scenario's routing source from the validated config and says what it
needs: the routing field it reads, whether it may draw per-token ids (`per_token`, `max_nodes`),
whether it replays a trace (which fixes the tokens per step), and how summary.json describes it.
compose.ROUTING_GENERATORS names them; the config check, resolution, the summary and the CLI read
these facts instead of comparing names. A new generator is its object (here or in its own file)
plus one line in that table, and its parameters in the routing config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from moesim.errors import TraceError
from moesim.placement import Placement
from moesim.simulator.config import RoutingConfig, ScenarioConfig, ScenarioFile, config_error, config_file
from moesim.simulator.machine import Machine
from moesim.workloads import ModelSpec
from moesim.workloads.load_matrix import read_load_matrix
from moesim.workloads.load_matrix_routing import LoadMatrixRouting
from moesim.workloads.node_limited_routing import NodeLimitedRouting, PerTokenRouting
from moesim.workloads.routing import FixedRouting, PopularityRouting, RoutingSource, uniform_routing, zipf_routing
from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting, load_routing_model
from moesim.workloads.trace_routing import TraceRouting

if TYPE_CHECKING:
    from moesim.simulator.scenario import Parallelism


@dataclass(frozen=True)
class RoutingInputs:
    """What a generator builds its source from: the config and what resolution settled before it."""

    sf: ScenarioFile
    cfg: ScenarioConfig  # the scenario's copy (a trace's tokens per device filled in)
    model: ModelSpec
    trace: object | None  # the opened trace, for a generator that replays one
    num_devices: int
    par: "Parallelism"
    moe_tokens: np.ndarray
    placement: Placement
    machine: Machine


@dataclass(frozen=True)
class RoutingGenerator:
    """One routing generator and its facts."""

    name: str
    build: Callable[[RoutingInputs], RoutingSource]
    needs: str | None = None  # the routing field it reads, which must then be given
    needs_what: str = ""  # what that field holds, for the error
    per_token: bool = False  # may draw each token's expert ids (per_token / max_nodes)
    replays_trace: bool = False  # replays a trace file, which fixes the tokens per step
    describe: Callable[[RoutingConfig, RoutingSource], dict[str, Any]] = lambda rc, routing: {}


def _fixed(x: RoutingInputs) -> RoutingSource:
    rc, sf = x.cfg.workload.routing, x.sf
    experts, top_k = x.model.moe.num_experts, x.model.moe.top_k
    counts = np.asarray(rc.counts)
    if counts.shape != (x.num_devices, experts):
        raise config_error(sf, "workload.routing.counts", f"expected {x.num_devices} rows (devices) of {experts} "
                           f"counts (experts), got shape {counts.shape}")
    if (counts < 0).any() or not np.array_equal(counts.sum(axis=1), x.moe_tokens * top_k):
        raise config_error(sf, "workload.routing.counts", "each device's row must be non-negative and "
                           f"sum to top_k x its tokens = {(x.moe_tokens * top_k).tolist()}")
    return FixedRouting(experts, top_k, counts)


def _trace(x: RoutingInputs) -> RoutingSource:
    rc = x.cfg.workload.routing
    try:
        return TraceRouting(x.trace, x.num_devices, x.par.tp, rc.source_map, rc.repeat)
    except TraceError as err:
        raise config_error(x.sf, "workload.routing.source_map", str(err)) from None


def _synthetic(x: RoutingInputs) -> SyntheticRouting:
    """The composable generator from an inline config or a generator YAML (e.g. `moesim trace fit`)."""
    field = "workload.routing.synthetic"
    spec: RoutingModelConfig | str = x.cfg.workload.routing.synthetic
    if isinstance(spec, str):
        spec = load_routing_model(config_file(x.sf, field, spec, "generator file"))
    try:
        return SyntheticRouting(spec, x.model.moe.num_experts, x.model.moe.top_k, len(x.model.moe_layers), x.cfg.seed)
    except ValueError as err:
        raise config_error(x.sf, field + ".popularity", str(err)) from None


def _load_matrix(x: RoutingInputs) -> LoadMatrixRouting:
    """Replay of measured expert loads (one file or a history of windows), checked against the model."""
    rc, sf = x.cfg.workload.routing, x.sf
    files = [rc.loads] if isinstance(rc.loads, str) else rc.loads
    history = read_load_matrix([Path(f) if Path(f).is_absolute() else sf.base_dir / f for f in files], x.model)
    try:
        return LoadMatrixRouting(history, x.model.moe.top_k, rc.window, rc.steps_per_window, x.cfg.seed)
    except ValueError as err:
        raise config_error(sf, "workload.routing.window", str(err)) from None


def _moe(x: RoutingInputs) -> tuple[int, int, int]:
    return x.model.moe.num_experts, x.model.moe.top_k, len(x.model.moe_layers)


UNIFORM = RoutingGenerator("uniform", lambda x: uniform_routing(*_moe(x), x.cfg.seed), per_token=True)
ZIPF = RoutingGenerator("zipf", lambda x: zipf_routing(*_moe(x), x.cfg.workload.routing.alpha, x.cfg.seed,
                                                       x.cfg.workload.routing.shuffle), per_token=True,
                        describe=lambda rc, routing: {"alpha": rc.alpha, "shuffle": rc.shuffle})
FIXED = RoutingGenerator("fixed", _fixed, needs="counts", needs_what="counts[source_device][expert]")
TRACE = RoutingGenerator("trace", _trace, needs="trace", needs_what="a trace file", replays_trace=True,
                         describe=lambda rc, routing: {"trace": str(routing.trace.path), "source_map": routing.mode,
                                                       "repeat": rc.repeat})
SYNTHETIC = RoutingGenerator("synthetic", _synthetic, needs="synthetic", needs_what="inline or a YAML path",
                             describe=lambda rc, routing: {"model": routing.cfg.model_dump(
                                 exclude={"popularity": {"weights"}})})
LOAD_MATRIX = RoutingGenerator("load_matrix", _load_matrix, needs="loads", needs_what="a load file or a list of them",
                               per_token=True,
                               describe=lambda rc, routing: {"loads": routing.history.describe(), "window": rc.window,
                                                             "steps_per_window": rc.steps_per_window})


def build_routing(generator: RoutingGenerator, x: RoutingInputs) -> RoutingSource:
    """The generator's source, drawn token by token (node-limited where asked) if the config says so."""
    rc = x.cfg.workload.routing
    routing = generator.build(x)
    if not (rc.per_token or rc.max_nodes is not None):
        return routing
    per_token = (lambda r: _per_token_routing(x, r))
    if isinstance(routing, LoadMatrixRouting):
        return routing.map_sources(per_token)
    return per_token(routing)


def _per_token_routing(x: RoutingInputs, counts_routing: PopularityRouting) -> RoutingSource:
    """The popularity drawn token by token, node-limited where `max_nodes` is given (a token's
    experts on at most that many nodes of its EP group, by the primary copies' nodes)."""
    rc = x.cfg.workload.routing
    pop = counts_routing.popularity
    try:
        if rc.max_nodes is None:
            return PerTokenRouting(counts_routing.num_experts, counts_routing.top_k, pop, x.cfg.seed)
        group_node = x.machine.node_of[::x.par.moe_tp][: x.placement.num_devices]
        group_node = group_node - group_node.min()
        return NodeLimitedRouting(counts_routing.num_experts, counts_routing.top_k, pop,
                                  group_node[primary_devices(x.placement)], rc.max_nodes, x.cfg.seed)
    except ValueError as err:
        raise config_error(x.sf, "workload.routing.max_nodes", str(err)) from None


def primary_devices(placement: Placement) -> np.ndarray:
    """(layers, experts) group-local device of each expert's first copy."""
    out = np.full((placement.num_layers, placement.num_experts), -1, dtype=np.int64)
    for layer in range(placement.num_layers):
        live = placement.slot_share[layer] > 0
        experts, devices = placement.slot_expert[layer][live], placement.slot_device[layer][live]
        first = np.unique(experts, return_index=True)[1]
        out[layer, experts[first]] = devices[first]
    return out
