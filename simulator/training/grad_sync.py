"""A training step's collectives beside its all-to-alls, on the shared fabric: gradient
synchronisation and ZeRO's parameter gathers as NCCL's rings run them, and the pipeline stages'
hand-offs (`GradientSync.pipeline`).

Dense parameters are replicated over the data-parallel group (the ranks with the same TP rank),
expert parameters over the expert-data-parallel group (the ranks with the same place in their
EP x MoE-TP group). Each gradient bucket is reduced over its group by a ring: an all-reduce
(ZeRO-0, DDP) sends 2 (n-1)/n x S to the ring neighbour, a reduce-scatter (ZeRO-1/2, Megatron's
distributed optimizer) (n-1)/n x S, and the updated parameters come back by an all-gather of
(n-1)/n x S after the optimizer. The fabric times the flows with contention (a bucket reduced
during the backward shares links with its all-to-alls); each ring adds its steps' latency beyond
the flows' own (2 (n-1) - 1 hops for an all-reduce, n - 2 for the others) unless the profile
gives the kind a measured floor, which then holds NCCL's whole fixed cost (as in allreduce.py and
collective_time.py).
"""

from __future__ import annotations

import numpy as np
import simpy

from moesim.hardware_profiles.topology import Routes
from moesim.simulator import comm_cost
from moesim.simulator.collectives import GroupCollective
from moesim.simulator.network import Collective, Fabric
from moesim.simulator.training.work import TrainingWork


