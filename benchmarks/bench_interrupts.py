"""How fast every command stops on SIGINT / SIGTERM, and whether it leaves anything half-written.

Run:  python benchmarks/bench_interrupts.py [--seeds 5] [--commands simulate-none,place-highs,...]

For each command of tests/test_interrupts.py (the same argv, outputs and checks) and each seed,
a `moesim` child process gets the signal at a seeded random moment (odd seeds: its whole process
group, as a terminal's Ctrl-C; even seeds: the process alone; SIGINT and SIGTERM alternate). It
prints per command the outcomes (stopped with 130/143, or finished before the signal), the median
and maximum seconds from the signal to the exit (wall time, which includes the interpreter's own
exit), and any check that failed. The figure is measured, on this machine, with whatever else runs.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_interrupts as harness  # noqa: E402 - the tests own the command list and the checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--commands", default=",".join(harness.COMMANDS))
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "run"
    from moesim.cli import main as moesim

    assert moesim(["simulate", harness.MIXTRAL, "--steps", "20", "--out", str(run_dir), "--quiet"]) == 0
    print(f"{'command':<18} {'stopped':>7} {'done first':>10} {'median s':>9} {'max s':>7}  failures")
    worst = 0.0
    for name in args.commands.split(","):
        command = harness.COMMANDS[name]
        stops, finished, failures = [], 0, []
        for seed in range(args.seeds):
            signum = (signal.SIGINT, signal.SIGTERM)[seed % 2]
            with tempfile.TemporaryDirectory() as folder:
                try:
                    out = harness.check(command, Path(folder), 1000 + seed, signum, str(run_dir))
                except KeyboardInterrupt:
                    raise
                except BaseException as err:  # noqa: BLE001 - a failed check (assert or pytest.fail)
                    failures.append(f"seed {seed}: {str(err).splitlines()[0][:80]}")
                    continue
            if out.code in (130, 143):
                stops.append(out.stop_s)
            else:
                finished += 1
        med = statistics.median(stops) if stops else float("nan")
        top = max(stops) if stops else float("nan")
        worst = max(worst, top if stops else 0.0)
        print(f"{name:<18} {len(stops):>7} {finished:>10} {med:>9.2f} {top:>7.2f}  {'; '.join(failures) or '-'}")
    print(f"slowest stop over every command: {worst:.2f} s (measured, wall clock)")


if __name__ == "__main__":
    main()
