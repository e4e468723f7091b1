"""A serving shortcut: an iteration whose batch shape was simulated before, under the same
routing regime, replays that simulation instead of running every layer again.

The shape of an iteration is, per device, its `AttentionMix` (prefill chunks folded into
pairs-equivalent prefills, decodes with their mean context rounded to 16 tokens) and its MoE
tokens. Two iterations of the same shape have the same compute costs; they differ only in the
routing (which experts the tokens pick, hence stragglers and all-to-all bytes). The routing of
a step is a draw from a distribution that may change over the run (synthetic drift, a load
window cycle, a trace's steps): the cache keys on the shape *and* the routing source's regime
for the step (`workloads.routing.routing_regime`, which says what each source returns), so an
iteration never replays a draw from a distribution that has since changed. A step whose regime
is its own (None: a drifting generator, a trace without repeat) is simulated in full and not
recorded.

The first iteration of a (shape, regime) is simulated in full; later ones reuse its timeline
(every phase of every device, relative to the iteration's start), its plan and its link bytes.
Iterations are separated by a barrier (`Engine.iteration_barrier`), so a timeline does not
depend on what ran before. The error this makes (one routing draw stands for all iterations of
a shape within a regime) is measured against the full simulation in
`benchmarks/bench_serving.py`. What the cache did (hits, misses, the share of iteration time
replayed) goes to summary.json's serving part as `iteration_cache`
(`results.iteration_cache_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Hashable, Iterable, Iterator

import numpy as np

from moesim.simulator.step_plan import StepPipeline, StepPlan
from moesim.simulator.step_source import StepInput
from moesim.workloads.routing import routing_regime


@dataclass
class Timeline:
    """One simulated iteration, relative to its start: flat start/end lists as the engine keeps them."""

    plans: list[StepPlan]  # the step's micro-batch plans
    start: np.ndarray  # flat, as the engine's lists
    end: np.ndarray
    duration: list[float]  # per device: when it finished, relative to the iteration's start
    link_bytes: np.ndarray  # what the fabric carried during the iteration


class IterationCache:
    """Feeds plans to the engine, marking the steps whose timeline can be replayed.

    `hits` + `misses` count the steps fed; `own_regime` the misses whose routing regime is their
    own (never recorded); `regimes` the distinct regimes met otherwise."""

    KEY = "batch shape + routing regime"  # what a timeline is kept under (summary.json says so)

    def __init__(self, pipeline: StepPipeline):
        self.pipeline = pipeline
        self.timelines: dict[tuple, Timeline] = {}
        self.replays: dict[int, Timeline] = {}  # step -> the timeline it replays
        self._recording: dict[int, tuple] = {}  # step -> the key it will record
        self.hits = 0
        self.misses = 0
        self.own_regime = 0
        self.regimes: set[Hashable] = set()

    @staticmethod
    def shape(inp: StepInput) -> tuple:
        return (inp.attention, tuple(np.asarray(inp.moe_tokens).tolist()))

    def key(self, inp: StepInput) -> tuple | None:
        """(shape, routing regime) of a step: everything its plan depends on but the draw itself;
        None where the regime is the step's own (nothing stands for it)."""
        regime = routing_regime(self.pipeline.routing, inp.step)
        return None if regime is None else (self.shape(inp), regime)

    def plans(self, source: Iterable[StepInput]) -> Iterator[list[StepPlan]]:
        for inp in source:
            key = self.key(inp)
            hit = self.timelines.get(key) if key is not None else None
            if key is None:
                self.own_regime += 1
            else:
                self.regimes.add(key[1])
            if hit is not None:
                self.hits += 1
                self.replays[inp.step] = hit
                yield [replace(p, step=inp.step, inputs=replace(p.inputs, step=inp.step, start_at=inp.start_at))
                       for p in hit.plans]
            else:
                self.misses += 1
                if key is not None and key not in self._recording.values():
                    self._recording[inp.step] = key
                yield self.pipeline.step_plans(inp)

    def record(self, step: int, plans: list[StepPlan], start: list[float], end: list[float], t0: float,
               shape: tuple[int, int, int, int], link_bytes: np.ndarray) -> None:
        """Keep a fully simulated iteration's timeline under its key (called once every device is
        done); `shape` is the engine's (layers, devices, micro-batches, phases)."""
        key = self._recording.pop(step, None)
        if key is None:
            return
        rel_start = np.asarray(start, dtype=float) - t0
        rel_end = np.asarray(end, dtype=float) - t0
        with np.errstate(all="ignore"):
            done = np.nanmax(rel_end.reshape(shape), axis=(0, 2, 3))
        self.timelines[key] = Timeline(plans, rel_start, rel_end, np.nan_to_num(done).tolist(), link_bytes)
