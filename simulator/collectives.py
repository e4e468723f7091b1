"""Collectives beyond the plain all-to-all of `network.Collective`, over the same fabric.

`GroupCollective`: an all-reduce (or reduce-scatter) within groups of devices (TP, MoE-TP). It
completes for every member when the last member has arrived plus the transfer time: a late
rank delays its whole group, as a real all-reduce does.

`StagedCollective`: a two-stage all-to-all whose second stage forwards what the first delivered
(DeepEP normal: network to the peer GPU, then NVLink to the expert's GPU). Both stages' bytes
enter the fabric together (the forwarding is pipelined in chunks), and a destination is done
when its own inbound bytes have arrived and its forwarders have received theirs.
"""

from __future__ import annotations

from typing import Generator

import numpy as np
import simpy

from moesim.simulator.network import Collective, Fabric


def make_collective(env: simpy.Environment, fabric: Fabric, stages: list[np.ndarray], extra_latency: float = 0.0,
                    need: np.ndarray | None = None):
    """The collective for a dispatch or combine of one layer (one stage: a plain all-to-all;
    `need`, its sending pairs, when the caller computed them for all layers at once)."""
    if len(stages) == 1:
        return Collective(env, fabric, stages[0], extra_latency, need)
    if len(stages) == 2:
        return StagedCollective(env, fabric, stages[0], stages[1], extra_latency)
    raise ValueError(f"a collective has one or two stages, got {len(stages)}")


class _Waiting:
    """Wake-ups of devices waiting for a time not yet known (fired when it is)."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.waiters: dict[int, tuple[simpy.Event, float, float]] = {}

    def wait(self, d: int, not_before: float, then: float) -> simpy.Event:
        ev = simpy.Event(self.env)
        self.waiters[d] = (ev, not_before, then)
        return ev

    def release(self, d: int, at: float) -> None:
        item = self.waiters.pop(d, None)
        if item is not None:
            ev, not_before, then = item
            delay = max(at, not_before) + then - self.env.now
            self.env.schedule(ev, delay=max(0.0, delay))
            ev._ok, ev._value = True, None  # an Event scheduled directly, as SimPy's Timeout does


class GroupCollective:
    """All-reduce of `matrix` bytes (rank to rank, e.g. a ring) within each group of `group_of`."""

    def __init__(self, env: simpy.Environment, fabric: Fabric, matrix: np.ndarray, group_of: np.ndarray,
                 extra_latency: float = 0.0):
        self.env, self.fabric, self.matrix, self.extra = env, fabric, matrix, extra_latency
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
        inbound = self.fabric.transfer(src, start, self.matrix)
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
    """A pipelined two-stage all-to-all: `first` (src -> forwarder) and `second` (forwarder -> dst)."""

    def __init__(self, env: simpy.Environment, fabric: Fabric, first: np.ndarray, second: np.ndarray,
                 extra_latency: float = 0.0):
        self.env, self.fabric, self.extra = env, fabric, extra_latency
        n = first.shape[0]
        self.matrix = first + second
        a, b = first > 0, second > 0
        np.fill_diagonal(a, False)
        self.first_in, self.forwards = a, b.copy()
        np.fill_diagonal(self.forwards, False)
        need = (self.matrix > 0) | ((a.astype(float) @ b.astype(float)) > 0)
        np.fill_diagonal(need, False)
        self.need = need
        self.pending = need.sum(axis=0)
        self.ready = self.pending == 0
        self.arrival = np.full(n, -np.inf)
        self.pair = np.full((n, n), -np.inf)
        self._queue: list[int] = []
        self._times: list[float] = []
        self._waiting = _Waiting(env)
        self.left = n

    def submit(self, src: int) -> None:
        self._queue.append(src)
        self._times.append(self.env.now)
        self.left -= 1
        self.pending -= self.need[src]
        if self.left == 0 or bool((~self.ready & (self.pending == 0)).any()):
            self._wave()

    def _wave(self) -> None:
        src = np.asarray(self._queue, dtype=np.int64)
        self.fabric.transfer(src, np.asarray(self._times), self.matrix)
        self._queue, self._times = [], []
        self.pair = np.maximum(self.pair, self.fabric.last_pair_arrival)
        direct = self.pair.max(axis=0)
        at_forwarder = np.where(self.first_in, self.pair, -np.inf).max(axis=0)  # first stage in, per forwarder
        via = np.where(self.forwards, at_forwarder[:, None], -np.inf).max(axis=0)
        arrival = np.maximum(direct, via) + self.extra
        now_ready = np.flatnonzero(~self.ready & (self.pending == 0))
        self.ready[now_ready] = True
        self.arrival[now_ready] = arrival[now_ready]
        for d in now_ready:
            self._waiting.release(int(d), float(self.arrival[d]))

    def received_at(self, dst: int, not_before: float = 0.0) -> float:
        return max(self.arrival[dst], not_before)

    def inbound(self, dst: int, not_before: float = 0.0, then: float = 0.0) -> Generator:
        if not self.ready[dst]:
            yield self._waiting.wait(dst, not_before, then)
            return
        delay = max(self.arrival[dst], not_before) + then - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)
