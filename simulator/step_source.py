"""Step sources: which tokens run in each step (the first stage of the step pipeline).

A step source yields `StepInput`s until the run is over; the engine pulls plans built from
them and never assumes a step count. `FixedBatch` is today's workload (the same batch every
step, decode contexts growing by one token a step); a serving scheduler is another source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np


@dataclass(frozen=True)
class StepInput:
    """What one step runs: tokens per device into the MoE layers and the attention shapes."""

    step: int
    phase: str  # "prefill" | "decode"
    moe_tokens: np.ndarray  # (N,) tokens each device sends into every MoE layer
    seq_len: int  # tokens per sequence this step (the prompt for prefill, 1 for decode)
    kv_len: int  # decode: tokens cached before this step's token (0 for prefill)
    microbatch: int = 0  # which micro-batch of the step this is (two-batch overlap splits a step)


class StepSource(Protocol):
    def __iter__(self) -> Iterator[StepInput]:
        """Step inputs in order; the run ends when the iterator does."""
        ...


@dataclass(frozen=True)
class FixedBatch:
    """The same batch for `steps` steps (the `workload:` section of a config)."""

    steps: int
    phase: str
    moe_tokens: np.ndarray
    seq_len: int
    kv_len: int

    def __iter__(self) -> Iterator[StepInput]:
        for s in range(self.steps):
            kv = self.kv_len + s if self.phase == "decode" else 0
            yield StepInput(s, self.phase, self.moe_tokens, self.seq_len, kv)


def split_microbatches(inp: StepInput, parts: int) -> list[StepInput]:
    """A step's tokens split into `parts` micro-batches as evenly as whole tokens allow (per device)."""
    if parts == 1:
        return [inp]
    tokens = np.asarray(inp.moe_tokens, dtype=np.int64)
    shares = [tokens // parts + (i < tokens % parts) for i in range(parts)]
    return [StepInput(inp.step, inp.phase, shares[i].astype(np.int64), inp.seq_len, inp.kv_len, i)
            for i in range(parts)]
