"""Collectives beyond the plain all-to-all of `network.Collective`, over the same fabric.

`GroupCollective`: an all-reduce (or reduce-scatter) within groups of devices (TP, MoE-TP). It
completes for every member when the last member has arrived plus the transfer time: a late
rank delays its whole group, as a real all-reduce does.

`StagedCollective`: a two-stage all-to-all whose second stage forwards what the first delivered
(DeepEP normal: network to the peer GPU, then NVLink to the expert's GPU). Both stages' bytes
enter the fabric together (the forwarding is pipelined in chunks), and a destination is done
when its own inbound bytes have arrived and its forwarders have received theirs.

Each takes a comm `kind` and a per-device kernel `floor` (`comm_cost`): a device's bytes enter
the fabric `floor` after it submits, and it leaves the collective no earlier than that.
"""

from __future__ import annotations

from typing import Generator

import numpy as np
import simpy

from moesim.simulator.network import Arrival, Collective, Fabric, sending_pairs


def make_collective(env: simpy.Environment, fabric: Fabric, stages: list[np.ndarray], extra_latency: float = 0.0,
                    need: np.ndarray | None = None, kind: str | None = None, floor: list[float] | None = None):
    """The collective for a dispatch or combine of one layer (one stage: a plain all-to-all;
    `need`, its sending pairs (`staged_pairs` for two stages), when the caller computed them for
    all layers at once; `kind` and `floor`: its comm kernel cost, see `network.Collective`)."""
    if len(stages) == 1:
        return Collective(env, fabric, stages[0], extra_latency, need, kind, floor)
    if len(stages) == 2:
        return StagedCollective(env, fabric, stages[0], stages[1], extra_latency, need, kind, floor)
    raise ValueError(f"a collective has one or two stages, got {len(stages)}")


