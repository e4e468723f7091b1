"""Request arrivals for serving scenarios: when requests come and how long they are.

A serving simulation needs a stream of requests (arrival time, prompt length, output length).
This module turns a small config into that stream, deterministically under a seed:

    requests:
      arrivals: {process: gamma, rate: 20, cv: 3}      # or poisson / file
      prompt_tokens: {dist: lognormal, mean: 1000, std: 500}
      output_tokens: {dist: uniform, low: 16, high: 256}
      duration: 30 s                                    # or num_requests: 1000

Randomness comes from three independent streams spawned from one `SeedSequence(seed)`
(arrivals, prompt lengths, output lengths), so editing one length distribution leaves the
arrival times and the other lengths unchanged. Within a stream values are drawn in order, so
a longer stream extends a shorter one (the first requests stay the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.errors import ConfigError
from moesim.units import Seconds
from moesim.yaml_io import at_most, check_file, load_yaml, validate

#: columns of the request table, in order, with their dtypes
REQUEST_COLUMNS = {"request_id": "int64", "arrival_s": "float64", "prompt_tokens": "int64",
                   "output_tokens": "int64"}
MAX_REQUESTS = 50_000_000  # guards against a typo like rate: 1e9 with duration: 1 h (and the memory it would take)
#: seconds of arrivals float64 still resolves to well under a microsecond (spacing 1.5e-8 s at 1e8 s)
MAX_SPAN_S = 1e8
MAX_LENGTH = 2**31 - 1  # tokens of one request: past any model's context, and sums stay in int64
#: tokens (or sequences, or cached context) of one replica's step, here and in the scenario config: far
#: past any device's memory, so the memory check refuses what does not fit with its numbers, and token
#: arithmetic stays in int64
MAX_TOKENS = 2**40
WHY_TOKENS = "no device holds the activations or KV cache of 2**40 tokens"
Tokens = Annotated[int, at_most(MAX_TOKENS, "tokens", WHY_TOKENS)]

#: a count of requests (or of users sending them): the request table is held in memory
RequestCount = Annotated[int, at_most(MAX_REQUESTS, "requests", "the request table would not fit in memory; "
                                      "simulate fewer requests")]
#: a token length of one request
TokenLength = Annotated[int, at_most(MAX_LENGTH, "tokens", "no model has a context that long")]
#: a span of simulated seconds
Span = Annotated[Seconds, at_most(MAX_SPAN_S, "s", "float64 seconds lose microsecond resolution past 1e8 s")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- arrival processes -------------------------------------------------------------------

class PoissonArrivals(_Strict):
    """Exponential inter-arrival times (memoryless, cv = 1)."""

    process: Literal["poisson"]
    rate: float = Field(gt=0, description="mean arrivals per second")


class GammaArrivals(_Strict):
    """Gamma inter-arrival times with mean 1/rate and the given cv (shape 1/cv^2): cv > 1 is bursty."""

    process: Literal["gamma"]
    rate: float = Field(gt=0, description="mean arrivals per second")
    cv: float = Field(gt=0, description="coefficient of variation of inter-arrival times")


class FileArrivals(_Strict):
    """Arrival times (and optionally lengths) replayed from a csv/parquet/jsonl file."""

    process: Literal["file"]
    path: str = Field(description="file with column arrival_s [, prompt_tokens, output_tokens]")


Arrivals = Annotated[PoissonArrivals | GammaArrivals | FileArrivals, Field(discriminator="process")]


# --- length distributions ----------------------------------------------------------------

class FixedLength(_Strict):
    dist: Literal["fixed"]
    value: TokenLength = Field(ge=1)


class UniformLength(_Strict):
    """Integers uniform on [low, high], both inclusive."""

    dist: Literal["uniform"]
    low: TokenLength = Field(ge=1)
    high: TokenLength = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.low > self.high:
            raise ValueError(f"uniform length needs low <= high (got low={self.low}, high={self.high})")
        return self


class _Clipped(_Strict):
    min: TokenLength = Field(1, ge=1, description="samples below are clipped up to this")
    max: TokenLength | None = Field(None, ge=1, description="samples above are clipped down to this")

    @model_validator(mode="after")
    def _ordered(self) -> "_Clipped":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"length needs min <= max (got min={self.min}, max={self.max})")
        return self


class NormalLength(_Clipped):
    """Normal, rounded to the nearest integer and clipped to [min, max]."""

    dist: Literal["normal"]
    mean: float
    std: float = Field(ge=0)


class LognormalLength(_Clipped):
    """Lognormal given by the mean and std of the lengths themselves (not of their log),
    rounded and clipped to [min, max]. Rounding/clipping shift the mean by < 0.5 token when
    mean >> 1."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)


