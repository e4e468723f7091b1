"""Routing statistics that placement and offloading policies lean on: how hot each expert is, which follow which.

Pinned-hot caches pin the most used experts; affinity prefetchers (Read-ME, ExFlow) guess the
next layer's experts from P(expert at l+1 | expert at l). Both come from sampled routing steps
of the scenario's own source (a trace, or the generator), counted once before the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workloads.routing import RoutingSource, layer_pairs
from moesim.workloads.trace_routing import TraceRouting


def routing_statistics(routing: RoutingSource, tokens: np.ndarray, num_layers: int, group_size: int,
                       steps: int, first_step: int = 0, flow_from_top1: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """Mean per-step dispatch (L, group, E) and consecutive-layer flow (L-1, E, E) over `steps`
    steps, averaged over expert-parallel groups. The flow is measured from per-token expert
    ids when the source has them, else the independent-layers expectation; `flow_from_top1`
    pairs only each token's top-1 expert at l with its experts at l+1 (what exflow moves).
    Returns (dispatch, flow, how the flow was obtained)."""
    E = routing.num_experts
    groups = tokens.size // group_size
    dispatch = np.zeros((num_layers, group_size, E))
    flow = np.zeros((max(num_layers - 1, 0), E, E))
    measured = True
    for step in range(first_step, first_step + steps):
        r = routing.step(step, tokens, num_layers)
        dispatch += r.counts.reshape(num_layers, groups, group_size, E).sum(axis=1)
        if r.token_experts is not None and num_layers > 1:
            flow += layer_pairs(r.token_experts, E, flow_from_top1)
        else:
            measured = False
    dispatch /= steps * groups
    if measured:
        flow /= steps * groups
        how = "measured from per-token routing" + (" (top-1 at l to every expert at l+1)" if flow_from_top1 else "")
    else:
        load = dispatch.sum(axis=1)
        total_tokens = float(tokens.sum()) / groups
        flow = np.einsum("li,lj->lij", load[:-1], load[1:]) / max(total_tokens, 1.0)
        how = "independent layers (the routing source has no per-token ids)"
    return dispatch, flow, how



@dataclass(frozen=True)
class ExpertStatistics:
    load: np.ndarray  # (moe_layers, experts) assignments per step, averaged over the sampled steps
    transition: np.ndarray  # (moe_layers - 1, E, E) P(expert e' at l+1 | expert e at l), rows sum to k
    steps: int  # routing steps sampled
    measured_pairs: bool  # transition counted from per-token ids (else independent-layers estimate)
    first_step: int = 0
    in_sample: bool = False  # the sampled steps are among the simulated ones


def statistics_window(routing: RoutingSource, simulated: int, steps: int) -> tuple[int, int, bool]:
    """(first step, steps, in sample) of the routing to learn statistics from.

    Generators have unlimited steps, so statistics come from steps after the simulated ones (out
    of sample); a trace too short for that is sampled from its start (at most its length), and
    the result says so."""
    if isinstance(routing, TraceRouting) and routing.num_steps < simulated + steps:
        return 0, min(steps, routing.num_steps), True
    return simulated, steps, False


def expert_statistics(routing: RoutingSource, tokens: np.ndarray, num_layers: int, steps: int,
                      first_step: int = 0, in_sample: bool = False) -> ExpertStatistics:
    """Mean expert loads and the layer-to-layer transition matrix over `steps` steps from
    `first_step`, from the same counting the placement problem uses (`routing_statistics`)."""
    k = routing.top_k
    dispatch, flow, how = routing_statistics(routing, tokens, num_layers, tokens.size, steps, first_step)
    load = dispatch.sum(axis=1)  # (L, E) assignments per step
    row = flow.sum(axis=2, keepdims=True)  # each row sums to k x the tokens at that expert
    transition = np.divide(flow * k, row, out=np.zeros_like(flow), where=row > 0)
    return ExpertStatistics(load, transition, steps, how.startswith("measured"), first_step, in_sample)
