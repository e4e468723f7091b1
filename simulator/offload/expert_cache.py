"""Where a cache miss is decided: a device's expert cache and its replacement policies.

A device holds at most `capacity` units of experts in memory (experts, or bytes when `size`
gives each expert's bytes, e.g. under mixed precision); the rest live on a slower tier (host
memory, storage). Before a layer runs, the experts it needs are looked up: residents are hits,
the others misses that must be copied in, evicting by policy. Policies: LRU, LFU (frequency over
the whole run, LRU among ties) and pinned-hot (a fixed set, e.g. the hottest experts of a trace,
never evicted; LRU for the rest). Prefetches insert without counting as an access, so a
prefetched expert that is then used is a hit and one that is not used is wasted bandwidth.

The cache knows slots, not time: a hit here means the expert has a slot, even if its copy is
still in flight. The offload manager splits these hits into on-time and late ones (the reported
hit rate counts on-time hits only); `CacheStats` is residency accounting.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable


@dataclass(frozen=True)
class CachePolicy:
    """A replacement policy: whether it pins a fixed set of experts, and which resident to evict
    (`victim(candidates oldest first, use counts)`)."""

    name: str
    victim: Callable[[list, dict], Hashable]
    pins: bool = False


def _least_recent(candidates: list, freq: dict) -> Hashable:
    return candidates[0]


def _least_frequent(candidates: list, freq: dict) -> Hashable:
    """The least used over the run; LRU order breaks ties (min keeps the first of equals)."""
    return min(candidates, key=lambda k: freq.get(k, 0))


LRU = CachePolicy("lru", _least_recent)
LFU = CachePolicy("lfu", _least_frequent)
PINNED = CachePolicy("pinned", _least_recent, pins=True)


class CacheFullError(ValueError):
    """Every resident expert is pinned or needed now, so nothing can be evicted for a new one."""


@dataclass
class CacheStats:
    hits: int = 0  # the expert had a slot (its copy may still be in flight: see the module docstring)
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

    capacity: float
    policy: CachePolicy = LRU
    pinned: frozenset = frozenset()
    stats: CacheStats = field(default_factory=CacheStats)
    size: Callable[[Hashable], float] | None = None  # units one expert takes; None: 1 each

    def __post_init__(self) -> None:
        self._size = self.size or (lambda key: 1.0)
        pinned = self.pinned if self.policy.pins else frozenset()
        if not pinned and self.capacity < 1:
            raise ValueError(f"an expert cache needs room for at least one expert, got capacity {self.capacity}")
        self.used = float(sum(self._size(k) for k in pinned))
        if self.used > self.capacity:
            raise ValueError(f"{len(pinned)} pinned experts do not fit a cache of {self.capacity:g}")
        self._order: OrderedDict[Hashable, None] = OrderedDict((k, None) for k in pinned)  # oldest first
        self._freq: dict[Hashable, int] = {}
        self._prefetched: set[Hashable] = set()
        self._pinned = pinned
        self.peak_used = self.used
        self.evicted: list[Hashable] = []  # evictions since the owner last drained the list

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
            unit = " bytes" if self.size else " experts"
            raise CacheFullError(f"a cache of {self.capacity:,.0f}{unit} cannot hold the {len(protect)} experts one "
                                 f"layer needs plus {len(self._pinned)} pinned ones")
        return self.policy.victim(candidates, self._freq)

    def _insert(self, key: Hashable, protect: set) -> None:
        need = self._size(key)
        while self.used + need > self.capacity + 1e-9:
            victim = self._victim(protect)
            del self._order[victim]
            self.used -= self._size(victim)
            self._prefetched.discard(victim)
            self.evicted.append(victim)
            self.stats.evictions += 1
        self._order[key] = None
        self.used += need
        self.peak_used = max(self.peak_used, self.used)

    def warm(self, keys: Iterable[Hashable]) -> None:
        """Load experts before the run starts (no stats): the longest prefix of `keys` (hottest
        first) that fits, inserted coldest first so the hottest are the most recently used. A
        larger cache thus starts with a superset in the same recency order (LRU inclusion holds)."""
        chosen, used = [], self.used
        for key in dict.fromkeys(keys):
            if key in self._order:
                continue
            if used + self._size(key) > self.capacity + 1e-9:
                break
            chosen.append(key)
            used += self._size(key)
        for key in reversed(chosen):
            self._order[key] = None
        self.used = used
        self.peak_used = max(self.peak_used, self.used)

    def access(self, keys: Iterable[Hashable], bypass: Iterable[Hashable] = ()) -> list[Hashable]:
        """Demand accesses of one layer; returns the misses (to copy in), in order. Keys the layer
        needs are protected from evicting one another. Misses in `bypass` are counted but not
        brought in (they run elsewhere, e.g. on the host CPU)."""
        keys = list(dict.fromkeys(keys))
        protect = set(keys)
        skip = set(bypass)
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
                if key not in skip:
                    misses.append(key)
                    self._insert(key, protect)
        return misses

    def prefetch(self, keys: Iterable[Hashable], protect: Iterable[Hashable] = ()) -> list[Hashable]:
        """Bring experts in ahead of use; returns those actually copied (not already resident)."""
        keys = list(dict.fromkeys(keys))
        keep = set(protect) | set(keys)  # a prefetch never evicts another expert it names
        fetched = []
        for key in keys:
            if key in self._order:
                continue
            try:
                self._insert(key, keep)
            except CacheFullError:  # nothing evictable left: the rest of the prefetch is dropped
                break
            self._prefetched.add(key)
            self.stats.prefetches += 1
            fetched.append(key)
        return fetched


class LayeredCache:
    """One cache per MoE layer, each with an equal share of the device's capacity (Mixtral-offloading
    keeps k experts per layer): layers never evict each other's experts. Keys are (layer, expert)."""

    def __init__(self, layers: int, capacity: float, policy: CachePolicy = LRU, pinned: frozenset = frozenset(),
                 size: Callable[[Hashable], float] | None = None):
        share = capacity / layers if size else float(int(capacity // layers))
        self.capacity = capacity
        self.parts = [ExpertCache(share, policy, frozenset(k for k in pinned if k[0] == m), size=size)
                      for m in range(layers)]

    def __contains__(self, key: Hashable) -> bool:
        return key in self.parts[key[0]]  # type: ignore[index]

    def _split(self, keys: Iterable[Hashable]) -> dict[int, list]:
        out: dict[int, list] = {}
        for key in keys:
            out.setdefault(key[0], []).append(key)  # type: ignore[index]
        return out

    def access(self, keys: Iterable[Hashable], bypass: Iterable[Hashable] = ()) -> list[Hashable]:
        skip = list(bypass)
        return [k for m, ks in self._split(keys).items() for k in self.parts[m].access(ks, skip)]

    def prefetch(self, keys: Iterable[Hashable], protect: Iterable[Hashable] = ()) -> list[Hashable]:
        keep = list(protect)
        return [k for m, ks in self._split(keys).items() for k in self.parts[m].prefetch(ks, keep)]

    def warm(self, keys: Iterable[Hashable]) -> None:
        for m, ks in self._split(keys).items():
            self.parts[m].warm(ks)

    @property
    def evicted(self) -> list[Hashable]:
        out = [k for p in self.parts for k in p.evicted]
        for p in self.parts:
            p.evicted.clear()
        return out

    @property
    def stats(self) -> CacheStats:
        total = CacheStats()
        for p in self.parts:
            for f in ("hits", "misses", "evictions", "prefetches", "prefetch_hits"):
                setattr(total, f, getattr(total, f) + getattr(p.stats, f))
        return total

    @property
    def peak_used(self) -> float:
        return sum(p.peak_used for p in self.parts)