class FileLength(_Strict):
    """Empirical distribution: lengths drawn uniformly with replacement from a file's column."""

    dist: Literal["file"]
    path: str
    column: str


LengthDist = Annotated[FixedLength | UniformLength | NormalLength | LognormalLength | FileLength,
                       Field(discriminator="dist")]


class RequestsConfig(_Strict):
    """Where requests come from; `num_requests` and/or `duration` bound the stream (whichever
    ends it first). With file arrivals both are optional and the lengths may come from the file."""

    arrivals: Arrivals
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    num_requests: RequestCount | None = Field(None, ge=1)
    duration: Span | None = Field(None, description="only requests arriving before this (seconds)")

    @model_validator(mode="after")
    def _bounded(self) -> "RequestsConfig":
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"requests.duration must be > 0 (got {self.duration})")
        span = span_problem(self.arrivals, self.num_requests, self.duration, "requests")
        if span:
            raise ValueError(span)
        if self.arrivals.process != "file":
            if self.num_requests is None and self.duration is None:
                raise ValueError(f"arrivals.process '{self.arrivals.process}' needs requests.num_requests "
                                 "or requests.duration to bound the stream")
            for name in ("prompt_tokens", "output_tokens"):
                if getattr(self, name) is None:
                    raise ValueError(f"requests.{name} is required (a length distribution) unless arrivals "
                                     "come from a file with that column")
        return self


def span_problem(arrivals: PoissonArrivals | GammaArrivals | FileArrivals | None, num_requests: int | None,
                 duration: float | None, section: str) -> str | None:
    """Why the arrivals cannot be simulated, or None: `num_requests` at `arrivals.rate` would outrun
    float64 seconds (their span num_requests / rate past MAX_SPAN_S: times of ~1e300 s lose every
    digit), or rate x `duration` asks for more than MAX_REQUESTS requests."""
    rate = getattr(arrivals, "rate", None)
    if rate is None:
        return None
    if duration is not None and num_requests is None and rate * duration > MAX_REQUESTS:
        return (f"{section}.arrivals.rate x {section}.duration = {rate * duration:.3g} requests, more than the "
                f"{MAX_REQUESTS:,} a request table may hold; set {section}.num_requests or a shorter duration")
    if num_requests is None or duration is not None:
        return None  # a duration bounds the span itself
    span = num_requests / rate
    if span <= MAX_SPAN_S:
        return None
    return (f"{section}.arrivals.rate = {rate:g} requests/s with {section}.num_requests = {num_requests:,} spans "
            f"about {span:.3g} s of arrivals, more than the {MAX_SPAN_S:.0e} s that float64 seconds hold at "
            "microsecond resolution (times that large would lose every token time); raise the rate or send fewer "
            "requests")


# --- files -------------------------------------------------------------------------------

