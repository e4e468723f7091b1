"""Does the forked plan feed earn its place? The engine benchmark's case (DeepSeek-V3 decode, 4 x 8
H800, EP32, 128 tokens per GPU) run with plans built in a forked child (ProcessFeed) and in a
thread of the event loop's process (ThreadFeed), alternated in one run, medians of repeats.

    python benchmarks/bench_plan_feed.py [--steps 40] [--repeats 5] [--devices 32]

Prints each feed's wall seconds and CPU seconds (this process plus the child, from os.times), and
the ratios process/thread: the process feed is the default only if its wall ratio is below 1 on a
quiet 2-core machine (issue 27; it is not: MOESIM_PLAN_FEED=process asks for it). The two feeds' timelines are checked equal. BLAS is pinned to
one thread (as the feed's fork would need), so neither feed wins by oversubscribing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_once(cfg: dict, process: bool):
    from moesim.simulator import plan_feed
    from moesim.simulator.compose import engine_for
    from moesim.simulator.config import config_from_dict
    from moesim.simulator.scenario import resolve

    plan_feed.MIN_STEPS_FOR_PROCESS = 1
    os.environ["MOESIM_PLAN_FEED"] = "process" if process else "thread"
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    t0, c0 = time.perf_counter(), os.times()
    engine = engine_for(sc)
    kind = type(engine._feed).__name__
    raw = engine.run()
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + \
        (c1.children_system - c0.children_system)
    return kind, time.perf_counter() - t0, cpu, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = yaml.safe_load((EXAMPLES / "deepseek-v3-decode-4x8-h800.yaml").read_text())
    cfg["workload"]["steps"] = args.steps
    cfg.setdefault("outputs", {})["trace_steps"] = 0
    times: dict[str, list[tuple[float, float]]] = {"ProcessFeed": [], "ThreadFeed": []}
    first = {}
    for r in range(args.repeats):
        for process in ((True, False) if r % 2 == 0 else (False, True)):
            kind, wall, cpu, raw = run_once(cfg, process)
            times[kind].append((wall, cpu))
            if kind not in first:
                first[kind] = raw
    a, b = first["ProcessFeed"], first["ThreadFeed"]
    same = np.array_equal(a.start, b.start, equal_nan=True) and np.array_equal(a.end, b.end, equal_nan=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    print(f"DeepSeek-V3 decode EP32, {args.steps} steps, {args.repeats} repeats each, alternated [measured]")
    for k, (w, c) in med.items():
        print(f"  {k:12s} wall {w:7.2f} s   CPU {c:7.2f} s")
    print(f"  process/thread: wall {med['ProcessFeed'][0] / med['ThreadFeed'][0]:.3f}x, "
          f"CPU {med['ProcessFeed'][1] / med['ThreadFeed'][1]:.3f}x; timelines equal: {same}")
    print(f"  load average now: {os.getloadavg()[0]:.2f} (a quiet 2-core machine reads below ~0.3)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
