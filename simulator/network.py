"""Where an all-to-all is costed: the shared network fabric and collectives over it.

Sharing model. Every directed link of the topology is a work-conserving queue that drains at
its achievable bandwidth (bandwidth x efficiency); flows are served in the order they start
(FIFO by start time; ties by the order in which devices handed their bytes over, then by
destination). A flow puts its bytes on every link of its
path and completes when the last of those links has drained them, plus the path latency
(cut-through: a flow runs at the pace of its slowest link).

Why this model: what decides when a device may start its experts is when the last byte
destined to it arrives. On a path with one bottleneck link, every work-conserving discipline
(FIFO, fair sharing, max-min) finishes that link's queued bytes at the same moment, so the
quantity that drives the simulation is exact; only the order of intermediate flows differs.
Because FIFO-by-start is causal (a flow is delayed only by flows that started before it), a
wave of flows can be costed the moment its sources are ready, in one vectorised numpy pass
over (flow, link) pairs. Per-flow max-min fair sharing would need an event per flow
completion, ~10^3 per all-to-all at EP32, far beyond the speed budget. What it does not
capture: a flow throttled upstream leaving bandwidth to others downstream (the model treats a
flow's bytes as occupying each link at that link's full rate), and reordering between
collectives costed in different waves.
"""

from __future__ import annotations

from typing import Generator

import numpy as np
import simpy

from moesim.hardware_profiles.topology import Routes


def _dominant_entries(entry_pair: np.ndarray, entry_link: np.ndarray, bandwidth: np.ndarray,
                      n_links: int) -> np.ndarray:
    """Mask of the (pair, link) entries that can matter for timing.

    Links crossed by exactly the same set of device pairs (a GPU's PCIe link to its own NIC
    and that NIC's port, say) carry identical traffic in identical order, so only the slowest
    of them can delay a flow; the others are dropped from the per-wave computation (their
    bytes are still counted). This roughly halves the work for multi-node clusters.
    """
    signature: dict[int, tuple] = {}
    order = np.argsort(entry_link, kind="stable")
    links, pairs = entry_link[order], entry_pair[order]
    bounds = np.flatnonzero(np.diff(links, prepend=-1))
    for b, e in zip(bounds, np.append(bounds[1:], links.size)):
        signature[int(links[b])] = tuple(pairs[b:e].tolist())
    best: dict[tuple, int] = {}
    for link, sig in signature.items():
        if sig not in best or bandwidth[link] < bandwidth[best[sig]]:
            best[sig] = link
    keep_links = np.zeros(n_links, dtype=bool)
    keep_links[list(best.values())] = True
    return keep_links[entry_link]


