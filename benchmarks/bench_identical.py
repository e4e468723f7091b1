"""Results digest: every bundled example and a matrix of variants (overlap modes, TP, MoE-TP, every
dispatch algorithm, offloading with host attention and host experts, serving with the iteration
cache), each reduced to a hash of its raw timeline, its traffic and its summary.

A refactor that must not change results saves the digest on the old commit and compares on the new
one; the script prints, per variant, `same` or what differs (the largest relative change of a
headline metric), and exits 1 on any difference.

Run:  python benchmarks/bench_identical.py --save /tmp/before.json     (old commit)
      python benchmarks/bench_identical.py --against /tmp/before.json  (new commit)
      [--only NAME_SUBSTRING]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from moesim.outputs import atomic_file
from moesim.simulator.config import load_config
from moesim.simulator.run import simulate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MIXTRAL = "mixtral-decode-8xh100.yaml"
DSV3 = "deepseek-v3-decode-4x8-h800.yaml"
SHORT = ["workload.steps=3"]

# (name, example file, overrides): the examples as bundled (serving ones shortened), then variants
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("mixtral-decode", MIXTRAL, []),
    ("dsv3-decode", DSV3, ["workload.steps=10"]),
    ("dsv3-prefill", "deepseek-v3-prefill-4x8-h800.yaml", ["workload.steps=2"]),
    ("tiny-trace", "tiny-moe-trace-8xh100.yaml", []),
    ("offload-jetson", "offload-dsv2lite-jetson-storage.yaml", []),
    ("offload-lru", "offload-mixtral-4090-lru.yaml", []),
    ("offload-oracle", "offload-mixtral-4090-oracle.yaml", []),
    ("offload-predictor", "offload-mixtral-4090-predictor.yaml", []),
    ("offload-host-attention", "offload-mixtral-4090-lru.yaml", ["offload.hybrid.attention=host"]),
    ("offload-host-experts", "offload-mixtral-4090-lru.yaml", ["offload.hybrid.cold_experts=host"]),
    ("offload-auto-experts", "offload-mixtral-4090-lru.yaml", ["offload.hybrid.cold_experts=auto"]),
    ("serving-deepep", "serving-deepseek-v3-4x8-h800-deepep.yaml", ["serving.num_requests=24"]),
    ("serving-disagg", "serving-deepseek-v3-disaggregated.yaml", ["serving.num_requests=24"]),
    ("serving-dp16", "serving-deepseek-v3-dp16-ep16.yaml", ["serving.num_requests=24"]),
    ("serving-moetp8", "serving-mixtral-8xh100-moetp8.yaml", ["serving.num_requests=24"]),
    ("serving-mixtral", "serving-mixtral-8xh100.yaml", ["serving.num_requests=24"]),
    ("serving-mixtral-cache", "serving-mixtral-8xh100.yaml",
     ["serving.num_requests=24", "serving.iteration_cache=true"]),
    ("serving-mixtral-two-batch", "serving-mixtral-8xh100.yaml", ["serving.num_requests=16",
                                                                  "policies.overlap=two_batch"]),
]
DUPLEX = "duplex-mixtral-decode-8.yaml"
VARIANTS += [  # nodes of several units: the rules that pick a unit, a stream per unit, a host unit
    ("duplex-fastest", DUPLEX, []),
    ("duplex-threshold", DUPLEX, ["policies.units.attention=threshold", "policies.units.expert=threshold",
                                  "policies.units.threshold={unit: pim, op_per_byte: 32}"]),
    ("duplex-qwen3-fastest", DUPLEX, ["model=Qwen3-30B-A3B", "workload.batch_size=64"]),
    ("duplex-two-batch-streams", DUPLEX, ["policies.overlap=two_batch", "policies.units.attention=pim"]),
    ("gh200-grace-attention", "gh200-mixtral-grace-attention.yaml", []),
]
for overlap in ("none", "two_batch", "shortcut"):
    for extra_name, extra in (("", []), ("-tp2", ["parallelism.tp=2", "parallelism.dp=4"]),
                              ("-moetp2", ["parallelism.moe_tp=2", "parallelism.ep=4"]),
                              ("-noshared", ["policies.overlap_shared_experts=false"])):
        VARIANTS.append((f"mixtral-{overlap}{extra_name}", MIXTRAL, [f"policies.overlap={overlap}"] + extra))
for algorithm in ("direct", "dedup", "hierarchical", "low_latency"):
    for overlap in ("none", "two_batch"):
        VARIANTS.append((f"dsv3-{algorithm}-{overlap}", DSV3, SHORT + [f"policies.dispatch.algorithm={algorithm}",
                                                                       f"policies.overlap={overlap}"]))
VARIANTS.append(("dsv3-exflow", DSV3, SHORT + ["policies.dispatch.algorithm=exflow",
                                               "workload.routing.per_token=true"]))
VARIANTS.append(("dsv3-exflow-kv", DSV3, SHORT + ["policies.dispatch.algorithm=exflow",
                                                  "workload.routing.per_token=true",
                                                  "policies.dispatch.kv_sync=per_layer"]))


def _hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=float))
        h.update(str(a.shape).encode())
        h.update(np.nan_to_num(a, nan=-1.0).tobytes())
    return h.hexdigest()[:16]


def _flat_numbers(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a nested summary, by dotted key."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flat_numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def digest(example: str, overrides: list[str]) -> dict:
    from moesim.simulator import engine

    engine.KEEP_FULL_PLANS = 10**9  # every step's traffic arrays kept, to hash them (tests check the released
    result = simulate(load_config(EXAMPLES / example, overrides))  # steps' summary and tables are the same)
    raw = result.raw
    entry = {"summary": _flat_numbers(result.summary)}
    if raw is not None and getattr(raw, "start", None) is not None:
        entry["timeline"] = _hash(raw.start, raw.end)
        entry["traffic"] = _hash(*[_bytes(p, "dispatch") for p in raw.plans], *[_bytes(p, "combine") for p in raw.plans])
    if result.requests is not None:
        entry["requests"] = _hash(*[result.requests[c].to_numpy(dtype=float) for c in result.requests.columns
                                    if result.requests[c].dtype.kind in "fiu"])
    return entry


def _bytes(plan, role: str) -> np.ndarray:
    """A step's (Lm, N, N) bytes of `role`, or the (N, N) pair sums of a plan that holds only its
    totals (a serving iteration replayed from the cache, whose plans the cache keeps released)."""
    from moesim.simulator.traffic_totals import TrafficTotals

    if isinstance(plan.traffic, TrafficTotals):
        return plan.traffic.pair_bytes[role]
    return getattr(plan, role)


def compare(old: dict, new: dict) -> str:
    if old == new:
        return "same"
    parts = [k for k in ("timeline", "traffic", "requests") if old.get(k) != new.get(k)]
    a, b = old["summary"], new["summary"]
    keys = sorted(set(a) | set(b))
    worst, worst_key = 0.0, None
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            parts.append(f"{k} {'added' if x is None else 'removed'}")
            continue
        if x != y and not (np.isnan(x) and np.isnan(y)):
            rel = abs(y - x) / max(abs(x), 1e-30)
            if rel >= worst:
                worst, worst_key = rel, k
    if worst_key is not None:
        parts.append(f"largest change {worst_key}: {a[worst_key]:.6g} -> {b[worst_key]:.6g} ({worst:.2e} rel)")
    return "DIFFERENT: " + "; ".join(parts[:8])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=Path, help="write the digest here (a new file; --force replaces one)")
    parser.add_argument("--force", action="store_true", help="replace an existing --save file")
    parser.add_argument("--against", type=Path)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    if args.save and args.save.exists() and not args.force:
        parser.error(f"{args.save} exists; give another --save path or --force to replace it")
    reference = json.loads(args.against.read_text()) if args.against else {}
    out: dict = {}
    failed = 0
    t_all = time.process_time()
    for name, example, overrides in VARIANTS:
        if args.only not in name:
            continue
        t0 = time.process_time()
        out[name] = digest(example, overrides)
        verdict = compare(reference[name], out[name]) if name in reference else "(no reference)"
        failed += verdict.startswith("DIFFERENT")
        print(f"{name:34s} {time.process_time() - t0:6.1f} CPU s  {verdict}", flush=True)
    print(f"{len(out)} variants, {failed} different, {time.process_time() - t_all:.0f} CPU s")
    if args.save:
        with atomic_file(args.save, option="--save", force=args.force) as tmp:  # never a half-written digest
            tmp.write_text(json.dumps(out, indent=1, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
