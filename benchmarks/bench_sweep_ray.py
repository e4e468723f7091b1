"""What a sweep point costs and what Ray adds per task, for planning a large sweep over a cluster.

    python benchmarks/bench_sweep_ray.py [--sweep examples/sweeps/mixtral-batch-overlap.yaml]

Measures, on this machine: the CPU seconds of one point simulated in this process (median over the
sweep's points; the points are resolved first, as the sweep does), the wall time of a private Ray
instance's start, Ray's per-task overhead (the median round trip of an empty one-CPU task, and the
wall of the sweep on Ray less its points' CPU over the CPUs given), and checks that the Ray rows
equal the in-process rows. It then prints the projected wall time of a 10,000-point sweep of such
points over N nodes of C cores: start + worker import + 10000 x (point + overhead) / (N x C). Needs Ray.
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

ROOT = Path(__file__).resolve().parents[1]


def _import_moesim() -> None:
    import moesim.simulator.run  # noqa: F401  (what a point's first simulation loads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, default=ROOT / "examples" / "sweeps" / "mixtral-batch-overlap.yaml")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray instance")
    ap.add_argument("--points", type=int, default=10_000, help="points of the projected sweep")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        print("needs Ray: pip install 'moesim[ray]'", file=sys.stderr)
        return 2
    import pandas as pd

    from moesim.studies.sweep import plan, simulate_point
    from moesim.studies.sweep_config import load_sweep

    cfg, base = load_sweep(args.sweep)
    planned = plan(cfg, base)
    cpu = []
    local = []
    for _, items, _, _ in planned:
        t = time.process_time()
        local.append(simulate_point(str(base), items))
        cpu.append(time.process_time() - t)
    point_s = statistics.median(cpu)

    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}})
    start_s = time.perf_counter() - t
    try:
        noop = ray.remote(num_cpus=1)(lambda: None)
        warm = ray.remote(num_cpus=1)(_import_moesim)
        t = time.perf_counter()
        ray.get([warm.remote() for _ in range(args.cpus)])  # each worker imports moesim once
        import_s = time.perf_counter() - t
        trips = []
        for _ in range(200):
            t = time.perf_counter()
            ray.get(noop.remote())
            trips.append(time.perf_counter() - t)
        trip_s = statistics.median(trips)
        task = ray.remote(num_cpus=1)(simulate_point)
        t = time.perf_counter()
        on_ray = ray.get([task.remote(str(base), items) for _, items, _, _ in planned])
        ray_wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    same = pd.DataFrame(local).equals(pd.DataFrame(on_ray))
    overhead_s = max(0.0, ray_wall - sum(cpu) / args.cpus) * args.cpus / len(planned)
    failed = sum(r["status"] != "ok" for r in local)
    print(f"sweep {cfg.name}: {len(planned)} points of {base.name} ({failed} failed)")
    print(f"  point, in process: median {point_s:.3f} CPU s (min {min(cpu):.3f}, max {max(cpu):.3f}) [measured]")
    print(f"  Ray start (private, {args.cpus} CPUs): {start_s:.1f} s wall [measured]")
    print(f"  first task per worker (imports moesim): {import_s:.1f} s wall, once per worker [measured]")
    print(f"  Ray empty-task round trip: median {trip_s * 1e3:.2f} ms [measured]")
    print(f"  Ray sweep wall {ray_wall:.2f} s on {args.cpus} CPUs; overhead per point {overhead_s * 1e3:.0f} ms "
          f"(wall x CPUs / points less the point's CPU) [measured]")
    print(f"  Ray rows equal the in-process rows: {same}")
    per = point_s + max(overhead_s, trip_s)
    print(f"projected {args.points} points of this kind (start + import + points x {per:.3f} s / cores) [model of the above]:")
    for nodes, cores in ((1, 2), (1, 16), (4, 16), (16, 16), (64, 16)):
        wall = start_s + import_s + args.points * per / (nodes * cores)
        print(f"  {nodes:3d} node(s) x {cores:2d} cores: {wall / 60:8.1f} min")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
