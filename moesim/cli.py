"""The `moesim` command line: thin subcommands over library functions (imports are lazy)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _at_least(low: int):
    """argparse type: a whole number >= low (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _finite_float(low: float, strict: bool):
    """argparse type: a finite number > low (strict) or >= low."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        ok = value > low if strict else value >= low
        if not ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


_positive_float = _finite_float(0.0, strict=True)
_non_negative_float = _finite_float(0.0, strict=False)


def _out_file(path: Path | None, option: str, suffixes: tuple[str, ...] = (), force: bool = False) -> Path | None:
    """Check a file to be written: not a folder, its folder writable, the suffix one we write, not
    an input of the command, and not there yet unless --force."""
    from moesim.errors import ConfigError
    from moesim.outputs import check_file_target

    if path is None:
        return None
    if suffixes and path.suffix not in suffixes:
        raise ConfigError(f"{path} must end in {' or '.join(suffixes)}", field=option)
    check_file_target(path, option, force)
    return path


def _out_dir(path: Path | str | None, option: str = "--out", force: bool = False) -> Path | None:
    """Check an output folder before any work: writable, and new, empty or (with --force) moesim's."""
    from moesim.outputs import check_replaceable

    if path is None:
        return None
    check_replaceable(Path(path), option, force)
    return Path(path)


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set FIELD=VALUE items, plus --steps as workload.steps (validated with the file)."""
    items = list(getattr(args, "set", None) or [])
    steps = getattr(args, "steps_override", None)
    if steps is not None:
        items.append(f"workload.steps={steps}")
    return items


def _run_dir_for(args: argparse.Namespace, scenario, console, suffix: str = "") -> Path:
    """Where a run goes: --out (refused if it holds files, unless --force and moesim wrote them),
    else the default runs/<name>, moving on to a free name when an earlier run is there."""
    from moesim.outputs import free_name, holds_files
    from moesim.simulator.run import default_run_dir

    out = _out_dir(args.out, force=args.force)
    if out is None:
        out = default_run_dir(scenario)
        out = out.with_name(out.name + suffix)
        if holds_files(out) and not args.force:
            taken, out = out, free_name(out)
            if not args.quiet:
                console.print(f"{taken} holds files (an earlier run?): writing {out} (--force replaces a run there)")
        _out_dir(out, "outputs.dir" if scenario.config.outputs.dir else "--out", force=args.force)
    return out


def _simulate(args: argparse.Namespace) -> int:
    from moesim.reports.terminal import console_for
    from moesim.simulator.run import write_run_dir
    from moesim.simulator.scenario import load_scenario

    console = console_for(stderr=args.json)  # with --json, stdout carries only the JSON
    overrides = _overrides(args)
    if args.load:
        if args.vllm_json:
            from moesim.errors import ConfigError

            raise ConfigError("--vllm-json writes the results of one serving run; with --load, run each load on "
                              "its own (--set serving.users=N or serving.arrivals.rate=R)", field="--vllm-json")
        return _sweep(args, overrides, console)
    scenario = load_scenario(args.config, overrides)
    if args.vllm_json:
        _vllm_json_target(args, scenario)
    out = _run_dir_for(args, scenario, console)
    result = _simulated(args, scenario, console)
    run_dir = write_run_dir(result, out, force=args.force, overrides=overrides, keep="the run directory")
    if args.vllm_json:
        _write_vllm_json(args, run_dir)
    if args.json:
        from moesim import json_io

        print(json_io.dumps({"name": scenario.name, "run_dir": str(run_dir), "metrics": result.summary}, indent=2))
    elif not args.quiet:
        from moesim.reports.terminal import print_serving_summary, print_summary

        (print_serving_summary if result.requests is not None else print_summary)(result, console)
    if not args.quiet:
        console.print(f"run directory: [bold]{run_dir}[/bold]")
        if args.vllm_json:
            console.print(f"vLLM benchmark JSON (simulated): [bold]{args.vllm_json}[/bold]")
    if args.report:
        page = _run_report(run_dir, None)
        if not args.quiet:
            console.print(f"report: [bold]{page}[/bold]")
    return 0


def _vllm_json_target(args: argparse.Namespace, scenario) -> None:
    """--vllm-json: a serving run, and a .json file that may be written (before simulating)."""
    from moesim.errors import ConfigError

    if scenario.config.serving is None:
        raise ConfigError("--vllm-json writes a serving run's results in vLLM's serving-benchmark layout; this "
                          "config has a fixed-batch workload (give a config with a serving: section)",
                          field="--vllm-json")
    _out_file(args.vllm_json, "--vllm-json", (".json",), args.force)


def _write_vllm_json(args: argparse.Namespace, run_dir: Path) -> None:
    """The run's results as vLLM's `vllm bench serve --save-result --save-detailed` JSON (simulated)."""
    from moesim import json_io
    from moesim.outputs import atomic_file
    from moesim.simulator.serving.vllm_export import vllm_result_from_run

    data = vllm_result_from_run(run_dir)
    with atomic_file(args.vllm_json, option="--vllm-json", force=args.force, keep="the vLLM benchmark JSON") as tmp:
        json_io.write(tmp, data)


def _simulated(args: argparse.Namespace, scenario, console):
    """Estimate (refusing a run that would not fit in memory) and simulate with progress."""
    from moesim import interrupts
    from moesim.reports.terminal import step_progress
    from moesim.simulator.run import simulate
    from moesim.simulator.run_estimate import check_fits, estimate_run

    serving = scenario.config.serving
    if serving is None:
        estimate = estimate_run(scenario)
        check_fits(scenario, estimate)
        total, unit = scenario.steps, "steps"
        if not args.quiet:
            console.print(f"{scenario.name}: {scenario.steps} steps, {estimate.describe()}")
    else:
        from moesim.simulator.serving.source import request_table

        total, unit = len(request_table(serving, scenario.seed, scenario.source.base_dir)), "requests"
        if not args.quiet:
            console.print(f"{scenario.name}: serving {total:,} requests")
    mode = "none" if args.quiet else args.progress
    with step_progress(console, mode, total, f"simulating {scenario.name}", unit) as progress:
        result = simulate(scenario, progress=progress)
    interrupts.check()  # a signal that landed in a SimPy process may have been turned into a failed event
    return result


def _run_report(run_dir: Path, out: Path | None, force: bool = True) -> Path:
    """The HTML/Markdown report of a run, written atomically (RUN_DIR/report by default)."""
    from moesim.outputs import atomic_dir
    from moesim.reports.run_report import write_run_report

    target = Path(out) if out is not None else Path(run_dir) / "report"
    with atomic_dir(target, command="report", force=force, keep="the report") as partial:
        page = write_run_report(run_dir, partial)
    return target / page.relative_to(partial)


def _sweep_points(loads: list[float], closed: bool) -> list[tuple[str, str, str]]:
    """(label, --set item, folder name) of every point of a load sweep, in load order."""
    points = []
    for x in loads:
        label, item = (f"users={int(x)}", f"serving.users={int(x)}") if closed else \
            (f"rate={x:g}/s", f"serving.arrivals.rate={x:g}")
        points.append((label, item, label.replace("/", "-per-")))
    return points


def _sweep(args: argparse.Namespace, overrides: list[str], console) -> int:
    """--load A,B,C: a sweep (studies/sweep.py) of one axis, the load (closed loop: users; open
    loop: arrival rate), each point run once and cached with its run directory, then a
    throughput-latency report over them, all in one folder written atomically. An interrupted
    sweep writes no folder: its finished points stay in the sweep cache and the same command
    resumes with only the rest; a point that fails is recorded and left out of the report."""
    import shutil

    from moesim import interrupts, json_io
    from moesim.cli_sweep import CACHE_NAME, _progress
    from moesim.errors import ConfigError, MoesimError
    from moesim.outputs import atomic_dir
    from moesim.reports.sweep_report import sweep_table, write_sweep_report
    from moesim.simulator.scenario import load_scenario
    from moesim.studies.sweep import SweepCache, run_sweep
    from moesim.studies.sweep_config import SweepConfig

    try:
        loads = [float(x) for x in args.load.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"'{args.load}' is not a comma-separated list of numbers", field="--load") from None
    if not loads or any(not (x > 0) or x == float("inf") for x in loads):
        raise ConfigError(f"give positive loads, e.g. --load 1,4,16,64 (got '{args.load}')", field="--load")
    base = load_scenario(args.config, overrides)
    serving = base.config.serving
    if serving is None:
        raise ConfigError("--load sweeps a serving config (a serving: section); this config has a fixed-batch "
                          "workload", field="--load")
    closed = serving.users is not None
    if closed and any(x != int(x) for x in loads):
        raise ConfigError("a closed loop sweeps whole numbers of users", field="--load")
    points = _sweep_points(loads, closed)
    for _, item, _ in points:  # every point validates first: a load the config refuses is an error, not a point
        load_scenario(args.config, overrides + [item])
    field = "serving.users" if closed else "serving.arrivals.rate"
    values = [int(x) for x in loads] if closed else [float(f"{x:g}") for x in loads]
    cfg = SweepConfig(base=str(args.config), axes={field: values})
    root = _run_dir_for(args, base, console, "-sweep")
    cache = root.parent / CACHE_NAME
    quiet = args.quiet or args.progress == "none"
    if not args.quiet:
        console.print(f"{base.name}: load sweep of {len(points)} points ({field}); cache {cache}")
    try:
        table = run_sweep(cfg, Path(args.config), cache, progress=_progress(quiet), extra=overrides,
                          relative_to="cwd", keep_runs=True)
    except KeyboardInterrupt:
        interrupts.keep(f"the load sweep's finished points, with their run directories, in the sweep cache {cache} "
                        "(rerun the same command to resume: they are not simulated again)")
        raise
    ok = table["status"] == "ok"
    if not ok.any():
        raise MoesimError(f"no point of the load sweep ran; the first says: {table['error'].iloc[0]}")
    runs = SweepCache(cache)
    with atomic_dir(root, command="simulate --load", force=args.force, keep="the sweep") as partial:
        for (label, _, folder), key, good in zip(points, table["key"], ok):
            if good:
                shutil.copytree(runs.run_dir(key), partial / folder)
        done = [(label, folder) for (label, _, folder), good in zip(points, ok) if good]
        shown = [(label, root / folder) for label, folder in done]
        write_sweep_report([(label, partial / folder) for label, folder in done], partial,
                           f"{base.name}: throughput against latency (simulated)", shown=shown)
        json_io.write(partial / "sweep.json", {"status": "complete", "loads": [p[0] for p in points],
                                                "finished": [label for label, _ in done],
                                                "failed": {p[0]: e for p, e, good in zip(points, table["error"], ok)
                                                           if not good},
                                                "cache": str(cache)}, indent=2)
    if not ok.all() and not args.quiet:
        for (label, _, _), err, good in zip(points, table["error"], ok):
            if not good:
                console.print(f"[yellow]point {label} failed:[/yellow] {err}")
    points = [p for p, good in zip(points, ok) if good]
    table = sweep_table([(label, root / folder) for label, _, folder in points])
    page = root / "report.html"
    if args.json:
        print(json_io.dumps({"name": base.name, "sweep_dir": str(root), "points": table.to_dict("records")}, indent=2))
    elif not args.quiet:
        from moesim.reports.terminal import print_sweep_table

        print_sweep_table(table, f"{base.name}: load sweep (simulated)", console)
        console.print(f"sweep report: [bold]{page}[/bold]")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from moesim.simulator.scenario import load_scenario

    sc = load_scenario(args.config, _overrides(args))  # resolves too: the model, cluster and placement must load
    cfg = sc.config.as_written()
    head = [f"# {sc.name}: resolved config of {args.config} with every default filled in"]
    if sc.source.overrides:
        head.append("# overrides: " + ", ".join(sc.source.overrides))
    head.append(f"# model {sc.model.name}, cluster {sc.cluster.name} ({sc.num_devices} x {sc.device.name}), "
                f"ep={sc.ep} tp={sc.tp} dp={sc.dp} moe_tp={sc.moe_tp}")
    sys.stdout.write("\n".join(head) + "\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False))
    return 0


def _report(args: argparse.Namespace) -> int:
    from moesim.outputs import atomic_dir
    from moesim.reports.terminal import console_for
    from moesim.simulator.run import check_run_dir

    console = console_for()
    for run in args.runs:
        check_run_dir(run)
    if len(args.runs) == 1:
        # RUN_DIR/report is the report's own folder: rewriting it needs no --force
        page = _run_report(args.runs[0], args.out, force=args.force or args.out is None)
    else:
        from moesim.reports.compare_report import write_comparison_report

        out = args.out or Path("runs") / ("compare-" + "-vs-".join(Path(r).name for r in args.runs))[:120]
        with atomic_dir(out, command="report", force=args.force or args.out is None, keep="the report") as partial:
            page = out / write_comparison_report(args.runs, partial).relative_to(partial)
        from rich.markup import escape

        from moesim.reports.compare_guard import warning_for_dirs

        if (warning := warning_for_dirs(args.runs)) is not None:
            console.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}", highlight=False)
    console.print(f"report: [bold]{page}[/bold]")
    return 0


def _place(args: argparse.Namespace) -> int:
    from moesim.reports.terminal import console_for, status

    from moesim.errors import ConfigError
    from moesim.outputs import atomic_dir
    from moesim.placement.ilp import IlpOptions
    from moesim.placement.methods import METHODS
    from moesim.reports.terminal import print_placement_table
    from moesim.studies.placement_study import run_study, write_study
    from moesim.simulator.scenario import load_scenario

    console = console_for()
    overrides = list(args.set or []) + ([f"workload.steps={args.steps_sim}"] if args.steps_sim else [])
    if args.loads:  # measured expert loads replace the config's routing (placement and --simulate alike)
        import json

        from moesim.yaml_io import resolve_lenient

        files = [str(resolve_lenient(f)) for f in args.loads]  # a symlink loop is reported by the reader
        overrides += ["workload.routing.generator=load_matrix", f"workload.routing.loads={json.dumps(files)}"]
    try:
        scenario = load_scenario(args.config, overrides)
    except ConfigError as err:
        if args.loads and err.file in files:
            raise err.given_by("--loads") from None
        raise
    out = args.out or Path("runs") / f"{scenario.name}-placement"
    force = args.force or args.out is None  # the default folder is moesim's own: rewritten without --force
    _out_dir(out, force=force)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown placement method(s) {unknown}; choose from {', '.join(METHODS)}", field="--methods")
    opts = IlpOptions(solver=args.solver, time_limit=args.time_limit, traffic_weight=args.traffic_weight,
                      decomposition=args.decomposition)
    try:
        with status(console, "placing") as update:
            study = run_study(scenario, methods, steps=args.steps, redundant=args.redundant, slots=args.slots,
                              time_model=args.objective, options=opts, simulate=args.simulate, progress=update)
    except ValueError as err:
        raise ConfigError(f"cannot place experts for {args.config}: {err}") from None
    rebalance = _rebalance_verdicts(args, study) if args.rebalance_from else None
    with atomic_dir(out, command="place", force=force, keep="the placement folder") as partial:
        write_study(study, partial)
        if rebalance is not None:
            rebalance.to_csv(partial / "rebalance.csv", index=False)
        if args.report:
            from moesim.reports.placement_report import write_placement_report

            page = out / write_placement_report(study, partial).relative_to(partial)
    print_placement_table(study, console)
    if rebalance is not None:
        from moesim.reports.terminal import print_rebalance_table

        console.print(f"rebalance from {args.rebalance_from} over {args.horizon_steps} steps "
                      "(placements renamed to keep copies in place):")
        print_rebalance_table(rebalance, console)
    if args.report:
        console.print(f"report: [bold]{page}[/bold]")
    console.print(f"placement files and methods.csv in [bold]{out}[/bold] (use with `placement: {{file: "
                  f"{Path(out, 'placement.yaml').resolve()}}}`; a relative path there resolves against the config "
                  "file's folder)")
    return 0


def _rebalance_verdicts(args: argparse.Namespace, study):
    """The rebalance rule's verdict for every method against the placement file in force."""
    from moesim.errors import ConfigError
    from moesim.placement.placement import load_placement_file
    from moesim.studies.placement_rebalance import rebalance_from

    p = study.problem
    try:
        current = load_placement_file(args.rebalance_from, p.num_experts, p.num_devices, p.num_layers)
    except ConfigError as err:
        raise err.given_by("--rebalance-from") from None
    try:
        return rebalance_from(study, current, args.horizon_steps)
    except ValueError as err:
        raise ConfigError(str(err), file=args.rebalance_from, field="--rebalance-from") from None


def _roofline(args: argparse.Namespace) -> int:
    from moesim.reports.terminal import console_for

    from moesim.errors import ConfigError
    from moesim.hardware_profiles import load_device
    from moesim.reports.roofline_plots import load_measured, write_roofline
    from moesim.reports.terminal import print_roofline
    from moesim.simulator.cost_model import CostModel
    from moesim.simulator.ops import act_dtype, gemm_dtype
    from moesim.simulator.roofline import (StepOutOfRange, device_roof, expert_sweep, model_roofline, ridge_tokens,
                                           scenario_roofline)
    from moesim.simulator.compose import routing_generator
    from moesim.simulator.scenario import load_scenario
    from moesim.workloads import load_model
    import pandas as pd

    console = console_for()
    _out_dir(args.out, force=args.force)
    try:
        extra = [load_device(d) for d in args.device]
    except ConfigError as err:
        raise err.given_by("--device") from None
    if args.config:
        sc = load_scenario(args.config, list(args.set or []))
        model, devices = sc.model, [sc.device] + [d for d in extra if d.name != sc.device.name]
        _check_layer(args.layer, model)
        if args.rank >= sc.num_devices:
            raise ConfigError(f"device {args.rank} does not exist: {sc.cluster.name} has devices 0..{sc.num_devices - 1}",
                              field="--rank")
        if args.step >= sc.steps and routing_generator(sc.config.workload.routing.generator).replays_trace \
                and not sc.config.workload.routing.repeat:
            raise ConfigError(f"step {args.step} is past the scenario's {sc.steps} steps", field="--step")
        try:
            rows = scenario_roofline(sc, args.layer, args.step, args.rank, others=devices[1:])
        except StepOutOfRange as err:
            raise ConfigError(str(err), field="--step") from None
        # the node's other units are drawn too (scenario_roofline costs the layer on each of them)
        devices += [u.device for u in sc.machine.units.values()
                    if not u.is_accelerator and u.device.name not in {d.name for d in devices}]
        weight = float(sc.precision.expert_bytes().max()) if not sc.precision.uniform_native else None
        name = sc.name
        facts = [("scenario", f"{sc.name}: {model.name} on {sc.cluster.name} (ep={sc.ep}, tp={sc.tp}, dp={sc.dp})"),
                 ("layer", f"{int(rows['layer'].iloc[0])} at step {args.step}, device {args.rank} "
                           f"({sc.config.workload.phase})")]
    else:
        if not args.model:
            raise ConfigError("give a scenario config, or --model with one or more --device", field="--model")
        try:
            model = load_model(args.model)
        except ConfigError as err:
            raise err.given_by("--model") from None
        _check_layer(args.layer, model)
        devices = extra or [load_device("H100-SXM")]
        phases = ["prefill", "decode"] if args.phase == "both" else [args.phase]
        rows = model_roofline(model, devices, phases, args.batch, args.seq_len, args.kv_len, args.layer)
        weight, name = None, f"{model.name}"
        facts = [("model", model.name), ("workload", f"batch {args.batch}; prefill {args.seq_len} tokens per "
                                                     f"sequence; decode with {args.kv_len} cached")]
    facts.append(("source", "model (the engine's cost function on the datasheet profiles)"
                  + ("; crosses are measured points from " + str(args.measured) if args.measured else "")))
    roofs = {}
    for spec in devices:
        cost = CostModel(spec)
        roofs[spec.name] = device_roof(cost, gemm_dtype(model.routed_expert_dtype, cost.dtypes, act_dtype(model)))
    sweep = expert_sweep(model, devices, weight_bytes=weight)
    ridges = ridge_tokens(sweep)
    frames = [load_measured(args.measured)] if args.measured else []
    for spec in devices:  # a calibrated profile brings its own measurements
        if spec.calibration is not None and spec.calibration.measurements:
            frames.append(load_measured(spec.calibration.measurements, spec.name))
    measured = pd.concat(frames, ignore_index=True) if frames else None
    if frames and not args.measured:
        facts.append(("measured points", "from the calibrated profile(s): "
                      + ", ".join(s.name for s in devices if s.calibration is not None)))
    actual = rows.loc[(rows["group"] == "routed expert") & (rows["device"] == devices[0].name), "tokens"].to_numpy()
    out = Path(args.out) if args.out else Path("runs") / f"roofline-{name}"
    from moesim.outputs import atomic_dir

    with atomic_dir(out, command="roofline", force=args.force or not args.out, keep="the roofline folder") as partial:
        page = out / write_roofline(rows, sweep, ridges, roofs, partial, f"Roofline: {name}", facts, measured,
                                    actual).relative_to(partial)
    print_roofline(rows, ridges, console)
    console.print(f"roofline charts and tables: [bold]{page.parent}[/bold]")
    return 0


def _check_layer(layer: int | None, model) -> None:
    from moesim.errors import ConfigError

    if layer is not None and layer >= model.num_layers:
        raise ConfigError(f"layer {layer} does not exist: {model.name} has layers 0..{model.num_layers - 1}",
                          field="--layer")


def _calibrate(args: argparse.Namespace) -> int:
    if args.from_nccl_tests:
        return _calibrate_links(args)
    from moesim.errors import MoesimError
    from moesim.reports.terminal import console_for

    try:
        import moesim.validation.calibrate  # noqa: F401 - torch must be there
    except ImportError as err:
        raise MoesimError(f"moesim calibrate needs the calibrate extra ({err}); install it with "
                          "pip install torch==2.13.0 && pip install -e \".[calibrate]\"") from None
    from moesim.errors import ConfigError

    if args.device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{args.device}'; choose cpu or cuda", field="--device")
    console = console_for()
    models = []
    for name in args.model:
        from moesim.workloads import load_model

        try:
            models.append(load_model(name))
        except ConfigError as err:
            raise err.given_by("--model") from None
    default = f"calibrate-{args.device}-{args.size}" if not args.from_table else f"calibrate-{Path(args.from_table).stem}"
    out = Path(args.out) if args.out else Path("runs") / default
    force = args.force or args.out is None
    _out_dir(out, force=force)
    cal = _calibrated(args, console, models, out, force)
    from moesim.reports.terminal import print_calibration_errors

    print_calibration_errors(cal, console)
    verdict = getattr(cal, "verdict", "")
    if verdict:
        console.print(f"[bold]verdict[/bold]: {verdict}")
    for w in getattr(cal, "warnings", []) or []:
        console.print(f"[bold yellow]warning[/bold yellow]: {w}")
    console.print(f"calibrated profile: [bold]{out / (cal.profile.name + '.yaml')}[/bold]; "
                  f"report: [bold]{out / 'report.html'}[/bold]")
    return 0


def _calibrated(args: argparse.Namespace, console, models: list, out: Path, force: bool):
    """Fit (from a table) or measure and fit, writing the calibration folder atomically. An
    interrupted measurement keeps its streamed rows (in a new folder only) and says so."""
    from moesim import interrupts
    from moesim.outputs import atomic_dir, holds_files
    from moesim.reports.calibration_report import write_calibration_report
    from moesim.reports.terminal import status

    earlier = holds_files(out)
    stopped: KeyboardInterrupt | None = None
    with atomic_dir(out, command="calibrate", force=force,
                    keep=lambda: None if stopped else "the calibration folder") as partial:
        if args.from_table:
            from moesim.validation.from_table import calibrate_from_table

            with status(console, f"fitting {args.from_table}"):
                cal = calibrate_from_table(args.from_table, args.profile, partial)
        else:
            from moesim.validation.calibrate import run_calibration

            try:
                with status(console, "measuring") as update:
                    cal = run_calibration(args.device, args.size, args.dtype, args.profile, partial,
                                          progress=lambda msg: update(f"measuring {msg}"), threads=args.threads,
                                          models=models or None)
            except KeyboardInterrupt as err:
                rows = partial / "measurements.partial.csv"
                if earlier or not rows.exists():
                    raise
                stopped = err
                n = max(sum(1 for _ in rows.open()) - 1, 0)
                interrupts.keep(f"{n} measured rows in {out / rows.name} (no profile was fitted)")
        if stopped is None:
            write_calibration_report(cal)
    if stopped is not None:
        raise stopped
    return cal


def _calibrate_links(args: argparse.Namespace) -> int:
    """`moesim calibrate --from-nccl-tests LOG...`: latency and bandwidth per collective."""
    import pandas as pd

    from moesim import json_io
    from moesim.errors import ConfigError
    from moesim.validation.nccl_tests import fit_collectives, parse_nccl_tests, read_nccl_log, usable_rows

    frames = []
    for path in args.from_nccl_tests:
        try:
            text = read_nccl_log(path)
        except ConfigError as err:  # missing, a folder, a symlink loop, binary
            raise err.given_by("--from-nccl-tests") from None
        df = parse_nccl_tests(text)
        if not usable_rows(df).any():
            raise ConfigError(f"{path} holds no nccl-tests result rows (size, count, type, time, algbw, busbw) with "
                              "a positive time and size", field="--from-nccl-tests")
        frames.append(df)
    fits = fit_collectives(pd.concat(frames, ignore_index=True))
    print(json_io.dumps(fits, indent=2))
    if args.profile:  # write the fitted comm kernel costs into a variant of that cluster profile
        import datetime

        import yaml

        from moesim.validation.nccl_tests import cluster_with_fits, log_hosts

        multi = any(log_hosts(Path(p).read_text()) > 1 for p in args.from_nccl_tests)
        try:
            data, warnings = cluster_with_fits(args.profile, fits, [Path(p).name for p in args.from_nccl_tests], multi,
                                               datetime.date.today().isoformat())
        except ValueError as err:
            raise ConfigError(str(err), field="--profile") from None
        from moesim.outputs import atomic_dir

        out = Path(args.out) if args.out else Path("runs") / "calibrate-nccl"
        with atomic_dir(out, command="calibrate --from-nccl-tests", force=args.force or not args.out,
                        keep="the calibration folder") as partial:
            (partial / f"{data['name']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        path = out / f"{data['name']}.yaml"
        for w in warnings:
            print(f"warning: {w}")
        print(f"cluster profile with the fitted collective costs: {path} (use it as hardware.cluster)")
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from moesim.errors import ConfigError
    from moesim.reports.terminal import console_for, print_profile, print_profile_list

    if args.action == "list":
        print_profile_list(console_for())
    else:
        if not args.name:
            raise ConfigError("give a device, link, cluster or model name: moesim profiles show NAME", field="NAME")
        print_profile(args.name)
    return 0


def _trace_model(name: str | None):
    from moesim.workloads import load_model

    return load_model(name) if name else None


def _trace_stats(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from moesim.reports.terminal import console_for, print_trace_stats
    from moesim.workloads.trace_reader import open_trace
    from moesim.workloads.trace_stats import compute_stats, tally

    console = console_for()
    _out_dir(args.out, force=args.force)
    if args.html is not None:
        from moesim.reports.trace_stats_page import check_html_target

        check_html_target(args.html, args.force, args.out)
    trace = open_trace(args.file, _trace_model(args.model))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"reading {args.file.name}", total=trace.num_rows)
        t = tally(trace, args.max_steps, progress=lambda steps, rows: bar.update(task, completed=rows))
    stats = compute_stats(t, args.devices)
    print_trace_stats(stats.summary, console)
    if args.out:
        from moesim.outputs import atomic_dir
        from moesim.reports.trace_plots import write_stats_dir
        from moesim.reports.trace_stats_page import write_stats_pages

        with atomic_dir(args.out, command="trace stats", force=args.force, keep="the statistics folder") as partial:
            files = write_stats_dir(stats, t, partial)
            files += write_stats_pages(stats, args.file.name, partial)
        console.print(f"wrote {len(files)} files to [bold]{args.out}[/bold]")
    if args.html is not None:
        from moesim.outputs import atomic_file
        from moesim.reports.trace_stats_page import write_stats_html

        with atomic_file(args.html, option="--html", force=args.force, keep="the statistics page") as tmp:
            write_stats_html(stats, t, args.file.name, tmp, args.out / "stats.html" if args.out else None)
        console.print(f"wrote [bold]{args.html}[/bold]")
    return 0


def _trace_fit(args: argparse.Namespace) -> int:
    import yaml

    from moesim import json_io
    from moesim.workloads.trace_fit import fit_routing_model
    from moesim.workloads.trace_reader import open_trace
    from moesim.workloads.trace_stats import tally

    from moesim.outputs import atomic_file, note_input

    note_input(args.file)
    out = args.out or args.file.with_suffix(".generator.yaml")
    first = "# Routing generator fitted by `moesim trace fit`"
    force = args.force or (args.out is None and _first_line(out).startswith(first))  # our own default: rewritten
    _out_file(out, "--out", (".yaml", ".yml"), force)
    trace = open_trace(args.file, _trace_model(args.model))
    cfg, report = fit_routing_model(tally(trace, args.max_steps), source=str(args.file), seed=args.seed)
    header = (f"{first} (estimates from the trace; see\n"
              f"# workloads/trace_fit.py). Use as workload.routing: {{generator: synthetic, synthetic: {out.name}}}\n")
    with atomic_file(out, force=force, keep="the generator") as tmp:
        tmp.write_text(header + yaml.safe_dump({"synthetic": cfg.model_dump(exclude_none=True, exclude_defaults=True)},
                                               sort_keys=False, default_flow_style=None, width=120))
    print(json_io.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def _first_line(path: Path) -> str:
    """The first line of a text file moesim may have written, or "" (missing, unreadable, binary)."""
    from moesim.outputs import reading_own_output

    try:
        with reading_own_output(), open(path, encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def _trace_synth(args: argparse.Namespace) -> int:
    from moesim.errors import ConfigError
    from moesim.workloads import load_model
    from moesim.workloads.synthetic_routing import load_routing_model
    from moesim.workloads.trace_synth import synthesize_trace

    from moesim.outputs import atomic_file, note_input

    note_input(args.generator)
    _out_file(args.out, "--out", (".parquet",), args.force)
    try:
        model = load_model(args.model)
    except ConfigError as err:
        raise err.given_by("--model") from None
    cfg = load_routing_model(args.generator)
    with atomic_file(args.out, force=args.force, keep="the trace") as tmp:
        synthesize_trace(tmp, cfg, len(model.moe_layers), model.moe.num_experts, model.moe.top_k,
                         [args.tokens] * args.sources, args.steps, args.seed, model.name, args.source_kind)
    print(f"wrote {args.out}")
    return 0


def _trace_convert(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from moesim.workloads.trace_format import write_trace
    from moesim.workloads.trace_reader import open_trace

    from moesim.outputs import atomic_file, note_input

    note_input(args.file)
    _out_file(args.out, "OUT", (".parquet",), args.force)
    trace = open_trace(args.file, _trace_model(args.model), num_sources=args.sources, source_kind=args.source_kind)
    with atomic_file(args.out, option="OUT", force=args.force, keep="the trace") as tmp:
        if args.sort:
            import pyarrow.compute as pc

            table = trace.to_table()
            table = table.take(pc.sort_indices(table, [("step", "ascending"), ("moe_layer", "ascending"),
                                                       ("token", "ascending")]))
            pq.write_table(table, tmp)
            n = sum(1 for _ in open_trace(tmp, _trace_model(args.model)).steps())
        else:
            n = 0

            def counted():
                nonlocal n
                for rows in trace.steps():
                    n += 1
                    yield rows

            write_trace(tmp, trace.meta, counted())
    print(f"wrote {args.out}: {n} steps, checked against the model" if args.model else f"wrote {args.out}: {n} steps")
    return 0


def _requests(args: argparse.Namespace) -> int:
    from moesim import json_io
    from moesim.workloads.arrivals import describe_requests, generate_requests, load_requests_config

    from moesim.outputs import atomic_file, note_input

    note_input(args.config)
    _out_file(args.out, "--out", (".csv", ".parquet"), args.force)
    cfg = load_requests_config(args.config)
    df = generate_requests(cfg, args.seed, base_dir=args.config.parent)
    print(json_io.dumps(describe_requests(df), indent=2))
    if args.out:
        with atomic_file(args.out, force=args.force, keep="the requests") as tmp:
            df.to_csv(tmp, index=False) if args.out.suffix == ".csv" else df.to_parquet(tmp, index=False)
        print(f"wrote {args.out}")
    return 0


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set workload.batch_size=64 (repeatable; validated "
                             "like the file and recorded in the run)")


def build_parser() -> argparse.ArgumentParser:
    from moesim import __version__

    parser = argparse.ArgumentParser(prog="moesim", description="Simulate Mixture-of-Experts systems.")
    parser.add_argument("--version", action="version", version=f"moesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="simulate a scenario config and write a run directory")
    sim.add_argument("config", type=Path)
    sim.add_argument("--out", type=Path, default=None, help="run directory (default: outputs.dir or runs/<name>; "
                     "an existing default one gets a free name -2, -3, ...)")
    sim.add_argument("--force", action="store_true", help="replace an existing run directory")
    sim.add_argument("--steps", dest="steps_override", type=_at_least(1), default=None, metavar="N",
                     help="override workload.steps (same as --set workload.steps=N)")
    _add_set(sim)
    sim.add_argument("--progress", choices=["auto", "bar", "plain", "none"], default="auto",
                     help="auto: a bar in a terminal, a line every ~10%% otherwise")
    sim.add_argument("--quiet", action="store_true", help="print nothing but errors (and --json)")
    sim.add_argument("--json", action="store_true", help="print the headline metrics as JSON on stdout")
    sim.add_argument("--report", action="store_true", help="also write the HTML/Markdown run report (RUN_DIR/report)")
    sim.add_argument("--vllm-json", type=Path, default=None, metavar="PATH",
                     help="serving: also write the results as vLLM's serving-benchmark JSON (vllm bench serve "
                          "--save-result --save-detailed layout, backend moesim-simulated)")
    sim.add_argument("--load", default=None, metavar="A,B,...",
                     help="serving: one run per load (closed loop: users; open loop: requests/s) and a "
                          "throughput-latency report over them")
    sim.set_defaults(func=_simulate)

    cfg = sub.add_parser("config", help="show a scenario config as resolved, every default filled in")
    cfg.add_argument("action", choices=["show"])
    cfg.add_argument("config", type=Path)
    _add_set(cfg)
    cfg.set_defaults(func=_config_show)

    rep = sub.add_parser("report", help="HTML/Markdown report of a run directory, or a comparison of several")
    rep.add_argument("runs", nargs="+", type=Path, help="run directories written by `moesim simulate`")
    rep.add_argument("--out", type=Path, default=None,
                     help="output folder (default RUN_DIR/report, or runs/compare-... for several runs)")
    rep.add_argument("--force", action="store_true", help="replace an existing --out folder that moesim wrote")
    rep.set_defaults(func=_report)
    place = sub.add_parser("place", help="expert placement: ILP and baselines on a scenario's routing")
    place.add_argument("config", type=Path, help="scenario config: model, cluster, parallelism, routing")
    place.add_argument("--methods", default="contiguous,round_robin,random,eplb,eplb_hierarchical,ilp_load,ilp",
                       help="comma-separated: contiguous, round_robin, random, eplb, eplb_hierarchical, ilp, "
                            "ilp_load, ilp_affinity, ilp_robust, ilp_joint")
    place.add_argument("--steps", type=_at_least(1), default=16, help="routing steps the placement is fitted on")
    place.add_argument("--loads", nargs="+", type=Path, default=None, metavar="FILE",
                       help="measured expert loads (layers x experts: .csv, .npy, .parquet, SGLang/vLLM .json or "
                       ".pt; several files = windows in order) replace the config's routing; the load is the "
                       "windows' mean")
    place.add_argument("--redundant", type=_at_least(0), default=0,
                       help="expert copies beyond one each (EPLB's redundant experts); at least what fills "
                            "every device's slots when ep does not divide the experts")
    place.add_argument("--slots", type=_at_least(1), default=None, help="expert copies per device (default ceil((E+R)/ep), "
                       "never above memory)")
    place.add_argument("--objective", choices=["time", "tokens"], default="time",
                       help="balance modelled expert time (default) or assigned tokens")
    place.add_argument("--solver", choices=["auto", "highs", "cbc"], default="auto")
    place.add_argument("--time-limit", type=_positive_float, default=10.0, help="seconds per layer for the ILP")
    place.add_argument("--traffic-weight", type=_non_negative_float, default=1.0,
                       help="weight of all-to-all traffic in the ILP")
    place.add_argument("--decomposition", choices=["auto", "flat", "neighbourhood"], default="auto")
    place.add_argument("--rebalance-from", type=Path, default=None, metavar="PLACEMENT.yaml",
                       help="the placement in force: rename each method's placement to keep copies in place and "
                            "say whether moving to it pays (expected gain over --horizon-steps vs weight transfer)")
    place.add_argument("--horizon-steps", type=_at_least(1), default=1000,
                       help="steps a new placement will serve before the next rebalance (with --rebalance-from)")
    place.add_argument("--simulate", action="store_true", help="simulate every placement and add its step time")
    place.add_argument("--steps-sim", type=_at_least(1), default=None, help="override workload.steps for --simulate")
    _add_set(place)
    place.add_argument("--report", action="store_true", help="write report.html / report.md with plots")
    place.add_argument("--out", type=Path, default=None, help="output folder (default runs/<name>-placement)")
    place.add_argument("--force", action="store_true", help="replace an existing --out folder that moesim wrote")
    place.set_defaults(func=_place)
    roof = sub.add_parser("roofline", help="every op of a layer on the device roofline (config, or --model/--device)")
    roof.add_argument("config", nargs="?", help="scenario config (its layer as the engine plans it)")
    roof.add_argument("--model", help="model name or YAML (without a config)")
    roof.add_argument("--device", action="append", default=[], help="device profile; repeat to compare devices")
    roof.add_argument("--phase", choices=["prefill", "decode", "both"], default="both", help="without a config")
    roof.add_argument("--batch", type=_at_least(1), default=16, help="sequences (without a config)")
    roof.add_argument("--seq-len", type=_at_least(1), default=2048, help="prefill prompt length (without a config)")
    roof.add_argument("--kv-len", type=_at_least(0), default=2048, help="decode context (without a config)")
    roof.add_argument("--layer", type=_at_least(0), default=None, help="model layer (default: the first MoE layer)")
    roof.add_argument("--step", type=_at_least(0), default=0, help="routing step (with a config)")
    roof.add_argument("--rank", type=_at_least(0), default=0, help="device of the cluster (with a config)")
    _add_set(roof)
    roof.add_argument("--measured", help="CSV of measured ops (device, op, flops, bytes, time_s) to plot")
    roof.add_argument("--out", help="output folder (default runs/roofline-<name>)")
    roof.add_argument("--force", action="store_true", help="replace an existing --out folder that moesim wrote")
    roof.set_defaults(func=_roofline)

    cal = sub.add_parser("calibrate", help="measure ops with torch, fit the cost model, report simulated vs measured")
    cal.add_argument("--device", default="cpu", help="cpu or cuda")
    cal.add_argument("--size", choices=["small", "full"], default="small", help="grid size (small: ~30 s on a CPU)")
    cal.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float8_e4m3fn"], default="float32",
                     help="float8_e4m3fn: fp8 GEMMs and experts by torch scaled matmul (per-tensor, per-channel and "
                          "block scales) on a GPU of compute capability 8.9+; refused on the CPU")
    cal.add_argument("--profile", help="datasheet profile to calibrate (default: matched GPU, or one built from "
                                       "/proc/cpuinfo)")
    cal.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    cal.add_argument("--model", action="append", default=[],
                     help="measure this model's shapes (name or YAML / config.json; repeatable): expert, attention "
                          "and dense GEMMs up to 8k tokens, grouped GEMMs, MoE layers")
    cal.add_argument("--from-table", default=None, metavar="FILE.csv",
                     help="fit from an external table of op timings instead of measuring "
                          "(schema: validation/from_table.py)")
    cal.add_argument("--from-nccl-tests", nargs="+", default=None, metavar="LOG",
                     help="fit latency and bandwidth per collective from nccl-tests output; with --profile CLUSTER, "
                          "write a variant of that cluster profile whose collectives hold the fitted costs")
    cal.add_argument("--out", type=Path, help="output folder (default runs/calibrate-<device>-<size>)")
    cal.add_argument("--force", action="store_true", help="replace an existing --out folder that moesim wrote")
    cal.set_defaults(func=_calibrate)

    prof = sub.add_parser("profiles", help="list or show bundled hardware profiles and models")
    prof.add_argument("action", choices=["list", "show"])
    prof.add_argument("name", nargs="?")
    prof.set_defaults(func=_profiles)

    trace = sub.add_parser("trace", help="routing traces: statistics, fitting a generator, synthesis, conversion")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    st = tsub.add_parser("stats", help="imbalance, inter-layer affinity, drift and locality of a trace")
    st.add_argument("file", type=Path)
    st.add_argument("--model", help="check the trace against this model (name or YAML)")
    st.add_argument("--devices", type=_at_least(1), default=8, help="devices for the co-location statistics")
    st.add_argument("--max-steps", type=_at_least(1), default=None)
    st.add_argument("--out", type=Path, default=None, help="folder for stats.json, tables, plots and stats.html")
    st.add_argument("--html", type=Path, default=None, help="write the statistics as one self-contained HTML page")
    st.add_argument("--force", action="store_true",
                    help="replace an existing --out folder or --html page that moesim wrote")
    st.set_defaults(func=_trace_stats)
    fit = tsub.add_parser("fit", help="estimate the synthetic generator's parameters from a trace")
    fit.add_argument("file", type=Path)
    fit.add_argument("--model")
    fit.add_argument("--max-steps", type=_at_least(1), default=None)
    fit.add_argument("--seed", type=_at_least(0), default=0)
    fit.add_argument("--out", type=Path, default=None, help="generator YAML (default FILE.generator.yaml)")
    fit.add_argument("--force", action="store_true", help="replace an existing --out file")
    fit.set_defaults(func=_trace_fit)
    syn = tsub.add_parser("synth", help="write a trace drawn from a generator YAML")
    syn.add_argument("generator", type=Path)
    syn.add_argument("--model", required=True)
    syn.add_argument("--steps", type=_at_least(1), default=16)
    syn.add_argument("--tokens", type=_at_least(1), default=256, help="tokens per source per step")
    syn.add_argument("--sources", type=_at_least(1), default=8)
    syn.add_argument("--source-kind", choices=["device", "request"], default="device")
    syn.add_argument("--seed", type=_at_least(0), default=0)
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument("--force", action="store_true", help="replace an existing --out file")
    syn.set_defaults(func=_trace_synth)
    conv = tsub.add_parser("convert", help="convert a .npz/.jsonl/.npy/.pt dump (or a Parquet file) to a trace")
    conv.add_argument("file", type=Path)
    conv.add_argument("out", type=Path)
    conv.add_argument("--model")
    conv.add_argument("--sources", type=_at_least(1), default=None, help="number of sources (default: max id + 1)")
    conv.add_argument("--source-kind", choices=["device", "request"], default=None)
    conv.add_argument("--sort", action="store_true", help="sort rows by step first (loads the file whole)")
    conv.add_argument("--force", action="store_true", help="replace an existing OUT file (never the input)")
    conv.set_defaults(func=_trace_convert)
    req = sub.add_parser("requests", help="generate request arrivals and lengths from a requests YAML")
    req.add_argument("config", type=Path)
    req.add_argument("--seed", type=_at_least(0), default=0)
    req.add_argument("--out", type=Path, default=None, help=".csv or .parquet")
    req.add_argument("--force", action="store_true", help="replace an existing --out file")
    req.set_defaults(func=_requests)
    from moesim import cli_completion, cli_recommend, cli_sweep

    cli_sweep.add_parser(sub)
    cli_recommend.add_parser(sub)
    cli_completion.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from moesim import interrupts
    from moesim.errors import MoesimError
    from moesim.outputs import tracking_inputs

    with interrupts.handling_signals(keep_after=argv is None), tracking_inputs():  # argv None: the moesim process
        try:
            args = build_parser().parse_args(argv)
            code = args.func(args)
            interrupts.check()  # a signal swallowed where it landed still stops the command
            return code
        except (MoesimError, OSError) as err:
            if interrupts.pending() is not None:  # the error came from cutting the work short
                return _interrupted(interrupts.Interrupted(interrupts.pending()))
            if isinstance(err, MoesimError):
                print(f"error: {err}", file=sys.stderr)
                return 2
            # the filesystem refused an output (disk full, permissions, a name too long)
            where = f" {err.filename}" if err.filename else ""
            print(f"error: cannot write or read{where}: {err.strerror or err}", file=sys.stderr)
            return 2
        except Exception:
            if interrupts.pending() is None:
                raise
            # the signal landed where a library turned it into its own error (a C extension's
            # import says "initialization failed"): it is still the interruption
            return _stopped(interrupts.Interrupted(interrupts.pending()), argv)
        except KeyboardInterrupt as err:
            return _stopped(err, argv)


def _stopped(err: KeyboardInterrupt, argv: list[str] | None) -> int:
    """Report the interruption; the moesim process itself then leaves at once."""
    code = _interrupted(err)
    if argv is None:  # the moesim process: outputs are cleaned up, skip the interpreter's teardown
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)
    return code


def _interrupted(err: KeyboardInterrupt) -> int:
    """Say which signal stopped the command and exactly what it kept; 130 (SIGINT) or 143 (SIGTERM)."""
    from moesim import interrupts

    print(interrupts.message(err), file=sys.stderr, flush=True)
    return interrupts.exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
