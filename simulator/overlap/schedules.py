"""What an overlap schedule is: a name, its micro-batches per step, and the program it writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from moesim.simulator.program import Program, StepShape


@dataclass(frozen=True)
class Schedule:
    """An overlap schedule (`policies.overlap`): `program(shape)` is one step's instructions for
    every device (simulator/program.py); `microbatches` is how many parts the pipeline splits a
    step into for it; `offload`: whether its programs can wait for expert copies (each dispatch
    wait runs the experts in the same wake-up, `wait_then`), which expert offloading needs;
    `token_ids`: whether its dispatch carries the step's per-token expert ids (one micro-batch,
    dispatched after attention), which dispatch that follows tokens (exflow) needs; `overlaps_comm`:
    compute runs while the all-to-all's kernels hold SMs (`policies.dispatch.comm_sms`)."""

    name: str
    program: Callable[[StepShape], Program]
    microbatches: int = 1
    offload: bool = False
    token_ids: bool = False
    overlaps_comm: bool = False  # compute runs while an all-to-all is in flight (its kernels' SMs are taken)
