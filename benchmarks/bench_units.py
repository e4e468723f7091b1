"""Heterogeneous nodes built on compute units (issue 25): what sending parts of a layer to another
unit of the node buys, as the simulator models it (every figure is a model output).

1. Duplex (Yun et al., MICRO 2024): Mixtral-8x7B and Qwen3-30B-A3B (GQA) decoding at batch
   1..256 on eight H100-class xPUs, each with a Logic-PIM on its HBM
   (hardware_profiles/clusters/duplex-h100-pim-8.yaml, assumptions labelled there): step time on
   the xPU alone, on the PIM alone, with `fastest` (each attention op, each device's expert
   layer, on the unit that finishes it first), with `co_process` (a device's expert copies split,
   hot on the xPU and cold on the PIM at once), and with two-batch overlap, attention on the PIM
   and a stream per unit (one micro-batch's attention beside the other's experts; "2-batch"
   against the xPU alone without overlap); which ops the PIM takes at each batch, the share
   of expert layers it runs, and the batch where experts move back to the xPU, against the
   crossover the two roofs predict. The paper reports up to 2.67x (2.07x mean) the throughput of
   an H100; that figure is its own cycle-level simulator's, not reproduced here.
2. MoE-Lens on a GH200: attention (and its KV cache) on the Grace unit lets a batch that does
   not fit in HBM run; step time and throughput against the largest batch that fits on the GPU.
3. Fiddler on an RTX 4090 workstation: misses fetched over PCIe (offloading, LRU), misses run
   on the host unit (offloading's cold experts on the CPU, Fiddler's rule), every expert on the
   host unit (policies.units, weights in DDR5).
4. GH200 offloading: Mixtral-8x7B bf16 experts in Grace memory fetched over NVLink-C2C, against
   an H100 whose host is a Xeon over PCIe5; and every expert run on the host unit of each.

Run:  python benchmarks/bench_units.py [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
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


def crossover_rows() -> float:
    """Tokens per expert above which an expert GEMM is faster on the xPU than on the PIM, from the
    two roofs (bf16 weights: FLOPs per weight byte = tokens): the PIM's compute roof against the
    xPU's memory roof, where the xPU is still weight-bound (model, from the profiles)."""
    from moesim.hardware_profiles import load_device

    pim, xpu = load_device("Logic-PIM"), load_device("H100-SXM")
    return (pim.compute["bf16"] * pim.efficiency.compute) / (xpu.memory.bandwidth * xpu.efficiency.memory)


def duplex_point(model: str, batch: int, steps: int, units: dict, overlap: str = "none") -> tuple[float, object]:
    from moesim.simulator.compose import pipeline_for
    from moesim.simulator.roofline import scenario_plan

    cfg = example("mixtral-decode-8xh100.yaml")
    cfg["model"] = model
    cfg["hardware"] = {"cluster": "duplex-h100-pim-8"}
    cfg["workload"].update({"batch_size": batch, "steps": steps})
    cfg["outputs"] = {"trace_steps": 0}
    cfg["policies"]["units"] = units
    cfg["policies"]["overlap"] = overlap
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    pipe = pipeline_for(sc)
    return simulate(sc).summary["step_latency_s"]["mean"], (sc, pipe, scenario_plan(sc, 0, pipe))