class GradientSync:
    """The gradient reductions and parameter gathers of a training step's plan (`collectives`)."""

    def __init__(self, routes: Routes, n: int, tp: int, expert_span: int, pp: int = 1):
        """`tp`: ranks of a TP group (contiguous); `expert_span`: ranks of an EP x MoE-TP group
        (contiguous); `pp`: pipeline stages (contiguous blocks of n / pp ranks; groups stay within one)."""
        self.routes, self.n = routes, n
        self.hop = float(routes.pair_latency[0, 1]) if n > 1 else 0.0
        rank = np.arange(n)
        size = n // pp
        stage = rank // size
        span = max(expert_span, 1)
        self.dense_group = stage * tp + rank % tp  # the data-parallel group: the same stage and TP rank
        self.expert_group = stage * span + rank % span
        self.stage_size = size
        self._rings = {id(g): ring_neighbours(g) for g in (self.dense_group, self.expert_group)}
        self._floors: dict[tuple[str, str], np.ndarray | None] = {}

    def _floor(self, which: str, kind: str) -> np.ndarray | None:
        key = (which, kind)
        if key not in self._floors:
            group = self.dense_group if which == "dense" else self.expert_group
            pairs = (group[:, None] == group[None, :]) & ~np.eye(self.n, dtype=bool)
            self._floors[key] = comm_cost.kernel_floors(self.routes, kind, pairs) if pairs.any() else None
        return self._floors[key]

    def ring(self, env: simpy.Environment, fabric: Fabric, which: str, kind: str, message) -> GroupCollective:
        """One ring collective of `kind` (all_reduce, reduce_scatter, all_gather) of a `message` of
        bytes per rank (a number, or (n,) per rank) over the dense or expert data-parallel groups."""
        group = self.dense_group if which == "dense" else self.expert_group
        share, steps = ring_terms(int(np.bincount(group).max()), kind)
        matrix = np.zeros((self.n, self.n))
        src, dst = self._rings[id(group)]
        matrix[src, dst] = share * np.broadcast_to(np.asarray(message, dtype=float), (self.n,))[src]
        added = 0.0 if comm_cost.has_floors(self.routes, kind) else steps * self.hop
        return GroupCollective(env, fabric, matrix, group, added, kind, self._floor(which, kind))

    def collectives(self, env: simpy.Environment, fabric: Fabric, work: TrainingWork) -> tuple[dict, tuple]:
        """({bucket-closing layer: (dense, expert) reduction}, (dense, expert) parameter gathers)."""
        reduce_kind = "all_reduce" if work.zero_stage == 0 else "reduce_scatter"
        grads = {}
        for layer in np.flatnonzero((work.grad_dense > 0) | (work.grad_expert > 0)).tolist():
            grads[layer] = (self.ring(env, fabric, "dense", reduce_kind, float(work.grad_dense[layer])),
                            self.ring(env, fabric, "expert", reduce_kind, float(work.grad_expert[layer])))
        gather = ()
        if work.zero_stage in (1, 2):  # ZeRO-3 keeps the parameters sharded: each layer gathers its own
            gather = (self.ring(env, fabric, "dense", "all_gather", work.param_dense),
                      self.ring(env, fabric, "expert", "all_gather", work.param_expert))
        return grads, gather

    def layer_gathers(self, env: simpy.Environment, fabric: Fabric, work: TrainingWork) -> dict:
        """ZeRO-3: {layer: (before its forward, before its backward)} all-gathers of the layer's
        dense parameters over the data-parallel ring and its experts' over the expert-data-parallel
        ring, as one collective that every rank of the stage takes part in (its ranks step through
        the layers together)."""
        if work.layer_dense is None:
            return {}
        n = self.n
        stage = np.arange(n) // self.stage_size
        rings = [(*self._rings[id(group)], *ring_terms(int(np.bincount(group).max()), "all_gather"))
                 for group in (self.dense_group, self.expert_group)]
        measured = comm_cost.has_floors(self.routes, "all_gather")
        added = 0.0 if measured else max(r[3] for r in rings) * self.hop
        pairs = (stage[:, None] == stage[None, :]) & ~np.eye(n, dtype=bool)
        floor = comm_cost.kernel_floors(self.routes, "all_gather", pairs) if pairs.any() else None
        out = {}
        for layer in range(work.layer_dense.size):
            matrix = np.zeros((n, n))
            for (src, dst, share, _), message in zip(rings, (work.layer_dense[layer], work.layer_expert[layer])):
                matrix[src, dst] += share * message
            out[layer] = tuple(GroupCollective(env, fabric, matrix, stage, added, "all_gather", floor)
                               for _ in range(2))
        return out

    def pipeline(self, env: simpy.Environment, fabric: Fabric, work: TrainingWork) -> dict:
        """{boundary layer: (activations forward, gradients back)}: at the last layer of each stage
        but the last, each rank sends its activations to the rank in the same place of the next
        stage, and that rank's input gradients (as many bytes) come back."""
        out = {}
        if work.activation is None:
            return out
        size, n = self.stage_size, self.n
        for s, (_, end) in enumerate(work.stages[:-1]):
            src = np.arange(s * size, (s + 1) * size)
            colls = []
            for a, b in ((src, src + size), (src + size, src)):
                matrix = np.zeros((n, n))
                matrix[a, b] = work.activation[a]
                pairs = matrix > 0
                colls.append(Collective(env, fabric, matrix, 0.0, pairs))
            out[end - 1] = tuple(colls)
        return out


def ring_terms(size: int, kind: str) -> tuple[float, int]:
    """(bytes each rank sends its ring neighbour, as a multiple of the message; latency steps beyond
    the flows' own) of NCCL's ring `kind` over `size` ranks; a group of one moves nothing."""
    if size < 2:
        return 0.0, 0
    if kind == "all_reduce":
        return 2.0 * (size - 1) / size, 2 * (size - 1) - 1
    return (size - 1) / size, size - 2


def ring_neighbours(group_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source, destination) of every ring step: each group's members in rank order, the last
    sending to the first; a group of one sends nothing."""
    src, dst = [], []
    for g in np.unique(group_of):
        members = np.flatnonzero(group_of == g)
        if members.size > 1:
            src.append(members)
            dst.append(np.roll(members, -1))
    if not src:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(src), np.concatenate(dst)
