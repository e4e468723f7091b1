"""The sweep file of `moesim sweep SWEEP.yaml`: a base config plus axes, and the points they make.

```yaml
base: mixtral.yaml                  # a scenario config, relative to this file
name: mixtral-ep-batch              # optional; default the file's stem
axes:                               # config field -> values; crossed with each other
  parallelism.ep: [2, 4, 8]
  workload.batch_size: {range: [16, 64], step: 16}      # inclusive: 16, 32, 48, 64
  hardware.cluster: [dgx-h100, h800-4x8]                # any field, a cluster or placement too
zip:                                # groups of axes that advance together (equal lengths)
  - [parallelism.ep, parallelism.dp]
exclude:                            # a point matching every pair of an entry is skipped
  - {parallelism.ep: 8, workload.batch_size: 64}
pareto: {x: devices, y: throughput_per_device_tokens_per_s}   # the report's front (y larger is better)
```

An axis is a list of values, `{range: [start, stop], step: s}` (inclusive, numbers), or
`{doubling: [start, stop]}` (start, 2 start, ... up to stop). Axes not in a `zip` group are
crossed with each other and with each group; a point is the base config with one value per
axis set as `--set FIELD=VALUE` would, except that a relative path in an axis resolves against
the base config's folder, as if written in it (a path given by --set resolves against the working
directory). Points come out in a fixed order (the axes' order in the
file, the last one fastest), so a sweep's table rows and its cache keys do not depend on how
it was run.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moesim.errors import ConfigError
from moesim.yaml_io import load_yaml, validate

MAX_POINTS = 100_000


class AxisSpec(BaseModel):
    """An axis given by a rule: `{range: [start, stop], step: s}` or `{doubling: [start, stop]}`."""

    model_config = ConfigDict(extra="forbid")
    range: tuple[float, float] | None = None
    step: float | None = Field(None, gt=0)
    doubling: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> "AxisSpec":
        if (self.range is None) == (self.doubling is None):
            raise ValueError("an axis is a list of values, {range: [start, stop], step: s} or "
                             "{doubling: [start, stop]}")
        if self.range is not None and self.step is None:
            raise ValueError("range needs a step, e.g. {range: [16, 128], step: 16}")
        if self.range is not None and self.range[1] < self.range[0]:
            raise ValueError("range takes [start, stop] with start <= stop")
        if self.doubling is not None and not (0 < self.doubling[0] <= self.doubling[1]):
            raise ValueError("doubling takes [start, stop] with 0 < start <= stop")
        if self.doubling is not None and self.step is not None:
            raise ValueError("doubling takes no step")
        return self


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def axis_values(spec: Any) -> list[Any]:
    """The values of one axis spec (already validated)."""
    if isinstance(spec, AxisSpec) and spec.range is not None:
        start, stop = spec.range
        count = int((stop - start) / spec.step + 1e-9) + 1
        return [_number(round(start + i * spec.step, 12)) for i in range(max(count, 0))]
    if isinstance(spec, AxisSpec):
        out, x = [], spec.doubling[0]
        while x <= spec.doubling[1] * (1 + 1e-12):
            out.append(_number(x))
            x *= 2
        return out
    return list(spec)


class ParetoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: str = Field("devices", description="a column of the sweep table (smaller is better)")
    y: str = Field("throughput_per_device_tokens_per_s", description="a column of the sweep table (larger is better)")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(description="the scenario config every point starts from, relative to the sweep file")
    name: str | None = None
    axes: dict[str, Any] = Field(min_length=1, description="config field -> a list of values or an AxisSpec")
    zip: list[list[str]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    pareto: ParetoSpec = ParetoSpec()

    @field_validator("axes")
    @classmethod
    def _axis_specs(cls, axes: dict[str, Any]) -> dict[str, Any]:
        from pydantic import ValidationError

        out: dict[str, Any] = {}
        for field, spec in axes.items():
            if isinstance(spec, dict):
                try:
                    spec = AxisSpec(**spec)
                except ValidationError as err:
                    why = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
                    raise ValueError(f"axis {field}: {why}") from None
            elif not isinstance(spec, list):
                raise ValueError(f"axis {field} is {spec!r}: an axis is a list of values, {{range: [start, stop], "
                                 "step: s}} or {{doubling: [start, stop]}}")
            if not axis_values(spec):
                raise ValueError(f"axis {field} has no values")
            out[field] = spec
        return out

    @model_validator(mode="after")
    def _groups(self) -> "SweepConfig":
        seen: set[str] = set()
        for group in self.zip:
            unknown = [f for f in group if f not in self.axes]
            if unknown:
                raise ValueError(f"zip names {unknown[0]}, which is not an axis (axes: {', '.join(self.axes)})")
            again = [f for f in group if f in seen]
            if again:
                raise ValueError(f"axis {again[0]} is in two zip groups")
            seen.update(group)
            lengths = {f: len(axis_values(self.axes[f])) for f in group}
            if len(set(lengths.values())) > 1:
                raise ValueError("zipped axes need equal lengths, got " +
                                 ", ".join(f"{f}: {n}" for f, n in lengths.items()))
        for entry in self.exclude:
            unknown = [f for f in entry if f not in self.axes]
            if unknown:
                raise ValueError(f"exclude names {unknown[0]}, which is not an axis")
        return self


def points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every point (axis -> value), crossed and zipped as the file says, less the exclusions."""
    grouped = {f for g in cfg.zip for f in g}
    blocks: list[list[dict[str, Any]]] = []
    for field in cfg.axes:  # in file order; a zip group sits where its first axis is
        if field in grouped:
            group = next(g for g in cfg.zip if field in g)
            if field != next(f for f in cfg.axes if f in group):
                continue
            columns = [axis_values(cfg.axes[f]) for f in group]
            blocks.append([dict(zip(group, values)) for values in zip(*columns)])
        else:
            blocks.append([{field: v} for v in axis_values(cfg.axes[field])])
    out = []
    for combo in itertools.product(*blocks):
        point = {k: v for part in combo for k, v in part.items()}
        if not any(all(point.get(k) == v for k, v in entry.items()) for entry in cfg.exclude):
            out.append(point)
    return out


def overrides(point: dict[str, Any]) -> list[str]:
    """The point as --set items (values as JSON, which the config reader takes as YAML)."""
    return [f"{field}={json.dumps(value)}" for field, value in point.items()]


def load_sweep(path: str | Path, schema: type[SweepConfig] = SweepConfig) -> tuple[SweepConfig, Path]:
    """The validated file (a sweep, or a `schema` built on it) and the base config's path; a bad
    file is a ConfigError naming it."""
    path = Path(path)
    cfg = validate(schema, load_yaml(path), path)
    base = (path.parent / cfg.base).resolve() if not Path(cfg.base).is_absolute() else Path(cfg.base)
    if not base.is_file():
        raise ConfigError(f"base config {cfg.base} not found (relative to the file)", file=path, field="base")
    n = len(points(cfg))
    if n == 0:
        raise ConfigError("every point is excluded: nothing to run", file=path, field="exclude")
    if n > MAX_POINTS:
        raise ConfigError(f"the axes make {n:,} points, more than the {MAX_POINTS:,} one sweep runs; zip axes or "
                          "split the sweep", file=path, field="axes")
    if cfg.name is None:
        cfg.name = path.stem
    return cfg, base
