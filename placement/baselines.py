"""Baseline placements, each a small function `(problem, seed) -> Placement`.

contiguous and round_robin ignore the loads (how Megatron/DeepSpeed and many serving stacks lay
experts out); random is the no-information reference. eplb_global follows the greedy scheme
of DeepSeek's EPLB (redundant copies to the experts with the highest load per copy, then copies
heaviest first onto the least-loaded device with room) with loads weighed by the problem's
expert-time model and slots as the problem gives them. eplb_hierarchical is EPLB as published
(`eplb_rebalance`, a numpy port of `rebalance_experts` in github.com/deepseek-ai/EPLB,
reproducing its README example exactly): expert groups to nodes, replicas within nodes, then
GPUs, on token loads, with the global policy where the nodes do not divide the groups.
"""

from __future__ import annotations

import numpy as np

from moesim.placement.placement import Placement, contiguous as contiguous_layout, from_share_matrices, with_redundant_slots
from moesim.placement.placement import round_robin as round_robin_layout
from moesim.placement.problem import PlacementProblem


def _check_one_copy_fits(problem: PlacementProblem, per_device: np.ndarray, name: str) -> None:
    if (per_device > problem.slots).any():
        d = int(np.argmax(per_device - problem.slots))
        raise ValueError(f"{name} puts {per_device[d]} experts on device {d}, which has {problem.slots[d]} slots")


