"""`moesim recommend FILE`: the candidates of a serving deployment ranked by capacity per GPU within
the SLOs (studies/recommend.py), into one folder written atomically: recommend.csv and .parquet
(every candidate, pruned ones with the reason), best.yaml (the top ones with the command that
replays each at its capacity) and report.html/.md. Probes are cached as sweep points
(`.moesim-sweep-cache` beside the folder): an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from moesim.cli_sweep import CACHE_NAME, add_output_options


def add_parser(sub) -> None:
    rec = sub.add_parser("recommend", help="rank a serving deployment's configurations by capacity per GPU "
                                           "within TTFT/TPOT SLOs (bisection on the arrival rate)")
    rec.add_argument("file", type=Path, help="recommend YAML: base, axes, slo, load, top")
    rec.add_argument("--workers", type=int, default=1, metavar="N",
                     help="search N candidates at once in worker processes (default 1: in this process)")
    add_output_options(rec, "simulated probes", "the ranking")
    rec.set_defaults(func=run)


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def run(args: argparse.Namespace) -> int:
    from moesim import interrupts, json_io
    from moesim.outputs import atomic_dir, check_replaceable
    from moesim.reports.html_page import Table, write_page
    from moesim.studies.recommend import load_recommend, replay_command, run_recommend
    from moesim.studies.sweep_config import points

    from moesim.errors import ConfigError

    if args.workers < 1:
        raise ConfigError(f"--workers takes a count of at least 1, got {args.workers}", field="--workers")
    cfg, base = load_recommend(args.file)
    from moesim.studies.recommend import USERS, searched_load

    unit = "users" if searched_load(base) == USERS else "requests/s"
    out = args.out or Path("runs") / cfg.name
    check_replaceable(out, "--out", args.force)
    cache = args.cache or out.parent / CACHE_NAME
    show = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if show:
        show(f"recommend {cfg.name}: {len(points(cfg))} candidates of {base.name}, capacity searched in "
             f"{cfg.load.min:g}-{cfg.load.max:g} {unit}; cache {cache}")
    try:
        table = run_recommend(cfg, base, cache, progress=show, workers=args.workers)
    except KeyboardInterrupt:
        interrupts.keep(f"the probes simulated so far in the sweep cache {cache} (rerun the same command to "
                        "resume: they are not simulated again)")
        raise
    axes = list(cfg.axes)
    ok = table[(table["status"] == "ok") & table["capacity"].notna()] if "capacity" in table else table.iloc[:0]
    best = []
    for rank, (_, r) in enumerate(ok.head(cfg.top).iterrows(), 1):
        point = {a: (r[a].item() if hasattr(r[a], "item") else r[a]) for a in axes}
        best.append({"rank": rank, "config": point, "capacity": float(r["capacity"]), "capacity_unit": r["capacity_unit"],
                     "devices": int(r["devices"]), "capacity_per_device": float(r["capacity_per_device"]),
                     "at_top_of_range": bool(r["at_top_of_range"]), "limited_by": r["limited_by"],
                     "replay": replay_command(base, point, float(r["capacity"]))})
    with atomic_dir(out, command="recommend", force=args.force) as partial:
        table.to_csv(partial / "recommend.csv", index=False)
        table.to_parquet(partial / "recommend.parquet", index=False)
        (partial / "best.yaml").write_text(yaml.safe_dump({"slo": cfg.slo.model_dump(exclude_none=True),
                                                           "best": best}, sort_keys=False))
        cols = axes + [c for c in ("status", "devices", "capacity", "capacity_unit", "capacity_per_device",
                                   "limited_by", "reason") if c in table]
        facts = [("base config", str(base)), ("SLO", ", ".join(f"{k} <= {v:g} s" for k, v in
                                                               cfg.slo.model_dump(exclude_none=True).items())),
                 ("load searched", f"{cfg.load.min:g}-{cfg.load.max:g} {unit}, bisection to "
                                   f"{cfg.load.tolerance:.0%}"),
                 ("ranking", f"capacity per device ({unit} per GPU within the SLOs), then capacity"),
                 ("source", "every number simulated by moesim (a model output); probes cached in " + str(cache))]
        write_page(partial, "report", f"{cfg.name}: recommended configurations (simulated)", facts,
                   [("h2", "Candidates, best first"),
                    ("table", Table(cols, [[_cell(r.get(c)) for c in cols] for _, r in table.iterrows()]))])
    if args.json:
        print(json_io.dumps(best, indent=2))
    elif not args.quiet:
        if not best and not (table["status"] == "ok").any():
            print("every candidate was pruned before simulating (recommend.csv says why: memory, parallelism, ...)")
        elif not best:
            print("no candidate meets the SLOs even at the lowest load searched (load.min)")
        for b in best:
            why = f"; above it: {b['limited_by']}" if b["limited_by"] else " (the top of the range: it may carry more)"
            print(f"{b['rank']}. {b['config']}: {b['capacity']:.3g} {b['capacity_unit']} on {b['devices']} "
                  f"devices ({b['capacity_per_device']:.3g} per device){why}")
        print(f"recommend folder: {out} (best.yaml has the replay commands)")
    return 0

