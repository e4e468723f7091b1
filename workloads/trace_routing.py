"""Routing read from a trace: the simulator's step s uses the trace's s-th step, token by token.

The trace streams: steps are read in order as the simulator asks for them, so a trace larger
than memory simulates with one step in memory. Trace sources map onto the simulated devices:
- identity: source i is device i (a trace recorded on the same number of devices);
- modulo: device = source mod devices (a trace from a different device count);
- replica: sources are requests; request r belongs to attention replica r mod dp, and its
  tokens spread over that replica's tp ranks by token id (token mod tp).
`auto` picks identity when the trace's device count matches, replica for request traces,
modulo otherwise.
"""

from __future__ import annotations

from typing import Hashable, Iterator, Literal

import numpy as np

from moesim.errors import TraceError
from moesim.workloads.routing import RoutingStep
from moesim.workloads.trace_format import StepRows
from moesim.workloads.trace_reader import Trace

SourceMap = Literal["auto", "identity", "modulo", "replica"]


def resolve_source_map(trace: Trace, num_devices: int, mode: SourceMap) -> str:
    """The concrete mapping `auto` stands for, or an error if `mode` cannot apply."""
    meta = trace.meta
    if mode == "auto":
        if meta.source_kind == "request":
            return "replica"
        return "identity" if meta.num_sources == num_devices else "modulo"
    if mode == "identity" and meta.num_sources != num_devices:
        raise TraceError(f"source_map identity needs one source per device, but the trace has {meta.num_sources} "
                         f"{meta.source_kind}s and the cluster {num_devices} devices; use modulo or replica",
                         file=trace.path, where="metadata num_sources")
    return mode


def row_devices(rows: StepRows, mode: str, num_devices: int, tp: int) -> np.ndarray:
    """Device of every row of a step under a resolved source map."""
    if mode == "identity":
        return rows.source.astype(np.int64)
    if mode == "modulo":
        return rows.source.astype(np.int64) % num_devices
    dp = num_devices // tp
    return (rows.source.astype(np.int64) % dp) * tp + rows.token.astype(np.int64) % tp


class TraceRouting:
    """RoutingSource over a trace: counts (and per-token ids on request) from its actual rows."""

    def __init__(self, trace: Trace, num_devices: int, tp: int = 1, source_map: SourceMap = "auto",
                 repeat: bool = False, per_token: bool = False):
        self.trace = trace
        self.num_experts = trace.meta.num_experts
        self.top_k = trace.meta.top_k
        self.num_devices = num_devices
        self.tp = tp
        self.mode = resolve_source_map(trace, num_devices, source_map)
        self.repeat = repeat
        self.per_token = per_token
        self._iter: Iterator[StepRows] | None = None
        self._next = 0  # index (0-based, in file order) of the step the iterator yields next
        self._num_steps: int | None = None

    @property
    def num_steps(self) -> int:
        if self._num_steps is None:
            self._num_steps = self.trace.num_steps
        return self._num_steps

    def rows(self, index: int) -> StepRows:
        """The index-th step of the trace (sequential access streams; going back restarts)."""
        if self.repeat:
            index %= self.num_steps
        if self._iter is None or index < self._next:
            self._iter, self._next = self.trace.steps(), 0
        for rows in self._iter:
            self._next += 1
            if self._next - 1 == index:
                return rows
        self._iter = None
        raise TraceError(f"the simulation asked for step {index + 1} but the trace has only {self._next} steps; "
                         "simulate fewer steps or set workload.routing.repeat: true", file=self.trace.path)

    def regime(self, step: int) -> Hashable | None:
        """Each trace step is its own routing: with repeat, the trace step the simulated step reads
        (it comes back every lap); without, None (no other step shares it; see `routing_regime`)."""
        return ("trace_step", step % self.num_steps) if self.repeat else None

    def step(self, step: int, tokens: np.ndarray, num_layers: int) -> RoutingStep:
        if num_layers != self.trace.meta.num_moe_layers:
            raise TraceError(f"the trace has {self.trace.meta.num_moe_layers} MoE layers, the model {num_layers}",
                             file=self.trace.path)
        rows = self.rows(step)
        dev = row_devices(rows, self.mode, self.num_devices, self.tp)
        counts = rows.counts(num_layers, self.num_devices, self.num_experts, dev)
        if not self.per_token:
            return RoutingStep(counts=counts)
        ids, experts = rows.token_experts(num_layers)
        first = np.lexsort((rows.token, rows.layer))[: ids.size]
        return RoutingStep(counts=counts, token_experts=experts, token_source=dev[first])


def trace_tokens_per_device(trace: Trace, num_devices: int, tp: int, source_map: SourceMap = "auto") -> np.ndarray:
    """Tokens each device holds in the trace's first step (sizes a scenario from its trace)."""
    routing = TraceRouting(trace, num_devices, tp, source_map)
    rows = routing.rows(0)
    first_layer = rows.layer == 0
    dev = row_devices(rows, routing.mode, num_devices, tp)[first_layer]
    return np.bincount(dev, minlength=num_devices)
