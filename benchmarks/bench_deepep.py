"""moesim's dispatch algorithms beside DeepEP's published H800 figures.

Run:  python benchmarks/bench_deepep.py
Prints, for each mode and EP size, moesim's simulated dispatch and combine time of one MoE
layer (compute zeroed, so the spans are pure communication) and the bandwidth figure DeepEP
reports, next to DeepEP's published number.

Setup as DeepEP's README tests it: DeepSeek-V3 shapes (hidden 7168, 256 experts, top-8), FP8
dispatch and BF16 combine, uniform routing, on the bundled h800 cluster (NVLink 160 GB/s class,
one 400 Gb/s IB NIC per GPU) with 1, 2, 4 or 8 nodes. Normal kernels: 4096 tokens per GPU
(intranode EP8 = `dedup` over NVLink; internode = `hierarchical`). Low-latency kernels: 128
tokens per GPU (`low_latency`). Published figures (DeepEP docs/legacy.md, H800, the current
table; benchmarks/reference/comm_published.yaml cites each): intranode normal 153 / 158 GB/s
NVLink (dispatch / combine); internode normal 43 / 43, 58 / 57, 51 / 50 GB/s RDMA at EP16/32/64;
low-latency dispatch / combine 77 / 114, 118 / 195, 155 / 273, 173 / 314 us at EP8/16/32/64
(the README's first table, 163-194 / 318-369 us, predates the kernels' use of NVLink inside a
node). DeepEP's normal test also limits each token to 4 nodes (top-4 groups): the normal runs
here draw each token's experts (`per_token`, so distinct (token, node) pairs are exact) with
`max_nodes: 4` (it binds at EP64, 8 nodes). The last column is moesim / published.

Counting as DeepEP does. Its internode test divides `num_rdma_token_sent` x hidden bytes by the
time, where that count is each token's distinct destination nodes after de-duplication *with
its own node among them* (tests/test_internode.py: `rdma_idx = topk_idx // experts per node`,
made unique per token, `ne(-1).sum()`); that is why its EP32 figure (58 GB/s) can exceed the
NIC's 50 GB/s line rate. moesim's network stage carries the remote pairs only, so its RDMA
figure here is scaled by nodes / (nodes - 1), the share of a token's nodes that are remote
under the uniform routing (every node equally likely): that scaling is this benchmark's, by
symmetry, not a count of own-node pairs. DeepEP also counts fp8 scales (1 + 4/128 bytes per
element); moesim's fp8 dispatch moves 1 byte per element (3% fewer bytes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml

from moesim.simulator.compose import pipeline_for, step_source_for
from moesim.simulator.config import config_from_dict
from moesim.simulator.compose import engine_for
from moesim.simulator.phases import PHASE_INDEX
from moesim.simulator.scenario import resolve

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {  # (dispatch, combine): GB/s for normal kernels, us for low-latency ones
    ("normal", 8): (153, 158),
    ("normal", 16): (43, 43),
    ("normal", 32): (58, 57),
    ("normal", 64): (51, 50),
    ("low_latency", 8): (77, 114),
    ("low_latency", 16): (118, 195),
    ("low_latency", 32): (155, 273),
    ("low_latency", 64): (173, 314),
}


def _files(tmp: Path, nodes: int) -> tuple[str, str]:
    model = yaml.safe_load((ROOT / "workloads/models/deepseek-v3.yaml").read_text())
    model.update(name="DeepSeek-V3-1moe", num_layers=4)  # three dense layers and one MoE layer
    cluster = yaml.safe_load((ROOT / "hardware_profiles/clusters/h800-4x8.yaml").read_text())
    cluster.update(name=f"h800-{nodes}x8", nodes=nodes)
    (tmp / "model.yaml").write_text(yaml.safe_dump(model))
    path = tmp / f"cluster-{nodes}.yaml"  # one file per size: profiles are cached by path
    path.write_text(yaml.safe_dump(cluster))
    return str(tmp / "model.yaml"), str(path)


def measure(mode: str, ep: int, tmp: Path) -> dict[str, float]:
    nodes = ep // 8
    model, cluster = _files(tmp, nodes)
    algorithm = ("dedup" if nodes == 1 else "hierarchical") if mode == "normal" else "low_latency"
    tokens = 4096 if mode == "normal" else 128
    routing = {"max_nodes": 4} if mode == "normal" else {}
    cfg = {"name": "deepep", "model": model, "hardware": {"cluster": cluster},
           "parallelism": {"ep": ep, "tp": 1, "dp": ep},
           "workload": {"phase": "prefill", "seq_len": tokens, "batch_size": 1, "steps": 1,
                        "routing": {"generator": "uniform", **routing}},
           "policies": {"dispatch_dtype": "fp8", "combine_dtype": "bf16", "dispatch": {"algorithm": algorithm}},
           "outputs": {"trace_steps": 0}, "seed": 0}
    sc = resolve(config_from_dict(cfg, tmp))
    plan = next(iter(pipeline_for(sc).plans(step_source_for(sc))))[0]
    for arr in (plan.attention, plan.dense_ffn, plan.shared_expert, plan.expert):
        arr[:] = 0.0  # communication only
    raw = engine_for(sc, plans=iter([[plan]])).run()
    layer = sc.model.moe_layers[0]
    span = {}
    for phase in ("dispatch", "combine"):
        p = PHASE_INDEX[phase]
        start = raw.start[0, layer, :, 0, p]
        end = raw.end[0, layer, :, 0, PHASE_INDEX["combine"] if phase == "combine" else p]
        if phase == "combine":
            start = raw.start[0, layer, :, 0, PHASE_INDEX["straggler_wait"]]
        span[phase] = float(np.nanmax(end - start))
    inter = sc.routes.pair_inter_node
    first = plan.traffic.dispatch[0][0]
    rdma = float(first[inter].sum() / sc.num_devices)  # network bytes each GPU sends
    nvl = float(plan.dispatch[0][~inter].sum() / sc.num_devices - np.trace(plan.dispatch[0]) / sc.num_devices)
    comb_rdma = float(plan.traffic.combine[-1][0][inter].sum() / sc.num_devices)
    comb = plan.traffic.combine[-1][0]
    comb_nvl = float(comb[~inter].sum() / sc.num_devices - np.trace(comb) / sc.num_devices)
    return {"dispatch_s": span["dispatch"], "combine_s": span["combine"], "rdma_B": rdma, "nvl_B": nvl,
            "comb_rdma_B": comb_rdma, "comb_nvl_B": comb_nvl, "algorithm": algorithm}


def main() -> None:
    print(f"{'mode':<12}{'EP':>4}  {'algorithm':<13}{'dispatch':>10}{'combine':>10}  {'moesim':<22}"
          f"{'DeepEP (H800)':<22}moesim / DeepEP")
    with tempfile.TemporaryDirectory() as d:
        for mode in ("normal", "low_latency"):
            for ep in (8, 16, 32, 64):
                r = measure(mode, ep, Path(d))
                pub = PUBLISHED[(mode, ep)]
                if mode == "normal":
                    link = "NVLink" if ep == 8 else "RDMA"
                    own = ep // 8 / (ep // 8 - 1) if ep > 8 else 1.0  # DeepEP counts a token's own node too
                    sent = (r["nvl_B"], r["comb_nvl_B"]) if ep == 8 else (r["rdma_B"] * own, r["comb_rdma_B"] * own)
                    got = (sent[0] / r["dispatch_s"] / 1e9, sent[1] / r["combine_s"] / 1e9)
                    unit = f"GB/s {link}"
                else:
                    got = (r["dispatch_s"] * 1e6, r["combine_s"] * 1e6)
                    unit = "us"
                ratio = f"{got[0] / pub[0]:.2f} / {got[1] / pub[1]:.2f}"
                print(f"{mode:<12}{ep:>4}  {r['algorithm']:<13}{r['dispatch_s'] * 1e6:>8.0f}us{r['combine_s'] * 1e6:>8.0f}us"
                      f"  {f'{got[0]:.0f} / {got[1]:.0f} {unit}':<22}{f'{pub[0]} / {pub[1]} {unit}':<22}{ratio}",
                      flush=True)


if __name__ == "__main__":
    main()
