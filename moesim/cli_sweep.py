"""`moesim sweep SWEEP.yaml`: run every point of a sweep (studies/sweep.py), cached and resumable,
and write one folder: sweep.parquet and sweep.csv (a row per point), report.html/.md with the
Pareto front, sweep_info.json (what ran and where its cache is).

Finished points live in the cache (default `.moesim-sweep-cache` beside the output folder, shared
by the sweeps written there) from the moment each ends; the output folder is written atomically at
the end. An interrupted sweep writes no folder and says how many points it kept in the cache: the
same command resumes and simulates only the rest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CACHE_NAME = ".moesim-sweep-cache"


def add_output_options(parser, kept: str, printed: str) -> None:
    """--out, --force, --cache, --quiet and --json of a command that runs cached sweep points."""
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<name>)")
    parser.add_argument("--force", action="store_true", help="replace an output folder moesim wrote")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help=f"where {kept} are kept (default {CACHE_NAME} beside the output folder)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (and --json)")
    parser.add_argument("--json", action="store_true", help=f"print {printed} as JSON on stdout")


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="run a base config over axes of config values, cached and resumable; "
                                      "a table and a Pareto report")
    sw.add_argument("sweep", type=Path, help="sweep YAML: base config, axes, zip, exclude, pareto")
    sw.add_argument("--workers", type=int, default=1, metavar="N",
                    help="worker processes (default 1: in this process; each worker pins BLAS to one thread); "
                         "with --ray local, the CPUs of the private Ray instance")
    sw.add_argument("--ray", default=None, metavar="local|ADDRESS",
                    help="run the points as Ray tasks: 'local' starts a private Ray instance, 'auto' or "
                         "HOST:PORT joins a running cluster (nodes need moesim and the sweep's files at the same "
                         "paths); needs pip install 'moesim[ray]'")
    add_output_options(sw, "finished points", "the table's records")
    sw.set_defaults(func=run)


def _progress(quiet: bool):
    start = time.monotonic()
    first: list[int] = []

    def show(done: int, total: int, cached: int) -> None:
        if quiet:
            return
        if not first:
            first.append(done)
            refused = done - cached
            if cached or refused:
                print(f"{cached} of {total} points from the cache" + (f", {refused} refused before simulating (see the "
                      "table's error column)" if refused else ""), file=sys.stderr, flush=True)
            return
        ran = done - first[0]
        left = total - done
        eta = (time.monotonic() - start) / ran * left if ran else float("nan")
        print(f"point {done}/{total} done" + (f", ~{eta:.0f} s left" if left else ""), file=sys.stderr, flush=True)
    return show


def run(args: argparse.Namespace) -> int:
    from moesim import interrupts, json_io
    from moesim.errors import ConfigError
    from moesim.outputs import atomic_dir, check_replaceable
    from moesim.reports.sweep_points_report import write_points_report
    from moesim.studies.sweep import run_sweep
    from moesim.studies.sweep_config import load_sweep, points

    if args.workers < 1:
        raise ConfigError(f"--workers takes a count of at least 1, got {args.workers}", field="--workers")
    if args.ray is not None:
        from moesim.studies.sweep_ray import check_address

        check_address(args.ray)
    cfg, base = load_sweep(args.sweep)
    out = args.out or Path("runs") / cfg.name
    check_replaceable(out, "--out", args.force)
    cache = args.cache or out.parent / CACHE_NAME
    total = len(points(cfg))
    if not args.quiet:
        where = f"Ray ({args.ray})" if args.ray else f"{args.workers} worker(s)"
        print(f"sweep {cfg.name}: {total} points of {base.name}, {where}; cache {cache}",
              file=sys.stderr, flush=True)
    try:
        table = run_sweep(cfg, base, cache, args.workers, _progress(args.quiet), ray=args.ray)
    except KeyboardInterrupt:
        kept = len(list(Path(cache).glob("*.json"))) if Path(cache).is_dir() else 0
        interrupts.keep(f"{kept} finished point(s) in the sweep cache {cache} (rerun the same command to resume: "
                        "they are not simulated again)")
        raise
    failed = int((table["status"] != "ok").sum())
    with atomic_dir(out, command="sweep", force=args.force) as partial:
        table.to_parquet(partial / "sweep.parquet", index=False)
        table.to_csv(partial / "sweep.csv", index=False)
        facts = [("sweep file", str(args.sweep)), ("base config", str(base)),
                 ("axes", "; ".join(f"{k}: {len(v) if isinstance(v, list) else v}" for k, v in cfg.axes.items())),
                 ("points", f"{total} ({total - failed} finished, {failed} failed)"),
                 ("cache", str(cache)),
                 ("source", "every number simulated by moesim (a model output), one simulation per point")]
        write_points_report(table, partial, f"{cfg.name}: sweep (simulated)", facts, cfg.pareto.x, cfg.pareto.y)
        json_io.write(partial / "sweep_info.json", {"name": cfg.name, "points": total, "failed": failed,
                                               "cache": str(cache), "base": str(base)}, indent=2)
    if args.json:
        print(json_io.dumps(table.to_dict("records"), indent=2))
    elif not args.quiet:
        shown = [c for c in table.columns if "." in c] + ["status", cfg.pareto.y, "pareto"]
        print(table[[c for c in shown if c in table]].to_string(index=False))
        print(f"sweep folder: {out} ({failed} failed point(s))" if failed else f"sweep folder: {out}")
    return 0
