"""Run a sweep's points (studies/sweep_config.py), each once, cached, locally or in worker processes.

`run_sweep(cfg, base, cache_dir, workers)` returns one row per point: the point's axis values, its
status (`ok`, or `failed` with the error: a point that does not resolve or fails to simulate is
recorded, not fatal), its headline metrics (`HEADLINE`, from the simulation's summary; every
number a model output) and its cache key. The key is the SHA-256 of the point's resolved config
(every default filled), the resolved model, cluster and device specs (so an edited profile file
is a new point) and the moesim version. A finished point's row is stored under its key in
`cache_dir` (one JSON file each, written atomically) the moment it ends, so an interrupted sweep
loses only the points in flight, and a rerun, or another sweep meeting the same config, reads
them back instead of simulating again.

Workers: 1 runs the points in this process; more runs them in a process pool (forked where the
platform forks, so no semaphore outlives an interrupted sweep; BLAS pinned to one thread each by
threadpoolctl; SIGINT left to this process, which terminates the workers), or as Ray tasks on a
Ray cluster (studies/sweep_ray.py). Rows do not depend on which: a point's simulation depends only
on its config and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from moesim.errors import MoesimError
from moesim.studies.sweep_config import SweepConfig, overrides, points

# table column -> path into summary.json's metrics (fixed-batch keys; serving keys below)
HEADLINE = {
    "step_latency_mean_s": ("step_latency_s", "mean"),
    "throughput_tokens_per_s": ("throughput_tokens_per_s",),
    "time_per_output_token_s": ("time_per_output_token_s",),
    "straggler_ratio_mean": ("straggler_ratio", "mean"),
    "memory_per_device_bytes": ("memory_per_device_bytes", "max"),
}
SERVING = {
    "output_tokens_per_s": ("serving", "throughput", "output_tokens_per_s"),
    "ttft_p50_s": ("serving", "latency", "ttft_s", "p50"),
    "ttft_p99_s": ("serving", "latency", "ttft_s", "p99"),
    "tpot_p50_s": ("serving", "latency", "tpot_s", "p50"),
    "tpot_p99_s": ("serving", "latency", "tpot_s", "p99"),
    "goodput_share": ("serving", "goodput", "share"),
    "offered_requests_per_s": ("serving", "load", "offered_requests_per_s"),
    "achieved_requests_per_s": ("serving", "load", "achieved_requests_per_s"),
    "saturated": ("serving", "load", "saturated"),
}


def _get(d: Any, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return float(d)


def point_key(sc) -> str:
    """The cache key of a resolved scenario (module docstring)."""
    from moesim import __version__

    blob = {"config": sc.config.as_written(), "model": sc.model.model_dump(mode="json"),
            "cluster": sc.cluster.model_dump(mode="json"), "device": sc.device.model_dump(mode="json"),
            "moesim": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def metrics_row(sc, summary: dict[str, Any]) -> dict[str, Any]:
    """A finished point's headline numbers (simulated)."""
    row: dict[str, Any] = {"devices": sc.num_devices, "ep": sc.ep, "tp": sc.tp, "dp": sc.dp, "moe_tp": sc.moe_tp}
    serving = sc.config.serving is not None
    for name, path in (SERVING if serving else HEADLINE).items():
        row[name] = _get(summary, path)
    if serving:
        row["memory_per_device_bytes"] = _get(summary, HEADLINE["memory_per_device_bytes"])
    tokens = row.get("output_tokens_per_s") if serving else row.get("throughput_tokens_per_s")
    row["throughput_per_device_tokens_per_s"] = tokens / sc.num_devices if tokens is not None else None
    return row


def simulate_point(base: str, items: list[str], relative_to: str = "config",
                   run_dir: str | None = None) -> dict[str, Any]:
    """Resolve and simulate one point (in a worker, or here): its row, or a failed status. Relative
    paths in `items` resolve against the base config's folder (`relative_to` "config", a sweep
    file's axes) or the working directory ("cwd", a command line's --set). With `run_dir`, the
    point's run directory is written there too (atomically)."""
    from moesim.simulator.run import simulate, write_run_dir
    from moesim.simulator.scenario import load_scenario

    try:
        sc = load_scenario(base, items, items_relative_to=relative_to)
        result = simulate(sc)
        if run_dir is not None:
            write_run_dir(result, run_dir, force=True, overrides=items)
        return {"status": "ok", "error": "", **metrics_row(sc, result.summary)}
    except MoesimError as err:  # a config that does not resolve, a workload that does not fit, ...
        return {"status": "failed", "error": str(err)}


