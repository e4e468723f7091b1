"""Whether a serving run marches in lockstep: its users prefill, decode and finish together, so
the run has no prefill interference, TTFT without queueing and ITL p50 = p99, unlike traffic.

Read from the run's iterations: an iteration's shape is every replica's (prefill tokens, decode
tokens). A run is in lockstep when one shape makes up at least half its iterations and hardly
any iteration mixes prefill with decode work (a closed loop of fixed lengths started at once:
every wave is one prefill, then the same decode batch until all finish together).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MIN_ITERATIONS = 20  # fewer says nothing either way
TOP_SHAPE_SHARE = 0.5
MIXED_SHARE = 0.1


def lockstep(iterations: pd.DataFrame, replicas: int) -> dict[str, Any]:
    """The iterations' shape statistics and the verdict (`lockstep`, with a sentence saying what to change)."""
    n = len(iterations) // max(replicas, 1)
    if n == 0:
        return {"lockstep": False, "iterations": 0}
    work = iterations[["prefill_tokens", "decode_tokens"]].to_numpy(dtype=np.int64)[: n * replicas]
    shapes = work.reshape(n, replicas * 2)
    _, counts = np.unique(shapes, axis=0, return_counts=True)
    top = float(counts.max()) / n
    both = (work[:, 0] > 0) & (work[:, 1] > 0)
    mixed = float(both.reshape(n, replicas).any(axis=1).mean())
    verdict = n >= MIN_ITERATIONS and top >= TOP_SHAPE_SHARE and mixed <= MIXED_SHARE
    out: dict[str, Any] = {"lockstep": bool(verdict), "iterations": n, "distinct_shapes": int(counts.size),
                           "top_shape_share": top, "mixed_iteration_share": mixed,
                           "source": "model (the run's iterations)"}
    if verdict:
        out["warning"] = (f"the run marches in lockstep: {top:.0%} of its iterations have one shape and "
                          f"{mixed:.0%} mix prefill with decode, so its latency percentiles describe synchronised "
                          "waves, not traffic; start the users over serving.ramp_up, draw think_time from a "
                          "distribution, or draw lengths from distributions")
    return out
