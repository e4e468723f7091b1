"""Compose a scenario's step pipeline from its config: which stage object fills each slot.

The only place where config names become stage objects (a plain `if` per choice, no registry);
tests and notebooks may build a `StepPipeline` with their own stages instead.
"""

from __future__ import annotations

from moesim.simulator.capacity import CapacityPolicy
from moesim.simulator.config import config_error
from moesim.simulator.dispatch import DispatchAlgorithm, DispatchLayout
from moesim.simulator.dispatch.dedup import Dedup
from moesim.simulator.dispatch.direct import Direct
from moesim.simulator.dispatch.hierarchical import Hierarchical
from moesim.simulator.dispatch.low_latency import LowLatency
from moesim.simulator.dispatch.token_stays import TokenStays, exflow_problem
from moesim.simulator.memory import kv_bytes_per_token
from moesim.simulator.ops import token_bytes
from moesim.simulator.replica_split import ReplicaSplit, split_weights
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_costs import StepCosts
from moesim.simulator.step_plan import StepPipeline
from moesim.simulator.step_source import FixedBatch


def dispatch_algorithm(sc: Scenario) -> DispatchAlgorithm:
    cfg = sc.config.policies.dispatch
    if cfg.algorithm == "dedup":
        return Dedup()
    if cfg.algorithm == "hierarchical":
        return Hierarchical()
    if cfg.algorithm == "low_latency":
        return LowLatency(cfg.kernel_latency)
    if cfg.algorithm == "exflow":
        problem = exflow_problem(sc)  # checked again here: a study may have swapped the placement
        if problem is not None:
            raise config_error(sc.source, *problem)
        return TokenStays(exflow_kv_bytes(sc) if cfg.kv_sync == "per_layer" else ())
    return Direct()


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


def pipeline_for(sc: Scenario) -> StepPipeline:
    """The step pipeline a scenario's config asks for."""
    m, pol = sc.model, sc.config.policies
    layout = dispatch_layout(sc)
    node_of_local = layout.node_of[:sc.ep] - layout.node_of[0]
    replicas = ReplicaSplit(sc.placement, split_weights(sc.placement, node_of_local, pol.dispatch.replica_choice))
    off = sc.offload
    host_attention = off is not None and off.config.hybrid.attention == "host"
    costs = StepCosts(m, sc.machine, sc.tp, sc.precision, expert_kernel=pol.expert_kernel, small_ops=pol.small_ops,
                      moe_tp=sc.moe_tp, host_attention=host_attention,
                      host_link=(off.host.latency, off.host.bandwidth) if host_attention else None)
    capacity = CapacityPolicy(pol.capacity_factor, pol.overflow, m.moe.top_k, m.moe.num_experts)
    return StepPipeline(m, sc.num_devices, sc.tp, sc.ep, sc.routing, capacity, replicas, dispatch_algorithm(sc),
                        costs, layout, moe_tp=sc.moe_tp, microbatches=2 if pol.overlap == "two_batch" else 1)


def step_source_for(sc: Scenario):
    """The config's step source: the serving scheduler for a `serving:` config, else the workload
    as a fixed batch for `workload.steps` steps."""
    if sc.config.serving is not None:
        from moesim.simulator.serving.setup import serving_source

        return serving_source(sc)
    wl = sc.config.workload
    return FixedBatch(wl.steps, wl.phase, sc.moe_tokens, wl.seq_len if wl.phase == "prefill" else 1, wl.kv_len or 0)
