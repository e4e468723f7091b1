"""Where a cache miss is decided: a device's expert cache and its replacement policies.

A device holds at most `capacity` experts in memory; the rest live on a slower tier (host
memory, storage). Before a layer runs, the experts it needs are looked up: residents are hits,
the others misses that must be copied in, evicting by policy. Policies: LRU, LFU (frequency over
the whole run, LRU among ties) and pinned-hot (a fixed set, e.g. the hottest experts of a trace,
never evicted; LRU for the rest). Prefetches insert without counting as an access, so a
prefetched expert that is then used is a hit and one that is not used is wasted bandwidth.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Literal

Policy = Literal["lru", "lfu", "pinned"]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    prefetches: int = 0
    prefetch_hits: int = 0  # demand accesses served by an expert a prefetch brought in

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 1.0


@dataclass
class ExpertCache:
    """Resident experts of one device, keyed by (layer, expert) or any hashable."""

    capacity: int
    policy: Policy = "lru"
    pinned: frozenset = frozenset()
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        if self.policy not in ("lru", "lfu", "pinned"):
            raise ValueError(f"unknown cache policy '{self.policy}'; choose lru, lfu or pinned")
        if self.capacity < 1:
            raise ValueError(f"an expert cache needs room for at least one expert, got capacity {self.capacity}")
        pinned = self.pinned if self.policy == "pinned" else frozenset()
        if len(pinned) > self.capacity:
            raise ValueError(f"{len(pinned)} pinned experts do not fit a cache of {self.capacity}")
        self._order: OrderedDict[Hashable, None] = OrderedDict((k, None) for k in pinned)  # oldest first
        self._freq: dict[Hashable, int] = {}
        self._prefetched: set[Hashable] = set()
        self._pinned = pinned

    def __contains__(self, key: Hashable) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    @property
    def resident(self) -> list[Hashable]:
        return list(self._order)

    def _victim(self, protect: set) -> Hashable:
        candidates = [k for k in self._order if k not in self._pinned and k not in protect]
        if not candidates:
            raise ValueError(f"cache of {self.capacity} cannot hold the {len(protect)} experts one layer needs "
                             f"plus {len(self._pinned)} pinned ones")
        if self.policy == "lfu":
            rank = {k: i for i, k in enumerate(self._order)}  # LRU order breaks frequency ties
            return min(candidates, key=lambda k: (self._freq.get(k, 0), rank[k]))
        return candidates[0]

    def _insert(self, key: Hashable, protect: set) -> None:
        while len(self._order) >= self.capacity:
            victim = self._victim(protect)
            del self._order[victim]
            self._prefetched.discard(victim)
            self.stats.evictions += 1
        self._order[key] = None

    def access(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """Demand accesses of one layer; returns the misses (to copy in), in order. Keys the layer
        needs are protected from evicting one another."""
        keys = list(dict.fromkeys(keys))
        protect = set(keys)
        misses = []
        for key in keys:
            self._freq[key] = self._freq.get(key, 0) + 1
            if key in self._order:
                self.stats.hits += 1
                if key in self._prefetched:
                    self.stats.prefetch_hits += 1
                    self._prefetched.discard(key)
                self._order.move_to_end(key)
            else:
                self.stats.misses += 1
                misses.append(key)
                self._insert(key, protect)
        return misses

    def prefetch(self, keys: Iterable[Hashable], protect: Iterable[Hashable] = ()) -> list[Hashable]:
        """Bring experts in ahead of use; returns those actually copied (not already resident)."""
        keep = set(protect)
        fetched = []
        for key in dict.fromkeys(keys):
            if key in self._order:
                continue
            keep.add(key)
            self._insert(key, keep)
            self._prefetched.add(key)
            self.stats.prefetches += 1
            fetched.append(key)
        return fetched
