"""How long one collective takes alone on the fabric, run through the engine's own collectives.

`collective_seconds(routes, kind, ranks, size_bytes)` is what nccl-tests would print for a buffer
of `size_bytes` over ranks 0..ranks-1 of a cluster, as moesim costs it: the same `Collective` /
`GroupCollective` objects, the same per-kind floors (at the group's size, `comm_cost`) and the
same size-efficiency curve the engine applies inside a step, with every rank arriving at time 0.
Buffers follow nccl-tests' conventions: `size_bytes` is the all-to-all's per-rank send buffer
(size / ranks to each peer), the all-reduce's buffer, the all-gather's output buffer and the
reduce-scatter's input buffer. It lets a benchmark set moesim beside published nccl-tests and
DeepEP figures, and a test check that a profile fitted from a log reproduces that log.
"""

from __future__ import annotations

import numpy as np
import simpy

from moesim.hardware_profiles.topology import Routes
from moesim.simulator import comm_cost
from moesim.simulator.allreduce import NCCL, AllReduceChoice, GroupAllReduce
from moesim.simulator.collectives import GroupCollective
from moesim.simulator.network import Collective, Fabric

RING_KINDS = ("all_gather", "reduce_scatter")


def _group(routes: Routes, ranks: int) -> np.ndarray:
    """(N, N) pairs of distinct devices among the first `ranks`."""
    n = routes.num_devices
    inside = np.arange(n) < ranks
    return inside[:, None] & inside[None, :] & ~np.eye(n, dtype=bool)


def _run(env: simpy.Environment, coll, members: np.ndarray) -> float:
    done: list[float] = []

    def rank(d: int):
        coll.submit(d)
        yield from coll.inbound(d)
        done.append(env.now)

    for d in members:
        env.process(rank(int(d)))
    env.run()
    return max(done)


def collective_seconds(routes: Routes, kind: str, ranks: int, size_bytes: float,
                       allreduce: AllReduceChoice = NCCL, role: str = "dispatch") -> float:
    """Seconds from every rank's start to the last rank's end of one collective (module docstring).
    `kind`: a comm kind (all_to_all, hierarchical and low_latency as one all-to-all stage over the
    group; all_reduce under `allreduce`; all_gather, reduce_scatter as NCCL's ring); `role`:
    dispatch or combine (their floors may differ)."""
    n = routes.num_devices
    if not 2 <= ranks <= n:
        raise ValueError(f"a collective over {ranks} ranks needs 2..{n} devices")
    pairs = _group(routes, ranks)
    members = np.arange(ranks)
    env = simpy.Environment()
    fabric = Fabric(routes)
    hop = float(routes.pair_latency[0, 1])
    if kind == "all_reduce":
        one_node = not bool(routes.pair_inter_node[:ranks, :ranks].any())
        ring_bytes = 2.0 * (ranks - 1) / ranks * size_bytes
        terms = GroupAllReduce(allreduce, ranks, ranks, hop, one_node, comm_cost.has_floors(routes, kind))
        inner, added, nccl = terms.terms(ring_bytes)
        matrix = np.zeros((n, n))
        matrix[:ranks, :ranks] = inner
        group_of = np.where(np.arange(n) < ranks, 0, 1 + np.arange(n))
        coll = GroupCollective(env, fabric, matrix, group_of, added, kind, comm_cost.kernel_floors(routes, kind, pairs) if nccl else None)
    elif kind in RING_KINDS:
        # NCCL's ring: (n-1) steps of size / n each to the ring neighbour; a measured floor holds the steps' latency
        matrix = np.zeros((n, n))
        matrix[members, (members + 1) % ranks] = (ranks - 1) / ranks * size_bytes
        measured = comm_cost.has_floors(routes, kind)
        group_of = np.where(np.arange(n) < ranks, 0, 1 + np.arange(n))
        coll = GroupCollective(env, fabric, matrix, group_of, 0.0 if measured else (ranks - 2) * hop, kind,
                               comm_cost.kernel_floors(routes, kind, pairs))
    else:
        matrix = np.where(pairs, size_bytes / ranks, 0.0)
        coll = Collective(env, fabric, matrix, 0.0, pairs, kind, comm_cost.kernel_floors(routes, kind, pairs, role))
    return _run(env, coll, members)
