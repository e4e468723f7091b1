"""`moesim recommend`: which configuration of a serving deployment carries the most load per GPU
within its SLOs.

The file is a sweep file (studies/sweep_config.py: `base`, `axes` to search, `zip`, `exclude`)
plus what to search for:

```yaml
base: serving.yaml                 # a serving config: open loop (serving.arrivals) or closed (serving.users)
axes: {parallelism.tp: [1, 2, 4], policies.overlap: [none, two_batch]}
slo: {ttft_p99: 2.0, tpot_p99: 0.1}   # seconds
load: {min: 0.5, max: 64, tolerance: 0.1}   # requests/s (or users) searched, and the bisection's step
top: 3
```

Every candidate (a point of the axes) is resolved first: one whose memory does not fit, or that
does not resolve, is pruned with the reason and never simulated. Each remaining candidate's
capacity is found by bisection on `serving.arrivals.rate` of an open loop, or on the whole number
of `serving.users` of a closed loop (studies/capacity.py); each probe is a
sweep point, cached like one (studies/sweep.py), so a rerun or a wider search reuses them. The
ranking is capacity per device (requests/s, or users, per GPU), then capacity. The search is a plain grid
over the axes with bisection per candidate, not Optuna: the axes are few and discrete, every
candidate's capacity is wanted for the table, and a grid's result does not depend on a sampler's
seed. Candidates are searched one after another in this process, or in worker processes.
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
USERS = "serving.users"


def searched_load(base: str | Path) -> str:
    """What recommend bisects on for a base config: an open loop's arrival rate (RATE) or a closed
    loop's users (USERS)."""
    serving = load_yaml(Path(base)).get("serving")
    return USERS if isinstance(serving, dict) and serving.get("users") is not None else RATE


def load_item(field: str, x: float) -> str:
    """The --set item of one probe: users are whole (at least 1), a rate keeps 6 digits."""
    return f"{field}={max(1, round(x))}" if field == USERS else f"{field}={x:.6g}"


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
    if not isinstance(serving, dict) or not (isinstance(serving.get("arrivals"), dict) or
                                             serving.get("users") is not None):
        raise ConfigError("recommend searches the load of a serving config: the base needs serving.arrivals (an "
                          "open loop: its rate is searched) or serving.users (a closed loop: its users are searched)",
                          file=path, field="base")
    field = searched_load(base)
    if field in cfg.axes:
        raise ConfigError(f"{field} is what recommend searches; drop it from the axes", file=path, field="axes")
    if field == USERS and cfg.load.max < 1:
        raise ConfigError(f"a closed loop's load is whole users: load.max {cfg.load.max:g} is below 1", file=path,
                          field="load.max")
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
    field = searched_load(base)
    try:
        sc = load_scenario(base, items + [load_item(field, cfg.load.min)], items_relative_to="config")
    except MoesimError as err:  # does not fit in memory, or does not resolve: never simulated
        return {**point, "status": "pruned", "reason": str(err)}
    limits: dict[float, str] = {}

    def meets(rate: float) -> bool:
        probe = items + [load_item(field, rate)]
        key = point_key(load_scenario(base, probe, items_relative_to="config"))
        row = cache.get(key)
        if row is None:
            row = evaluate(str(base), probe)
            cache.put(key, row)
        ok, why = serving_meets(row, slo)
        limits[rate] = why
        if progress:
            progress(f"{', '.join(f'{k}={v}' for k, v in point.items())}: {load_item(field, rate)} "
                     f"{'meets the SLOs' if ok else 'misses: ' + why}")
        return ok

    found = bisect_capacity(meets, cfg.load.min, cfg.load.max, cfg.load.tolerance)
    above = [x for x, ok in found.probes if not ok and (found.load is None or x > found.load)]
    capacity = found.load if found.load is None or field == RATE else float(max(1, round(found.load)))
    return {**point, "status": "ok", "reason": "", "devices": sc.num_devices,
            "capacity": capacity, "capacity_unit": "users" if field == USERS else "requests/s",
            "capacity_requests_per_s": capacity if field == RATE else None, "at_top_of_range": found.at_top,
            "capacity_per_device": None if capacity is None else capacity / sc.num_devices,
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
                progress(f"{what}: " + (f"capacity {row['capacity']} {row['capacity_unit']}"
                                        if row["status"] == "ok" else "pruned"))

        run_in_pool(_candidate_indexed, [(i, cfg, base, str(cache_dir), p) for i, p in enumerate(cands)],
                    workers, finished)
    table = pd.DataFrame(rows)
    if "capacity_per_device" in table:
        table = table.sort_values(["capacity_per_device", "capacity"], ascending=False,
                                  na_position="last", kind="stable").reset_index(drop=True)
    return table


def replay_command(base: Path, point: dict[str, Any], rate: float | None) -> str:
    """The command that simulates a candidate at its capacity (`rate`: requests/s, or users)."""
    sets = overrides(point) + ([load_item(searched_load(base), rate)] if rate is not None else [])
    return "moesim simulate " + str(base) + "".join(f" --set '{s}'" for s in sets)
