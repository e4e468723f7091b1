"""Library entry points: simulate a scenario and write its run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from moesim.simulator.config import ScenarioFile
from moesim.simulator.engine import Engine
from moesim.simulator.metrics import SimResult, summarize
from moesim.simulator.run_tables import expert_time_table, link_table, traffic_table
from moesim.simulator.scenario import Scenario, load_scenario, resolve
from moesim.simulator.trace_export import write_chrome_trace


def simulate(scenario: Scenario | ScenarioFile | str | Path,
             progress: Callable[[int], None] | None = None) -> SimResult:
    """Run a scenario (object, validated config, or config path) and return its results."""
    if isinstance(scenario, (str, Path)):
        scenario = load_scenario(scenario)
    elif isinstance(scenario, ScenarioFile):
        scenario = resolve(scenario)
    raw = Engine(scenario, progress).run()
    return summarize(scenario, raw)


def default_run_dir(result: SimResult) -> Path:
    """outputs.dir relative to the config file, else runs/<name> under the working directory."""
    cfg = result.scenario.config
    if cfg.outputs.dir:
        return result.scenario.source.base_dir / cfg.outputs.dir
    return Path("runs") / (cfg.name or "scenario")


def write_run_dir(result: SimResult, out: str | Path | None = None) -> Path:
    """Write summary.json, the phase/utilization/layer/traffic/link/expert-time tables, the copy
    tables of an offloading run and trace.json; return the directory."""
    from moesim import __version__

    sc = result.scenario
    run_dir = Path(out) if out else default_run_dir(result)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "name": sc.name,
        "moesim_version": __version__,
        "seed": sc.seed,
        "config_file": str(sc.source.path) if sc.source.path else None,
        "metrics": result.summary,
        "resolved": {
            "model": sc.model.name, "cluster": sc.cluster.name, "device": sc.device.name,
            "devices": sc.num_devices, "devices_per_node": sc.cluster.node.devices_per_node,
            "ep": sc.ep, "tp": sc.tp, "dp": sc.dp,
            "batch_per_replica": sc.batch_per_replica, "moe_tokens_per_device": sc.moe_tokens.tolist(),
            "moe_layers": len(sc.model.moe_layers),
        },
        "config": sc.config.model_dump(mode="json"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
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
    steps = sc.config.outputs.trace_steps
    if steps:
        write_chrome_trace(result.phases, run_dir / "trace.json", steps, sc.device.name, copies, host_jobs)
    return run_dir
