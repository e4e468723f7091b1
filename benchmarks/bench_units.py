"""Heterogeneous nodes built on compute units (issue 25): what sending parts of a layer to another
unit of the node buys, as the simulator models it (every figure is a model output).

1. Duplex (Yun et al., MICRO 2024): Mixtral-8x7B decode on eight H100-class xPUs, each with a
   Logic-PIM on its HBM (hardware_profiles/clusters/duplex-h100-pim-8.yaml, assumptions labelled
   there): step time with every part on the xPU, every part on the PIM (a PIM-only node),
   attention and experts on the PIM (the paper's low-Op/B split), and `auto` attention with
   experts on the PIM, over decode batch sizes. The paper reports up to 2.67x (2.07x mean) the
   throughput of an H100; that figure is its own cycle-level simulator's, not reproduced here.
2. MoE-Lens on a GH200: attention (and its KV cache) on the Grace unit lets a batch that does
   not fit in HBM run; step time and throughput against the largest batch that fits on the GPU.
3. Fiddler on an RTX 4090 workstation: every routed expert on the Ryzen host unit (weights in
   DDR5) against fetching 4-bit experts over PCIe on demand (offloading, LRU).

Run:  python benchmarks/bench_units.py [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from moesim.errors import ConfigError
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate
from moesim.simulator.scenario import resolve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def step_s(cfg: dict) -> float:
    return simulate(resolve(config_from_dict(copy.deepcopy(cfg), EXAMPLES))).summary["step_latency_s"]["mean"]


def duplex(steps: int) -> None:
    print("1. Duplex-style node: Mixtral-8x7B decode, EP8, 2k context (step time, model)")
    splits = {"xPU only": {},
              "PIM only": {"attention": "pim", "expert": "pim"},  # Mixtral has no dense or shared FFN
              "attention on PIM": {"attention": "pim"},
              "fastest (per op / device)": {"attention": "fastest", "expert": "fastest"}}
    print(f"{'batch/GPU':>10} " + " ".join(f"{k:>26}" for k in splits))
    for batch in (8, 32, 64, 128):
        cfg = example("mixtral-decode-8xh100.yaml")
        cfg["hardware"] = {"cluster": "duplex-h100-pim-8"}
        cfg["workload"].update({"batch_size": batch, "steps": steps})
        cfg["outputs"] = {"trace_steps": 0}
        times = {}
        for name, units in splits.items():
            cfg["policies"]["units"] = units
            times[name] = step_s(cfg)
        base = times["xPU only"]
        print(f"{batch:>10} " + " ".join(f"{times[k] * 1e3:>9.3f} ms ({base / times[k]:>5.2f}x xPU)" for k in splits))


def moe_lens(steps: int) -> None:
    print("\n2. MoE-Lens-style GH200: Mixtral-8x7B fp8 decode, 4k context (model)")
    cfg = example("mixtral-decode-8xh100.yaml")
    cfg["hardware"] = {"cluster": "gh200"}
    cfg["parallelism"] = {"ep": 1, "tp": 1, "dp": 1}
    cfg["precision"] = {"bits": 8}
    cfg["workload"].update({"kv_len": 4096, "steps": steps})
    cfg["outputs"] = {"trace_steps": 0}
    for batch in (32, 64, 128, 256):
        for where in ("accelerator", "host"):
            c = copy.deepcopy(cfg)
            c["workload"]["batch_size"] = batch
            c["policies"]["units"] = {"attention": where}
            try:
                t = step_s(c)
            except ConfigError as err:
                print(f"  batch {batch:>4}, attention on {where:>11}: does not fit ({err.field})")
                continue
            print(f"  batch {batch:>4}, attention on {where:>11}: {t * 1e3:8.2f} ms/step, {batch / t:8.0f} tokens/s")


def fiddler(steps: int) -> None:
    print("\n3. Fiddler-style RTX 4090 workstation: Mixtral-8x7B 4-bit decode, batch 1 (model)")
    off = example("offload-mixtral-4090-lru.yaml")
    off["workload"]["steps"] = steps
    off["outputs"] = {"trace_steps": 0}
    fetch = step_s(off)
    cpu = copy.deepcopy(off)
    cpu.pop("offload")
    cpu["policies"] = {"units": {"expert": "host"}}
    on_host = step_s(cpu)
    print(f"  experts fetched over PCIe on demand (LRU offloading): {fetch * 1e3:8.2f} ms/step")
    print(f"  every expert run on the Ryzen host unit:              {on_host * 1e3:8.2f} ms/step "
          f"({fetch / on_host:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    duplex(args.steps)
    moe_lens(args.steps)
    fiddler(args.steps)


if __name__ == "__main__":
    main()
