"""Streaming a routing trace larger than memory: time and peak memory of stats and simulation.

Writes a Mixtral-shaped trace (32 MoE layers, 8 experts, top-2, 8 devices x 512 tokens per
step) of `--rows` token-layer rows with the synthetic generator, then runs `moesim trace stats`
and `moesim simulate` on it in child processes and prints each one's wall time and peak
resident memory next to the trace's in-memory size. Bounded memory means the peak stays flat
as `--rows` grows.

    python benchmarks/bench_trace_streaming.py --rows 1e8     # the acceptance figure (minutes)
    python benchmarks/bench_trace_streaming.py --rows 1e6     # quick look
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAYERS, EXPERTS, TOP_K, DEVICES, TOKENS = 32, 8, 2, 8, 512


def write_big_trace(path: Path, rows: int) -> tuple[int, float]:
    """(steps, seconds) to write at least `rows` rows, one step at a time."""
    from moesim.workloads.synthetic_routing import RoutingModelConfig
    from moesim.workloads.trace_synth import synthesize_trace

    steps = -(-rows // (LAYERS * DEVICES * TOKENS))
    cfg = RoutingModelConfig.model_validate({"popularity": {"kind": "zipf", "alpha": 1.0}, "affinity": 0.5})
    t = time.perf_counter()
    synthesize_trace(path, cfg, LAYERS, EXPERTS, TOP_K, [TOKENS] * DEVICES, steps, seed=0, model_name="Mixtral-8x7B")
    return steps, time.perf_counter() - t


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of `cmd`, run under its own parent so peaks do not mix."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK, *cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, int(out.stdout.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=1e8)
    ap.add_argument("--sim-steps", type=int, default=0, help="steps to simulate (default: the whole trace)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the trace (default: a temp folder)")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="moesim-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    trace = work / "big.parquet"
    steps, secs = write_big_trace(trace, int(args.rows))
    rows = steps * LAYERS * DEVICES * TOKENS
    in_memory = rows * (4 + 8 + 4 + 2 + 2 * TOP_K) / 2**20  # the trace's columns as numpy arrays
    print(f"trace: {rows:,} rows, {steps} steps, {trace.stat().st_size / 2**20:.0f} MiB on disk, "
          f"{in_memory:,.0f} MiB as arrays; written in {secs:.1f} s")
    wall, peak = measure([sys.executable, "-m", "moesim.cli", "trace", "stats", str(trace), "--model", "Mixtral-8x7B"])
    print(f"trace stats : {wall:7.1f} s  peak RSS {peak:7.0f} MiB  ({rows / wall / 1e6:.2f} M rows/s)")
    cfg = yaml.safe_load((ROOT / "examples" / "mixtral-decode-8xh100.yaml").read_text())
    cfg["workload"].pop("batch_size")
    cfg["workload"].pop("kv_len")
    cfg["workload"].update(phase="prefill", seq_len=TOKENS)  # one 512-token prompt per device and step
    cfg["workload"]["steps"] = args.sim_steps or steps
    cfg["workload"]["routing"] = {"generator": "trace", "trace": str(trace)}
    cfg["outputs"] = {"trace_steps": 0}
    (work / "scenario.yaml").write_text(yaml.safe_dump(cfg))
    wall, peak = measure([sys.executable, "-m", "moesim.cli", "simulate", str(work / "scenario.yaml"), "--quiet",
                          "--out", str(work / "run")])
    print(f"simulate    : {wall:7.1f} s  peak RSS {peak:7.0f} MiB  ({cfg['workload']['steps']} steps)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
