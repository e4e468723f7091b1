"""ExFlow's "a token stays on its expert's device" dispatch against dedup's two all-to-alls a layer,
under layer-by-layer and joint (affinity across all layers) expert placement.

Routing is the synthetic generator with strong inter-layer affinity (a token's routing position
carries to the next layer with probability 0.9), drawn per token. Each case places the experts
with `ilp_load` (balance only, layer by layer), `ilp_affinity` (layer by layer, each layer next to
the one before), `ilp_joint` (block-coordinate sweeps over all layers) and `joint/top1`
(`ilp_joint` on the problem `moesim place` builds for an exflow scenario: the layer-to-layer flow
is each token's top-1 expert at l to its experts at l+1, the moves exflow pays), fitted on routing
steps that the simulation does not replay, then simulates every placement under

- dedup: a token once per destination device, and back to its source after every layer;
- exflow, kv_sync per_layer: the token stays on its top-1 expert's device, one all-to-all per
  layer, every token's new KV entries all-gathered over the EP group (context coherence);
- exflow, kv_sync none: the same without the KV all-gather (an optimistic bound).

Columns: `moves` = fraction of (token, layer) pairs whose next top-1 expert is on another device
than its top-1 expert (what exflow pays for), a2a MB = dispatch + combine payload that leaves a
device per step, inter MB = the part of it that leaves a node, resid = max / mean tokens a device
runs attention for (mean over MoE layers, first step; 1 when tokens stay home), step ms = median simulated step
time, vs base = step time over ilp_load + dedup. All numbers are simulated (model outputs).

Run: python benchmarks/bench_exflow.py  (about 2 minutes on 2 cores; asserts nothing)
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from moesim.placement.ilp import IlpOptions
from moesim.placement.methods import run_method
from moesim.simulator.compose import pipeline_for, step_source_for
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.studies.placement_inputs import problem_from_scenario
from moesim.studies.placement_study import fit_window, with_placement

CASES = [  # name, model, cluster, nodes, devices, sequences per GPU, kv_len
    ("Mixtral-8x7B (8 experts, top-2), 8xH100 1 node", "Mixtral-8x7B", "dgx-h100", None, 8, 64, 2048),
    ("OLMoE-1B-7B (64 experts, top-8), 16xH100 2 nodes", "OLMoE-1B-7B", "h100-2x8", 2, 16, 64, 2048),
    ("OLMoE-1B-7B, 16xH100 2 nodes, short contexts (kv 256, 256 seq/GPU)", "OLMoE-1B-7B", "h100-2x8", 2, 16, 256,
     256),
]
METHODS = ("ilp_load", "ilp_affinity", "ilp_joint")
DISPATCH = (("dedup", "per_layer"), ("exflow", "per_layer"), ("exflow", "none"))
STEPS = 6
FIT_STEPS = 6


def config(model: str, cluster: str, nodes: int | None, devices: int, batch: int, kv_len: int,
           algorithm: str = "dedup", kv_sync: str = "per_layer") -> dict:
    hw = {"cluster": cluster} | ({"nodes": nodes} if nodes else {})
    return {
        "name": f"exflow-{model}-{algorithm}-{kv_sync}", "model": model, "hardware": hw,
        "parallelism": {"ep": devices, "tp": 1, "dp": devices},
        "workload": {"phase": "decode", "batch_size": batch, "kv_len": kv_len, "steps": STEPS,
                     "routing": {"generator": "synthetic", "synthetic": {"affinity": 0.9}}},
        "policies": {"dispatch": {"algorithm": algorithm, "kv_sync": kv_sync}},
        "outputs": {"trace_steps": 0},
        "seed": 0,
    }


def moves(sc, placement) -> float:
    """Fraction of (token, consecutive layer) pairs whose top-1 expert changes device, over the
    simulated steps (one EP group: token sources are its devices)."""
    moved = total = 0
    for step in range(STEPS):
        r = sc.routing.step(step, sc.moe_tokens, len(sc.model.moe_layers))
        dev = np.stack([placement.slot_device[layer][te[:, 0]] for layer, te in enumerate(r.token_experts)])
        moved += int((dev[1:] != dev[:-1]).sum())
        total += dev[1:].size
    return moved / max(total, 1)


def run_case(tmp: Path, name: str, model: str, cluster: str, nodes, devices: int, batch: int, kv_len: int) -> list:
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(config(model, cluster, nodes, devices, batch, kv_len)))
    base = load_scenario(path)
    first, in_sample = fit_window(base, FIT_STEPS)
    problem = problem_from_scenario(base, FIT_STEPS, first_step=first)
    path.write_text(yaml.safe_dump(config(model, cluster, nodes, devices, batch, kv_len, "exflow", "none")))
    exflow_problem = problem_from_scenario(load_scenario(path), FIT_STEPS, first_step=first)  # top-1 flow
    opts = IlpOptions(time_limit=10.0)
    rows = []
    for label, method, prob in [(m, m, problem) for m in METHODS] + [("joint/top1", "ilp_joint", exflow_problem)]:
        t0 = time.perf_counter()
        placement = run_method(method, prob, opts).placement
        solve = time.perf_counter() - t0
        frac = moves(base, placement)
        for algorithm, kv in DISPATCH:
            path.write_text(yaml.safe_dump(config(model, cluster, nodes, devices, batch, kv_len, algorithm, kv)))
            sc = with_placement(replace(base, config=load_scenario(path).config), placement)
            res = pipeline_for(sc).plan(next(iter(step_source_for(sc)))).traffic.residency
            imbalance = 1.0 if res is None else float(np.mean(res.max(axis=1) / res.mean(axis=1)))
            s = simulate(sc).summary
            pay, steps = s["all_to_all_payload_bytes"], max(int(s["steps"]), 1)
            rows.append({"case": name, "placement": label, "dispatch": algorithm if algorithm == "dedup" else
                         f"exflow kv={kv}", "moves": frac,
                         "a2a_MB": (pay["dispatch"] + pay["combine"]) / steps / 1e6,
                         "inter_MB": (pay["dispatch_inter_node"] + pay["combine_inter_node"]) / steps / 1e6,
                         "step_ms": s["step_latency_s"]["p50"] * 1e3, "imbalance": imbalance, "solve_s": solve, "in_sample": in_sample})
            print(f"  {label:12s} {rows[-1]['dispatch']:20s} step {rows[-1]['step_ms']:.3f} ms", file=sys.stderr)
    ref = rows[0]["step_ms"]
    for r in rows:
        r["vs_base"] = r["step_ms"] / ref
    return rows


def main() -> None:
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            print(f"{case[0]} ...", file=sys.stderr)
            rows.extend(run_case(Path(tmp), *case))
    print(f"\nExFlow dispatch vs dedup, synthetic routing with affinity 0.9, decode, {STEPS} simulated steps "
          f"(placements fitted on {FIT_STEPS} other steps)\n")
    case = None
    for r in rows:
        if r["case"] != case:
            case = r["case"]
            print(f"\n{case}")
            print(f"{'placement':12s} {'dispatch':20s} {'moves':>6s} {'a2a MB':>8s} {'inter MB':>9s} "
                  f"{'resid':>6s} {'step ms':>8s} {'vs base':>8s}")
        print(f"{r['placement']:12s} {r['dispatch']:20s} {r['moves']:6.3f} {r['a2a_MB']:8.2f} {r['inter_MB']:9.2f} "
              f"{r['imbalance']:6.2f} {r['step_ms']:8.3f} {r['vs_base']:8.3f}")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
