"""Where an expert copy is timed: a copy engine moving weights from a slower tier into a device.

A copy engine is a SimPy process pool over one path (host memory -> device over PCIe, or a
node's SSD -> device). Copies queue by priority (demand fetches before prefetches, then first
come first served); `lanes` copies may be in setup at once, so their latencies overlap, but the
path's bandwidth is one wire: the byte transfers of concurrent copies run one after another. A
queued prefetch that the device suddenly needs is promoted to demand priority; one whose
expert was evicted before it started is dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Hashable

import simpy

DEMAND, PREFETCH = 0, 1


@dataclass(eq=False)
class Copy:
    """One expert copy; `done` fires when its last byte has landed."""

    key: Hashable
    device: int
    nbytes: float
    kind: str  # "demand" | "prefetch"
    issued: float
    done: simpy.Event
    step: int = -1
    start: float | None = None  # the transfer began (after queueing and setup latency)
    end: float | None = None
    cancelled: bool = False
    meta: dict = field(default_factory=dict)


class CopyEngine:
    """Copies over one path at `bandwidth` B/s after `latency` s of setup each."""

    def __init__(self, env: simpy.Environment, name: str, bandwidth: float, latency: float, lanes: int = 1):
        self.env, self.name = env, name
        self.bandwidth, self.latency = bandwidth, latency
        self._queue = simpy.PriorityStore(env)
        self._wire = simpy.Resource(env, capacity=1)
        self._seq = itertools.count()
        self.copies: list[Copy] = []
        self.busy_s = 0.0
        for _ in range(lanes):
            env.process(self._lane())

    def transfer_time(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth

    def request(self, key: Hashable, device: int, nbytes: float, kind: str, step: int = -1) -> Copy:
        copy = Copy(key, device, nbytes, kind, self.env.now, self.env.event(), step)
        self.copies.append(copy)
        self._enqueue(copy, DEMAND if kind == "demand" else PREFETCH)
        return copy

    def promote(self, copy: Copy) -> None:
        """A queued prefetch is needed now: queue it again at demand priority (the stale entry is skipped)."""
        if copy.start is None and not copy.cancelled and copy.kind != "demand":
            copy.kind = "demand"
            copy.meta["promoted"] = True
            self._enqueue(copy, DEMAND)

    def _enqueue(self, copy: Copy, priority: int) -> None:
        self._queue.put(simpy.PriorityItem((priority, next(self._seq)), copy))

    def _lane(self):
        env = self.env
        while True:
            item = yield self._queue.get()
            copy: Copy = item.item
            if copy.cancelled or copy.meta.get("taken"):
                continue
            copy.meta["taken"] = True
            if self.latency:
                yield env.timeout(self.latency)
            with self._wire.request() as wire:
                yield wire
                copy.start = env.now
                duration = copy.nbytes / self.bandwidth
                yield env.timeout(duration)
                self.busy_s += duration
            copy.end = env.now
            copy.done.succeed()
