"""Build a placement problem from a resolved scenario, so `moesim place` sees what the simulator sees.

Token costs come from the cluster's routes (bytes of dispatch + combine over the slowest link
of each device pair, priced per routed row under the scenario's dispatch algorithm), expert
slots from the memory left after the scenario's non-expert memory, and the expert-time model from the simulator's own cost function (a least-squares line through
the grouped-GEMM time of one expert over the token counts the routing produces).
"""

from __future__ import annotations

from dataclasses import replace
from math import exp, lgamma
from typing import Any

import numpy as np

from moesim.placement.problem import ExpertTimeModel, PlacementProblem, problem_from_routing, uniform_slots
from moesim.simulator.compose import dispatch_algorithm
from moesim.simulator.dispatch import RowPricing
from moesim.simulator.ops import act_dtype, ffn_flops_bytes, gemm_dtype, token_bytes
from moesim.simulator.scenario import Scenario
from moesim.workloads.load_matrix_routing import LoadMatrixRouting


def pair_bandwidth(sc: Scenario) -> np.ndarray:
    """(ep, ep) bytes/s between the first EP group's devices: the slowest link on each pair's
    route (0 on the diagonal)."""
    ep, r = sc.ep, sc.routes
    return np.array([[r.slowest_bandwidth(s, d) if s != d else 0.0 for d in range(ep)] for s in range(ep)])


def row_pricing(sc: Scenario) -> RowPricing:
    """What the dispatch algorithm needs to price a routed row on the first EP group."""
    ep = sc.ep
    pol = sc.config.policies
    per_token = token_bytes(sc.model, pol.dispatch_dtype) + token_bytes(sc.model, pol.combine_dtype)
    bw = pair_bandwidth(sc)
    base = np.divide(per_token, bw, out=np.zeros((ep, ep)), where=bw > 0)
    per_device, per_node = distinct_rows(sc)
    return RowPricing(base, per_device, per_node, group_nodes(sc), sc.machine.local_rank[:ep])


def pair_token_cost(sc: Scenario) -> np.ndarray:
    """(ep, ep) seconds one routed (token, expert) row from device s to device d costs under the
    scenario's dispatch algorithm (dispatch + combine payload over the pair's slowest link).

    The ILP is linear in rows, so a deduplicating dispatch is priced at its expected cost per row
    under even routing (the algorithm's `row_cost`): rho(m) = E[distinct] / E[rows] for a group of
    m of E experts under top-k: (1 - C(E-m, k) / C(E, k)) / (k m / E).
    """
    return dispatch_algorithm(sc).row_cost(row_pricing(sc))


def group_nodes(sc: Scenario) -> np.ndarray:
    """(ep,) node of each device of the first expert-parallel group, counted from 0."""
    return sc.machine.node_of[:sc.ep] - sc.machine.node_of[0]


def distinct_rows(sc: Scenario) -> tuple[float, float]:
    """Expected distinct (token, destination device) and (token, destination node) pairs per
    routed row under even routing: what dedup and hierarchical dispatch send per row."""
    E, k = sc.model.moe.num_experts, sc.model.moe.top_k
    nodes = int(group_nodes(sc).max()) + 1
    return distinct_per_row(E, k, E / sc.ep), distinct_per_row(E, k, E / nodes)


def dispatch_provenance(sc: Scenario) -> dict[str, Any]:
    """What placement scoring needs of the scenario's dispatch: the replica choice, and the
    inter-node rows one routed inter-node row costs (1 direct, once per destination device for
    dedup, once per destination node for hierarchical; expectations as in pair_token_cost)."""
    d = sc.config.policies.dispatch
    per_row = dispatch_algorithm(sc).inter_node_rows_per_row(row_pricing(sc))
    return {"algorithm": d.algorithm, "replica_choice": d.replica_choice, "inter_node_rows_per_row": per_row}


def distinct_per_row(experts: int, top_k: int, group: float) -> float:
    """Expected distinct (token, group) pairs per routed row, for a group of `group` of the
    experts under uniform top-k (1 for one expert per group; 1/k when one group holds all)."""
    m = min(max(group, 1.0), experts)
    miss = exp(lgamma(experts - m + 1) - lgamma(experts - m - top_k + 1) - lgamma(experts + 1)
               + lgamma(experts - top_k + 1)) if experts - m >= top_k else 0.0  # C(E-m, k) / C(E, k)
    return (1.0 - miss) / (top_k * m / experts)


def expert_bytes(sc: Scenario) -> float:
    """Bytes of the largest routed expert as stored (after any per-expert quantization)."""
    return float(sc.precision.expert_bytes().max())