def _resolve(path: str, base_dir: str | Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def _resolve_paths(cfg: RequestsConfig, base_dir: str | Path | None) -> RequestsConfig:
    """The config with every relative file path made relative to base_dir (absolute stay)."""
    if base_dir is None:
        return cfg
    update: dict[str, Any] = {}
    for name in ("arrivals", "prompt_tokens", "output_tokens"):
        part = getattr(cfg, name)
        if part is not None and hasattr(part, "path"):
            update[name] = part.model_copy(update={"path": str(_resolve(part.path, base_dir))})
    return cfg.model_copy(update=update) if update else cfg


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a csv, parquet or jsonl file into a DataFrame; failures raise ConfigError naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    check_file(path, "file")  # missing, a folder, a symlink loop
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
    except pd.errors.EmptyDataError:
        raise ConfigError("cannot read file: it is empty (expected a header row with arrival_s or the length "
                          "column)", file=path) from None
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise ConfigError(f"cannot read file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                          file=path) from None
    raise ConfigError(f"unsupported file type '{suffix}'; use .csv, .parquet or .jsonl", file=path)


def _row(path: Path, i: int) -> str:
    """A 0-based data row, with the line number a text editor shows for csv/jsonl."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return f"row {i} (line {i + 2}, after the header)"
    if suffix in (".jsonl", ".ndjson"):
        return f"row {i} (line {i + 1})"
    return f"row {i}"


def _numeric_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    if column not in df.columns:
        raise ConfigError(f"missing column '{column}' (columns: {', '.join(map(str, df.columns)) or 'none'})",
                          file=path, field=column)
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{_row(path, i)}: expected a finite number, got {raw.iloc[i]!r}", file=path, field=column)
    return values


def check_arrivals(values: np.ndarray, path: Path, column: str = "arrival_s") -> np.ndarray:
    """Arrival times must be >= 0, at most MAX_SPAN_S and non-decreasing; the error names the first bad row."""
    neg = values < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise ConfigError(f"{_row(path, i)}: arrival time {float(values[i]):g} is negative", file=path, field=column)
    late = values > MAX_SPAN_S
    if late.any():
        i = int(np.argmax(late))
        raise ConfigError(f"{_row(path, i)}: arrival time {float(values[i]):g} s is past {MAX_SPAN_S:.0e} s, where "
                          "float64 seconds stop resolving microseconds (are the times in microseconds?)", file=path,
                          field=column)
    dec = np.diff(values) < 0
    if dec.any():
        i = int(np.argmax(dec)) + 1
        raise ConfigError(f"{_row(path, i)}: arrival time {float(values[i]):.15g} is before the previous row's "
                          f"{float(values[i - 1]):.15g} (arrival times must be non-decreasing)", file=path, field=column)
    return values


def check_lengths(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    """Token lengths must be integers >= 1; the error names the first bad row."""
    bad = (values != np.round(values)) | (values < 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{_row(path, i)}: length {float(values[i]):g} is not an integer >= 1", file=path, field=column)
    return values.astype(np.int64)


def _file_lengths(path: Path, column: str) -> np.ndarray:
    df = read_table(path)
    if len(df) == 0:
        raise ConfigError(f"no rows to sample column '{column}' from", file=path, field=column)
    return check_lengths(_numeric_column(df, column, path), path, column)


# --- sampling ----------------------------------------------------------------------------

def _interarrivals(arr: PoissonArrivals | GammaArrivals, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(arr, PoissonArrivals):
        return rng.exponential(1.0 / arr.rate, size=n)
    shape = 1.0 / arr.cv**2
    return rng.gamma(shape, 1.0 / (arr.rate * shape), size=n)


def _synthetic_arrivals(cfg: RequestsConfig, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a renewal process from t = 0 (the first request arrives after one gap)."""
    arr = cfg.arrivals
    assert isinstance(arr, (PoissonArrivals, GammaArrivals))
    if cfg.num_requests is not None:
        gaps = _interarrivals(arr, rng, cfg.num_requests)
    else:
        assert cfg.duration is not None
        expected = arr.rate * cfg.duration
        if expected > MAX_REQUESTS:
            raise ConfigError(f"rate x duration = {expected:.3g} requests; more than {MAX_REQUESTS:.0e} "
                              "(set num_requests or a shorter duration)", field="requests.duration")
        chunks, total = [], 0.0
        chunk = int(expected + 10 * np.sqrt(expected) + 16)
        while total <= cfg.duration:  # same draws as one long call, so the stream is prefix-stable
            chunks.append(_interarrivals(arr, rng, chunk))
            total += float(chunks[-1].sum())
        gaps = np.concatenate(chunks)
    times = np.cumsum(gaps)
    if cfg.duration is not None:
        times = times[times < cfg.duration]
    return times


def sample_lengths(dist: FixedLength | UniformLength | NormalLength | LognormalLength | FileLength,
                   rng: np.random.Generator, n: int) -> np.ndarray:
    """n integer lengths >= 1 drawn from a length distribution (file paths must be resolved)."""
    if isinstance(dist, FixedLength):
        return np.full(n, dist.value, dtype=np.int64)
    if isinstance(dist, UniformLength):
        return rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)
    if isinstance(dist, FileLength):
        pool = _file_lengths(Path(dist.path), dist.column)
        return pool[rng.integers(0, len(pool), size=n)]
    if isinstance(dist, NormalLength):
        x = rng.normal(dist.mean, dist.std, size=n)
    else:  # lognormal from the mean m and std s of the lengths: sigma^2 = ln(1 + s^2/m^2)
        sigma2 = np.log1p((dist.std / dist.mean) ** 2)
        x = rng.lognormal(np.log(dist.mean) - sigma2 / 2, np.sqrt(sigma2), size=n)
    hi = dist.max if dist.max is not None else MAX_LENGTH
    return np.clip(np.rint(x), dist.min, hi).astype(np.int64)


def generate_requests(cfg: RequestsConfig, seed: int, base_dir: str | Path | None = None) -> pd.DataFrame:
    """The request table: request_id (0..n-1), arrival_s (non-decreasing, >= 0), prompt_tokens,
    output_tokens (int64 >= 1). Relative file paths resolve against base_dir (default: cwd)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = _resolve_paths(cfg, base_dir)
    arrival_ss, prompt_ss, output_ss = np.random.SeedSequence(int(seed)).spawn(3)
    file_lengths: dict[str, np.ndarray] = {}
    if isinstance(cfg.arrivals, FileArrivals):
        path = Path(cfg.arrivals.path)
        df = read_table(path)
        if len(df) == 0:
            raise ConfigError("the arrivals file has no rows", file=path)
        times = check_arrivals(_numeric_column(df, "arrival_s", path), path)
        for name in ("prompt_tokens", "output_tokens"):
            if getattr(cfg, name) is None:
                if name not in df.columns:
                    raise ConfigError(f"no length distribution for {name} and the arrivals file has no "
                                      f"'{name}' column", file=path, field=name)
                file_lengths[name] = check_lengths(_numeric_column(df, name, path), path, name)
        keep = len(times)
        if cfg.duration is not None:
            keep = int(np.searchsorted(times, cfg.duration, side="left"))
        if cfg.num_requests is not None:
            keep = min(keep, cfg.num_requests)
        times = times[:keep]
        file_lengths = {k: v[:keep] for k, v in file_lengths.items()}
    else:
        times = _synthetic_arrivals(cfg, np.random.default_rng(arrival_ss))
    n = len(times)
    lengths = {}
    for name, ss in (("prompt_tokens", prompt_ss), ("output_tokens", output_ss)):
        dist = getattr(cfg, name)
        lengths[name] = file_lengths[name] if dist is None else sample_lengths(dist, np.random.default_rng(ss), n)
    return pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.asarray(times, dtype=np.float64),
        "prompt_tokens": np.asarray(lengths["prompt_tokens"], dtype=np.int64),
        "output_tokens": np.asarray(lengths["output_tokens"], dtype=np.int64),
    })


def load_requests_config(path: str | Path) -> RequestsConfig:
    """Read a requests YAML (a top-level `requests:` key, or the mapping itself); relative file
    paths in it are resolved against the YAML's folder. Errors name the file and the field."""
    path = Path(path)
    data = load_yaml(path)
    prefix = None
    if "requests" in data:
        data, prefix = data["requests"], "requests"
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, found {type(data).__name__}", file=path, field="requests")
    try:
        cfg = validate(RequestsConfig, data, path)
    except ConfigError as err:
        if prefix is None:
            raise
        field = f"{prefix}.{err.field}" if err.field else prefix
        raise ConfigError(err.detail, file=path, field=field) from None
    return _resolve_paths(cfg, path.parent)


def describe_requests(df: pd.DataFrame) -> dict[str, float | int]:
    """Summary of a request table. Duration is last minus first arrival; the mean rate and the
    inter-arrival cv are those of the n-1 gaps (rate = 1 / mean gap)."""
    n = len(df)
    t = df["arrival_s"].to_numpy(dtype=np.float64)
    gaps = np.diff(t)
    mean_gap = float(gaps.mean()) if len(gaps) else float("nan")
    out: dict[str, float | int] = {
        "count": n,
        "duration_s": float(t[-1] - t[0]) if n else 0.0,
        "mean_rate_per_s": 1.0 / mean_gap if len(gaps) and mean_gap > 0 else float("nan"),
        "interarrival_cv": float(gaps.std() / mean_gap) if len(gaps) and mean_gap > 0 else float("nan"),
    }
    for name in ("prompt_tokens", "output_tokens"):
        x = df[name].to_numpy(dtype=np.float64)
        out[f"{name}_mean"] = float(x.mean()) if n else float("nan")
        out[f"{name}_p50"] = float(np.percentile(x, 50)) if n else float("nan")
        out[f"{name}_p99"] = float(np.percentile(x, 99)) if n else float("nan")
        out[f"total_{name}"] = int(df[name].sum())
    out["total_tokens"] = int(out["total_prompt_tokens"]) + int(out["total_output_tokens"])
    return out
