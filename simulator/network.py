"""Where an all-to-all is costed: the shared network fabric and collectives over it.

Sharing model. Every directed link of the topology is a work-conserving queue that drains at
its achievable bandwidth (bandwidth x efficiency); flows are served in the order they start
(FIFO by start time; ties by source device index, then by destination, so a wave's results never
depend on the order in which the event loop ran the devices). A flow puts its bytes on every
link of its path and completes when the last of those links has drained them, plus the path latency
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

Communication kernel costs (`comm_cost`): a transfer of a comm kind puts (bytes + half_bytes) /
(bandwidth x eff_max) of work on each link of a flow's path, the kind's saturating efficiency in
message size; a collective delays each device's flows, and its leaving, by the kind's floor.
"""

from __future__ import annotations

from typing import Generator

import numpy as np
import simpy

from moesim.hardware_profiles.topology import Routes


def _dominant_entries(entry_pair: np.ndarray, entry_link: np.ndarray, slowness: np.ndarray,
                      n_links: int) -> np.ndarray:
    """Mask of the (pair, link) entries that can matter for timing.

    Links crossed by exactly the same set of device pairs (a GPU's PCIe link to its own NIC
    and that NIC's port, say) carry identical traffic in identical order, so a link whose
    per-message seconds are never above another's of the set, under every key of `slowness`
    (n_links, keys; larger is slower: 1 / bandwidth, and per comm kind its per-byte and
    per-message seconds), cannot delay a flow; it is dropped from the per-wave computation
    (its bytes are still counted). This roughly halves the work for multi-node clusters.
    """
    signature: dict[int, tuple] = {}
    order = np.argsort(entry_link, kind="stable")
    links, pairs = entry_link[order], entry_pair[order]
    bounds = np.flatnonzero(np.diff(links, prepend=-1))
    for b, e in zip(bounds, np.append(bounds[1:], links.size)):
        signature[int(links[b])] = tuple(pairs[b:e].tolist())
    groups: dict[tuple, list[int]] = {}
    for link, sig in signature.items():
        groups.setdefault(sig, []).append(link)
    keep_links = np.zeros(n_links, dtype=bool)
    for members in groups.values():
        for link in members:  # pruned when one other link is at least as slow under every key
            key = slowness[link]
            dominated = any((slowness[m] >= key).all() and ((slowness[m] > key).any() or m < link)
                            for m in members if m != link)
            keep_links[link] = not dominated
    return keep_links[entry_link]


HOLES_OF_DENSE = 2  # an all-source wave with at most 1/this of its entries silent uses the dense layout,
SMALL_DENSE_ENTRIES = 8192  # as does one of a fabric with at most this many entries (unless its pattern recurs)
SMALL_WAVE_SOURCES = 4  # a wave of at most this many sources and
SMALL_WAVE_FLOWS = 24  # this many (source, destination) flows is costed in plain Python (`_small_transfer`)


