"""CPU seconds per step of per-token routing draws at DeepSeek-V3 scale (issue 27, point 4).

    python benchmarks/bench_routing_draws.py [--repeats 3] [--gpus 32] [--prefill-tokens 16384]
                                             [--decode-tokens 128] [--alpha 0.6] [--impl FILE]

DeepSeek-V3's routed layers: 58 MoE layers of 256 experts, top-8, in 8 groups (nodes) of 32
experts, each token's experts from at most 4 groups (node-limited, `NodeLimitedRouting`), and the
same popularity drawn without the limit (`PerTokenRouting`). One step routes `tokens per GPU x
gpus` tokens through every layer, as a step of the simulator does. Prints, per case, the median
CPU seconds (time.process_time, this process only: the draws are single-threaded numpy) of
`step()` over the repeats, after one untimed warm-up step; the issue's target is <= 2 s per step
for node-limited routing at 16k tokens per GPU on a 2-core machine.

Popularity: Zipf(alpha) over a random permutation per layer (alpha 0: uniform). `--impl FILE`
times another version of workloads/node_limited_routing.py (e.g. the previous one from git) in the
same way, for before/after figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

EXPERTS, TOP_K, LAYERS, GROUPS, MAX_GROUPS = 256, 8, 58, 8, 4


def _module(path: str | None):
    if path is None:
        from moesim.workloads import node_limited_routing
        return node_limited_routing
    spec = importlib.util.spec_from_file_location("routing_impl", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def cpu_per_step(source, tokens: np.ndarray, layers: int, repeats: int) -> float:
    source.step(0, tokens, layers)  # warm-up (caches, page faults)
    times = []
    for s in range(repeats):
        t0 = time.process_time()
        source.step(s + 1, tokens, layers)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpus", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=16384, help="tokens per GPU of the prefill case")
    ap.add_argument("--decode-tokens", type=int, default=128, help="tokens per GPU of the decode case")
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--alpha", type=float, default=0.6, help="Zipf exponent of the popularity (0: uniform)")
    ap.add_argument("--impl", default=None, help="another node_limited_routing.py to time instead")
    ap.add_argument("--skip-plain", action="store_true", help="time node-limited routing only")
    args = ap.parse_args(argv)

    mod = _module(args.impl)
    from moesim.workloads.routing import zipf_popularity

    rng = np.random.default_rng(0)
    pop = np.stack([zipf_popularity(EXPERTS, args.alpha)[rng.permutation(EXPERTS)] for _ in range(args.layers)])
    group = np.broadcast_to(np.arange(EXPERTS) // (EXPERTS // GROUPS), (args.layers, EXPERTS)).copy()
    sources = {"node_limited": mod.NodeLimitedRouting(EXPERTS, TOP_K, pop, group, MAX_GROUPS, seed=0)}
    if not args.skip_plain:
        sources["per_token"] = mod.PerTokenRouting(EXPERTS, TOP_K, pop, seed=0)
    print(f"routing draws: DeepSeek-V3 {args.layers} MoE layers x {EXPERTS} experts, top-{TOP_K}, "
          f"{GROUPS} groups (node-limited: <= {MAX_GROUPS}), Zipf({args.alpha}), {args.gpus} GPUs, "
          f"median of {args.repeats} ({args.impl or 'this checkout'})")
    for case, per_gpu in (("decode", args.decode_tokens), ("prefill", args.prefill_tokens)):
        tokens = np.full(args.gpus, per_gpu)
        for name, source in sources.items():
            sec = cpu_per_step(source, tokens, args.layers, args.repeats)
            rows = per_gpu * args.gpus * args.layers
            print(f"  {case:7s} {per_gpu:6d} tokens/GPU  {name:12s}  {sec:8.3f} CPU s/step  "
                  f"({sec / rows * 1e9:6.1f} ns per token-layer)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
