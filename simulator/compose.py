"""Compose a scenario's simulation from its config: which object fills each slot.

The only place where config names become objects: one table per named slot (the dispatch
algorithm, the overlap schedule), read here and by the config schema's check of a name; then the
schedule's program, the step pipeline, the step source and the engine with everything it runs.
A new algorithm or schedule is its own file plus one line in its table. Tests and notebooks may
build any of these objects by hand instead.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import simpy

from moesim.placement.placement import Placement, contiguous, round_robin
from moesim.workloads.batching import MIXED, PREEMPT, PREFILL_FIRST, RESERVE, IterationOrder, KvPolicy, SchedulerPolicy
from moesim.simulator.training.plans import TrainingLayout, TrainingPlans, optimizer_seconds, training_layout
from moesim.simulator.training.schedule import TRAINING
from moesim.simulator.allreduce import AUTO, NCCL, ONE_SHOT_ALWAYS, TWO_SHOT_ALWAYS, AllReduceChoice
from moesim.simulator.capacity import CapacityPolicy
from moesim.simulator.config import config_error
from moesim.simulator.dispatch import DispatchAlgorithm, DispatchLayout
from moesim.simulator.dispatch.all_gather import AllGather
from moesim.simulator.dispatch.by_phase import ByPhase
from moesim.simulator.dispatch.dedup import Dedup
from moesim.simulator.dispatch.direct import Direct
from moesim.simulator.dispatch.hierarchical import Hierarchical
from moesim.simulator.dispatch.low_latency import LowLatency
from moesim.simulator.dispatch.token_stays import TokenStays, exflow_problem
from moesim.simulator.cost_model import CostModel
from moesim.simulator.engine import Engine
from moesim.simulator.machine import Machine
from moesim.simulator.offload.expert_cache import LFU, LRU, PINNED, CachePolicy
from moesim.simulator.offload.manager import OffloadManager
from moesim.simulator.offload.prefetch import AffinityPrefetch, OraclePrefetch, PredictorPrefetch, Prefetcher
from moesim.simulator.memory import kv_bytes_per_token
from moesim.simulator.speculative import kv_growth, queries_per_sequence
from moesim.simulator.moe_kernel_cost import (
    CUTLASS_GROUPED,
    DEEPGEMM_CONTIGUOUS,
    DEEPGEMM_MASKED,
    FUSED,
    GROUPED,
    PER_EXPERT,
    KernelForm,
)
from moesim.simulator.ops import token_bytes
from moesim.simulator.overlap.schedules import Schedule
from moesim.simulator.overlap.sequential import SEQUENTIAL
from moesim.simulator.overlap.shortcut import SHORTCUT
from moesim.simulator.overlap.two_batch import TWO_BATCH
from moesim.simulator.program import Program, StepShape, TrainingShape
from moesim.simulator.replica_split import ReplicaSplit, split_weights
from moesim.simulator.routing_generators import (
    FIXED,
    LOAD_MATRIX,
    SYNTHETIC,
    TRACE,
    UNIFORM,
    ZIPF,
    RoutingGenerator,
)
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_costs import StepCosts, UnitChoice
from moesim.simulator.unit_rules import UnitRule
from moesim.simulator.unit_rules.co_process import CoProcess
from moesim.simulator.unit_rules.fastest import Fastest
from moesim.simulator.unit_rules.named import Named
from moesim.simulator.unit_rules.threshold import Threshold
from moesim.simulator.step_plan import StepPipeline, StepPlan
from moesim.simulator.serving.config import ServingConfig
from moesim.simulator.step_source import FixedBatch


def _exflow(sc: Scenario) -> TokenStays:
    problem = exflow_problem(sc, overlap_schedule(sc))
    if problem is not None:
        raise config_error(sc.source, *problem)
    kv = exflow_kv_bytes(sc) if sc.config.policies.dispatch.kv_sync == "per_layer" else ()
    return TokenStays(kv)


# `policies.dispatch.algorithm`: name -> the algorithm for a scenario
DISPATCH_ALGORITHMS: dict[str, Callable[[Scenario], DispatchAlgorithm]] = {
    "direct": lambda sc: Direct(),
    "dedup": lambda sc: Dedup(),
    "hierarchical": lambda sc: Hierarchical(),
    "low_latency": lambda sc: LowLatency(sc.config.policies.dispatch.kernel_latency),
    "exflow": _exflow,
    "all_gather": lambda sc: AllGather(),
    "auto": lambda sc: ByPhase(Hierarchical(), LowLatency(sc.config.policies.dispatch.kernel_latency)),
}

def _threshold(sc: Scenario) -> Threshold:
    rule = sc.config.policies.units.threshold
    return Threshold((sc.machine.accelerator, sc.machine.units[rule.unit]), rule.op_per_byte)


# `policies.units.<part>`, where not a unit's name: name -> the rule choosing among the node's units
UNIT_RULES: dict[str, Callable[[Scenario], UnitRule]] = {
    "fastest": lambda sc: Fastest(tuple(sc.machine.units.values())),
    "threshold": _threshold,
    "co_process": lambda sc: CoProcess(tuple(sc.machine.units.values())),
}

# `workload.routing.generator`: name -> the generator and its facts
ROUTING_GENERATORS: dict[str, RoutingGenerator] = {
    "uniform": UNIFORM,
    "zipf": ZIPF,
    "fixed": FIXED,
    "trace": TRACE,
    "synthetic": SYNTHETIC,
    "load_matrix": LOAD_MATRIX,
}

# `placement.policy`: name -> (experts, ep, MoE layers) -> the placement
PLACEMENT_POLICIES: dict[str, Callable[[int, int, int], Placement]] = {"contiguous": contiguous,
                                                                       "round_robin": round_robin}

# `policies.expert_kernel`: name -> how a device's routed experts of a layer launch
EXPERT_KERNEL_FORMS: dict[str, KernelForm] = {
    "fused": FUSED,  # vLLM / SGLang's Triton fused_moe (the device profile's moe_kernel)
    "triton_fused": FUSED,
    "cutlass_grouped": CUTLASS_GROUPED,
    "deepgemm_contiguous": DEEPGEMM_CONTIGUOUS,  # prefill: DeepEP normal dispatch + DeepGEMM contiguous layout
    "deepgemm_masked": DEEPGEMM_MASKED,  # decode: DeepEP low-latency dispatch + DeepGEMM masked layout
    "grouped": GROUPED,
    "per_expert": PER_EXPERT,
}

# `offload.cache.policy`: name -> the replacement policy of every device's expert cache
CACHE_POLICIES: dict[str, CachePolicy] = {"lru": LRU, "lfu": LFU, "pinned": PINNED}

# `offload.prefetch.policy`: name -> the prefetcher (a class: built per run from its config and statistics)
PREFETCH_POLICIES: dict[str, type[Prefetcher]] = {"none": Prefetcher, "oracle": OraclePrefetch,
                                                  "affinity": AffinityPrefetch, "predictor": PredictorPrefetch}

# `serving.scheduler.order`: name -> in what order an iteration takes decodes and prefill work
SERVING_ORDERS: dict[str, IterationOrder] = {"mixed": MIXED, "prefill_first": PREFILL_FIRST}

# `serving.scheduler.kv_policy`: name -> how admission counts KV
KV_POLICIES: dict[str, KvPolicy] = {"reserve": RESERVE, "preempt": PREEMPT}

# `policies.tp_allreduce`: name -> how TP and MoE-TP groups all-reduce (simulator/allreduce.py)
ALLREDUCE_ALGORITHMS: dict[str, AllReduceChoice] = {"auto": AUTO, "nccl": NCCL, "one_shot": ONE_SHOT_ALWAYS,
                                                    "two_shot": TWO_SHOT_ALWAYS}

# `policies.overlap`: name -> the schedule whose program every device runs
OVERLAP_SCHEDULES: dict[str, Schedule] = {"none": SEQUENTIAL, "two_batch": TWO_BATCH, "shortcut": SHORTCUT}


def routing_generator(name: str) -> RoutingGenerator:
    """`workload.routing.generator` as its generator (the config check has vetted the name)."""
    return ROUTING_GENERATORS[name]


def dispatch_algorithm(sc: Scenario) -> DispatchAlgorithm:
    """`policies.dispatch.algorithm` as its object (an unknown name is a config error)."""
    name = sc.config.policies.dispatch.algorithm
    make = DISPATCH_ALGORITHMS.get(name)
    if make is None:
        raise config_error(sc.source, "policies.dispatch.algorithm", f"unknown dispatch algorithm '{name}'; "
                           f"choose one of {', '.join(DISPATCH_ALGORITHMS)}")
    return make(sc)


def overlap_schedule(sc: Scenario) -> Schedule:
    """`policies.overlap` as its schedule (an unknown name is a config error)."""
    name = sc.config.policies.overlap
    schedule = OVERLAP_SCHEDULES.get(name)
    if schedule is None:
        raise config_error(sc.source, "policies.overlap", f"unknown overlap schedule '{name}'; "
                           f"choose one of {', '.join(OVERLAP_SCHEDULES)}")
    if sc.offload is not None and not schedule.offload:
        able = [n for n, s in OVERLAP_SCHEDULES.items() if s.offload]
        raise config_error(sc.source, "policies.overlap", f"overlap '{name}' is not simulated together with expert "
                           f"offloading (its dispatch waits do not run the experts next, where copies are waited "
                           f"for); use overlap: {' or '.join(able)} with offload:")
    return schedule


def step_shape(sc: Scenario, serving: bool) -> StepShape:
    """What the overlap schedule sees of a scenario's steps."""
    m = sc.model
    training = None
    microbatches = overlap_schedule(sc).microbatches
    if sc.config.training is not None:
        if sc.config.policies.overlap != "none":
            raise config_error(sc.source, "policies.overlap", "workload.phase: train runs its own program (gradient "
                               "buckets reduced during the backward); leave policies.overlap at none")
        lay = training_layout_of(sc)
        microbatches = lay.microbatches
        training = TrainingShape(lay.microbatches, lay.buckets, lay.config.recompute != "none",
                                 lay.zero_stage in (1, 2), lay.stages if sc.pp > 1 else (), sc.num_devices // sc.pp,
                                 lay.zero_stage == 3)
    return StepShape(tuple(m.is_moe_layer(layer) for layer in range(m.num_layers)), sc.tp > 1, sc.moe_tp > 1,
                     microbatches, sc.config.policies.overlap_shared_experts, serving, training)


