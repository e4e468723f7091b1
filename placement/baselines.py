"""Baseline placements, each a small function `(problem, seed) -> Placement`.

contiguous and round_robin ignore the loads (how Megatron/DeepSpeed and many serving stacks lay
experts out); random is the no-information reference; eplb_global and eplb_hierarchical follow
the greedy scheme of DeepSeek's EPLB: give redundant copies to the experts with the highest
load per copy, then pack the copies heaviest first onto the least-loaded device that has room
(hierarchical: first experts to nodes, then copies to the node's devices, so replicas stay
inside a node). Loads are weighed with the problem's expert-time model.
"""

from __future__ import annotations

import numpy as np

from moesim.placement.placement import Placement, contiguous as contiguous_layout, from_share_matrices
from moesim.placement.placement import round_robin as round_robin_layout
from moesim.placement.problem import PlacementProblem


def _check_one_copy_fits(problem: PlacementProblem, per_device: np.ndarray, name: str) -> None:
    if (per_device > problem.slots).any():
        d = int(np.argmax(per_device - problem.slots))
        raise ValueError(f"{name} puts {per_device[d]} experts on device {d}, which has {problem.slots[d]} slots")


def contiguous(problem: PlacementProblem, seed: int = 0) -> Placement:
    """Experts in contiguous chunks, one copy each, the same on every layer."""
    pl = contiguous_layout(problem.num_experts, problem.num_devices, problem.num_layers)
    _check_one_copy_fits(problem, pl.experts_per_device().max(axis=0), "contiguous")
    return pl


def round_robin(problem: PlacementProblem, seed: int = 0) -> Placement:
    """Expert e on device e mod D, one copy each."""
    pl = round_robin_layout(problem.num_experts, problem.num_devices, problem.num_layers)
    _check_one_copy_fits(problem, pl.experts_per_device().max(axis=0), "round_robin")
    return pl


def random_placement(problem: PlacementProblem, seed: int = 0) -> Placement:
    """Each layer an independent random assignment of one copy per expert to free slots."""
    rng = np.random.default_rng([seed, 0x51ACE])  # its own stream: generators shuffle experts with `seed`
    E, D = problem.num_experts, problem.num_devices
    seats = np.repeat(np.arange(D), problem.slots)
    shares = np.zeros((problem.num_layers, E, D))
    for l in range(problem.num_layers):
        chosen = rng.permutation(seats)[:E]
        shares[l, np.arange(E), chosen] = 1.0
    return from_share_matrices(shares)


def replicate_hottest(weight: np.ndarray, extra: int, max_copies: int) -> np.ndarray:
    """Copies per expert: one each, then `extra` more, each to the expert with the highest
    weight per copy (at most `max_copies` copies of any expert)."""
    copies = np.ones(weight.size, dtype=np.int64)
    for _ in range(extra):
        per_copy = np.where(copies < max_copies, weight / copies, -np.inf)
        e = int(np.argmax(per_copy))
        if per_copy[e] == -np.inf:
            break
        copies[e] += 1
    return copies


def pack_copies(problem: PlacementProblem, load: np.ndarray, copies: np.ndarray, devices: np.ndarray,
                room: np.ndarray) -> np.ndarray:
    """Greedy balanced packing: copies heaviest first onto the device (among `devices`) with the
    least expert time that has a free slot and no copy of that expert yet. Returns (E, D) shares."""
    tm = problem.time_model
    E = load.size
    share = np.zeros((E, problem.num_devices))
    items = np.repeat(np.arange(E), copies)
    per_copy = (load / copies)[items]
    order = np.argsort(-(tm.fixed + tm.per_token * per_copy), kind="stable")
    busy = np.zeros(problem.num_devices)
    for i in order:
        e = int(items[i])
        free = [d for d in devices if room[d] > 0 and share[e, d] == 0]
        if not free:
            raise ValueError(f"no free slot for a copy of expert {e} on devices {devices.tolist()}")
        d = min(free, key=lambda d: (busy[d], d))
        share[e, d] = 1.0 / copies[e]
        busy[d] += tm.fixed + tm.per_token * per_copy[i]
        room[d] -= 1
    return share


def eplb_global(problem: PlacementProblem, seed: int = 0) -> Placement:
    """EPLB's global policy: replicate the hottest experts, pack all copies over all devices."""
    problem.check()
    D = problem.num_devices
    shares = np.zeros((problem.num_layers, problem.num_experts, D))
    for l in range(problem.num_layers):
        copies = replicate_hottest(problem.load[l], problem.redundant, D)
        shares[l] = pack_copies(problem, problem.load[l], copies, np.arange(D), problem.slots.copy())
    return from_share_matrices(shares)


def eplb_hierarchical(problem: PlacementProblem, seed: int = 0) -> Placement:
    """EPLB's hierarchical policy: balance experts over nodes (equal numbers per node), then
    replicate and pack inside each node, so a hot expert's replicas share its node."""
    problem.check()
    E, D, N = problem.num_experts, problem.num_devices, problem.num_nodes
    if N == 1:
        return eplb_global(problem, seed)
    node_devices = [np.flatnonzero(problem.node_of == n) for n in range(N)]
    node_slots = np.array([problem.slots[d].sum() for d in node_devices])
    per_node = np.full(N, E // N) + (np.arange(N) < E % N)  # experts per node, equal up to one
    if (per_node > node_slots).any():
        raise ValueError(f"hierarchical EPLB needs {per_node.max()} slots per node; a node has {node_slots.min()}")
    extra_per_node = np.minimum(node_slots - per_node, problem.redundant // N + (np.arange(N) < problem.redundant % N))
    tm = problem.time_model
    shares = np.zeros((problem.num_layers, E, D))
    for l in range(problem.num_layers):
        load = problem.load[l]
        node_load = np.zeros(N)
        node_count = np.zeros(N, dtype=np.int64)
        node_of_expert = np.zeros(E, dtype=np.int64)
        for e in np.argsort(-load, kind="stable"):
            open_nodes = [n for n in range(N) if node_count[n] < per_node[n]]
            n = min(open_nodes, key=lambda n: (node_load[n], n))
            node_of_expert[e] = n
            node_load[n] += tm.fixed + tm.per_token * load[e]
            node_count[n] += 1
        room = problem.slots.copy()
        for n in range(N):
            mine = np.flatnonzero(node_of_expert == n)
            copies = replicate_hottest(load[mine], int(extra_per_node[n]), node_devices[n].size)
            packed = pack_copies(problem, load[mine], copies, node_devices[n], room)
            shares[l, mine] = packed
    return from_share_matrices(shares)


BASELINES = {
    "contiguous": contiguous,
    "round_robin": round_robin,
    "random": random_placement,
    "eplb": eplb_global,
    "eplb_hierarchical": eplb_hierarchical,
}
