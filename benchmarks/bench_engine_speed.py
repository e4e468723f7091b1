"""Engine speed: DeepSeek-V3 decode on 4 x 8 H800 (EP32), 128 tokens per GPU, all 61 layers,
100 steps, and how wall time grows with steps, layers, devices and tokens per device. Targets
(issue 14, on the 2-core reference machine where the pre-redesign engine took ~8 s and ~19.6 s):
<= 5 s for the headline, <= 15 s at 64 devices; compare against an older commit with
`farm-bench --vs` rather than against these absolute numbers on another machine.

Run:  python benchmarks/bench_engine_speed.py [--repeats 3] [--quick]
Prints the median wall time of repeated runs (simulation only: config load to SimResult,
without writing the run directory) and the scaling tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def base_config() -> dict:
    return yaml.safe_load((EXAMPLES / "deepseek-v3-decode-4x8-h800.yaml").read_text())


def wall(cfg: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        simulate(config_from_dict(cfg, EXAMPLES))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def variant(**changes) -> dict:
    cfg = base_config()
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


ROOT = Path(__file__).resolve().parent.parent


def _edited_copy(relative: str, name: str, **changes) -> str:
    """A bundled YAML (model or cluster) with some top-level fields changed, written to /tmp."""
    spec = yaml.safe_load((ROOT / relative).read_text())
    spec.update(changes, name=name)
    out = Path("/tmp") / f"moesim-bench-{name}.yaml"
    out.write_text(yaml.safe_dump(spec))
    return str(out)


def layers_model(layers: int) -> str:
    """DeepSeek-V3 truncated to `layers` layers."""
    return _edited_copy("workloads/models/deepseek-v3.yaml", f"DeepSeek-V3-{layers}L", num_layers=layers)


def h800_cluster(nodes: int) -> str:
    """The bundled h800-4x8 cluster with another node count."""
    return _edited_copy("hardware_profiles/clusters/h800-4x8.yaml", f"h800-{nodes}x8", nodes=nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the scaling sweeps")
    args = parser.parse_args()

    headline = wall(base_config(), args.repeats)
    print(f"DeepSeek-V3 decode, h800-4x8 EP32, 128 tokens/GPU, 61 layers, 100 steps, uniform routing: "
          f"median {headline:.2f} s over {args.repeats} runs (target <= 5 s on the reference machine)")
    zipf = wall(variant(workload__routing={"generator": "zipf", "alpha": 1.0}), args.repeats)
    print(f"  same with Zipf(1.0) routing: median {zipf:.2f} s")
    if args.quick:
        return
    print("\nscaling (median wall seconds; each row changes one factor of the headline run):")

    def row(factor: str, value: int, cfg: dict) -> None:
        print(f"  {factor:>14} = {value:>4}: {wall(cfg, args.repeats):6.2f} s", flush=True)

    for steps in (25, 50, 100):
        row("steps", steps, variant(workload__steps=steps))
    for layers in (16, 31, 61):
        row("layers", layers, variant(model=layers_model(layers)))
    for nodes in (2, 4, 8):  # DeepSeek-V3 needs 16 H800 at least; kv_len 1024 so that 16 fit
        devices = 8 * nodes
        row("devices", devices, variant(hardware__cluster=h800_cluster(nodes), workload__kv_len=1024,
                                        parallelism={"ep": devices, "tp": 1, "dp": devices}))
    for tokens in (32, 128, 512):
        row("tokens/device", tokens, variant(workload__batch_size=tokens, workload__kv_len=512))


if __name__ == "__main__":
    main()