class _Waiting:
    """Wake-ups of devices waiting for a time not yet known (fired when it is)."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.waiters: dict[int, tuple[simpy.Event, float, float]] = {}

    def wait(self, d: int, not_before: float, then: float) -> simpy.Event:
        ev = Arrival(self.env)
        self.waiters[d] = (ev, not_before, then)
        return ev

    def release(self, d: int, at: float) -> None:
        item = self.waiters.pop(d, None)
        if item is not None:
            ev, not_before, then = item
            ev.fire_after(max(at, not_before) + then - self.env.now)


class GroupCollective:
    """All-reduce of `matrix` bytes (rank to rank, e.g. a ring) within each group of `group_of`; each
    rank's bytes leave its `floor` (comm kind `kind`'s kernel floor) after it arrives."""

    def __init__(self, env: simpy.Environment, fabric: Fabric, matrix: np.ndarray, group_of: np.ndarray,
                 extra_latency: float = 0.0, kind: str | None = None, floor: np.ndarray | None = None):
        self.env, self.fabric, self.matrix, self.extra = env, fabric, matrix, extra_latency
        self.kind, self.floor = kind, None if floor is None else np.asarray(floor, dtype=float)
        self.group_of = np.asarray(group_of)
        self.members = {int(g): np.flatnonzero(self.group_of == g) for g in np.unique(self.group_of)}
        self.arrived: dict[int, dict[int, float]] = {g: {} for g in self.members}
        self.done: dict[int, float] = {}
        self._waiting = _Waiting(env)

    def submit(self, d: int) -> None:
        g = int(self.group_of[d])
        arrived = self.arrived[g]
        arrived[d] = self.env.now
        if len(arrived) < self.members[g].size:
            return
        src = np.fromiter(arrived.keys(), dtype=np.int64)
        start = np.fromiter(arrived.values(), dtype=float)
        if self.floor is not None:
            start = start + self.floor[src]
        inbound = self.fabric.transfer(src, start, self.matrix, self.kind)
        finish = max(float(inbound[src].max()), float(start.max())) + self.extra
        self.done[g] = finish
        for m in self.members[g]:
            self._waiting.release(int(m), finish)

    def received_at(self, d: int, not_before: float = 0.0) -> float:
        return max(self.done[int(self.group_of[d])], not_before)

    def inbound(self, d: int, not_before: float = 0.0, then: float = 0.0) -> Generator:
        g = int(self.group_of[d])
        if g not in self.done:
            yield self._waiting.wait(d, not_before, then)
            return
        delay = max(self.done[g], not_before) + then - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)


class StagedCollective:
    """A pipelined two-stage all-to-all: `first` (src -> forwarder) and `second` (forwarder -> dst).

    Flows are costed in waves, as in `Collective`. A wave is needed only when a destination
    that has already submitted its own bytes becomes ready (one that has not cannot be
    waiting: every schedule submits before it waits), so when every destination needs every
    source, as with hierarchical dispatch, a collective is one wave of every device.
    """

    def __init__(self, env: simpy.Environment, fabric: Fabric, first: np.ndarray, second: np.ndarray,
                 extra_latency: float = 0.0, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 kind: str | None = None, floor: list[float] | None = None):
        self.env, self.fabric, self.extra = env, fabric, extra_latency
        self.kind, self._floor = kind, floor
        n = first.shape[0]
        self.matrix = first + second
        if pairs is None:
            pairs = tuple(x[0] for x in staged_pairs(first[None], second[None]))
        self.first_in, self.forwards, need = pairs
        self.need = need
        pending = need.sum(axis=0)
        self._ready = (pending == 0).tolist()
        self._all_need_all = int(pending.sum()) == n * (n - 1)
        self._pending = pending.tolist()
        self._needed_by = None if self._all_need_all else [np.flatnonzero(row).tolist() for row in need]
        self._submitted = [False] * n
        self._own = [-np.inf] * n  # when each device's floor has passed (it submitted)
        self._arrival = [-np.inf] * n
        self.pair = np.full((n, n), -np.inf)
        self._queue: list[int] = []
        self._times: list[float] = []
        self._waiting = _Waiting(env)
        self.left = n

    @property
    def pending(self) -> np.ndarray:
        """Per destination, the sources it still waits for."""
        return np.array(self._pending)

    @property
    def ready(self) -> np.ndarray:
        """Per destination, whether every source it depends on has submitted."""
        return np.array(self._ready)

    @property
    def arrival(self) -> np.ndarray:
        """Per destination, when its last byte (direct or forwarded) arrives (-inf: not yet known)."""
        return np.array(self._arrival)

    def submit(self, src: int) -> None:
        self._queue.append(src)
        t = self.env.now
        if self._floor is not None:
            t += self._floor[src]
            self._own[src] = t
        self._times.append(t)
        self.left -= 1
        if self._all_need_all:
            if self.left == 0:
                self._pending = [0] * len(self._pending)
                self._wave()
            return
        self._submitted[src] = True
        pending, submitted = self._pending, self._submitted
        wave = self.left == 0 or (pending[src] == 0 and not self._ready[src])
        for d in self._needed_by[src]:
            pending[d] -= 1
            if pending[d] == 0 and submitted[d]:
                wave = True
        if wave:
            self._wave()

    def _wave(self) -> None:
        src = np.asarray(self._queue, dtype=np.int64)
        self.fabric.transfer(src, np.asarray(self._times), self.matrix, self.kind)
        self._queue, self._times = [], []
        self.pair = np.maximum(self.pair, self.fabric.last_pair_arrival)
        direct = self.pair.max(axis=0)
        at_forwarder = np.where(self.first_in, self.pair, -np.inf).max(axis=0)  # first stage in, per forwarder
        via = np.where(self.forwards, at_forwarder[:, None], -np.inf).max(axis=0)
        arrival = (np.maximum(direct, via) + self.extra).tolist()
        if self._all_need_all:  # the one wave, at the last submit: every destination is ready now
            self._ready, self._arrival = [True] * len(arrival), arrival
            for d in sorted(self._waiting.waiters):  # ascending, as the events are scheduled in this order
                self._waiting.release(d, arrival[d])
            return
        ready, known, pending = self._ready, self._arrival, self._pending
        for d in range(len(ready)):
            if not ready[d] and pending[d] == 0:
                ready[d] = True
                known[d] = arrival[d]
                self._waiting.release(d, arrival[d])

    def received_at(self, dst: int, not_before: float = 0.0) -> float:
        a = self._arrival[dst]
        if self._own[dst] > not_before:
            not_before = self._own[dst]
        return not_before if not_before > a else a

    def inbound(self, dst: int, not_before: float = 0.0, then: float = 0.0) -> Generator:
        if self._own[dst] > not_before:
            not_before = self._own[dst]
        if not self._ready[dst]:
            yield self._waiting.wait(dst, not_before, then)
            return
        a = self._arrival[dst]
        delay = (not_before if not_before > a else a) + then - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)


def staged_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For (..., N, N) stage matrices: (first-stage network pairs, forwarding pairs, need[src, dst]:
    dst depends on src, directly or through a forwarder)."""
    first_in, forwards = sending_pairs(first), sending_pairs(second)
    via = np.matmul(first_in.astype(np.float32), forwards.astype(np.float32)) > 0
    need = sending_pairs(first + second) | via
    need.reshape(*need.shape[:-2], -1)[..., :: need.shape[-1] + 1] = False
    return first_in, forwards, need