def duplex(steps: int) -> None:
    print("1. Duplex-style node (8 x H100-class xPU + Logic-PIM), decode at 2k context, EP8 (model)")
    print(f"   roofline crossover: an expert GEMM leaves the PIM above ~{crossover_rows():.0f} tokens per expert "
          "(PIM compute roof = xPU weight-read roof)")
    fastest = {"attention": "fastest", "expert": "fastest"}
    pim_only = {"attention": "pim", "expert": "pim"}  # neither model has a dense or shared FFN
    co = {"attention": "fastest", "expert": "co_process"}
    streams = {"attention": "pim", "expert": "fastest"}  # with two_batch: a stream per unit
    for model in ("Mixtral-8x7B", "Qwen3-30B-A3B"):
        print(f"\n   {model}")
        print(f"   {'batch':>5} {'xPU':>10} {'PIM only':>10} {'fastest':>10} {'speed-up':>8} {'co-process':>10} "
              f"{'speed-up':>8} {'2-batch':>10} {'speed-up':>8} {'layers':>6} {'copies':>6} {'rows/expert':>11}  "
              "attention ops on the PIM")
        crossover = None
        for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            try:
                xpu, _ = duplex_point(model, batch, steps, {})
            except ConfigError:
                print(f"   {batch:>5} does not fit in memory")
                continue
            pim, _ = duplex_point(model, batch, steps, pim_only)
            best, (sc, pipe, plan) = duplex_point(model, batch, steps, fastest)
            both, _ = duplex_point(model, batch, steps, streams, overlap="two_batch")
            split, (_, _, co_plan) = duplex_point(model, batch, steps, co)
            on_pim, copies_on_pim = (float((p.slot_unit[p.slot_tokens > 0] == 1).mean()) for p in (plan, co_plan))
            busy = plan.rows_computed / max(plan.experts_active.max(), 1)
            rows = pipe.op_rows(plan, sc.model.moe_layers[0], 0)
            att = rows[(rows.phase == "attention") & (rows.unit == "pim")].op.tolist()
            if crossover is None and on_pim < 0.5:
                crossover = batch
            print(f"   {batch:>5} {xpu * 1e3:>8.2f}ms {pim * 1e3:>8.2f}ms {best * 1e3:>8.2f}ms {xpu / best:>7.2f}x "
                  f"{split * 1e3:>8.2f}ms {xpu / split:>7.2f}x {both * 1e3:>8.2f}ms {xpu / both:>7.2f}x "
                  f"{on_pim:>6.0%} {copies_on_pim:>6.0%} {float(np.mean(busy)):>11.1f}  {', '.join(att) or '-'}")
        print(f"   experts move back to the xPU (under fastest, under half the device-layers on the PIM) from "
              f"batch {crossover if crossover else '> 256'}")
    print("\n   layers: share of expert copies with rows on the PIM under fastest (a device's layer moves whole);"
          "\n   copies: the same under co_process (a device's hot copies on the xPU, its cold ones on the PIM, at once)")


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
    cold = copy.deepcopy(off)
    cold["offload"]["hybrid"] = {"cold_experts": "host"}
    on_miss = step_s(cold)
    cpu = copy.deepcopy(off)
    cpu.pop("offload")
    cpu["policies"] = {"units": {"expert": "host"}}
    on_host = step_s(cpu)
    print(f"  misses fetched over PCIe on demand (offloading, LRU):        {fetch * 1e3:8.2f} ms/step")
    print(f"  misses run on the host unit (offload.hybrid.cold_experts):    {on_miss * 1e3:8.2f} ms/step")
    print(f"  every expert on the host unit (policies.units.expert: host): {on_host * 1e3:8.2f} ms/step")
    source = simulate(resolve(config_from_dict(copy.deepcopy(cold), EXAMPLES))).summary["offload"]["host_cost_source"]
    print(f"  host CPU expert costs from: {source}")


def gh200_offload(steps: int) -> None:
    print("\n4. Offloading Mixtral-8x7B bf16 (94 GB of weights) at batch 1: Grace memory over NVLink-C2C vs a PCIe "
          "host (model)")
    base = example("offload-mixtral-4090-lru.yaml")
    base.pop("precision")
    base["workload"]["steps"] = steps
    base["outputs"] = {"trace_steps": 0}
    for cluster, note in (("gpu-host-pcie", "H100 SXM + Xeon 8480 over PCIe5 x16"),
                          ("gh200", "GH200: Hopper + Grace over NVLink-C2C")):
        cfg = copy.deepcopy(base)
        cfg["hardware"] = {"cluster": cluster}
        fetched = step_s(cfg)
        cpu = copy.deepcopy(cfg)
        cpu.pop("offload")
        cpu["policies"] = {"units": {"expert": "host"}}
        on_host = step_s(cpu)
        print(f"  {note:<40} experts fetched: {fetched * 1e3:8.2f} ms/step   experts run on the host unit: "
              f"{on_host * 1e3:8.2f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    duplex(args.steps)
    moe_lens(args.steps)
    fiddler(args.steps)
    gh200_offload(args.steps)


if __name__ == "__main__":
    main()