class Fabric:
    """All links of the cluster; keeps when each link drains and the bytes it carried."""

    def __init__(self, routes: Routes, prune_links: bool = True):
        self.routes = routes
        n_links = len(routes.link_names)
        self.free_at = np.zeros(n_links)
        n = self._n = routes.num_devices
        # every (pair, link) entry of every device-to-device path, sorted by pair id
        lens = np.diff(routes.pair_ptr)
        entry_pair = np.repeat(np.arange(n * n), lens)
        keep = (_dominant_entries(entry_pair, routes.pair_links, routes.link_bandwidth, n_links) if prune_links
                else np.ones(entry_pair.size, dtype=bool))
        self._entry_pair = entry_pair[keep]
        self._entry_link = routes.pair_links[keep]
        self._entry_src = self._entry_pair // n
        self._all_pair, self._all_link = entry_pair, routes.pair_links
        # when every pair sends (the usual dense all-to-all) the flow boundaries are static
        self._dense_bounds = np.flatnonzero(np.diff(self._entry_pair, prepend=-1))
        self._dense_pairs = self._entry_pair[self._dense_bounds]
        self._entry_index = np.arange(self._entry_pair.size)
        self._dense_groups = _LinkGroups(np.sort(self._entry_link, kind="stable")) if self._entry_link.size else None
        self._pair_bytes = np.zeros(n * n)
        self._pair_latency = routes.pair_latency.ravel()
        self._entry_inv_bw = 1.0 / routes.link_bandwidth[self._entry_link]
        self._n_links = n_links

    def transfer(self, src: np.ndarray, start: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Cost a wave of flows: devices `src` (ready at `start`) send rows matrix[src] of bytes.

        Returns, per destination device, the time the last byte of this wave destined to it
        arrives (-inf where it receives nothing). A device's bytes to itself stay local.
        """
        n = self._n
        if len(src) == n:
            full = matrix.copy()
        else:
            full = np.zeros((n, n))
            full[src] = matrix[src]
        np.fill_diagonal(full, 0.0)
        t_src = np.zeros(n)
        t_src[src] = start
        rank = np.empty(n, dtype=np.int64)  # FIFO order of sources on every link
        rank[src[np.argsort(start, kind="stable")]] = np.arange(len(src))
        flat = full.ravel()
        e_bytes = flat[self._entry_pair]
        sel = e_bytes > 0
        if not sel.any():  # nothing crosses the network (also: a single device)
            return np.full(n, -np.inf)
        self._pair_bytes += flat
        dense = bool(sel.all())
        if dense:
            e_pair, e_link, e_src, inv_bw = self._entry_pair, self._entry_link, self._entry_src, self._entry_inv_bw
        else:
            e_pair, e_link, e_src = self._entry_pair[sel], self._entry_link[sel], self._entry_src[sel]
            inv_bw, e_bytes = self._entry_inv_bw[sel], e_bytes[sel]
        # unique keys (link, FIFO rank, entry) let the faster unstable sort stay deterministic
        key = (e_link * n + rank[e_src]) * e_pair.size + self._entry_index[: e_pair.size]
        order = np.argsort(key)
        # sorting by link first keeps each link's entries at the same positions in every
        # dense wave, so the group structure is computed once
        groups = self._dense_groups if dense else _LinkGroups(e_link[order])
        t = t_src[e_src[order]]
        w = (e_bytes * inv_bw)[order]
        cs = np.cumsum(w)
        done_work = cs - groups.base_of(cs, w)  # the link's work up to and including this entry
        begin = t.copy()
        begin[groups.first] = np.maximum(t[groups.first], self.free_at[groups.links])
        v = begin - (done_work - w)
        span = float(v.max() - v.min()) + 1.0
        busy = np.maximum.accumulate(v + groups.gid * span) - groups.gid * span + done_work  # FIFO max-plus
        self.free_at[groups.links] = busy[groups.last]

        entry_done = np.empty(busy.size)
        entry_done[order] = busy
        if dense:
            bounds, pairs = self._dense_bounds, self._dense_pairs
        else:
            bounds = np.flatnonzero(np.diff(e_pair, prepend=-1))
            pairs = e_pair[bounds]
        arrival = np.full(n * n, -np.inf)
        arrival[pairs] = np.maximum.reduceat(entry_done, bounds) + self._pair_latency[pairs]
        return arrival.reshape(n, n).max(axis=0)

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes each directed link carried so far (every link of every path, pruned or not)."""
        return np.bincount(self._all_link, weights=self._pair_bytes[self._all_pair], minlength=self._n_links)


class _LinkGroups:
    """Where each link's entries start and end in an array of entries sorted by link."""

    def __init__(self, sorted_links: np.ndarray):
        total = sorted_links.size
        new_group = np.empty(total, dtype=bool)
        new_group[0] = True
        np.not_equal(sorted_links[1:], sorted_links[:-1], out=new_group[1:])
        self.first = np.flatnonzero(new_group)
        self.last = np.append(self.first[1:] - 1, total - 1)
        self.links = sorted_links[self.first]
        self.gid = np.cumsum(new_group).astype(float)
        self._start_of = np.repeat(self.first, np.diff(np.append(self.first, total)))

    def base_of(self, cs: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Cumulative work before each entry's group began."""
        return cs[self._start_of] - w[self._start_of]


class _Arrival(simpy.Event):
    """An event whose firing time is set later, when the network knows the arrival time.

    Saves a second wake-up per wait (wait for readiness, then for the bytes): the same
    mechanism SimPy's own Timeout uses, triggered from the collective's wave instead.
    """

    def fire_after(self, delay: float) -> None:
        self._ok = True
        self._value = None
        self.env.schedule(self, delay=max(0.0, delay))


class Collective:
    """One collective instance (e.g. layer 7's dispatch in step 3) over the shared fabric.

    Each device submits its outgoing bytes when it is ready; there is no barrier. A
    destination becomes ready once every device that sends to it has submitted; the flows
    submitted so far are then costed as one wave, and the destination waits until its last
    inbound byte arrives. A device that receives nothing does not wait at all.
    """

    def __init__(self, env: simpy.Environment, fabric: Fabric, matrix: np.ndarray,
                 extra_latency: float = 0.0):
        n = matrix.shape[0]
        self.env = env
        self.fabric = fabric
        self.matrix = matrix
        self.extra_latency = extra_latency
        need = matrix > 0
        np.fill_diagonal(need, False)
        self.need = need
        self.pending = need.sum(axis=0)  # sources each destination still waits for
        off_diag = n * (n - 1)
        self.dense = int(need.sum()) == off_diag
        self.left = n
        self.ready = self.pending == 0
        self.arrival = np.full(n, -np.inf)
        self._queue: list[int] = []
        self._times: list[float] = []
        self._waiters: dict[int, _Arrival] = {}
        self._not_before: dict[int, tuple[float, float]] = {}

    def submit(self, src: int) -> None:
        """Device `src` hands its outgoing bytes to the network now."""
        self._queue.append(src)
        self._times.append(self.env.now)
        self.left -= 1
        if self.dense:
            if self.left == 0:
                self._wave()
            return
        self.pending -= self.need[src]
        if self.left == 0 or bool((~self.ready & (self.pending == 0)).any()):
            self._wave()

    def _wave(self) -> None:
        src = np.asarray(self._queue, dtype=np.int64)
        inbound = self.fabric.transfer(src, np.asarray(self._times), self.matrix)
        self._queue, self._times = [], []
        self.arrival = np.maximum(self.arrival, inbound + self.extra_latency)
        now_ready = np.nonzero(~self.ready & (self.pending == 0))[0] if not self.dense else np.nonzero(~self.ready)[0]
        self.ready[now_ready] = True
        now = self.env.now
        for d in now_ready:
            ev = self._waiters.pop(int(d), None)
            if ev is not None:
                not_before, then = self._not_before.pop(int(d))
                ev.fire_after(max(self.arrival[d], not_before) + then - now)

    def received_at(self, dst: int, not_before: float = 0.0) -> float:
        """When `dst` could use its inbound bytes: their arrival, and not before `not_before`."""
        return max(self.arrival[dst], not_before)

    def inbound(self, dst: int, not_before: float = 0.0, then: float = 0.0) -> Generator[simpy.Event, None, None]:
        """Process step: wait until every byte destined to `dst` has arrived, and at least until
        `not_before` (the device may still be busy, e.g. with its shared experts); then stay
        busy for `then` seconds (the compute that consumes the bytes) in the same wake-up."""
        if not self.ready[dst]:
            ev = _Arrival(self.env)
            self._waiters[dst] = ev
            self._not_before[dst] = (not_before, then)
            yield ev
            return
        delay = max(self.arrival[dst], not_before) + then - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)
