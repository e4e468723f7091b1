"""Serving speed and the error of the iteration cache.

Run:  python benchmarks/bench_serving.py [--repeats 3] [--quick] [--open-only]

0. Issue 27's open loop: the same deployment, 512 requests with lognormal lengths arriving as a
   Poisson process at 8 req/s: median CPU seconds, config to results, and the share of
   iterations the iteration cache replayed. Target <= 10 s (moonshot 5 s).

1. The issue-16 scenario: DeepSeek-V3 on 16 x H100 (attention DP16 + EP16, two nodes),
   1024-token prompts, 256-token replies, a closed loop of 64 users all started at t = 0 (in
   lockstep; the bundled example now runs it as traffic), 512 requests: median wall
   seconds of `simulate` (config to results, no run directory) over repeated runs. Target <= 10 s
   on a 2-core machine.
2. The iteration cache (`serving.iteration_cache`, on by default) against the full simulation
   of every iteration on the same runs: relative differences of TTFT/TPOT/E2E percentiles and
   throughput, for the lockstep closed loop above (fewer requests, so the full run stays short),
   for the bundled example's desynchronised closed loop, and for an open loop with varied
   lengths, where batch shapes repeat less.
3. How wall time grows with requests and with concurrency (cache on).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import yaml

from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def config(requests: int = 512, users: int = 64, output: int = 256, cache: bool = True, open_rate: float | None = None,
           desync: bool = False) -> dict:
    cfg = yaml.safe_load((EXAMPLES / "serving-deepseek-v3-dp16-ep16.yaml").read_text())
    sv = cfg["serving"]
    # issue 16's lockstep closed loop: fixed lengths, every user at t = 0, no think time
    sv.update(num_requests=requests, iteration_cache=cache, output_tokens={"dist": "fixed", "value": output},
              prompt_tokens={"dist": "fixed", "value": 1024}, think_time=0.0, ramp_up=0.0, ramp="even")
    if desync:  # the bundled example's traffic: lognormal lengths, random start phases, exponential think
        bundled = yaml.safe_load((EXAMPLES / "serving-deepseek-v3-dp16-ep16.yaml").read_text())["serving"]
        for key in ("prompt_tokens", "think_time", "ramp_up", "ramp"):
            sv[key] = bundled[key]
        sv["output_tokens"] = {"dist": "lognormal", "mean": output, "std": output / 2, "min": 4, "max": 4 * output}
    if open_rate is not None:  # open loop, varied lengths
        sv.pop("users")
        for key in ("think_time", "ramp_up", "ramp"):
            sv.pop(key, None)
        sv["arrivals"] = {"process": "poisson", "rate": open_rate}
        sv["prompt_tokens"] = {"dist": "lognormal", "mean": 1024, "std": 512, "min": 32, "max": 4096}
        sv["output_tokens"] = {"dist": "lognormal", "mean": output, "std": output / 2, "min": 4, "max": 4 * output}
    else:
        sv["users"] = users
    cfg["outputs"] = {"trace_steps": 0}
    return cfg


def run(cfg: dict):
    t0 = time.perf_counter()
    result = simulate(config_from_dict(cfg, EXAMPLES))
    return time.perf_counter() - t0, result.summary["serving"]


def compare(label: str, cached: dict, full: dict) -> None:
    rows = []
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        for q in ("p50", "p99"):
            a, b = cached["latency"][metric][q], full["latency"][metric][q]
            rows.append(f"{metric[:-2]} {q} {100 * (a / b - 1):+.2f}%")
    a, b = cached["throughput"]["output_tokens_per_s"], full["throughput"]["output_tokens_per_s"]
    rows.append(f"tokens/s {100 * (a / b - 1):+.2f}%")
    print(f"  {label}: cache vs full: " + ", ".join(rows))


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def open_loop_headline(repeats: int) -> None:
    """Issue 27's serving target: 512 requests, lognormal prompt (mean 1024) and reply (mean 256)
    lengths, Poisson arrivals at 8 req/s, config to results, <= 10 s on a 2-core machine."""
    times, walls = [], []
    for _ in range(repeats):
        c0, w0 = cpu(), time.perf_counter()
        summary = simulate(config_from_dict(config(requests=512, open_rate=8.0), EXAMPLES)).summary["serving"]
        times.append(cpu() - c0)
        walls.append(time.perf_counter() - w0)
    cache = summary["iteration_cache"]
    print(f"DeepSeek-V3, 16 x H100 (DP16 + EP16), open loop at 8 req/s, lognormal 1024/256 tokens, 512 requests: "
          f"median {statistics.median(times):.1f} CPU s ({statistics.median(walls):.1f} s wall) over {repeats} runs "
          f"(target <= 10 s); {summary['iterations']} iterations, {100 * cache['replayed_iteration_share']:.0f}% "
          f"of them replayed from the iteration cache ({100 * cache['replayed_share']:.0f}% of simulated time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the full-simulation comparison and the scaling")
    parser.add_argument("--open-only", action="store_true", help="only the open-loop headline")
    args = parser.parse_args()
    open_loop_headline(args.repeats)
    if args.open_only:
        return

    walls = []
    for _ in range(args.repeats):
        wall, summary = run(config())
        walls.append(wall)
    lat = summary["latency"]
    print(f"DeepSeek-V3, 16 x H100 (DP16 + EP16), 1024/256 tokens, 64 users, 512 requests: median "
          f"{statistics.median(walls):.1f} s over {args.repeats} runs (target <= 10 s); "
          f"{summary['iterations']} iterations; TTFT p50 {lat['ttft_s']['p50'] * 1e3:.0f} ms, "
          f"TPOT p50 {lat['tpot_s']['p50'] * 1e3:.1f} ms (simulated)")
    if args.quick:
        return
    print("\niteration cache against the full simulation (same runs, same seed):")
    for label, kw in (("closed loop, 64 users, 128 requests, 64-token replies", dict(requests=128, output=64)),
                      ("closed loop as traffic (random start phases, exponential think, lognormal lengths)",
                       dict(requests=128, output=64, desync=True)),
                      ("open loop, 4 req/s, 96 requests, lognormal lengths", dict(requests=96, output=64, open_rate=4.0))):
        (tc, cached), (tf, full) = run(config(cache=True, **kw)), run(config(cache=False, **kw))
        print(f"  {label}: {tc:.1f} s with the cache, {tf:.1f} s without")
        compare(label, cached, full)
    print("\nscaling (cache on; wall seconds of one run each):")
    for requests in (128, 256, 512):
        print(f"  requests = {requests:>4}: {run(config(requests=requests))[0]:6.1f} s", flush=True)
    for users in (16, 64, 256):
        print(f"  users    = {users:>4}: {run(config(users=users))[0]:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
