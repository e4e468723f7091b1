"""Before a run: how much memory and time it will take, from the size of its plans and timeline.

The engine keeps every step's plan (dispatch/combine matrices, per-slot arrays) and timeline
(start and end of every (layer, device, micro-batch, phase)), and the run directory's phase
table has a row per phase that ran. Those grow linearly in steps, so a run that cannot fit is
refused up front with the knob to turn, instead of swapping for minutes. Wall time is a rough
model-derived estimate (events x per-event cost + all-to-all waves x per-wave cost, constants
measured on a 2-core VM for the DeepSeek-V3 EP32 decode benchmark); it is printed as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moesim.errors import MoesimError
from moesim.simulator.compose import dispatch_algorithm, overlap_schedule
from moesim.simulator.phases import INFERENCE_PHASES
from moesim.simulator.scenario import Scenario
from moesim.simulator.unit_usage import PARTS, uses_units
from moesim.units import fmt_bytes

SECONDS_PER_EVENT = 12e-6  # SimPy wake-up of one device with its bookkeeping
SECONDS_PER_WAVE_32 = 0.25e-3  # costing one all-to-all wave of 32 devices; grows with devices^2
BASE_BYTES = 400 * 2**20  # interpreter, libraries, scenario
USABLE_SHARE = 0.8  # of the memory the system reports available


@dataclass(frozen=True)
class RunEstimate:
    steps: int
    bytes_per_step: float
    seconds_per_step: float
    available_bytes: float | None

    @property
    def memory_bytes(self) -> float:
        return BASE_BYTES + self.steps * self.bytes_per_step

    @property
    def seconds(self) -> float:
        return self.steps * self.seconds_per_step

    def fits(self) -> bool:
        return self.available_bytes is None or self.memory_bytes <= USABLE_SHARE * self.available_bytes

    def max_steps(self) -> int:
        """The most steps that fit in memory (None-safe: unlimited when memory is unknown)."""
        if self.available_bytes is None:
            return self.steps
        return max(0, int((USABLE_SHARE * self.available_bytes - BASE_BYTES) // self.bytes_per_step))

    def describe(self) -> str:
        mem = f"~{fmt_bytes(self.memory_bytes)} of memory"
        if self.available_bytes is not None:
            mem += f" ({fmt_bytes(self.available_bytes)} available)"
        return f"estimated {mem}, {_fmt_seconds(self.seconds)} on 2 cores"


def estimate_run(sc: Scenario, steps: int | None = None) -> RunEstimate:
    """Memory and wall-time estimate of simulating `steps` steps (default: the scenario's)."""
    steps = sc.steps if steps is None else steps
    m = sc.model
    L, Lm, n = m.num_layers, len(m.moe_layers), sc.num_devices
    mb = overlap_schedule(sc).microbatches
    P = len(INFERENCE_PHASES)
    stages = dispatch_algorithm(sc).stages
    slots = sc.placement.slot_expert.shape[1]
    groups = max(n // max(sc.ep * sc.moe_tp, 1), 1)
    timeline = 2 * L * n * mb * P * (8 + 8 + 12)  # start/end: list slots, half hold a float object, then arrays
    plan = mb * (2 * stages * Lm * n * n * 8 + 8 * L * n * 8 + 2 * groups * Lm * slots * 8 + Lm * n * 24)
    if uses_units(sc):  # each part's seconds per unit and its hand-offs; each expert copy's unit
        plan += mb * (2 * len(PARTS) * len(sc.machine.units) * L * n * 8 + groups * Lm * slots * 8)
    if sc.config.workload.routing.per_token or sc.config.workload.routing.max_nodes:
        plan += mb * Lm * int(sc.moe_tokens.sum()) * m.moe.top_k * 4
    phase_rows = L * n * mb * 7 * 64  # about 7 phases run per layer, ~64 bytes a row in the table
    events = n * mb * (2 * Lm + (L - Lm)) * (1 + (sc.tp > 1))
    waves = 2 * Lm * mb
    seconds = events * SECONDS_PER_EVENT + waves * SECONDS_PER_WAVE_32 * (n / 32) ** 2
    return RunEstimate(steps, float(timeline + plan + phase_rows), seconds, available_memory())


def available_memory() -> float | None:
    """Bytes the OS says a new allocation can use (MemAvailable), or None where unknown."""
    meminfo = Path("/proc/meminfo")
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(sc: Scenario, estimate: RunEstimate) -> None:
    """Refuse a run that would not fit in memory, with the estimate and what to change."""
    if estimate.fits():
        return
    m = sc.model
    raise MoesimError(
        f"this run would need about {fmt_bytes(estimate.memory_bytes)} of memory but about "
        f"{fmt_bytes(estimate.available_bytes or 0)} is available: {estimate.steps:,} steps x {m.num_layers} "
        f"layers x {sc.num_devices} devices, ~{fmt_bytes(estimate.bytes_per_step)} a step (plans and timeline "
        f"are kept for the run's tables). Simulate fewer steps: --steps {max(1, estimate.max_steps()):,} fits "
        f"(or --set workload.steps=N); steady-state metrics rarely need more than a few hundred steps.")


def _fmt_seconds(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 60:
        return f"~{s:.0f} s"
    if s < 3600:
        return f"~{s / 60:.0f} min"
    return f"~{s / 3600:.1f} h"
