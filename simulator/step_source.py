"""Step sources: which tokens run in each step (the first stage of the step pipeline).

A step source yields `StepInput`s until the run is over; the engine pulls plans built from
them and never assumes a step count. `FixedBatch` is today's workload (the same batch every
step, decode contexts growing by one token a step); a serving scheduler is another source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class AttentionMix:
    """A serving iteration's attention work on one device: prefill chunks and decodes.

    Chunks over cached context are folded into `prefill_batch` causal prefills of `prefill_seq`
    tokens with the same (query, key) pairs (a chunk of c tokens after p cached ones has
    c p + c (c + 1) / 2 pairs); decodes read `decode_kv` cached tokens on average (rounded up
    to 16, so that repeated shapes share costs)."""

    prefill_batch: int = 0
    prefill_seq: int = 0
    decode_batch: int = 0
    decode_kv: int = 0
    prefill_tokens: int = 0  # the chunks' own tokens

    @property
    def tokens(self) -> int:
        """Every token of the iteration on this device (chunk tokens + one per decode)."""
        return self.prefill_tokens + self.decode_batch

    @staticmethod
    def of(chunks: list[tuple[int, int]], decode_kv: list[int]) -> "AttentionMix":
        """From (chunk tokens, cached context) pairs and the decodes' cached contexts."""
        pairs = sum(c * p + c * (c + 1) / 2 for c, p in chunks)
        n = len(chunks)
        seq = int(np.ceil((np.sqrt(1 + 8 * pairs / n) - 1) / 2)) if n else 0  # s (s + 1) / 2 = pairs / n
        kv = int(-(-sum(decode_kv) // (16 * len(decode_kv))) * 16) if decode_kv else 0
        return AttentionMix(n, seq, len(decode_kv), kv, sum(c for c, _ in chunks))

    def split(self, parts: int) -> list["AttentionMix"]:
        """The mix over `parts` micro-batches: sequences dealt as evenly as whole sequences allow,
        each keeping the mean shape."""
        out = []
        for i in range(parts):
            pb = self.prefill_batch // parts + (i < self.prefill_batch % parts)
            db = self.decode_batch // parts + (i < self.decode_batch % parts)
            pt = int(round(self.prefill_tokens * pb / self.prefill_batch)) if self.prefill_batch else 0
            out.append(AttentionMix(pb, self.prefill_seq if pb else 0, db, self.decode_kv if db else 0, pt))
        return out


@dataclass(frozen=True)
class StepInput:
    """What one step runs: tokens per device into the MoE layers and the attention shapes."""

    step: int
    phase: str  # "prefill" | "decode" (| "mixed" for a serving iteration, whose shapes are in `attention`)
    moe_tokens: np.ndarray  # (N,) tokens each device sends into every MoE layer
    seq_len: int  # tokens per sequence this step (the prompt for prefill, 1 for decode)
    kv_len: int  # decode: tokens cached before this step's token (0 for prefill)
    microbatch: int = 0  # which micro-batch of the step this is (two-batch overlap splits a step)
    attention: tuple[AttentionMix, ...] | None = None  # serving: per device, the iteration's attention work
    start_at: float | None = None  # serving: the step does not start before this time (idle until an arrival)


@dataclass(frozen=True)
class FixedBatch:
    """The same batch for `steps` steps (the `workload:` section of a config)."""

    steps: int
    phase: str
    moe_tokens: np.ndarray
    seq_len: int
    kv_len: int
    kv_growth: float = 1.0  # decode: tokens a sequence's cache gains a step (speculative: its accepted tokens)

    def __iter__(self) -> Iterator[StepInput]:
        for s in range(self.steps):
            kv = self.kv_len + int(s * self.kv_growth) if self.phase == "decode" else 0
            yield StepInput(s, self.phase, self.moe_tokens, self.seq_len, kv)


def split_microbatches(inp: StepInput, parts: int) -> list[StepInput]:
    """A step's tokens split into `parts` micro-batches as evenly as whole tokens allow (per device)."""
    if parts == 1:
        return [inp]
    tokens = np.asarray(inp.moe_tokens, dtype=np.int64)
    shares = [tokens // parts + (i < tokens % parts) for i in range(parts)]
    mixes = [m.split(parts) for m in inp.attention] if inp.attention is not None else None
    return [StepInput(inp.step, inp.phase, shares[i].astype(np.int64), inp.seq_len, inp.kv_len, i,
                      attention=tuple(m[i] for m in mixes) if mixes is not None else None, start_at=inp.start_at)
            for i in range(parts)]