class Fabric:
    """All links of the cluster; keeps when each link drains and the bytes it carried.

    After every `transfer`, `last_pair_arrival` is the (N, N) matrix of that wave's arrival
    times per (source, destination) pair (-inf where nothing crossed the network, including
    a device's bytes to itself); `transfer` returns its column-wise maximum.
    """

    def __init__(self, routes: Routes, prune_links: bool = True):
        self.routes = routes
        n_links = len(routes.link_names)
        self.free_at = np.zeros(n_links)
        self.extra_bytes = np.zeros(n_links)
        n = self._n = routes.num_devices
        # every (pair, link) entry of every device-to-device path, sorted by pair id
        lens = np.diff(routes.pair_ptr)
        entry_pair = np.repeat(np.arange(n * n), lens)
        keep = (_dominant_entries(entry_pair, routes.pair_links, _slowness(routes), n_links) if prune_links
                else np.ones(entry_pair.size, dtype=bool))
        self._entry_pair = entry_pair[keep]
        self._entry_link = routes.pair_links[keep]
        self._entry_src = self._entry_pair // n
        self._all_pair, self._all_link = entry_pair, routes.pair_links
        self._pair_bytes = np.zeros(n * n)
        self._pair_latency = routes.pair_latency.ravel()
        self._entry_inv_bw = 1.0 / routes.link_bandwidth[self._entry_link]
        self._kinds: dict[str | None, tuple[np.ndarray, np.ndarray | None]] = {None: (self._entry_inv_bw, None)}
        self._n_links = n_links
        self.last_pair_arrival = np.full((n, n), -np.inf)

        # FIFO order on every link: entries sorted by (link, source rank), ties by entry index.
        # A stable sort of the key (link slot, source rank) over entries in entry order gives
        # exactly that order; with a compact link slot the key fits 16 bits, where numpy's
        # stable argsort is a radix sort (linear time).
        used_links, slot = np.unique(self._entry_link, return_inverse=True)
        self._slot = slot
        max_key = len(used_links) * max(n, 1)
        self._key_dtype = np.uint16 if max_key <= np.iinfo(np.uint16).max else np.int64
        self._slot_key = (slot.astype(np.int64) * n).astype(self._key_dtype)
        self._rank = np.zeros(n, dtype=self._key_dtype)
        self._ranks = np.arange(n, dtype=self._key_dtype)
        self._t_src = np.zeros(n)
        n_entries = self._entry_pair.size
        self._entry_on_diag = self._entry_pair % (n + 1) == 0
        self._diag_entries = bool(self._entry_on_diag.any()) if n_entries else False
        self._all_entries = np.arange(n_entries)
        self._src_ptr = np.searchsorted(self._entry_src, np.arange(n + 1))  # source s: entries ptr[s]:ptr[s+1]
        self._lists = None  # the entry arrays as Python lists, made on the first small wave
        self._kind_list_cache: dict[str | None, tuple[list[float], list[float] | None]] = {}
        self._diag = np.arange(n) * (n + 1)
        self._no_arrival = np.full(n * n, -np.inf)
        # when every device sends, which pairs send repeats from wave to wave (all of them in the
        # usual dense all-to-all; a fixed pattern for staged dispatch): its layout is cached
        self._dense = _StaticLayout(self, np.ones(n_entries, dtype=bool)) if n_entries else None
        self._layouts: dict[bytes, _StaticLayout] = {}
        self._seen_once: set[bytes] = set()  # sending patterns seen once (packed bits), at most this many:
        self._seen_cap = max(16, min(4096, (64 << 20) // max(1, n_entries // 8)))  # <= 64 MiB of keys

    def kind_work(self, kind: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per kept entry: seconds per byte and seconds per message (None: none) of a comm kind on its
        link (`comm_cost`); kind None, or a kind the routes lack: bandwidth x efficiency only."""
        got = self._kinds.get(kind)
        if got is None:
            comm = self.routes.comm.get(kind) if kind is not None else None
            if comm is None or self.routes.link_peak is None:
                got = self._kinds[None]
            else:
                links = self._entry_link
                inv = 1.0 / (self.routes.link_peak[links] * comm.efficiency[links])
                half = comm.half_bytes[links] * inv
                got = (inv, half if half.any() else None)
            self._kinds[kind] = got
        return got

    def transfer(self, src: np.ndarray, start: np.ndarray, matrix: np.ndarray, kind: str | None = None) -> np.ndarray:
        """Cost a wave of flows: devices `src` (ready at `start`) send rows matrix[src] of bytes, as
        kernels of comm `kind` (its efficiency in message size; None: bandwidth x efficiency).

        Returns, per destination device, the time the last byte of this wave destined to it
        arrives (-inf where it receives nothing). A device's bytes to itself stay local.
        Also sets `last_pair_arrival`, the same per (source, destination) pair.
        """
        if len(src) == self._n and not self._diag_entries and self._dense is not None:
            flat = matrix.ravel()
            e_bytes = flat[self._entry_pair]
            sel = e_bytes > 0
            silent = e_bytes.size - int(np.count_nonzero(sel))
            if silent == 0:  # every pair sends: the dense all-to-all
                return self._static_transfer(self._dense, src, start, flat, e_bytes, kind)
            if silent * HOLES_OF_DENSE <= e_bytes.size:  # a few silent pairs: the dense layout, holes masked
                return self._static_transfer(self._dense, src, start, flat, e_bytes, kind, silent=~sel)
            if sel.any():
                layout = self._layouts.get(key := np.packbits(sel).tobytes())
                if layout is None and key in self._seen_once:  # a pattern that recurs: precompute it
                    if len(self._layouts) >= 64:
                        self._layouts.clear()
                    layout = self._layouts[key] = _StaticLayout(self, sel)
                if layout is not None:
                    return self._static_transfer(layout, src, start, flat, e_bytes[sel], kind)
                if len(self._seen_once) >= self._seen_cap:  # a layout costs more than one general wave: build
                    self._seen_once.clear()  # it only for a pattern seen before (serving's rarely repeat)
                self._seen_once.add(key)
                if e_bytes.size <= SMALL_DENSE_ENTRIES:  # a small fabric: masking beats gathering the wave
                    return self._static_transfer(self._dense, src, start, flat, e_bytes, kind, silent=~sel)
        if len(src) <= SMALL_WAVE_SOURCES:
            return self._small_transfer(src, start, matrix, kind)
        return self._general_transfer(src, start, matrix, kind)

    def _small_transfer(self, src: np.ndarray, start: np.ndarray, matrix: np.ndarray,
                        kind: str | None = None) -> np.ndarray:
        """`_general_transfer` for a wave of few sources (a sparse all-to-all's late waves, a decode
        step's few tokens), in plain Python: numpy's per-call cost dominates arrays this small. The
        float operations are the vectorised path's, one for one in the same order (cumulative
        work, the group offset of the max-plus scan), so the results are identical to the bit."""
        n = self._n
        lists = self._lists
        if lists is None:
            pair_ptr = np.searchsorted(self._entry_pair, np.arange(n * n + 1))  # pair p: entries [p], [p+1]
            lists = self._lists = (self._slot_key.tolist(), self._entry_link.tolist(), self._pair_latency.tolist(),
                                   pair_ptr.tolist())
        slot_key, e_link_all, latency, pair_ptr = lists
        inv_all, half_all = self._kind_lists(kind)
        src_l = src.tolist()
        start_l = start.tolist()
        srcs = sorted(src_l)
        rows = matrix[srcs]
        rows[np.arange(len(srcs)), srcs] = 0.0  # a device's bytes to itself stay local
        r_idx, d_idx = np.nonzero(rows > 0)  # in row-major order: pair order, hence entry order
        if r_idx.size > SMALL_WAVE_FLOWS:  # few sources but many flows: numpy is faster
            return self._general_transfer(src, start, matrix, kind)
        self._pair_bytes.reshape(n, n)[srcs] += rows
        sent = rows[r_idx, d_idx].tolist()
        t_of = dict(zip(src_l, start_l))
        rank_of = {s: r for r, s in enumerate(sorted(srcs, key=t_of.__getitem__))}  # stable: ties by device
        ent, pair_e, src_e, work = [], [], [], []
        for ri, d, b in zip(r_idx.tolist(), d_idx.tolist(), sent):
            s = srcs[ri]
            p = s * n + d
            for e in range(pair_ptr[p], pair_ptr[p + 1]):
                w = b * inv_all[e]
                if half_all is not None:
                    w += half_all[e]
                ent.append(e)
                pair_e.append(p)
                src_e.append(s)
                work.append(w)
        m = len(ent)
        if m == 0:
            self.last_pair_arrival = np.full((n, n), -np.inf)
            return np.full(n, -np.inf)
        keys = [slot_key[ent[i]] + rank_of[src_e[i]] for i in range(m)]
        order = sorted(range(m), key=keys.__getitem__)  # stable: ties in entry order
        # the max-plus FIFO scan of `_fifo`, operation for operation
        free_at = self.free_at
        w_s = [work[i] for i in order]
        links_s = [e_link_all[ent[i]] for i in order]
        cs, acc = [], 0.0
        for w in w_s:
            acc += w
            cs.append(acc)
        v, firsts, gids = [], [], []
        g, base_cs = 0.0, 0.0
        prev_link = -1
        for j in range(m):
            link = links_s[j]
            w = w_s[j]
            t = t_of[src_e[order[j]]]
            if link != prev_link:
                g += 1.0
                base_cs = cs[j] - w
                firsts.append(j)
                f = float(free_at[link])
                if f > t:
                    t = f
                prev_link = link
            gids.append(g)
            v.append(t - ((cs[j] - base_cs) - w))
        span = float(max(v) - min(v)) + 1.0
        done = [0.0] * m
        firsts.append(m)
        for k in range(len(firsts) - 1):
            base_cs = cs[firsts[k]] - w_s[firsts[k]]
            run = -np.inf
            for j in range(firsts[k], firsts[k + 1]):
                x = v[j] + gids[j] * span
                if x > run:
                    run = x
                done[order[j]] = (run - gids[j] * span) + (cs[j] - base_cs)
            free_at[links_s[firsts[k + 1] - 1]] = done[order[firsts[k + 1] - 1]]
        arrival = np.full(n * n, -np.inf)
        inbound = [-np.inf] * n
        j = 0
        while j < m:  # per pair, its last entry's drain, plus the pair's latency
            p = pair_e[j]
            last = done[j]
            j += 1
            while j < m and pair_e[j] == p:
                if done[j] > last:
                    last = done[j]
                j += 1
            a = last + latency[p]
            arrival[p] = a
            d = p % n
            if a > inbound[d]:
                inbound[d] = a
        self.last_pair_arrival = arrival.reshape(n, n)
        return np.array(inbound)

    def _kind_lists(self, kind: str | None) -> tuple[list[float], list[float] | None]:
        """`kind_work` as Python lists, for the small-wave path."""
        got = self._kind_list_cache.get(kind)
        if got is None:
            inv, half = self.kind_work(kind)
            got = self._kind_list_cache[kind] = (inv.tolist(), None if half is None else half.tolist())
        return got

    def _static_transfer(self, layout: "_StaticLayout", src: np.ndarray, start: np.ndarray, flat: np.ndarray,
                         e_bytes: np.ndarray, kind: str | None = None, silent: np.ndarray | None = None) -> np.ndarray:
        """`transfer` when every device sends over the entries of `layout` (the same arithmetic as
        the general case, with the flow boundaries and the per-link order precomputed).

        `silent`: the layout's entries whose pair sends nothing this wave. Each gets no work and
        starts at -inf, so it never raises its link's running maximum: FIFO by start time puts it
        before nothing it could delay, and a link crossed only by silent entries keeps its free
        time; their pairs receive nothing (-inf). The same queueing as leaving them out."""
        n = self._n
        pb = self._pair_bytes
        pb += flat
        pb[self._diag] = 0.0  # a device's bytes to itself stay local (always 0 there)
        t_src = self._t_src
        t_src[src] = start
        rank = self._rank
        rank[src[np.lexsort((src, start))]] = self._ranks
        if layout.dyn_pos.size == layout.slot_key.size:
            order = np.argsort(layout.slot_key + rank[layout.src], kind="stable")
        else:
            order = layout.template.copy()
            order[layout.dyn_pos] = layout.dyn_entries[np.argsort(layout.dyn_key + rank[layout.dyn_src],
                                                                  kind="stable")]
        inv_bw, half = layout.work(kind)
        work = e_bytes * inv_bw
        if half is not None:
            work += half
        t = t_src[layout.src[order]]
        if silent is not None:
            work[silent] = 0.0
            t[silent[order]] = -np.inf
        busy = self._fifo(layout.groups, t, work[order], silent is not None)
        done = layout.done_ext
        done[order] = busy
        cols = layout.pair_entry_cols
        last = done[cols[0]]
        for col in cols[1:]:
            np.maximum(last, done[col], out=last)
        arrival = self._no_arrival.copy()
        pair_arrival = last + layout.latency
        if silent is not None:
            pair_arrival[flat[layout.pairs] <= 0] = -np.inf
        arrival[layout.pairs] = pair_arrival
        self.last_pair_arrival = arrival = arrival.reshape(n, n)
        return arrival.max(axis=0)

    def _fifo(self, groups: "_LinkGroups", t: np.ndarray, w: np.ndarray, holes: bool = False) -> np.ndarray:
        """When each entry (sorted by link, then FIFO order) has drained from its link; advances
        every link's free time. `t`: when the entry's flow starts (-inf for a silent entry where
        `holes`); `w`: its seconds of link work."""
        cs = np.cumsum(w)
        done_work = cs - groups.base_of(cs, w)  # the link's work up to and including this entry
        first = groups.first
        begin = t
        begin[first] = np.maximum(t[first], self.free_at[groups.links])
        v = np.subtract(begin, done_work - w, out=begin)
        low = float(v.min()) if not holes else float(np.min(v, where=v > -np.inf, initial=np.inf))
        span = float(v.max() - low) + 1.0
        offset = groups.gid * span
        v += offset
        busy = np.maximum.accumulate(v, out=v)
        busy -= offset
        busy += done_work  # FIFO max-plus
        self.free_at[groups.links] = busy[groups.last]
        return busy

    def _general_transfer(self, src: np.ndarray, start: np.ndarray, matrix: np.ndarray,
                          kind: str | None = None) -> np.ndarray:
        """`transfer` for any wave: only the entries of the wave's sources are gathered (each
        source's entries are one contiguous run, entries being sorted by pair), so a wave of a few
        sources of a sparse all-to-all costs in proportion to its own flows, not to N^2."""
        n = self._n
        srcs = np.sort(src)
        ptr = self._src_ptr
        if srcs.size == n:
            idx = self._all_entries
        elif srcs.size == 1:
            s0 = int(srcs[0])
            idx = self._all_entries[ptr[s0]:ptr[s0 + 1]]
        else:
            idx = np.concatenate([self._all_entries[ptr[s]:ptr[s + 1]] for s in srcs.tolist()])
        e_pair = self._entry_pair[idx]
        e_bytes = matrix.ravel()[e_pair]
        if self._diag_entries:
            e_bytes = np.where(self._entry_on_diag[idx], 0.0, e_bytes)
        sel = e_bytes > 0
        if not sel.any():  # nothing crosses the network (also: a single device)
            self.last_pair_arrival = np.full((n, n), -np.inf)
            return np.full(n, -np.inf)
        rows = matrix[srcs]  # the bytes the wave's sources hand over, less each one's to itself
        rows[np.arange(srcs.size), srcs] = 0.0
        self._pair_bytes.reshape(n, n)[srcs] += rows
        t_src = np.zeros(n)
        t_src[src] = start
        rank = self._rank
        rank[src[np.lexsort((src, start))]] = self._ranks[: len(src)]
        idx, e_pair, e_bytes = idx[sel], e_pair[sel], e_bytes[sel]
        e_src = self._entry_src[idx]
        kind_inv, kind_half = self.kind_work(kind)
        work = e_bytes * kind_inv[idx]
        if kind_half is not None:
            work += kind_half[idx]
        # a stable sort by (link, FIFO rank) keeps ties in entry order: the FIFO order
        order = np.argsort(self._slot_key[idx] + rank[e_src], kind="stable")
        groups = _LinkGroups(self._entry_link[idx][order])
        busy = self._fifo(groups, t_src[e_src[order]], work[order])

        entry_done = np.empty(busy.size)
        entry_done[order] = busy
        bounds = np.flatnonzero(np.diff(e_pair, prepend=-1))
        pairs = e_pair[bounds]
        arrival = np.full(n * n, -np.inf)
        arrival[pairs] = np.maximum.reduceat(entry_done, bounds) + self._pair_latency[pairs]
        self.last_pair_arrival = arrival = arrival.reshape(n, n)
        return arrival.max(axis=0)

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes each directed link carried so far (every link of every path, pruned or not), plus
        `extra_bytes` (serving iterations replayed from a cached timeline)."""
        return np.bincount(self._all_link, weights=self._pair_bytes[self._all_pair], minlength=self._n_links) \
            + self.extra_bytes


class _StaticLayout:
    """A fixed set of sending (pair, link) entries, every device a source: its flow boundaries,
    link groups and per-link order, precomputed. In such a wave a link crossed by one source
    only keeps its entries in entry order: only the entries of links shared by several sources
    are sorted by when their source started."""

    def __init__(self, fabric: Fabric, sel: np.ndarray):
        entry_pair = fabric._entry_pair[sel]
        n_entries = entry_pair.size
        self.src = fabric._entry_src[sel]
        self.slot_key = fabric._slot_key[sel]
        self._fabric, self._sel = fabric, sel
        self._work: dict[str | None, tuple[np.ndarray, np.ndarray | None]] = {}
        bounds = np.flatnonzero(np.diff(entry_pair, prepend=-1))
        self.pairs = entry_pair[bounds]
        self.latency = fabric._pair_latency[self.pairs]
        self.template = np.argsort(self.slot_key, kind="stable")
        self.groups = _LinkGroups(fabric._entry_link[sel][self.template])
        # per pair, its k-th entry (k < the most entries of any pair), padded with a slot that
        # holds -inf: a wave's per-pair maximum is a few elementwise maxima
        self.done_ext = np.empty(n_entries + 1)
        self.done_ext[n_entries] = -np.inf
        per_pair = np.diff(np.append(bounds, n_entries))
        k_max = int(per_pair.max()) if per_pair.size else 0
        self.pair_entry_cols = [np.where(per_pair > k, bounds + k, n_entries) for k in range(k_max)]
        slot = fabric._slot[sel]
        slot_sorted, srcs_sorted = slot[self.template], self.src[self.template]
        change = np.flatnonzero((srcs_sorted[1:] != srcs_sorted[:-1]) & (slot_sorted[1:] == slot_sorted[:-1]))
        shared = np.zeros(int(fabric._slot.max()) + 1, dtype=bool)
        shared[slot_sorted[change]] = True
        self.dyn_pos = np.flatnonzero(shared[slot_sorted])
        self.dyn_entries = self.template[self.dyn_pos]
        self.dyn_key = self.slot_key[self.dyn_entries]
        self.dyn_src = self.src[self.dyn_entries]


    def work(self, kind: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """`Fabric.kind_work` on this layout's entries."""
        got = self._work.get(kind)
        if got is None:
            inv, half = self._fabric.kind_work(kind)
            got = self._work[kind] = (inv[self._sel], None if half is None else half[self._sel])
        return got


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
        self._group_of = np.repeat(np.arange(self.first.size), np.diff(np.append(self.first, total)))

    def base_of(self, cs: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Cumulative work before each entry's group began."""
        first = self.first
        return (cs[first] - w[first])[self._group_of]


def _slowness(routes: Routes) -> np.ndarray:
    """(links, keys) per-byte and per-message seconds of every link, plainly and for every comm kind
    (larger is slower), for pruning links that can never delay a flow."""
    keys = [1.0 / routes.link_bandwidth]
    if routes.link_peak is not None:
        for comm in routes.comm.values():
            inv = 1.0 / (routes.link_peak * comm.efficiency)
            keys += [inv, comm.half_bytes * inv]
    return np.column_stack(keys)


def sending_pairs(matrices: np.ndarray) -> np.ndarray:
    """need[..., src, dst]: the pairs of each (..., N, N) byte matrix that cross the network."""
    need = np.ascontiguousarray(matrices > 0)  # a transposed view compares into a transposed layout
    n = need.shape[-1]
    need.reshape(*need.shape[:-2], n * n)[..., :: n + 1] = False
    return need


class Arrival(simpy.Event):
    """An event whose firing time is set later, when the network knows the arrival time.

    Saves a second wake-up per wait (wait for readiness, then for the bytes): the same
    mechanism SimPy's own Timeout uses, triggered from the collective's wave instead. SimPy has
    no public call for "succeed after a delay", so this is the one place that sets the event's
    private `_ok`/`_value` (as `simpy.Timeout.__init__` does); pyproject pins simpy to the 4.1
    series, and tests/test_contracts.py checks the behaviour.
    """

    def fire_after(self, delay: float) -> None:
        self._ok = True
        self._value = None
        self.env.schedule(self, delay=delay if delay > 0.0 else 0.0)


class Collective:
    """One collective instance (e.g. layer 7's dispatch in step 3) over the shared fabric.

    Each device submits its outgoing bytes when it is ready; there is no barrier. A
    destination becomes ready once every device that sends to it has submitted; the flows
    submitted so far are then costed as one wave at the end of that instant (so devices that
    submit at the same moment share it, whatever order the event loop runs them in), and the
    destination waits until its last inbound byte arrives. A device that receives nothing does
    not wait at all.

    `arrival` and `ready` are numpy arrays mirrored by Python lists for the hot scalar reads
    (`inbound`, `received_at`); assigning either attribute keeps the mirror, but they are
    not meant to be modified in place.

    `kind` is the comm kind whose efficiency in message size the fabric applies; `floor` (per
    device, seconds) is its kernel floor: a device's flows enter the fabric `floor` after it
    submits, and it does not leave the kernel before then, even when it receives nothing.
    """

    def __init__(self, env: simpy.Environment, fabric: Fabric, matrix: np.ndarray,
                 extra_latency: float = 0.0, need: np.ndarray | None = None, kind: str | None = None,
                 floor: list[float] | None = None):
        n = matrix.shape[0]
        self.env = env
        self.fabric = fabric
        self.matrix = matrix
        self.extra_latency = extra_latency
        self.kind = kind
        self._floor = floor
        self._own = [-np.inf] * n  # when each device's floor has passed (it submitted)
        if need is None:
            need = sending_pairs(matrix[None])[0]
        self.need = need  # (src, dst) pairs that send over the network
        self.pending = need.sum(axis=0)  # sources each destination still waits for
        off_diag = n * (n - 1)
        self.dense = int(self.pending.sum()) == off_diag
        self.left = n
        self.ready = self.pending == 0
        self._arrival = [-np.inf] * n
        self._arrival_array = None  # made on first read (np.full(n, -inf) until the first wave)
        self._n = n
        self._waved = False
        self._wave_due = False  # a wave is scheduled for the end of the current instant
        self._queue: list[int] = []
        self._times: list[float] = []
        self._waiters: dict[int, tuple[Arrival, float, float]] = {}

    @property
    def arrival(self) -> np.ndarray:
        """Per destination, when its last inbound byte of the waves so far arrives (-inf: none)."""
        if self._arrival_array is None:
            self._arrival_array = np.array(self._arrival, dtype=float)
        return self._arrival_array

    @arrival.setter
    def arrival(self, value: np.ndarray) -> None:
        self._arrival_array = value
        self._arrival = np.asarray(value, dtype=float).tolist()

    @property
    def ready(self) -> np.ndarray:
        """Per destination, whether every device that sends to it has submitted."""
        return self._ready_array

    @ready.setter
    def ready(self, value: np.ndarray) -> None:
        self._ready_array = value
        self._ready = np.asarray(value, dtype=bool).tolist()

    def submit(self, src: int) -> None:
        """Device `src` hands its outgoing bytes to the network now (they leave after its floor)."""
        self._queue.append(src)
        t = self.env.now
        if self._floor is not None:
            t += self._floor[src]
            self._own[src] = t
        self._times.append(t)
        self.left -= 1
        if self.dense:
            if self.left == 0:
                self._wave()
            return
        row = self.need[src]
        pending = self.pending
        pending -= row
        if self.left == 0:
            self._wave()
        elif not self._wave_due and not pending[row].all():
            # a destination of `src` whose last source this was (none is ready before): its wave
            # runs at the end of this instant, so devices submitting at the same moment join it
            # whatever order the event loop runs them in
            self._wave_due = True
            due = self.env.event()
            due.callbacks.append(self._due_wave)
            due.succeed()

    def _due_wave(self, _event) -> None:
        self._wave_due = False
        if self._queue:  # (the last submit of the same instant may have run the wave already)
            self._wave()

    def _wave(self) -> None:
        src = np.array(self._queue, dtype=np.int64)
        inbound = self.fabric.transfer(src, np.array(self._times, dtype=float), self.matrix, self.kind)
        self._queue, self._times = [], []
        arrival = inbound + self.extra_latency
        if self._waved:
            arrival = np.maximum(self.arrival, arrival)
        self._waved = True
        self._arrival_array = arrival
        arrival_list = self._arrival = arrival.tolist()
        ready_list = self._ready
        if self.dense:  # the one wave: every destination is ready now
            now_ready = [d for d in range(self._n) if not ready_list[d]]
            self._ready_array[now_ready] = True
            self._ready = [True] * self._n
        else:
            now_ready_a = np.flatnonzero(~self._ready_array & (self.pending == 0))
            self._ready_array[now_ready_a] = True
            now_ready = now_ready_a.tolist()
            for d in now_ready:
                ready_list[d] = True
        waiters = self._waiters
        if not waiters:
            return
        now = self.env.now
        for d in now_ready:  # ascending, as the events are scheduled in this order
            w = waiters.pop(d, None)
            if w is not None:
                ev, not_before, then = w
                a = arrival_list[d]
                ev.fire_after((not_before if not_before > a else a) + then - now)

    def received_at(self, dst: int, not_before: float = 0.0) -> float:
        """When `dst` could use its inbound bytes: their arrival, and not before `not_before` (nor its floor)."""
        a = self._arrival[dst]
        if self._floor is not None and self._own[dst] > not_before:
            not_before = self._own[dst]
        return not_before if not_before > a else a  # max(a, not_before)

    def inbound(self, dst: int, not_before: float = 0.0, then: float = 0.0) -> Generator[simpy.Event, None, None]:
        """Process step: wait until every byte destined to `dst` has arrived, and at least until
        `not_before` (the device may still be busy, e.g. with its shared experts); then stay
        busy for `then` seconds (the compute that consumes the bytes) in the same wake-up."""
        if self._floor is not None and self._own[dst] > not_before:
            not_before = self._own[dst]
        if not self._ready[dst]:
            ev = Arrival(self.env)
            self._waiters[dst] = (ev, not_before, then)
            yield ev
            return
        a = self._arrival[dst]
        delay = (not_before if not_before > a else a) + then - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)
