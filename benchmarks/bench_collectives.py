"""moesim's collectives beside published NCCL and custom all-reduce figures.

Run:  python benchmarks/bench_collectives.py [--all]
Prints, for every published row of benchmarks/reference/comm_published.yaml that names a GPU
moesim has a cluster profile for (H100 SXM: dgx-h100; H800: h800-4x8 cut to one node), its
size and its GPU count, the published time (or bus bandwidth) next to moesim's: the engine's own
collective objects run alone on the fabric (simulator/collective_time.py) with the bundled
datasheet defaults (hardware_profiles/links/*.yaml collectives). Then the median ratio
moesim / published by group. `--all` also lists the rows it cannot compare and why.

Custom all-reduce rows (SGLang PR #2904's table of vLLM's and SGLang's kernels) give element
counts: they are read as float32 elements (the dtype that test times), and moesim runs
`policies.tp_allreduce: auto` (vLLM's one-shot / two-shot choice). DeepEP's tables are set
beside moesim by benchmarks/bench_deepep.py.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from moesim.hardware_profiles import build_topology, compute_routes, load_cluster
from moesim.simulator.allreduce import AUTO, NCCL
from moesim.simulator.collective_time import collective_seconds

ROOT = Path(__file__).resolve().parent
REFERENCE = ROOT / "reference" / "comm_published.yaml"
CLUSTERS = {"H100-SXM": "dgx-h100", "H100": "dgx-h100", "H800": "h800-4x8"}
KINDS = {"all_reduce": "all_reduce", "alltoall": "all_to_all", "all_gather": "all_gather",
         "reduce_scatter": "reduce_scatter", "custom_allreduce": "all_reduce"}
LARGE = 1 << 30  # bytes: where a bandwidth-only row (a peak busbw) is compared


def _bus_factor(kind: str, n: int) -> float:
    return 2 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n


class Routes:
    """Routes of the bundled cluster of a GPU, cut to the nodes a row needs (built once each)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], object] = {}

    def get(self, gpu: str, nodes: int):
        name = CLUSTERS.get(gpu)
        if name is None:
            return None
        key = (name, nodes)
        if key not in self._cache:
            cluster = load_cluster(name)
            if nodes > 1 and cluster.node.nic is None:
                return None
            self._cache[key] = compute_routes(build_topology(cluster.model_copy(update={"nodes": nodes})))
        return self._cache[key]


def compare(row: dict, routes: Routes) -> tuple[str, float, float] | str:
    """(what is compared, published, moesim) for one row, or why it cannot be compared."""
    if row["system"] not in ("nccl", "custom_allreduce"):
        return "DeepEP: see benchmarks/bench_deepep.py"
    kind = KINDS.get(row["kernel"])
    n, nodes = row.get("gpus"), row.get("nodes") or 1
    if kind is None or not n:
        return f"kernel {row['kernel']} or GPU count not given"
    r = routes.get(str(row.get("gpu")), int(nodes))
    if r is None:
        return f"no bundled cluster profile for {row.get('gpu')} x {nodes} nodes"
    if n > r.num_devices:
        return f"{n} GPUs exceed the cluster's {r.num_devices}"
    choice = AUTO if row["system"] == "custom_allreduce" else NCCL
    size = row.get("size_bytes") or (4 * row["size_elements"] if row.get("size_elements") else None)
    if size and row.get("time_us"):
        return "time_us", float(row["time_us"]), collective_seconds(r, kind, int(n), float(size), choice) * 1e6
    if row.get("bandwidth_gbps") and row.get("bandwidth_kind") == "busbw" and not size:
        t = collective_seconds(r, kind, int(n), float(LARGE), choice)
        return "busbw_GBps", float(row["bandwidth_gbps"]), LARGE / t * _bus_factor(kind, int(n)) / 1e9
    return "neither a time at a size nor a bus bandwidth"


def _group(row: dict, what: str) -> str:
    if what == "busbw_GBps":
        return f"{row['system']} large-message bus bandwidth"
    size = row.get("size_bytes") or 4 * row.get("size_elements", 0)
    who = row.get("implementation") or row["system"]
    return f"{who} {'< 64 KiB' if size < 65536 else '>= 64 KiB'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also list the rows that cannot be compared")
    args = ap.parse_args()
    rows = yaml.safe_load(REFERENCE.read_text())["rows"]
    routes = Routes()
    ratios: dict[str, list[float]] = {}
    skipped = []
    print(f"{'system':<17}{'kernel':<17}{'GPU':<10}{'GPUs':>5}{'size':>12}  {'published':>11}{'moesim':>10}"
          f"{'ratio':>7}  source")
    for row in rows:
        got = compare(row, routes)
        if isinstance(got, str):
            skipped.append((row, got))
            continue
        what, published, model = got
        ratio = model / published
        ratios.setdefault(_group(row, what), []).append(ratio)
        size = row.get("size_bytes") or (f"{row['size_elements']} el" if row.get("size_elements") else "peak")
        unit = "us" if what == "time_us" else "GB/s"
        print(f"{row['system']:<17}{row['kernel']:<17}{str(row['gpu']):<10}{row['gpus']:>5}{str(size):>12}  "
              f"{published:>8.1f}{unit:>3}{model:>8.1f}{unit:>2}{ratio:>7.2f}  {row['source'][:60]}")
    print("\nmoesim / published, median (min-max) by group [model: datasheet defaults; published: cited rows]")
    for group, values in sorted(ratios.items()):
        print(f"  {group:<42} {statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f}), {len(values)} rows")
    print(f"{len(skipped)} rows not comparable" + ("" if args.all else " (--all lists them)"))
    if args.all:
        for row, why in skipped:
            print(f"  {row['system']} {row['kernel']} {row.get('gpu')} x{row.get('gpus')}: {why}")


if __name__ == "__main__":
    main()
