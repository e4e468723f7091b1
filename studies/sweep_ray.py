"""Run a sweep's points as Ray tasks (`moesim sweep --ray local|ADDRESS`), on an existing Ray cluster.

Each point is one task calling the same `simulate_point` the local path calls, so a point's row
depends only on its config and seed: the table is identical bit for bit to a local run. Rows come
back as tasks finish and are cached by the caller at once, so an interrupted sweep keeps every
finished point. `local` starts a private Ray instance in this process (with `workers` CPUs) and
shuts it down afterwards; an address joins a running cluster, whose nodes must have moesim
installed and the sweep's files at the same paths (a shared filesystem) - a point whose files a
node lacks fails with that node's error, recorded, not fatal. Ray is an optional extra
(`pip install 'moesim[ray]'`).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import Any

from moesim.errors import ConfigError

_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>[A-Za-z0-9_.\-\[\]:]+?):(?P<port>\d{1,5})$")


def check_address(address: str) -> str | None:
    """`local` (None: start a private instance), `auto`, or HOST:PORT / ray://HOST:PORT of a cluster
    that answers; anything else is refused before Ray is asked (Ray retries an unreachable address
    for minutes)."""
    if address == "local":
        return None
    if address == "auto":
        return address
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"--ray takes 'local', 'auto' or a cluster address HOST:PORT (or ray://HOST:PORT), "
                          f"got {address!r}", field="--ray")
    try:
        with socket.create_connection((m["host"].strip("[]"), int(m["port"])), timeout=5):
            pass
    except OSError as err:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({err}); start one with "
                          "`ray start --head` and pass the address it prints, or use --ray local",
                          field="--ray") from None
    return address


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, an optional extra: pip install 'moesim[ray]' (or pip install ray)",
                          field="--ray") from None
    return ray


def run_points_ray(jobs: list[tuple], address: str, workers: int,
                   finished: Callable[[int, dict[str, Any]], None]) -> None:
    """Every job (index, then `simulate_point`'s arguments) as a one-CPU Ray task; `finished(index, row)` as
    each ends. On an interrupt or an error the tasks still running are cancelled; a private
    instance is shut down either way."""
    target = check_address(address)
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        env = {"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
        os.environ.setdefault("RAY_ACCEPT_CLOUD_PROVIDER_TOS", "1")
        if target is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env=env,
                     configure_logging=False)
        else:
            ray.init(address=target, log_to_driver=False, runtime_env=env, configure_logging=False)
    from moesim.studies.sweep import simulate_point

    task = ray.remote(num_cpus=1, max_retries=0)(simulate_point)
    pending = {task.remote(*job[1:]): job[0] for job in jobs}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as err:  # the task died (a node lost, out of memory)
                    row = {"status": "failed", "error": f"Ray task failed: {str(err).splitlines()[0]}"}
                finished(i, row)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
