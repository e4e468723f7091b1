"""Engine cost at the largest deployments and at the smallest batches (issue 27, point 4).

Run:  python benchmarks/bench_scale.py [--steps 20] [--repeats 1] [--quick]

DeepSeek-V3 decode, 128 tokens per GPU, uniform routing, `--steps` steps, on H800 nodes of 8 GPUs
with 400 Gb/s IB per GPU: EP32 (the bundled h800-4x8), EP64 (that cluster with 8 nodes), EP144
(h800-18x8, DeepSeek's decode deployment) and EP320 (h800-40x8). Prints CPU seconds of this
process (config to results, no run directory; the plan feed is a thread, so its work counts),
per step, the exponent of the growth between successive sizes, and the cost per step over
devices x log2(devices) relative to EP32 (issue 27 asks that it not grow: a ratio <= 1), then
1 token per GPU against 128 at EP32, per step. Targets: EP144 <= 20 s and EP320 <= 60 s at 20
steps on the 2-core reference machine; 1 token no slower per step than 128. `--quick` leaves out
EP320. Compare commits with `farm-bench --vs`.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_speed import EXAMPLES, h800_cluster, variant  # noqa: E402

from moesim.simulator.config import config_from_dict  # noqa: E402
from moesim.simulator.run import simulate  # noqa: E402


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def measure(cfg: dict, repeats: int) -> tuple[float, int]:
    """Median CPU seconds of simulating `cfg`, and how many of its steps ran event-free."""
    times, free = [], 0
    for _ in range(repeats):
        t0 = cpu()
        result = simulate(config_from_dict(cfg, EXAMPLES))
        times.append(cpu() - t0)
        free = result.raw.meta["event_free_steps"]
    return statistics.median(times), free


def decode(cluster: str, devices: int, steps: int, tokens: int = 128) -> dict:
    cfg = variant(hardware__cluster=cluster, parallelism={"ep": devices, "tp": 1, "dp": devices},
                  workload__steps=steps, workload__batch_size=tokens)
    cfg["outputs"] = {"trace_steps": 0}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="leave out EP320")
    args = ap.parse_args()
    sizes = [("h800-4x8", 32), (h800_cluster(8), 64), ("h800-18x8", 144)] + ([] if args.quick else
                                                                              [("h800-40x8", 320)])
    targets = {144: 20.0, 320: 60.0}
    print(f"DeepSeek-V3 decode, 128 tokens/GPU, {args.steps} steps (CPU s, median of {args.repeats}):")
    base = prev = None
    for cluster, n in sizes:
        total, free = measure(decode(cluster, n, args.steps), args.repeats)
        per_step = total / args.steps
        norm = per_step / (n * math.log2(n))
        base = base if base is not None else norm
        growth = "" if prev is None else f", grows as devices^{math.log(per_step / prev[1]) / math.log(n / prev[0]):.2f}"
        target = f" (target <= {targets[n]:.0f} s at 20 steps)" if n in targets else ""
        print(f"  EP{n:<4} {total:7.2f} s{target}, {per_step:.3f} s/step{growth}; per step / (n log2 n) "
              f"{norm / base:.2f}x EP32's; {free} of {args.steps} steps event-free", flush=True)
        prev = (n, per_step)
    one, free1 = measure(decode("h800-4x8", 32, args.steps, tokens=1), args.repeats)
    full, _ = measure(decode("h800-4x8", 32, args.steps, tokens=128), args.repeats)
    print(f"EP32, 1 token/GPU: {one / args.steps:.3f} s/step against {full / args.steps:.3f} at 128 tokens: "
          f"{one / full:.2f}x (target <= 1); {free1} of {args.steps} steps event-free")


if __name__ == "__main__":
    main()
