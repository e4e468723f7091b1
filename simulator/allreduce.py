"""All-reduce algorithms of a tensor-parallel (or MoE-TP) group, as serving frameworks run them.

Each algorithm says, for a message of S bytes over a group of n ranks, what every rank sends
to whom (the fabric times it with contention) and how many synchronisation rounds it adds
beyond the flows' own path latency (each round one path latency, with the kernel floor of kind
`all_reduce` where the profile gives one):

- `nccl`: NCCL's ring: each rank sends 2 (n-1)/n x S to its ring neighbour over 2 (n-1) steps
  (2 (n-1) - 1 rounds beyond the flows' one path latency);
- `one_shot`: every rank reads every peer's whole buffer over NVLink and reduces locally (S
  from each peer; a start and an end barrier: 2 rounds), lowest latency, small messages;
- `two_shot`: reduce-scatter then all-gather over all peers (2 S / n to each peer; start,
  middle and end barriers, the second phase's path: 3 rounds), better bandwidth, mid sizes;
- `auto`: as vLLM's custom all-reduce chooses (csrc/custom_all_reduce.cuh `allreduce`: with
  every rank of the group on one NVLink domain, one-stage below 512 KiB for n <= 4 and below
  256 KiB for n <= 8, else two-stage; vllm/distributed/device_communicators/
  custom_all_reduce.py: up to `max_size` 8 MiB, NCCL above; groups spanning nodes use NCCL).

The round counts are this model's assumptions (the kernels' barriers as described above), not
measurements. Where the profile gives kind `all_reduce` a floor (a datasheet figure, or fitted
from nccl-tests by `moesim calibrate --from-nccl-tests`), that floor is NCCL's whole fixed cost
(its ring steps included), so the ring adds no rounds; the custom algorithms never pay it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ONE_SHOT_BELOW = {4: 512 * 1024, 8: 256 * 1024}  # bytes, by the largest group size each applies to
CUSTOM_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class AllReduceAlgorithm:
    """One all-reduce algorithm: `pattern` ring or all_pairs, bytes per peer as a multiple of S,
    and synchronisation rounds beyond the flows' own path latency."""

    name: str
    pattern: str  # "ring": to the ring neighbour; "all_pairs": to every peer of the group
    bytes_per_peer: Callable[[int], float]  # (n) -> the multiple of S each rank sends to each peer it sends to
    rounds: Callable[[int], int]  # (n) -> rounds of one path latency added on top


NCCL_RING = AllReduceAlgorithm("nccl", "ring", lambda n: 2.0 * (n - 1) / n, lambda n: 2 * (n - 1) - 1)
ONE_SHOT = AllReduceAlgorithm("one_shot", "all_pairs", lambda n: 1.0, lambda n: 2)
TWO_SHOT = AllReduceAlgorithm("two_shot", "all_pairs", lambda n: 2.0 / n, lambda n: 3)


def vllm_choice(message_bytes: float, n: int, one_node: bool) -> AllReduceAlgorithm:
    """The algorithm vLLM's custom all-reduce runs for a message (module docstring)."""
    if not one_node or message_bytes >= CUSTOM_MAX_BYTES or n > 8:
        return NCCL_RING
    if n == 2:
        return ONE_SHOT
    below = ONE_SHOT_BELOW[4] if n <= 4 else ONE_SHOT_BELOW[8]
    return ONE_SHOT if message_bytes < below else TWO_SHOT


@dataclass(frozen=True)
class AllReduceChoice:
    """`policies.tp_allreduce`: one algorithm always, or `auto` (chosen per message as vLLM does)."""

    name: str
    fixed: AllReduceAlgorithm | None = None

    def algorithm(self, message_bytes: float, n: int, one_node: bool) -> AllReduceAlgorithm:
        return self.fixed if self.fixed is not None else vllm_choice(message_bytes, n, one_node)


class GroupAllReduce:
    """The all-reduce of contiguous groups of `size` of `n` devices under a choice: the bytes each
    rank sends to each other (an (n, n) matrix) and the latency added on top, per message."""

    def __init__(self, choice: AllReduceChoice, n: int, size: int, hop: float, one_node: bool,
                 nccl_floor: bool = False):
        """`nccl_floor`: the profile gives kind `all_reduce` a floor (datasheet or fitted from
        nccl-tests): it is NCCL's whole fixed cost, so the ring adds no rounds of its own."""
        self.choice, self.size, self.hop, self.one_node = choice, size, hop, one_node
        self.nccl_floor = nccl_floor
        rank = np.arange(n)
        base = (rank // size) * size
        self._ring = np.zeros((n, n))
        self._ring[rank, base + (rank - base + 1) % size] = 1.0
        same = base[:, None] == base[None, :]
        self._pairs = (same & ~np.eye(n, dtype=bool)).astype(float)
        self._cache: dict[float, tuple[np.ndarray, float, str]] = {}

    def terms(self, ring_bytes: float) -> tuple[np.ndarray, float, bool]:
        """(bytes matrix, added latency, whether NCCL's `all_reduce` floor applies) of the
        all-reduce whose ring form sends `ring_bytes` per rank (what plans carry: 2 (n-1)/n x S)."""
        hit = self._cache.get(ring_bytes)
        if hit is None:
            n = self.size
            message = ring_payload(ring_bytes, n)
            algo = self.choice.algorithm(message, n, self.one_node)
            nccl = algo.pattern == "ring"
            if nccl:
                matrix = self._ring * ring_bytes
            else:
                matrix = self._pairs * (algo.bytes_per_peer(n) * message)
            rounds = 0 if nccl and self.nccl_floor else algo.rounds(n)
            hit = (matrix, rounds * self.hop, nccl)
            if len(self._cache) < 4096:
                self._cache[ring_bytes] = hit
        return hit


def ring_payload(ring_bytes: float, n: int) -> float:
    """The message S of a ring all-reduce whose ranks each send `ring_bytes` = 2 (n-1)/n x S."""
    return ring_bytes * n / (2.0 * (n - 1)) if n > 1 else 0.0


NCCL = AllReduceChoice("nccl", NCCL_RING)
ONE_SHOT_ALWAYS = AllReduceChoice("one_shot", ONE_SHOT)
TWO_SHOT_ALWAYS = AllReduceChoice("two_shot", TWO_SHOT)
AUTO = AllReduceChoice("auto")