def training_layout_of(sc: Scenario) -> TrainingLayout:
    """A training scenario's micro-batches per step and gradient buckets (a global batch that the
    data-parallel ranks' micro-batches do not divide is a config error)."""
    cfg, wl = sc.config.training, sc.config.workload
    replicas = sc.num_devices // (sc.tp * sc.pp)  # a stage's data-parallel ranks
    per_step = wl.batch_size * replicas
    if cfg.global_batch % per_step:
        raise config_error(sc.source, "training.global_batch", f"{cfg.global_batch} sequences is not a whole number "
                           f"of micro-batches of workload.batch_size={wl.batch_size} on each of the {replicas} "
                           f"data-parallel ranks ({per_step} sequences per micro-batch step)")
    return training_layout(sc.model, cfg, sc.tp, sc.ep, cfg.global_batch // per_step, sc.pp)


def step_program(sc: Scenario, serving: bool = False) -> Program:
    """One step's instructions for every device under the scenario's overlap schedule."""
    shape = step_shape(sc, serving)
    program = (TRAINING if shape.training is not None else overlap_schedule(sc)).program(shape)
    program.check(shape)
    return program


def engine_for(sc: Scenario, progress: Callable[[int], None] | None = None,
               plans: Iterable[list[StepPlan]] | None = None, program: Program | None = None) -> Engine:
    """The engine of a scenario with everything it runs: the program, the dispatch kind, and the plans
    (the scenario's pipeline over its step source, behind the serving iteration cache where asked;
    or `plans`, built by hand, with `program` in place of the schedule's where given)."""
    comm_kind = dispatch_algorithm(sc).comm_kind
    allreduce = ALLREDUCE_ALGORITHMS[sc.config.policies.tp_allreduce]
    env = simpy.Environment()
    offload = None
    if sc.offload is not None:
        off = sc.offload.config
        offload = OffloadManager(sc, env, CACHE_POLICIES[off.cache.policy], PREFETCH_POLICIES[off.prefetch.policy])
    if plans is not None:
        return Engine(sc, plans, program or step_program(sc), comm_kind, progress=progress, env=env, offload=offload,
                      allreduce=allreduce)
    pipeline = pipeline_for(sc)
    source = step_source_for(sc)
    serving = sc.config.serving is not None
    cache = None
    feed = pipeline.plans(source)
    if sc.config.training is not None:
        lay = training_layout_of(sc)
        dp, edp = sc.num_devices // (sc.tp * sc.pp), sc.num_devices // (sc.pp * sc.ep * sc.moe_tp)
        feed = TrainingPlans(pipeline, lay, optimizer_seconds(sc.machine.cost, lay, dp, edp, sc.num_devices)).plans(source)
    if serving and sc.config.serving.iteration_cache:
        from moesim.simulator.serving.iteration_cache import IterationCache

        cache = IterationCache(pipeline)
        feed = cache.plans(source)
    return Engine(sc, feed, step_program(sc, serving), comm_kind, source=source, cache=cache, ahead=True,
                  steps=getattr(source, "steps", None), progress=progress, env=env, offload=offload,
                  allreduce=allreduce)


def exflow_kv_bytes(sc: Scenario) -> tuple[float, ...]:
    """Per MoE layer i, one token's KV bytes that ride on its dispatch under kv_sync per_layer: the
    entries of every layer after MoE layer i-1 up to MoE layer i (those layers' attention ran where
    MoE layer i-1 left the token); none on the first MoE layer (its attention and the layers
    before it always run on the token's own device)."""
    moe = list(sc.model.moe_layers)
    return tuple(0.0 if i == 0 else float(sum(kv_bytes_per_token(sc.model, layer, sc.tp)
                                             for layer in range(moe[i - 1] + 1, moe[i] + 1)))
                 for i in range(len(moe)))


def dispatch_layout(sc: Scenario) -> DispatchLayout:
    """The layout dispatch sees: MoE-TP shard groups stand in for devices (one per moe_tp devices)."""
    mt = sc.moe_tp
    pol = sc.config.policies
    machine = sc.machine
    return DispatchLayout(sc.num_devices // mt, sc.ep, machine.node_of[::mt], machine.local_rank[::mt] // mt,
                          token_bytes(sc.model, pol.dispatch_dtype), token_bytes(sc.model, pol.combine_dtype))


def comm_sm_share(sc: Scenario) -> tuple[int, int] | None:
    """(SMs the all-to-all's kernels hold, the accelerator's SMs) where compute overlaps them under
    the scenario's schedule, else None; `comm_sms` set for a device whose profile gives no `sms` is a
    config error (the algorithm's default is then not applied)."""
    held = sc.config.policies.dispatch.comm_sms
    given = held is not None
    if not given:
        held = getattr(dispatch_algorithm(sc), "comm_sms", 0)
    if not held or not overlap_schedule(sc).overlaps_comm:
        return None
    sms = sc.device.sms
    if sms is None and not given:  # the algorithm's default on a device that does not say: nothing to take
        return None
    if sms is None:
        raise config_error(sc.source, "policies.dispatch.comm_sms", f"the dispatch kernels hold {held} SMs while "
                           f"compute overlaps them, but device {sc.device.name} does not say how many it has (add "
                           "`sms` to its profile, or set policies.dispatch.comm_sms: 0)")
    if held >= sms:
        raise config_error(sc.source, "policies.dispatch.comm_sms", f"{held} SMs for communication leave none of "
                           f"{sc.device.name}'s {sms} for compute")
    return held, sms


def compute_machine(sc: Scenario) -> Machine:
    """The machine compute is costed on: the scenario's, its accelerator left (sms - comm_sms) / sms
    of its SMs (peak and bandwidth alike) where the all-to-all's kernels hold some while compute
    overlaps them (DeepEP's normal kernels under two-batch overlap)."""
    share = comm_sm_share(sc)
    if share is None:
        return sc.machine
    held, sms = share
    left = (sms - held) / sms
    acc = sc.machine.accelerator
    cost = acc.cost
    slowed = CostModel(cost.device, cost.efficiency, cost.flops_scale * left,
                       cost.bandwidth / cost.device.memory.bandwidth * left)
    units = {**sc.machine.units, acc.name: dataclasses.replace(acc, cost=slowed)}
    return dataclasses.replace(sc.machine, units=units)


def pipeline_for(sc: Scenario) -> StepPipeline:
    """The step pipeline a scenario's config asks for."""
    m, pol = sc.model, sc.config.policies
    layout = dispatch_layout(sc)
    node_of_local = layout.node_of[:sc.ep] - layout.node_of[0]
    replicas = ReplicaSplit(sc.placement, split_weights(sc.placement, node_of_local, pol.dispatch.replica_choice))
    machine = compute_machine(sc)
    on = sc if machine is sc.machine else dataclasses.replace(sc, machine=machine)  # its units cost compute
    costs = StepCosts(m, machine, sc.tp, sc.precision, expert_kernel=expert_kernel_form(on), small_ops=pol.small_ops,
                      moe_tp=sc.moe_tp, units=unit_choice(on), every_token_logits=sc.config.training is not None)
    capacity = CapacityPolicy(pol.capacity_factor, pol.overflow, m.moe.top_k, m.moe.num_experts)
    return StepPipeline(m, sc.num_devices, sc.tp, sc.ep, sc.routing, capacity, replicas, dispatch_algorithm(sc),
                        costs, layout, moe_tp=sc.moe_tp, microbatches=overlap_schedule(sc).microbatches)


def expert_kernel_form(sc: Scenario) -> KernelForm:
    """`policies.expert_kernel` as its form; a kernel family every unit that may run the experts
    must describe in its device profile (`moe_kernels`), else a config error."""
    form = EXPERT_KERNEL_FORMS[sc.config.policies.expert_kernel]
    for unit in unit_choice(sc).expert.units:
        try:
            form.spec(unit.device)
        except KeyError as err:
            raise config_error(sc.source, "policies.expert_kernel", f"{err.args[0]}; add one to its profile "
                               "(with its source), or choose fused, grouped or per_expert") from None
    return form


def unit_choice(sc: Scenario) -> UnitChoice:
    """`policies.units` as a rule per part (a unit's name: that unit; else the rule of that name);
    offloading's `hybrid.attention: host` is attention on the host unit."""
    cfg = sc.config.policies.units

    def pick(name: str) -> UnitRule:
        make = UNIT_RULES.get(name)
        return make(sc) if make is not None else Named((sc.machine.units[name],))

    attention = cfg.attention
    if sc.offload is not None and sc.offload.config.hybrid.attention == "host":
        attention = "host"
    return UnitChoice(pick(attention), pick(cfg.dense_ffn), pick(cfg.shared_expert), pick(cfg.expert))


def scheduler_policy(cfg: ServingConfig) -> SchedulerPolicy:
    """`serving.scheduler` as the continuous batcher's policy."""
    sched = cfg.scheduler
    return SchedulerPolicy(sched.max_batch_tokens, sched.max_running, SERVING_ORDERS[sched.order],
                           sched.chunked_prefill, KV_POLICIES[sched.kv_policy])


def step_source_for(sc: Scenario):
    """The config's step source: the serving scheduler for a `serving:` config, else the workload
    as a fixed batch for `workload.steps` steps."""
    if sc.config.serving is not None:
        from moesim.simulator.serving.setup import serving_source

        return serving_source(sc, scheduler_policy(sc.config.serving))
    wl = sc.config.workload
    spec = sc.config.policies.speculative
    if wl.phase == "train":  # each micro-batch's forward runs as a prefill of its sequences
        return FixedBatch(wl.steps, "prefill", sc.moe_tokens, wl.seq_len, 0)
    per_seq = wl.seq_len if wl.phase == "prefill" else queries_per_sequence(spec)
    return FixedBatch(wl.steps, wl.phase, sc.moe_tokens, per_seq, wl.kv_len or 0, kv_growth(spec))