class SweepCache:
    """Finished points' rows by key: one JSON file each under a folder of moesim's own."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None  # absent, or a file cut short: simulate again

    def run_dir(self, key: str) -> Path:
        """Where a point's run directory is kept (sweeps that keep them: `--load`)."""
        return self.root / "runs" / key

    def has_run(self, key: str) -> bool:
        return (self.run_dir(key) / "summary.json").is_file()

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.partial-", suffix=".json", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(row, f, default=str)
            os.replace(tmp, self.root / f"{key}.json")
        except BaseException:  # an interrupt mid-write leaves no half file behind
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def _signals_held() -> Iterator[None]:
    """Fork the workers with SIGINT ignored and SIGINT/SIGTERM blocked (a fork inherits both), so
    a signal meant for the sweep cannot land in a worker before its initializer has set its own
    handling; a signal that arrives meanwhile stays pending here and is delivered once unblocked."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _worker_init() -> None:
    """A worker: SIGINT is the sweep's to handle, SIGTERM ends it; one BLAS thread (its siblings
    hold the other cores)."""
    import signal

    from threadpoolctl import threadpool_limits

    from moesim import interrupts

    interrupts.ignore_in_child()
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    threadpool_limits(1)


def plan(cfg: SweepConfig, base: Path, extra: list[str] | tuple[str, ...] = (),
         relative_to: str = "config") -> list[tuple[dict[str, Any], list[str], str | None, str]]:
    """(point, --set items, cache key or None, error) of every point, resolved here first: a point
    that does not resolve has no key and is recorded as failed without simulating. `extra` items
    go before every point's own (a command line's --set)."""
    from moesim.simulator.scenario import load_scenario

    out = []
    for point in points(cfg):
        items = list(extra) + overrides(point)
        try:
            out.append((point, items, point_key(load_scenario(base, items, items_relative_to=relative_to)), ""))
        except MoesimError as err:
            out.append((point, items, None, str(err)))
    return out


def run_sweep(cfg: SweepConfig, base: Path, cache_dir: str | Path, workers: int = 1,
              progress: Callable[[int, int, int], None] | None = None, ray: str | None = None,
              extra: list[str] | tuple[str, ...] = (), relative_to: str = "config",
              keep_runs: bool = False) -> pd.DataFrame:
    """Every point's row (module docstring), in point order. `progress(done, total, from_cache)` is
    called as points finish. An interrupt stops the sweep; the points finished so far stay cached.
    `ray` ('local' or a cluster address) runs the points as Ray tasks (studies/sweep_ray.py).
    `extra` and `relative_to`: see `plan` and `simulate_point`. With `keep_runs` every point's run
    directory is kept in the cache too (`run_dir_of`; a row without its run directory is rerun).
    """
    cache = SweepCache(cache_dir)
    planned = plan(cfg, base, extra, relative_to)
    if all(key is None for _, _, key, _ in planned):  # a typo in an axis, or a base that never resolves
        raise MoesimError(f"no point of the sweep resolves; the first says: {planned[0][3]}")
    rows: list[dict[str, Any] | None] = [None] * len(planned)
    todo = []
    for i, (point, items, key, error) in enumerate(planned):
        if key is None:
            rows[i] = {"status": "failed", "error": error}
        elif (hit := cache.get(key)) is not None and (not keep_runs or cache.has_run(key)):
            rows[i] = hit
        else:
            todo.append(i)
    done = len(planned) - len(todo)  # read from the cache, or refused before simulating
    cached = sum(1 for (_, _, key, _), row in zip(planned, rows) if key is not None and row is not None)
    if progress:
        progress(done, len(planned), cached)

    def finished(i: int, row: dict[str, Any]) -> None:
        nonlocal done
        rows[i] = row
        cache.put(planned[i][2], row)
        done += 1
        if progress:
            progress(done, len(planned), cached)

    jobs = [(i, str(base), planned[i][1], relative_to, str(cache.run_dir(planned[i][2])) if keep_runs else None)
            for i in todo]
    if ray is not None and todo:
        from moesim.studies.sweep_ray import run_points_ray

        run_points_ray(jobs, ray, workers, finished)
    elif workers <= 1 or len(todo) <= 1:
        for job in jobs:
            finished(job[0], simulate_point(*job[1:]))
    else:
        _run_pool(jobs, workers, finished)
    table = pd.DataFrame([{**point, "key": key or "", **row} for (point, _, key, _), row in zip(planned, rows)])
    return pareto_marked(table, cfg.pareto.x, cfg.pareto.y)


def _simulate_indexed(job: tuple) -> tuple[int, dict[str, Any]]:
    return job[0], simulate_point(*job[1:])


def _run_pool(jobs: list[tuple], workers: int, finished) -> None:
    """The points in a pool of worker processes (`run_in_pool`)."""
    run_in_pool(_simulate_indexed, jobs, workers, finished)


def run_in_pool(work: Callable[[tuple], tuple[int, Any]], jobs: list[tuple], workers: int, finished) -> None:
    """`work(job)` -> (index, result) for every job in a pool of worker processes, `finished(index,
    result)` as each ends; on an interrupt or an error the workers are terminated (none outlives
    the command)."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with _signals_held():
        pool = context.Pool(min(workers, len(jobs)), initializer=_worker_init)
    results = pool.imap_unordered(work, jobs)
    try:
        for i, row in results:
            finished(i, row)
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def pareto_marked(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The table with `pareto`: True for ok points no other ok point beats (x no larger and y no
    smaller, one of them strictly)."""
    table = table.copy()
    table["pareto"] = False
    if x not in table or y not in table or "status" not in table:
        return table
    ok = table[(table["status"] == "ok") & table[x].notna() & table[y].notna()]
    xs, ys = ok[x].to_numpy(float), ok[y].to_numpy(float)
    for idx, xi, yi in zip(ok.index, xs, ys):
        beaten = ((xs <= xi) & (ys >= yi) & ((xs < xi) | (ys > yi))).any()
        table.loc[idx, "pareto"] = not beaten
    return table
