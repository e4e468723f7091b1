"""Offloading policies compared on the bundled offload examples (model outputs, deterministic).

Mixtral-8x7B on one RTX 4090 with 4-bit experts in host memory, and DeepSeek-V2-Lite on a Jetson
Orin Nano with 4-bit experts on NVMe: cache scope and policy, prefetchers (none, oracle,
affinity, predictor at several accuracies and lookaheads) and hybrid CPU execution. Every figure
except the wall time is simulated; the wall time is the median of repeated runs.

Run:  python benchmarks/bench_offload_policies.py [--steps 16] [--repeats 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import yaml

from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MIXTRAL = [
    ("bf16 experts, device LRU", {"precision": {}, "offload.cache": {"policy": "lru", "scope": "device"}}),
    ("4-bit, device LRU", {"offload.cache": {"policy": "lru", "scope": "device"}}),
    ("4-bit, device LFU", {"offload.cache": {"policy": "lfu", "scope": "device"}}),
    ("4-bit, pinned-hot 50%", {"offload.cache": {"policy": "pinned", "scope": "device"}}),
    ("4-bit, per-layer LRU", {}),
    ("  + oracle", {"offload.prefetch": {"policy": "oracle"}}),
    ("  + oracle, lookahead 2", {"offload.prefetch": {"policy": "oracle", "lookahead": 2}}),
    ("  + affinity", {"offload.prefetch": {"policy": "affinity"}}),
    ("  + predictor 50%", {"offload.prefetch": {"policy": "predictor", "accuracy": 0.5}}),
    ("  + predictor 80%", {"offload.prefetch": {"policy": "predictor", "accuracy": 0.8}}),
    ("  + predictor 95%", {"offload.prefetch": {"policy": "predictor", "accuracy": 0.95}}),
    ("  + predictor 80%, lookahead 2", {"offload.prefetch": {"policy": "predictor", "accuracy": 0.8, "lookahead": 2}}),
    ("  + cold experts on CPU (auto)", {"offload.hybrid": {"cold_experts": "auto"}}),
    ("  + cold experts always on CPU", {"offload.hybrid": {"cold_experts": "host"}}),
    ("same 18 GB cache on a GH200 (NVLink-C2C)", {"hardware": {"cluster": "gh200"},
                                                  "offload.cache": {"policy": "lru", "scope": "layer",
                                                                    "capacity": "18 GB"}}),
    ("  + bf16 experts, device LRU", {"hardware": {"cluster": "gh200"}, "precision": {},
                                      "offload.cache": {"policy": "lru", "capacity": "18 GB"}}),
]
DSV2 = [
    ("4-bit, device LFU, no prefetch", {"offload.prefetch": {"policy": "none"}}),
    ("  + affinity (example)", {}),
    ("  + oracle", {"offload.prefetch": {"policy": "oracle"}}),
    ("  + predictor 80%", {"offload.prefetch": {"policy": "predictor", "accuracy": 0.8}}),
    ("4-bit, device LRU, no prefetch", {"offload.cache": {"policy": "lru"}, "offload.prefetch": {"policy": "none"}}),
]


def variant(base: dict, changes: dict, steps: int) -> dict:
    cfg = copy.deepcopy(base)
    cfg["workload"]["steps"] = steps
    cfg["outputs"] = {"trace_steps": 0}
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return cfg


def row(name: str, cfg: dict, repeats: int) -> str:
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = simulate(config_from_dict(cfg, EXAMPLES))
        walls.append(time.perf_counter() - t0)
    s, o = res.summary, res.summary["offload"]
    fetched = sum(o["bytes_fetched"].values()) / s["steps"] / 2**20
    pf = f"{o['prefetches_used']}/{o['prefetches_wasted']}/{o['late_prefetches']}" if o["prefetches"] else "-"
    late = f"{o['late_hit_rate']:.1%}" if "late_hit_rate" in o else "-"
    return (f"| {name} | {s['step_latency_s']['mean'] * 1e3:.1f} | {o['hit_rate']:.1%} | {late} | {fetched:,.0f} | "
            f"{o['stall_s']['share_of_device_time']:.1%} | {pf} | {o['host_experts_run']} | "
            f"{o['copy_engine_utilization']:.0%} | {statistics.median(walls):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    head = ("| variant | step ms (simulated) | hit rate (on time) | late hits | MiB fetched / step | stall share | "
            "prefetch used/wasted/late | host-CPU experts | copy engine busy | wall s |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    for title, example, variants in (
        ("Mixtral-8x7B, batch 1 decode, RTX 4090 + host DDR5 over PCIe 4.0 x16", "offload-mixtral-4090-lru.yaml", MIXTRAL),
        ("DeepSeek-V2-Lite, batch 1 decode, Jetson Orin Nano 8GB + NVMe (PCIe 3.0 x4)",
         "offload-dsv2lite-jetson-storage.yaml", DSV2),
    ):
        base = yaml.safe_load((EXAMPLES / example).read_text())
        print(f"\n{title} ({args.steps} steps)\n{head}")
        for name, changes in variants:
            print(row(name, variant(base, changes, args.steps), args.repeats), flush=True)


if __name__ == "__main__":
    main()
