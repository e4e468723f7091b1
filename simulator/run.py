"""Library entry points: simulate a scenario and write its run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from moesim import json_io
from moesim.errors import ConfigError
from moesim.outputs import atomic_dir
from moesim.simulator.config import ScenarioFile
from moesim.simulator.compose import comm_sm_share, engine_for
from moesim.simulator.metrics import SimResult, summarize
from moesim.simulator.run_tables import expert_time_table, link_table, traffic_table
from moesim.simulator.scenario import Scenario, load_scenario, resolve
from moesim.simulator.trace_export import write_chrome_trace
from moesim.simulator.unit_usage import unit_usage, uses_units


def simulate(scenario: Scenario | ScenarioFile | str | Path | dict,
             progress: Callable[[int], None] | None = None) -> SimResult:
    """Run a scenario (object, validated config, config path or a config mapping) and return its results."""
    if isinstance(scenario, (str, Path, dict)):
        scenario = load_scenario(scenario)
    elif isinstance(scenario, ScenarioFile):
        scenario = resolve(scenario)
    if scenario.config.serving is not None and scenario.config.serving.disaggregation is not None:
        from moesim.simulator.serving.disaggregation import simulate_disaggregated

        return simulate_disaggregated(scenario, progress)
    engine = engine_for(scenario, progress)
    if scenario.config.serving is not None and progress is not None:  # serving counts finished requests
        engine.progress = lambda step: progress(len(engine.source.finished))
    raw = engine.run()
    result = summarize(scenario, raw)
    share = comm_sm_share(scenario)
    if share is not None:  # the all-to-all's kernels hold SMs while compute overlaps them
        result.summary["sm_partition"] = {"comm_sms": share[0], "sms": share[1],
                                          "compute_left": (share[1] - share[0]) / share[1],
                                          "source": "model: every accelerator op of the overlapped step at "
                                                    "(sms - comm_sms) / sms of peak and bandwidth"}
    if scenario.config.policies.speculative is not None:  # drafts and accepted tokens around the verify step
        from moesim.simulator.speculative import apply

        apply(scenario, result)
    usage = unit_usage(scenario, raw.plans) if uses_units(scenario) else None
    if usage is not None:  # which unit ran what, over every step the engine ran
        result.summary["units"] = usage
    if scenario.config.serving is not None:
        from moesim.simulator.serving.outcome import drop_fixed_batch_keys, serving_outcome

        result.requests, result.iterations, result.summary["serving"] = serving_outcome(scenario, raw, engine.source,
                                                                                        cache=engine.cache)
        result.summary["serving"]["iteration_latency_s"] = drop_fixed_batch_keys(result.summary)
    return result


RUN_FILES = ("summary.json", "phases.parquet", "utilization.csv", "layers.csv", "traffic.csv", "links.csv",
             "expert_time.csv")


def default_run_dir(sc: Scenario) -> Path:
    """outputs.dir relative to the config file, else runs/<name> under the working directory."""
    cfg = sc.config
    if cfg.outputs.dir:
        return sc.source.base_dir / cfg.outputs.dir
    return Path("runs") / (cfg.name or "scenario")


def write_run_dir(result: SimResult, out: str | Path | None = None, *, force: bool = False,
                  overrides: list[str] | None = None, keep: str | None = None) -> Path:
    """Write summary.json, the phase/utilization/layer/traffic/link/expert-time tables, the copy
    tables of an offloading run and trace.json; return the directory.

    Written atomically (`moesim.outputs.atomic_dir`): an interrupted write leaves nothing that
    looks like a run. An existing directory is replaced only with `force` and only if moesim
    wrote it (no file of the earlier run survives); otherwise the write is refused."""
    run_dir = Path(out) if out else default_run_dir(result.scenario)
    with atomic_dir(run_dir, command="simulate", force=force, keep=keep) as partial:
        _write_files(result, partial, overrides or [])
    return run_dir


def _write_files(result: SimResult, run_dir: Path, overrides: list[str]) -> None:
    from moesim import __version__

    sc = result.scenario
    summary = {
        "name": sc.name,
        "status": "complete",
        "moesim_version": __version__,
        "seed": sc.seed,
        "config_file": str(sc.source.path) if sc.source.path else None,
        "extends": list(sc.source.extends),
        "overrides": overrides,
        "metrics": result.summary,
        "resolved": {
            "model": sc.model.name, "cluster": sc.cluster.name, "device": sc.device.name,
            "devices": sc.num_devices, "devices_per_node": sc.cluster.node.devices_per_node,
            "ep": sc.ep, "tp": sc.tp, "dp": sc.dp,
            "batch_per_replica": sc.batch_per_replica, "moe_tokens_per_device": sc.moe_tokens.tolist(),
            "moe_layers": len(sc.model.moe_layers),
        },
        "config": sc.config.as_written(),
    }
    if sc.config.outputs.phases == "full":
        result.phases.to_parquet(run_dir / "phases.parquet", index=False)
    result.utilization.to_csv(run_dir / "utilization.csv", index=False)
    result.layers.to_csv(run_dir / "layers.csv", index=False)
    traffic_table(result).to_csv(run_dir / "traffic.csv", index=False)
    link_table(result).to_csv(run_dir / "links.csv", index=False)
    expert_time_table(result).to_csv(run_dir / "expert_time.csv", index=False)
    off = result.raw.offload
    copies = host_jobs = None
    if off is not None:
        copies, host_jobs = off.copies_table(), off.host_table()
        copies.to_csv(run_dir / "copies.csv", index=False)
        host_jobs.to_csv(run_dir / "host_experts.csv", index=False)
    if result.requests is not None:  # serving
        result.requests.to_parquet(run_dir / "requests.parquet", index=False)
        result.iterations.to_csv(run_dir / "iterations.csv", index=False)
    steps = sc.config.outputs.trace_steps
    if steps:
        per_mb = result.raw.microbatch_plans or [[p] for p in result.raw.plans]
        handoffs = [[p.handoff for p in plans] for plans in per_mb[:steps]]
        write_chrome_trace(result.phases, run_dir / "trace.json", steps, sc.device.name, copies, host_jobs,
                           handoffs if any(h is not None for hs in handoffs for h in hs) else None,
                           tuple(u.name for u in sc.machine.units.values()))
    json_io.write(run_dir / "summary.json", summary, indent=2)  # last: its status marks the run complete


def check_run_dir(path: str | Path) -> Path:
    """A run directory `moesim report` can read: written completely by `moesim simulate`."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run directory (no such folder)", field="RUN_DIR")
    summary = path / "summary.json"
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        data = None
    status = data.get("status") if isinstance(data, dict) else None
    skipped = {"phases.parquet"} if isinstance(data, dict) and \
        (data.get("config") or {}).get("outputs", {}).get("phases") == "none" else set()
    missing = [f for f in RUN_FILES if f not in skipped and not (path / f).exists()]
    if status != "complete" or missing:
        what = f"missing {', '.join(missing)}" if missing else "its summary.json does not say it completed"
        raise ConfigError(f"{path} is not a complete run directory ({what}): it was interrupted, or written "
                          "by an older moesim; run `moesim simulate` again", field="RUN_DIR")
    return path
