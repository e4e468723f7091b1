"""Resolve a validated config into a Scenario: model, cluster, topology, placement, routing.

This is where cross-field rules live (they need the model and the cluster): tp x dp equals
the device count, ep divides the devices and the experts, tp divides the attention heads,
and the workload fits in device memory. Every failure names the config file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.errors import ConfigError
from moesim.hardware_profiles import ClusterSpec, DeviceSpec, load_cluster, load_device
from moesim.hardware_profiles.topology import Routes
from moesim.placement import Placement, load_placement_file
from moesim.placement.placement import with_redundant_slots
from moesim.simulator.config import (ItemsRelativeTo, ScenarioConfig, ScenarioFile, WorkloadConfig, config_error,
                                     config_file, load_config)
from moesim.simulator.cost_model import CostModel
from moesim.simulator.machine import Machine, Scale, build_machine
from moesim.simulator.expert_precision import ExpertPrecision, expert_precision
from moesim.simulator.memory import MemoryEstimate
from moesim.simulator.memory_ledger import resident_memory, usable_bytes, workload_memory
from moesim.simulator.offload.setup import OffloadSetup, OffloadSetupError
from moesim.simulator.routing_generators import RoutingInputs, build_routing
from moesim.units import dtype_bytes, fmt_bytes
from moesim.workloads import ModelSpec, load_model
from moesim.errors import TraceError
from moesim.workloads.routing import RoutingSource
from moesim.workloads.trace_reader import open_trace
from moesim.workloads.trace_routing import trace_tokens_per_device


@dataclass
class Scenario:
    """Everything one simulation needs, resolved and checked."""

    name: str
    config: ScenarioConfig
    source: ScenarioFile
    model: ModelSpec
    machine: Machine
    ep: int
    tp: int
    dp: int
    placement: Placement
    routing: RoutingSource
    batch_per_replica: int  # sequences per attention replica
    moe_tokens: np.ndarray  # (devices,) tokens each device sends into each MoE layer
    memory: MemoryEstimate
    precision: ExpertPrecision
    offload: OffloadSetup | None = None
    serving_requests: "object | None" = None  # serving: a request table that replaces the config's traffic

    moe_tp: int = 1
    pp: int = 1  # pipeline stages (training): devices / pp contiguous devices per stage

    @property
    def cluster(self) -> ClusterSpec:
        return self.machine.cluster

    @property
    def device(self) -> DeviceSpec:
        return self.machine.device

    @property
    def routes(self) -> Routes:
        return self.machine.routes

    @property
    def cost(self) -> CostModel:
        return self.machine.cost

    @property
    def num_devices(self) -> int:
        return self.cluster.num_devices

    @property
    def memory_budget(self) -> float:
        """Bytes a run may fill of each device (the memory ledger: capacity less the reserve)."""
        return usable_bytes(self.device.memory.capacity, self.config.policies.memory_reserve)

    @property
    def steps(self) -> int:
        return self.config.workload.steps

    @property
    def seed(self) -> int:
        return self.config.seed


def _wrap(sf: ScenarioFile, field: str, err: ConfigError) -> ConfigError:
    """Re-anchor a loader error on the config field that named the missing thing."""
    if err.file is None:
        return config_error(sf, field, err.detail)
    return ConfigError(f"{err.detail} (while loading '{field}' from {sf.path})", file=err.file, field=err.field)


@dataclass(frozen=True)
class Parallelism:
    """The device groups of a scenario: attention TP x DP over every device, MoE groups of ep x moe_tp."""

    tp: int
    dp: int
    ep: int
    moe_tp: int
    pp: int = 1  # pipeline stages (training): dp counts the attention replicas of every stage


def resolve(sf: ScenarioFile) -> Scenario:
    """Turn a validated config into a Scenario, checking the rules that span sections. Each step is
    a named function of what the steps before it resolved; the validated config is not changed (a
    value resolution derives, such as a trace's tokens per device, goes into the scenario's copy)."""
    model = _model(sf)
    cluster = _cluster(sf)
    par = _parallelism(sf, model, cluster)
    _check_policies(sf)
    placement = _placement(sf, model, par.ep)
    trace, cfg = _trace_workload(sf, model, cluster.num_devices, par.tp)
    batch, moe_tokens = _batch(sf, cfg.workload, par)
    machine = _machine(sf, cluster)
    _check_units(sf, machine)
    routing = _routing(sf, cfg, model, trace, cluster.num_devices, par, moe_tokens, placement, machine)
    precision = _precision(sf, model)
    memory, offload = _memory(sf, cfg, model, machine, placement, par, batch, moe_tokens, precision)
    scenario = Scenario(
        name=cfg.name or "scenario", config=cfg, source=sf, model=model, machine=machine, ep=par.ep, tp=par.tp,
        dp=par.dp, placement=placement, routing=routing, batch_per_replica=batch, moe_tokens=moe_tokens,
        memory=memory, precision=precision, offload=offload, moe_tp=par.moe_tp, pp=par.pp,
    )
    from moesim.simulator.compose import dispatch_algorithm, overlap_schedule

    overlap_schedule(scenario)  # a schedule or an algorithm that cannot run the scenario says so now
    dispatch_algorithm(scenario)  # (exflow needs per-token ids; a study that swaps the placement asks again)
    return scenario


def _model(sf: ScenarioFile) -> ModelSpec:
    try:
        return load_model(sf.resolve_path(sf.config.model))
    except ConfigError as err:
        raise _wrap(sf, "model", err) from None


def _cluster(sf: ScenarioFile) -> ClusterSpec:
    """The cluster profile, cut to `hardware.nodes` where asked."""
    hw = sf.config.hardware
    try:
        cluster = load_cluster(sf.resolve_path(hw.cluster))
        load_device(cluster.node.device)
    except ConfigError as err:
        raise _wrap(sf, "hardware.cluster", err) from None
    if hw.nodes is not None:
        if hw.nodes > cluster.nodes:
            raise config_error(sf, "hardware.nodes", f"{hw.nodes} nodes asked but cluster '{cluster.name}' "
                               f"has {cluster.nodes}")
        cluster = cluster.model_copy(update={"nodes": hw.nodes})
    return cluster


def _parallelism(sf: ScenarioFile, model: ModelSpec, cluster: ClusterSpec) -> Parallelism:
    n = cluster.num_devices
    par = sf.config.parallelism
    tp, pp = par.tp, par.pp
    train = sf.config.workload is not None and sf.config.workload.phase == "train"
    if pp > 1 and not train:
        raise config_error(sf, "parallelism.pp", f"pp={pp}: pipeline parallelism is simulated for training "
                           "(workload.phase: train); inference runs every layer on every device")
    if pp > model.num_layers:
        raise config_error(sf, "parallelism.pp", f"pp={pp} stages for the {model.num_layers} layers of {model.name}")
    dp = par.dp if par.dp is not None else n // (tp * pp)
    if tp * dp * pp != n:
        raise config_error(sf, "parallelism", f"tp x dp x pp = {tp} x {dp} x {pp} = {tp * dp * pp} must equal the "
                           f"{n} devices of cluster '{cluster.name}'")
    moe_tp = par.moe_tp
    stage = n // pp  # the devices of one pipeline stage
    ep = par.ep if par.ep is not None else stage // moe_tp
    if stage % (ep * moe_tp):
        field = "parallelism.moe_tp" if moe_tp > 1 else "parallelism.ep"
        within = f" of a pipeline stage ({n} / pp={pp})" if pp > 1 else f" of cluster '{cluster.name}'"
        raise config_error(sf, field, f"ep x moe_tp = {ep} x {moe_tp} = {ep * moe_tp} must divide the {stage} "
                           f"devices{within} (one MoE group is ep x moe_tp devices)")
    if moe_tp > 1:
        per_node = cluster.node.devices_per_node
        inter = model.moe.expert_intermediate_size
        if per_node % moe_tp:
            raise config_error(sf, "parallelism.moe_tp", f"moe_tp={moe_tp} must divide the {per_node} devices of a "
                               "node: an expert's shards reduce over NVLink, within one node")
        if inter % moe_tp:
            raise config_error(sf, "parallelism.moe_tp", f"moe_tp={moe_tp} must divide the expert intermediate "
                               f"size {inter} of {model.name}")
        if tp > 1 and tp != moe_tp:
            raise config_error(sf, "parallelism.moe_tp", f"moe_tp={moe_tp} with attention tp={tp}: use moe_tp = tp "
                               "(experts split over the attention TP group, as vLLM/TRT-LLM do) or tp = 1 "
                               "(data-parallel attention; tokens are all-gathered within each MoE-TP group)")
    heads = model.attention.num_heads
    if heads % tp:
        raise config_error(sf, "parallelism.tp", f"tp={tp} must divide the {heads} attention heads of {model.name}")
    return Parallelism(tp, dp * pp, ep, moe_tp, pp)  # dp: attention replicas over every device (each stage's)


def _check_policies(sf: ScenarioFile) -> None:
    pol = sf.config.policies
    for field, dtype in (("policies.dispatch_dtype", pol.dispatch_dtype), ("policies.combine_dtype", pol.combine_dtype)):
        try:
            dtype_bytes(dtype)
        except ValueError as err:
            raise config_error(sf, field, str(err)) from None


def _placement(sf: ScenarioFile, model: ModelSpec, ep: int) -> Placement:
    cfg = sf.config.placement
    experts, n_moe = model.moe.num_experts, len(model.moe_layers)
    if cfg.file:
        path = config_file(sf, "placement.file", cfg.file, "placement file")
        return load_placement_file(path, experts, ep, n_moe)
    from moesim.simulator.compose import PLACEMENT_POLICIES

    placement = PLACEMENT_POLICIES[cfg.policy](experts, ep, n_moe)
    # ep not dividing the experts: redundant copies even out the slots (DeepSeek's EP144 / EP320)
    return with_redundant_slots(placement) if experts % ep else placement


def _trace_workload(sf: ScenarioFile, model: ModelSpec, n: int, tp: int) -> tuple[object | None, ScenarioConfig]:
    """The routing trace, if the workload replays one, and the config the scenario keeps: a copy
    whose workload has the trace's mean tokens per device where it gives neither a batch nor tokens."""
    cfg = sf.config
    wl, rc = cfg.workload, cfg.workload.routing
    from moesim.simulator.compose import routing_generator

    if not routing_generator(rc.generator).replays_trace:
        return None, cfg
    trace_path = Path(sf.resolve_path(rc.trace))
    try:
        trace = open_trace(trace_path, model)
        if wl.steps > trace.num_steps and not rc.repeat:
            raise config_error(sf, "workload.steps", f"{wl.steps} steps asked but the trace {trace_path.name} "
                               f"has {trace.num_steps}; simulate fewer or set workload.routing.repeat: true")
        if wl.batch_size is None and wl.tokens_per_device is None:
            per_device = trace_tokens_per_device(trace, n, tp, rc.source_map)
            tokens = max(1, -(-int(per_device.sum()) // n))
            cfg = cfg.model_copy(update={"workload": wl.model_copy(update={"tokens_per_device": tokens})})
    except TraceError as err:
        raise ConfigError(f"{err} (while loading 'workload.routing.trace' of {sf.path or '<config>'})",
                          file=err.file, field=err.where) from None
    return trace, cfg


def _batch(sf: ScenarioFile, wl: WorkloadConfig, par: Parallelism) -> tuple[int, np.ndarray]:
    """(sequences per attention replica, tokens each device sends into each MoE layer)."""
    tp = par.tp
    from moesim.simulator.speculative import queries_per_sequence

    per_seq = wl.seq_len if wl.phase in ("prefill", "train") else queries_per_sequence(sf.config.policies.speculative)
    if wl.batch_size is not None:
        batch = wl.batch_size
        replica_tokens = batch * per_seq
    else:
        replica_tokens = wl.tokens_per_device * tp
        seq = per_seq
        if replica_tokens % seq:
            raise config_error(sf, "workload.tokens_per_device", f"tokens_per_device x tp = {replica_tokens} "
                               f"is not a whole number of sequences of {seq} tokens (seq_len in prefill; in decode one, or 1 + "
                               "policies.speculative.draft_tokens)")
        batch = replica_tokens // seq
    # tokens per tp rank as np.array_split deals them (the first ranks take one more), without
    # allocating a token array: a batch too big for memory reaches the memory check
    split = np.array([replica_tokens // tp + (k < replica_tokens % tp) for k in range(tp)], dtype=np.int64)
    return batch, np.tile(split, par.dp)


def _machine(sf: ScenarioFile, cluster: ClusterSpec) -> Machine:
    hw = sf.config.hardware
    if not hw.comm_floors:
        cluster = cluster.model_copy(update={"comm_floors": False})
    scale = hw.scale
    return build_machine(cluster, Scale(scale.flops, scale.memory_bandwidth, scale.link_bandwidth))


def _check_units(sf: ScenarioFile, machine: Machine) -> None:
    """Every unit `policies.units` names is a unit of the cluster's nodes."""
    cfg = sf.config
    have = list(machine.units)
    named = [(f"policies.units.{part}", getattr(cfg.policies.units, part))
             for part in ("attention", "dense_ffn", "shared_expert", "expert")]
    if cfg.policies.units.threshold is not None:
        named.append(("policies.units.threshold.unit", cfg.policies.units.threshold.unit))
    from moesim.simulator.compose import UNIT_RULES

    for field, name in named:
        rules = [] if field.endswith("threshold.unit") else list(UNIT_RULES)
        if name not in rules and name not in machine.units:
            choose = f", or choose one of the rules {', '.join(rules)}" if rules else ""
            raise config_error(sf, field, f"unit '{name}' is not a unit of cluster '{machine.cluster.name}' (its "
                               f"units: {', '.join(have)}; add it to the cluster's node.units{choose})")
    if cfg.offload is not None and cfg.policies.units.expert != "accelerator":
        raise config_error(sf, "policies.units.expert", "routed experts are sent to a unit while offloading decides "
                           "where experts live; with offload:, run cold experts on the host with "
                           "offload.hybrid.cold_experts: host (or auto) instead")
    hybrid = cfg.offload.hybrid.attention if cfg.offload is not None else None
    if hybrid == "host" and cfg.policies.units.attention not in ("accelerator", "host"):
        raise config_error(sf, "policies.units.attention", f"attention is sent to '{cfg.policies.units.attention}' "
                           "but offload.hybrid.attention is host; keep one of the two")


def _routing(sf: ScenarioFile, cfg: ScenarioConfig, model: ModelSpec, trace, n: int, par: Parallelism,
             moe_tokens: np.ndarray, placement: Placement, machine: Machine) -> RoutingSource:
    """The routing source of the generator the config names (compose.ROUTING_GENERATORS)."""
    from moesim.simulator.compose import routing_generator

    inputs = RoutingInputs(sf, cfg, model, trace, n, par, moe_tokens, placement, machine)
    return build_routing(routing_generator(cfg.workload.routing.generator), inputs)


def _precision(sf: ScenarioFile, model: ModelSpec) -> ExpertPrecision:
    try:
        return expert_precision(model, sf.config.precision)
    except ValueError as err:
        raise config_error(sf, "precision.per_expert", str(err)) from None


def _memory(sf: ScenarioFile, cfg: ScenarioConfig, model: ModelSpec, machine: Machine, placement: Placement,
            par: Parallelism, batch: int, moe_tokens: np.ndarray,
            precision: ExpertPrecision) -> tuple[MemoryEstimate, OffloadSetup | None]:
    """What each device keeps (the memory ledger), checked against what it may fill."""
    wl, device = cfg.workload, machine.device
    budget = usable_bytes(device.memory.capacity, cfg.policies.memory_reserve)
    if cfg.training is not None:  # weights, gradients, optimizer states and activations (training/memory.py)
        return _training_memory(sf, cfg, model, par, budget, device.name), None
    try:
        memory, offload = resident_memory(model, placement, par.tp, par.moe_tp, batch, wl, int(moe_tokens.max()),
                                          precision, cfg.offload, machine, budget, cfg.policies.units,
                                          cfg.policies.speculative)
    except OffloadSetupError as err:
        raise config_error(sf, err.field, str(err)) from None
    for name, held in memory.on_units:
        unit = machine.units[name]
        room = usable_bytes(unit.memory_capacity, cfg.policies.memory_reserve)
        if held > room:
            part = "expert" if name == cfg.policies.units.expert else "attention"
            what = "the routed experts' weights" if part == "expert" else "the KV cache"
            raise config_error(sf, f"policies.units.{part}", f"{what} kept on unit '{name}' ({unit.device.name}) take "
                               f"{fmt_bytes(held)} per accelerator, but its memory holds {fmt_bytes(room)} per "
                               f"accelerator ({fmt_bytes(unit.memory_capacity)} less the reserve); raise ep, quantize "
                               "the experts or keep them on the accelerator")
    if memory.total <= budget:
        return memory, offload
    field = "workload.batch_size" if wl.batch_size is not None else "workload.tokens_per_device"
    if cfg.serving is not None:  # serving: the weights alone (with one token) do not fit
        field = "parallelism"
    grows = ""
    if wl.phase == "decode" and wl.steps > 1 and cfg.offload is None:
        first = workload_memory(model, placement, par.tp, batch, wl.model_copy(update={"steps": 1}),
                                int(moe_tokens.max()), precision.expert_bytes() / par.moe_tp, cfg.policies.speculative)
        if first.total <= budget:  # it fits at the start: the steps grow the cache past memory
            field = "workload.steps"
            grows = (f" by the last step (decode grows the KV cache a token a step, to kv_len + steps = "
                     f"{(wl.kv_len or 0) + wl.steps} tokens; simulate fewer steps)")
    raise config_error(sf, field, f"the workload does not fit in memory{grows}: each {device.name} needs "
                       f"{fmt_bytes(memory.total)} ({memory.describe()}) but has {fmt_bytes(budget)} usable "
                       f"({fmt_bytes(device.memory.capacity)} less the {cfg.policies.memory_reserve:.0%} "
                       "reserve); lower the batch or kv_len, raise ep/tp, quantize experts (precision.bits) "
                       "or offload them (offload:)")



def _training_memory(sf: ScenarioFile, cfg: ScenarioConfig, model: ModelSpec, par: Parallelism, budget: float,
                     device: str) -> MemoryEstimate:
    """A training step's busiest rank, refused with its breakdown where it does not fit."""
    from moesim.simulator.training.memory import check_fits, scenario_training_memory

    wl = cfg.workload
    try:
        held = scenario_training_memory(model, par.tp, par.tp * par.dp, par.ep, par.moe_tp, wl.batch_size,
                                        wl.seq_len, cfg.training, par.pp)
        check_fits(held, budget, f"each {device} ({fmt_bytes(budget)} usable after the "
                   f"{cfg.policies.memory_reserve:.0%} reserve)", int(cfg.training.zero_stage),
                   cfg.training.recompute, max_zero=3)
    except ConfigError as err:
        raise config_error(sf, err.field or "training", err.detail) from None
    ep = par.ep * par.moe_tp
    return MemoryEstimate(held.weights, 0.0, held.activations, np.full(ep, held.total))


def load_scenario(config: "str | Path | dict", overrides: list[str] | None = None,
                  base_dir: str | Path | None = None, items_relative_to: ItemsRelativeTo = "cwd") -> Scenario:
    """Load, validate and resolve a scenario config: a file, or a mapping (a notebook's dict; its
    relative paths resolve against `base_dir`, default the working directory), with --set style
    overrides ("workload.batch_size=64") applied first.

    A relative path in an override (`workload.routing.trace=t.parquet`, `hardware.cluster=c.yaml`)
    resolves against the working directory, as `--set` on the command line does
    (`items_relative_to="cwd"`, simulator/config.py `anchor_set_paths` says which values are
    paths); `items_relative_to="config"` resolves it as if written in the config (against the
    file's folder, or `base_dir` for a mapping), as a sweep file's axes do."""
    if isinstance(config, dict):
        import copy

        from moesim.simulator.config import anchor_set_paths, apply_overrides, config_from_dict

        data = copy.deepcopy(config)
        items = list(overrides or [])
        fields = apply_overrides(data, items)
        if items_relative_to == "cwd":
            anchor_set_paths(data, items, fields, Path(base_dir) / "scenario.yaml" if base_dir else None)
        return resolve(config_from_dict(data, base_dir))
    return resolve(load_config(config, overrides, items_relative_to))
