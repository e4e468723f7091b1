"""The engine against a pure-SimPy floor: the CPU the engine spends per SimPy event, over what a
SimPy program doing nothing but the same number of events spends.

Run:  python benchmarks/bench_simpy_floor.py [--steps 20] [--repeats 3]
Runs the engine benchmark's 4x8 case (DeepSeek-V3 decode on 4 x 8 H800, EP32, 128 tokens per
GPU, benchmarks/bench_engine_speed.py) for `--steps` steps, counts the events its SimPy
environment scheduled (a counting wrapper around `Environment.schedule`, in a separate untimed
run), then times a SimPy program of 32 processes that each wait on timeouts until the same number
of events has been scheduled. Prints the CPU times (this process and its children, so a forked plan
feed counts; medians of `--repeats`) of the engine as it runs by default (the event-free path),
of the event loop alone (MOESIM_ENGINE=events) and of the floor, and the ratios. Issue 27's target: the
engine within 3x of the floor. Both are measured on this machine in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_speed import EXAMPLES, base_config  # noqa: E402

from moesim.simulator.config import config_from_dict  # noqa: E402
from moesim.simulator.run import simulate  # noqa: E402


def cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def engine_config(steps: int) -> dict:
    cfg = base_config()
    cfg["workload"]["steps"] = steps
    cfg.setdefault("outputs", {})["trace_steps"] = 0
    return cfg


def count_events(cfg: dict) -> int:
    """Events the engine's event loop schedules for a config (an untimed run with the event-free
    path off: it would schedule none)."""
    os.environ["MOESIM_ENGINE"] = "events"
    original = simpy.Environment.schedule
    count = [0]

    def counting(self, event, priority=1, delay=0):
        count[0] += 1
        return original(self, event, priority, delay)

    simpy.Environment.schedule = counting
    try:
        simulate(config_from_dict(cfg, EXAMPLES))
    finally:
        simpy.Environment.schedule = original
        os.environ.pop("MOESIM_ENGINE")
    return count[0]


def floor_program(events: int, processes: int = 32) -> None:
    """`processes` SimPy processes waiting on timeouts until `events` events are scheduled."""
    env = simpy.Environment()
    each = max(events // processes - 1, 1)  # a process's start is an event of its own

    def proc(i: int):
        for k in range(each):
            yield env.timeout(1e-6 * ((i + k) % 7 + 1))

    for i in range(processes):
        env.process(proc(i))
    env.run()


def timed(fn) -> float:
    t0 = cpu()
    fn()
    return cpu() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = engine_config(args.steps)
    events = count_events(cfg)
    def engine_cpu(mode: str) -> float:
        os.environ["MOESIM_ENGINE"] = mode
        try:
            return statistics.median(timed(lambda: simulate(config_from_dict(cfg, EXAMPLES)))
                                     for _ in range(args.repeats))
        finally:
            os.environ.pop("MOESIM_ENGINE")

    looped, engine = engine_cpu("events"), engine_cpu("auto")
    floor = statistics.median(timed(lambda: floor_program(events)) for _ in range(args.repeats))
    print(f"engine: DeepSeek-V3 decode EP32 (4x8 H800), {args.steps} steps: {events:,} SimPy events in the event "
          f"loop, {looped:.2f} CPU s there ({looped / events * 1e6:.1f} us per event); {engine:.2f} CPU s as it runs "
          "by default (every step event-free: simulator/lockstep.py)")
    print(f"pure-SimPy floor: the same {events:,} events: {floor:.2f} CPU s ({floor / events * 1e6:.1f} us per event)")
    print(f"engine / floor: {engine / floor:.1f}x by default, {looped / floor:.1f}x in the event loop (issue 27's "
          f"target: <= 3x; medians of {args.repeats}, CPU seconds of this process and its children, config to "
          "results)")


if __name__ == "__main__":
    main()
