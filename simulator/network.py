"""Where an all-to-all is costed: the shared network fabric and collectives over it.

Sharing model. Every directed link of the topology is a work-conserving queue that drains at
its achievable bandwidth (bandwidth x efficiency); flows are served in the order they start
(FIFO by start time, ties by smaller flow first). A flow puts its bytes on every link of its
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


class Fabric:
    """All links of the cluster; keeps when each link drains and the bytes it carried."""

    def __init__(self, routes: Routes):
        self.routes = routes
        n_links = len(routes.link_names)
        self.free_at = np.zeros(n_links)
        self.link_bytes = np.zeros(n_links)
        self._n = routes.num_devices
        self._lens = np.diff(routes.pair_ptr)

    def transfer(self, src: np.ndarray, start: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cost a wave of flows. rows[i, d] bytes go from device src[i] (ready at start[i]) to d.

        Returns arrival[i, d]: the time the flow's last byte arrives (nan where nothing is sent;
        a device's bytes to itself stay local and cost nothing on the network).
        """
        n = self._n
        arrival = np.full(rows.shape, np.nan)
        mask = rows > 0
        mask[np.arange(len(src)), src] = False
        fi, fd = np.nonzero(mask)
        if fi.size == 0:
            return arrival
        fs = src[fi]
        fbytes = rows[fi, fd]
        fstart = start[fi]
        pair = fs * n + fd
        lens = self._lens[pair]
        first = self.routes.pair_ptr[pair]
        total = int(lens.sum())
        cum = np.cumsum(lens)
        entry = np.repeat(first - (cum - lens), lens) + np.arange(total)
        e_link = self.routes.pair_links[entry]
        e_flow = np.repeat(np.arange(fi.size), lens)
        e_t = fstart[e_flow]
        e_b = fbytes[e_flow]
        e_w = e_b / self.routes.link_bandwidth[e_link]
        np.add.at(self.link_bytes, e_link, e_b)

        order = np.lexsort((e_b, e_t, e_link))
        link, t, w = e_link[order], e_t[order], e_w[order]
        new_group = np.empty(total, dtype=bool)
        new_group[0] = True
        new_group[1:] = link[1:] != link[:-1]
        idx = np.arange(total)
        gstart = np.maximum.accumulate(np.where(new_group, idx, 0))
        cs = np.cumsum(w)
        before_group = cs[gstart] - w[gstart]
        done_work = cs - before_group  # work of the group up to and including this entry
        prev_work = done_work - w
        begin = np.where(new_group, np.maximum(t, self.free_at[link]), t)
        v = begin - prev_work
        gid = np.cumsum(new_group)
        span = float(v.max() - v.min()) + 1.0
        cm = np.maximum.accumulate(v + gid * span) - gid * span
        busy = cm + done_work  # when the link has drained this entry (FIFO max-plus recursion)
        last = np.empty(total, dtype=bool)
        last[:-1] = new_group[1:]
        last[-1] = True
        self.free_at[link[last]] = busy[last]

        entry_done = np.empty(total)
        entry_done[order] = busy
        flow_done = np.maximum.reduceat(entry_done, np.concatenate(([0], cum[:-1])))
        arrival[fi, fd] = flow_done + self.routes.pair_latency[fs, fd]
        return arrival


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
        self._waiters: dict[int, simpy.Event] = {}
        self.consumed = 0

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
        arr = self.fabric.transfer(src, np.asarray(self._times), self.matrix[src])
        self._queue, self._times = [], []
        with np.errstate(invalid="ignore"):
            inbound = np.nanmax(np.where(np.isnan(arr), -np.inf, arr), axis=0)
        self.arrival = np.maximum(self.arrival, inbound + self.extra_latency)
        now_ready = np.nonzero(~self.ready & (self.pending == 0))[0] if not self.dense else np.nonzero(~self.ready)[0]
        self.ready[now_ready] = True
        for d in now_ready:
            ev = self._waiters.pop(int(d), None)
            if ev is not None:
                ev.succeed()

    def inbound(self, dst: int) -> Generator[simpy.Event, None, None]:
        """Process step: wait until every byte destined to `dst` has arrived."""
        if not self.ready[dst]:
            ev = self.env.event()
            self._waiters[dst] = ev
            yield ev
        delay = self.arrival[dst] - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)
        self.consumed += 1