def _even_slots(problem: PlacementProblem, pl: Placement) -> Placement:
    """Where the devices do not divide the experts (or outnumber them), redundant copies even out
    the slots, as the simulator lays out `placement.policy` contiguous and round_robin (DeepSeek's
    EP144 / EP320: every device holds ceil(E / D) experts), where the problem's copy budget allows
    them (moesim place always does: problem_from_scenario takes at least those redundant copies)."""
    E, D = problem.num_experts, problem.num_devices
    return with_redundant_slots(pl) if E % D and problem.budget >= D * -(-E // D) else pl


def contiguous(problem: PlacementProblem, seed: int = 0) -> Placement:
    """Experts in contiguous chunks, one copy each, the same on every layer (redundant copies
    even out the slots where the devices do not divide the experts)."""
    pl = _even_slots(problem, contiguous_layout(problem.num_experts, problem.num_devices, problem.num_layers))
    _check_one_copy_fits(problem, pl.experts_per_device().max(axis=0), "contiguous")
    return pl


def round_robin(problem: PlacementProblem, seed: int = 0) -> Placement:
    """Expert e on device e mod D, one copy each (redundant copies even out the slots where the
    devices do not divide the experts)."""
    pl = _even_slots(problem, round_robin_layout(problem.num_experts, problem.num_devices, problem.num_layers))
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


def eplb_balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """EPLB's `balanced_packing` for one row: n items into `num_packs` packs of exactly
    n / num_packs items each, heaviest first onto the lightest pack that still has room.

    Returns each item's pack and its rank (arrival order) in that pack. Ties follow EPLB under
    PyTorch: items of equal weight in index order (torch's CPU sort is stable on rows of up to
    16 items; longer rows with exact ties may be ordered differently there), and among packs
    of equal weight the lowest index (Python's `min`). With one item per pack EPLB keeps the
    items in place (item i in pack i) instead of sorting them, and so does this.
    """
    n = weight.size
    if n % num_packs:
        raise ValueError(f"{n} items do not pack evenly into {num_packs} packs")
    per_pack = n // num_packs
    if per_pack == 1:
        return np.arange(n), np.zeros(n, dtype=np.int64)
    pack = np.full(n, -1, dtype=np.int64)
    rank = np.full(n, -1, dtype=np.int64)
    pack_weight = np.zeros(num_packs, dtype=weight.dtype)  # float32 sums, as in EPLB
    pack_items = np.zeros(num_packs, dtype=np.int64)
    for item in np.argsort(-weight, kind="stable"):
        open_packs = np.flatnonzero(pack_items < per_pack)
        p = int(open_packs[np.argmin(pack_weight[open_packs])])  # first lightest
        pack[item], rank[item] = p, pack_items[p]
        pack_weight[p] += weight[item]
        pack_items[p] += 1
    return pack, rank


def eplb_replicate(weight: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's `replicate_experts` for one row: physical experts 0..n-1 are the n logical ones;
    each further one copies the expert with the largest load per replica (first on ties).

    Returns phy2log (logical expert of each physical one), the replica rank of each physical
    expert, and the replica count of each logical expert. Division in the weight's dtype
    (float32 as in EPLB) so that near-ties resolve the same way.
    """
    n = weight.size
    if num_physical < n:
        raise ValueError(f"{num_physical} physical experts cannot hold {n} logical ones")
    phy2log = np.concatenate([np.arange(n), np.zeros(num_physical - n, dtype=np.int64)])
    rank = np.zeros(num_physical, dtype=np.int64)
    count = np.ones(n, dtype=np.int64)
    for i in range(n, num_physical):
        e = int(np.argmax(weight / count.astype(weight.dtype)))
        phy2log[i], rank[i] = e, count[e]
        count[e] += 1
    return phy2log, rank, count


def _eplb_layer(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's hierarchical policy on one layer's (E,) float32 loads: phy2log, replica ranks, counts.

    1. Pack the expert groups onto nodes (balanced packing of group loads, G / N groups each).
    2. Inside each node replicate its experts into num_replicas / N physical experts.
    3. Pack each node's physical experts (load / replicas each) onto its GPUs, equally many each.
    Physical expert j sits on GPU j // (num_replicas / num_gpus); GPUs n*g..(n+1)*g-1 form node n.
    """
    E = weight.size
    group_size = E // num_groups
    per_node, gpus_per_node, per_gpu = num_replicas // num_nodes, num_gpus // num_nodes, num_replicas // num_gpus
    group_node, group_rank = eplb_balanced_packing(weight.reshape(num_groups, group_size).sum(axis=1), num_nodes)
    node_order = np.argsort(group_node * num_groups + group_rank, kind="stable")  # groups by (node, rank)
    node_experts = (node_order[:, None] * group_size + np.arange(group_size)).reshape(num_nodes, -1)
    phy2log = np.zeros(num_replicas, dtype=np.int64)
    phyrank = np.zeros(num_replicas, dtype=np.int64)
    logcnt = np.zeros(E, dtype=np.int64)
    for n, experts in enumerate(node_experts):
        local_log, local_rank, local_cnt = eplb_replicate(weight[experts], per_node)
        per_replica = (weight[experts] / local_cnt.astype(weight.dtype))[local_log]
        gpu, rank_on_gpu = eplb_balanced_packing(per_replica, gpus_per_node)
        where = n * per_node + gpu * per_gpu + rank_on_gpu
        phy2log[where] = experts[local_log]
        phyrank[where] = local_rank
        logcnt[experts] = local_cnt
    return phy2log, phyrank, logcnt


def eplb_rebalance(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                   num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeepSeek's EPLB `rebalance_experts` in numpy: (layers, experts) loads -> replica plan.

    The hierarchical policy (groups to nodes, replicas within nodes, then GPUs) when the nodes
    divide the groups, else the global one (EPLB's hierarchical policy with one group and one
    node: replicas anywhere, packed over all GPUs). Loads are taken as float32, as EPLB does.

    Returns phy2log (layers, num_replicas): the logical expert of each physical slot, slots
    num_replicas / num_gpus per GPU in GPU order; log2phy (layers, experts, max replicas): each
    expert's physical slots by replica rank, -1 padded; logcnt (layers, experts): replicas.
    """
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"weight must be (layers, experts), got shape {weight.shape}")
    if (weight < 0).any() or not np.isfinite(weight).all():
        raise ValueError("expert loads must be finite and non-negative")
    L, E = weight.shape
    if num_gpus % num_nodes:
        raise ValueError(f"num_gpus={num_gpus} is not a multiple of num_nodes={num_nodes}")
    if num_replicas % num_gpus:
        raise ValueError(f"num_replicas={num_replicas} is not a multiple of num_gpus={num_gpus}: "
                         "EPLB gives every GPU the same number of physical experts")
    if num_replicas < E:
        raise ValueError(f"num_replicas={num_replicas} is fewer than the {E} logical experts")
    if num_groups % num_nodes:
        num_groups = num_nodes = 1  # EPLB's global policy
    elif E % num_groups:
        raise ValueError(f"{E} experts do not split into num_groups={num_groups} equal groups")
    layers = [_eplb_layer(weight[l], num_replicas, num_groups, num_nodes, num_gpus) for l in range(L)]
    phy2log = np.stack([p for p, _, _ in layers])
    phyrank = np.stack([r for _, r, _ in layers])
    logcnt = np.stack([c for _, _, c in layers])
    log2phy = np.full((L, E, int(logcnt.max())), -1, dtype=np.int64)
    rows = np.repeat(np.arange(L), num_replicas)
    log2phy[rows, phy2log.ravel(), phyrank.ravel()] = np.tile(np.arange(num_replicas), L)
    return phy2log, log2phy, logcnt


def eplb_hierarchical(problem: PlacementProblem, seed: int = 0) -> Placement:
    """DeepSeek's published EPLB policy (`eplb_rebalance`) on the problem's token loads.

    The problem's `expert_groups` are packed onto its nodes (whole groups per node, limiting
    cross-node traffic under group-limited routing), experts are replicated inside their node
    and the replicas packed onto the node's devices. Where the nodes do not divide the groups
    (always for ungrouped models, expert_groups=1, on more than one node) this is EPLB's global
    policy, as in EPLB. Every device gets the same number of physical experts, as EPLB needs:
    floor((E + redundant) / D) each, so a redundant budget that is not a multiple of the devices
    leaves the rest unused. Loads are balanced in tokens (EPLB's criterion; with equal copies
    per device the expert-time model's fixed term is the same everywhere). Two replicas that
    land on one device serve as one copy with their summed share.
    """
    problem.check()
    E, D, N = problem.num_experts, problem.num_devices, problem.num_nodes
    node_devices = [np.flatnonzero(problem.node_of == n) for n in range(N)]
    if len({d.size for d in node_devices}) != 1:
        sizes = [int(d.size) for d in node_devices]
        raise ValueError(f"EPLB needs the same number of devices on every node, got {sizes}")
    per_gpu = problem.budget // D
    if per_gpu * D < E:
        raise ValueError(f"EPLB puts the same number of experts on every device: {E} experts + "
                         f"{problem.redundant} redundant copies on {D} devices leave no multiple of {D} "
                         f"between {E} and {problem.budget}")
    if per_gpu > problem.slots.min():
        raise ValueError(f"EPLB puts {per_gpu} experts on every device; device {int(np.argmin(problem.slots))} "
                         f"has {problem.slots.min()} slots")
    phy2log, _, logcnt = eplb_rebalance(problem.load, per_gpu * D, problem.expert_groups, N, D)
    device_order = np.concatenate(node_devices)  # EPLB's GPU g is the (g mod gpus per node)-th device of node n
    device = device_order[np.arange(per_gpu * D) // per_gpu]
    shares = np.zeros((problem.num_layers, E, D))
    for l in range(problem.num_layers):
        np.add.at(shares[l], (phy2log[l], device), 1.0 / logcnt[l, phy2log[l]])
    return from_share_matrices(shares)


BASELINES = {
    "contiguous": contiguous,
    "round_robin": round_robin,
    "random": random_placement,
    "eplb": eplb_global,
    "eplb_hierarchical": eplb_hierarchical,
}
