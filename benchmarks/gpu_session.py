"""One prepared GPU session (issue 17 point 9): the model-shaped calibration and the Triton MoE benchmark.

    python benchmarks/gpu_session.py OUT [--budget SECONDS] [--models Mixtral-8x7B,DeepSeek-V3]

On a CUDA machine it writes, under OUT:
- `machine.txt`: nvidia-smi, torch / Triton / CUDA versions;
- `triton/`: `benchmarks/bench_triton_moe.py --out` (grouped GEMM against the per-expert torch loop,
  whole fused layers against their weight-read time);
- `calibration/`: `run_calibration(device="cuda", models=...)` (GEMMs of the models' shapes, grouped
  GEMMs, fused MoE layers, torch MoE layers, copies; measurements.csv, errors.csv, machine.json and
  the calibrated profile), with the per-op timing trimmed to fit `--budget`;
- `session.json`: what ran, how long each part took, and why a part stopped.
Each part runs in its own process under a time limit, so one that overruns still leaves the others'
files. Without CUDA it runs the same steps on tiny CPU shapes (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(cmd: list[str], limit: float, log: Path) -> dict:
    """Run one part in its own process under `limit` seconds; its output goes to `log` and stdout."""
    start = time.time()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                sink.write(line)
                sink.flush()
                print(line, end="", flush=True)
                if time.time() - start > limit:
                    proc.kill()
                    break
            proc.wait(timeout=max(1.0, limit - (time.time() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
    took = time.time() - start
    status = "ok" if proc.returncode == 0 else ("timed out" if took >= limit else f"exit {proc.returncode}")
    return {"cmd": " ".join(cmd), "seconds": round(took, 1), "status": status}


CALIBRATE = """
import sys, json
from moesim.validation.calibrate import choose_grid, run_calibration
from dataclasses import replace
device, out, models, min_time = sys.argv[1], sys.argv[2], sys.argv[3].split(","), float(sys.argv[4])
dtype = "bfloat16" if device == "cuda" else "float32"
grid, _ = choose_grid(device, "full" if device == "cuda" else "small", dtype, None, models)
if device != "cuda":  # smoke: the CPU-sized grid
    grid, _ = choose_grid(device, "small", dtype, None, None)
grid = replace(grid, timing=grid.timing | {"min_time": min_time, "min_reps": 5, "warmup": 3})
cal = run_calibration(device=device, dtype=dtype, profile="H100-SXM" if device == "cuda" else None,
                      out_dir=out, grid=grid, progress=lambda s: print(s, flush=True), models=models)
from moesim.reports.calibration_report import write_calibration_report
write_calibration_report(cal)
print("VERDICT", cal.verdict)
print(cal.errors.to_string())
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole session")
    ap.add_argument("--models", default="Mixtral-8x7B,DeepSeek-V3")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    facts = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "device": device}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = "not installed"
    if cuda:
        facts["gpu"] = torch.cuda.get_device_name(0)
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
        (out / "machine.txt").write_text(json.dumps(facts, indent=1) + "\n" + smi.stdout)
    parts = {}
    bench = [sys.executable, str(HERE / "bench_triton_moe.py"), "--out", str(out / "triton")]
    parts["triton"] = _run(bench if cuda else bench + ["--smoke"], 120.0, out / "triton.log")
    left = args.budget - (time.time() - start) - 15.0
    min_time = 0.05 if cuda else 0.0
    parts["calibration"] = _run([sys.executable, "-c", CALIBRATE, device, str(out / "calibration"), args.models,
                                 str(min_time)], left, out / "calibration.log")
    (out / "session.json").write_text(json.dumps({"facts": facts, "parts": parts,
                                                  "seconds": round(time.time() - start, 1)}, indent=1))
    print(json.dumps(parts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