def memory_slots(sc: Scenario) -> int:
    """Expert copies one device can hold next to everything else the scenario keeps in memory."""
    mem = sc.memory
    other = mem.per_device - mem.expert_weights
    return max(0, int((sc.memory_budget - float(other.max())) // expert_bytes(sc)))


def fit_expert_time(sc: Scenario, max_tokens: float) -> ExpertTimeModel:
    """Line fixed + per_token x n through the simulator's expert time at n = 1..max_tokens."""
    m = sc.model
    n = np.unique(np.linspace(1, max(2.0, max_tokens), 64).round())
    flops, mem = ffn_flops_bytes(m, n, m.moe.expert_intermediate_size, m.routed_expert_dtype)
    dtype = gemm_dtype(m.routed_expert_dtype, sc.cost.dtypes, act_dtype(m))
    t = sc.cost.times("gemm", flops, mem, n, dtype)
    A = np.stack([np.ones_like(n), n], axis=1)
    (fixed, slope), *_ = np.linalg.lstsq(A, t, rcond=None)
    if fixed < 0:  # compute-bound from the first token: a line through the origin
        fixed, slope = 0.0, float((n @ t) / (n @ n))
    return ExpertTimeModel(float(fixed), max(float(slope), 0.0), "s")


def problem_from_scenario(sc: Scenario, steps: int = 16, redundant: int = 0, slots: int | None = None,
                          time_model: str = "time", first_step: int = 0) -> PlacementProblem:
    """The placement problem of a scenario's first expert-parallel group over `steps` routing steps.

    `slots` caps expert copies per device (default: ceil((E + redundant) / ep) as EPLB lays them
    out, never more than memory allows); `redundant` is at least what fills every device's slots
    (ep x ceil(E / ep) - E). `time_model` is "time" (the simulator's expert time)
    or "tokens" (balance assignments, EPLB's criterion).
    """
    E, ep = sc.model.moe.num_experts, sc.ep
    # every device holds a slot of its own: an ep that does not divide the experts (or exceeds them)
    # takes redundant copies up to ep x ceil(E / ep), as DeepSeek's EP144 / EP320 and the simulator do
    redundant = max(redundant, ep * -(-E // ep) - E)
    mem = memory_slots(sc)
    if slots is not None and slots > mem:
        raise ValueError(f"{slots} expert slots per device asked but each {sc.device.name} has memory for {mem} "
                         f"({expert_bytes(sc) / 2**20:.0f} MiB per expert) next to weights, KV cache and activations")
    per_device = uniform_slots(E, ep, redundant, mem)
    if slots is not None:
        per_device = np.full(ep, slots, dtype=np.int64)
    node_of = np.arange(ep) // sc.cluster.node.devices_per_node
    prov = {"scenario": sc.name, "model": sc.model.name, "cluster": sc.cluster.name, "ep": ep,
            "routing": sc.config.workload.routing.generator, "memory_slots_per_device": mem,
            "dispatch": dispatch_provenance(sc)}
    matrix = sc.routing if isinstance(sc.routing, LoadMatrixRouting) else None
    if matrix is not None:
        prov["loads"] = {**matrix.history.describe(), "window": matrix.window}
    if matrix is not None and matrix.exact_marginals:
        problem = problem_from_load_matrix(matrix, sc.moe_tokens, node_of=node_of, token_cost=pair_token_cost(sc),
                                           redundant=redundant, slots=per_device, provenance=prov,
                                           expert_groups=sc.model.moe.expert_groups)
    else:
        problem = problem_from_routing(sc.routing, sc.moe_tokens, len(sc.model.moe_layers), node_of=node_of,
                                       token_cost=pair_token_cost(sc), redundant=redundant, slots=per_device,
                                       steps=steps, first_step=first_step, provenance=prov,
                                       expert_groups=sc.model.moe.expert_groups,
                                       flow_from_top1=dispatch_algorithm(sc).flow_from_top1)
    if time_model == "time":
        problem = problem.with_time_model(fit_expert_time(sc, float(problem.load.max())))
    elif time_model != "tokens":
        raise ValueError(f"unknown time model '{time_model}'; choose time or tokens")
    if matrix is not None:
        group_total = group_tokens(sc.moe_tokens, node_of.size).sum()  # tokens per step of one EP group
        problem = replace(problem, load_history=group_total * matrix.window_inclusion())  # for robust planning
    return problem


def group_tokens(tokens: np.ndarray, group_size: int) -> np.ndarray:
    """(group_size,) tokens each group-local source sends per step, averaged over expert-parallel groups."""
    return np.asarray(tokens, dtype=float).reshape(-1, group_size).mean(axis=0)


def problem_from_load_matrix(routing: LoadMatrixRouting, tokens: np.ndarray, *, node_of: np.ndarray,
                             token_cost: np.ndarray, redundant: int, slots: np.ndarray,
                             provenance: dict[str, Any], expert_groups: int = 1) -> PlacementProblem:
    """The expected placement problem of a load-matrix replay: no sampling noise.

    Each source sends its tokens x the expected top-k inclusion of every expert (the replayed
    windows' shares, capped at one copy per token), and consecutive layers are independent
    (the flow routing_statistics estimates for count-only sources).
    """
    per_source = group_tokens(tokens, node_of.size)
    incl = routing.expected_inclusion()  # (L, E), rows sum to top_k
    dispatch = per_source[None, :, None] * incl[:, None, :]
    load = dispatch.sum(axis=1)
    flow = np.einsum("li,lj->lij", load[:-1], load[1:]) / max(float(per_source.sum()), 1.0)
    prov = {**provenance, "flow": "independent layers (expected from the load matrix)"}
    return PlacementProblem(load, dispatch, flow, routing.top_k, np.asarray(node_of), token_cost,
                            np.asarray(slots, dtype=np.int64), redundant, provenance=prov, expert_groups=expert_groups)
