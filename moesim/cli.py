"""The `moesim` command line: thin subcommands over library functions (imports are lazy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from moesim.reports.terminal import print_summary
    from moesim.simulator.run import simulate, write_run_dir
    from moesim.simulator.scenario import load_scenario

    console = Console()
    scenario = load_scenario(args.config)
    if args.steps:
        scenario.config.workload.steps = args.steps
    with Progress(console=console, transient=True, disable=args.quiet) as bar:
        task = bar.add_task(f"simulating {scenario.name}", total=scenario.steps)
        result = simulate(scenario, progress=lambda s: bar.update(task, completed=s))
    run_dir = write_run_dir(result, args.out)
    if not args.quiet:
        print_summary(result, console)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from rich.console import Console

    from moesim.reports.terminal import print_profile, print_profile_list

    console = Console()
    if args.action == "list":
        print_profile_list(console)
    else:
        if not args.name:
            raise SystemExit("moesim profiles show NAME: give a device, link, cluster or model name")
        print_profile(args.name, console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from moesim import __version__

    parser = argparse.ArgumentParser(prog="moesim", description="Simulate Mixture-of-Experts systems.")
    parser.add_argument("--version", action="version", version=f"moesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="simulate a scenario config and write a run directory")
    sim.add_argument("config", type=Path)
    sim.add_argument("--out", type=Path, default=None, help="run directory (default: outputs.dir or runs/<name>)")
    sim.add_argument("--steps", type=int, default=None, help="override workload.steps")
    sim.add_argument("--quiet", action="store_true")
    sim.set_defaults(func=_simulate)
    prof = sub.add_parser("profiles", help="list or show bundled hardware profiles and models")
    prof.add_argument("action", choices=["list", "show"])
    prof.add_argument("name", nargs="?")
    prof.set_defaults(func=_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    from moesim.errors import MoesimError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MoesimError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
