"""Full CPU calibration: measure the full grid on this machine, fit, and print held-out error.

Run:  python benchmarks/bench_calibration_cpu.py [--threads N] [--out runs/calibrate-cpu-full]
Prints MAPE, median and p90 APE and signed bias of simulated against measured time per split
(fit, holdout_random, holdout_slice, e2e) and op kind, before (datasheet profile built from
/proc/cpuinfo) and after calibration, next to the measurement noise floor. Every number is a
measurement or an error against one; timings are medians of repetitions (see validation/timing.py).
"""

from __future__ import annotations

import argparse
import time

from moesim.reports.calibration_report import write_calibration_report
from moesim.validation.calibrate import run_calibration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="runs/calibrate-cpu-full")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cal = run_calibration("cpu", "full", args.dtype, out_dir=args.out, threads=args.threads)
    write_calibration_report(cal)
    print(f"full CPU calibration: {len(cal.table)} measured ops in {time.perf_counter() - t0:.0f} s; "
          f"gemm tile {cal.profile.gemm_tile}; profile {cal.out_dir / (cal.profile.name + '.yaml')}")
    print("| split | kind | n | MAPE before | MAPE after | median APE after | p90 APE after | bias after | noise floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in cal.errors.itertuples():
        print(f"| {r.split} | {r.kind} | {r.n} | {r.before_mape:.1%} | {r.after_mape:.1%} | {r.after_median_ape:.1%} "
              f"| {r.after_p90_ape:.1%} | {r.after_bias:+.1%} | {r.noise_floor:.1%} |")


if __name__ == "__main__":
    main()
