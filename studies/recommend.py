"""`moesim recommend`: which configuration of a serving deployment carries the most load per GPU
within its SLOs.

The file is a sweep file (studies/sweep_config.py: `base`, `axes` to search, `zip`, `exclude`)
plus what to search for:

```yaml
base: serving.yaml                 # an open-loop serving config (serving.arrivals)
axes: {parallelism.tp: [1, 2, 4], policies.overlap: [none, two_batch]}
slo: {ttft_p99: 2.0, tpot_p99: 0.1}   # seconds
load: {min: 0.5, max: 64, tolerance: 0.1}   # requests/s searched, and the bisection's relative step
top: 3
```

Every candidate (a point of the axes) is resolved first: one whose memory does not fit, or that
does not resolve, is pruned with the reason and never simulated. Each remaining candidate's
capacity is found by bisection on `serving.arrivals.rate` (studies/capacity.py); each probe is a
sweep point, cached like one (studies/sweep.py), so a rerun or a wider search reuses them. The
ranking is capacity per device (requests/s per GPU), then capacity. The search is a plain grid
over the axes with bisection per candidate, not Optuna: the axes are few and discrete, every
candidate's capacity is wanted for the table, and a grid's result does not depend on a sampler's
seed. Candidates are searched one after another in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.errors import ConfigError, MoesimError
from moesim.studies.capacity import bisect_capacity, serving_meets
from moesim.studies.sweep import SweepCache, point_key, simulate_point
from moesim.studies.sweep_config import SweepConfig, load_sweep, overrides, points
from moesim.yaml_io import load_yaml

RATE = "serving.arrivals.rate"


class SloSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttft_p99: float | None = Field(None, gt=0, description="seconds")
    tpot_p99: float | None = Field(None, gt=0, description="seconds")

    @model_validator(mode="after")
    def _some(self) -> "SloSpec":
        if self.ttft_p99 is None and self.tpot_p99 is None:
            raise ValueError("give at least one of slo.ttft_p99 or slo.tpot_p99 (seconds)")
        return self


class LoadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float = Field(gt=0, description="requests/s")
    max: float = Field(gt=0, description="requests/s")
    tolerance: float = Field(0.1, gt=0, le=1, description="the bisection stops when max / min <= 1 + tolerance")

    @model_validator(mode="after")
    def _ordered(self) -> "LoadSpec":
        if self.max < self.min:
            raise ValueError(f"load.max {self.max} is below load.min {self.min}")
        return self


class RecommendConfig(SweepConfig):
    slo: SloSpec
    load: LoadSpec
    top: int = Field(3, ge=1)


def load_recommend(path: str | Path) -> tuple[RecommendConfig, Path]:
    """The validated file and its base config; the base must be an open-loop serving config."""
    path = Path(path)
    cfg, base = load_sweep(path, RecommendConfig)
    serving = load_yaml(base).get("serving")
    if not isinstance(serving, dict) or not isinstance(serving.get("arrivals"), dict):
        raise ConfigError("recommend searches the arrival rate of an open-loop serving config: the base needs "
                          "serving.arrivals (a closed loop's users are not searched yet)", file=path, field="base")
    if RATE in cfg.axes:
        raise ConfigError(f"{RATE} is what recommend searches; drop it from the axes", file=path, field="axes")
    return cfg, base


def candidate_row(cfg: RecommendConfig, base: Path, cache_dir: str | Path, point: dict[str, Any],
                  evaluate: Callable[[str, list[str]], dict[str, Any]] = simulate_point,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One candidate's row: pruned (does not resolve or fit, never simulated), or its capacity by
    bisection on the arrival rate, every probe a cached sweep point (`run_recommend`)."""
    from moesim.simulator.scenario import load_scenario

    cache = SweepCache(cache_dir)
    slo = cfg.slo.model_dump(exclude_none=True)
    items = overrides(point)
    try:
        sc = load_scenario(base, items + [f"{RATE}={cfg.load.min}"], items_relative_to="config")
    except MoesimError as err:  # does not fit in memory, or does not resolve: never simulated
        return {**point, "status": "pruned", "reason": str(err)}
    limits: dict[float, str] = {}

    def meets(rate: float) -> bool:
        probe = items + [f"{RATE}={rate:.6g}"]
        key = point_key(load_scenario(base, probe, items_relative_to="config"))
        row = cache.get(key)
        if row is None:
            row = evaluate(str(base), probe)
            cache.put(key, row)
        ok, why = serving_meets(row, slo)
        limits[rate] = why
        if progress:
            progress(f"{', '.join(f'{k}={v}' for k, v in point.items())}: {rate:.3g} req/s "
                     f"{'meets the SLOs' if ok else 'misses: ' + why}")
        return ok

    found = bisect_capacity(meets, cfg.load.min, cfg.load.max, cfg.load.tolerance)
    above = [x for x, ok in found.probes if not ok and (found.load is None or x > found.load)]
    return {**point, "status": "ok", "reason": "", "devices": sc.num_devices,
            "capacity_requests_per_s": found.load, "at_top_of_range": found.at_top,
            "capacity_per_device": None if found.load is None else found.load / sc.num_devices,
            "limited_by": limits[min(above)] if above else "", "probes": len(found.probes)}


def _candidate_indexed(job: tuple) -> tuple[int, dict[str, Any]]:
    i, cfg, base, cache_dir, point = job
    return i, candidate_row(cfg, base, cache_dir, point)


def run_recommend(cfg: RecommendConfig, base: Path, cache_dir: str | Path,
                  evaluate: Callable[[str, list[str]], dict[str, Any]] = simulate_point,
                  progress: Callable[[str], None] | None = None, workers: int = 1) -> pd.DataFrame:
    """One row per candidate, best first: its axis values, status (ok / pruned), capacity
    (requests/s), devices, capacity per device, whether the capacity is the top of the searched
    range, what failed just above it, and the probes simulated. `evaluate(base, items)` simulates
    one point (a test passes its own). With `workers` > 1 the candidates' searches run in a forked
    process pool (each search is sequential: a probe depends on the last), rows as in one process."""
    cands = points(cfg)
    if workers <= 1 or len(cands) <= 1:
        rows = [candidate_row(cfg, base, cache_dir, point, evaluate, progress) for point in cands]
    else:
        from moesim.studies.sweep import run_in_pool

        rows = [None] * len(cands)

        def finished(i: int, row: dict[str, Any]) -> None:
            rows[i] = row
            if progress:
                what = ", ".join(f"{k}={v}" for k, v in cands[i].items())
                progress(f"{what}: " + (f"capacity {row['capacity_requests_per_s']} req/s"
                                        if row["status"] == "ok" else "pruned"))

        run_in_pool(_candidate_indexed, [(i, cfg, base, str(cache_dir), p) for i, p in enumerate(cands)],
                    workers, finished)
    table = pd.DataFrame(rows)
    if "capacity_per_device" in table:
        table = table.sort_values(["capacity_per_device", "capacity_requests_per_s"], ascending=False,
                                  na_position="last", kind="stable").reset_index(drop=True)
    return table


def replay_command(base: Path, point: dict[str, Any], rate: float | None) -> str:
    """The command that simulates a candidate at its capacity."""
    sets = overrides(point) + ([f"{RATE}={rate:.6g}"] if rate is not None else [])
    return "moesim simulate " + str(base) + "".join(f" --set '{s}'" for s in sets)
