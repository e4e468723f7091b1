"""Read nccl-tests output (all_reduce_perf, all_gather_perf, alltoall_perf, reduce_scatter_perf, ...)
and fit each collective's latency and bandwidth.

`parse_nccl_tests(text, collective=None)` returns one row per (message size, placement):
collective, size_bytes, count, type, redop, root, place ("out" = out-of-place, "in" = in-place),
time_us, algbw, busbw (GB/s as printed), wrong. It reads the table rows nccl-tests prints, with or
without the `root` column (added in nccl-tests 2.10), with `[rank]` prefixes and NCCL INFO lines
interleaved (mpirun logs), `N/A` in #wrong, and several tests in one log: the collective is taken
from the `# Collective test starting: all_reduce_perf` line, or from the first `*_perf` name the
log mentions (the command line), or the `collective` argument.

`fit_collectives(df, place="out")` fits, per collective, time = latency + size / bandwidth by
least squares with relative residuals ((pred - t) / t, so a 1 KiB message weighs as much as a
1 GiB one and the latency is set by the small sizes), latency and 1 / bandwidth >= 0. The fitted
`bandwidth` is the algorithmic bandwidth (buffer bytes per second: it reproduces the collective's
time for a given buffer size); `bus_bandwidth` = bandwidth x busbw / algbw (nccl-tests' bus
factor: 2(n-1)/n for all-reduce, (n-1)/n for all-gather, reduce-scatter and all-to-all) is what
each GPU's link carries, the number to compare with a link profile's bandwidth. `min_bytes` /
`max_bytes` restrict the fit to a message-size range (e.g. the sizes a MoE layer sends).

`comm_costs(fits, link_bandwidth, path_latency)` turns the fits into the simulator's communication kernel
costs (simulator/comm_cost.py) for one link: eff_max = bus bandwidth / the link's bandwidth, floor =
the fitted latency less the path latency the engine adds itself, half_bytes 0. One log at one rank
count fixes only the constant and the slope of time(size), so the whole constant goes to the floor;
telling the floor from a per-message overhead needs logs at several rank counts (not done yet).
`moesim calibrate --from-nccl-tests LOG... --profile CLUSTER` writes them into a cluster profile variant.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.yaml_io import read_text_file

COLUMNS = ["collective", "size_bytes", "count", "type", "redop", "root", "place", "time_us", "algbw", "busbw", "wrong"]
_PREFIX = re.compile(r"^\s*(\[\d+\]\s*)+")
_START = re.compile(r"Collective test starting:\s*(\S+)")
_BINARY = re.compile(r"\b([a-z_]+_perf)\b")


def read_nccl_log(path: str | Path) -> str:
    """An nccl-tests log's text; a missing, odd (folder, symlink loop) or binary file is a
    ConfigError naming it (logs are data: no size limit)."""
    return read_text_file(path, "nccl-tests log", max_bytes=None)


def usable_rows(df: pd.DataFrame) -> pd.Series:
    """Rows a fit can use: a positive finite time for a positive message size."""
    return (df["time_us"] > 0) & np.isfinite(df["time_us"].astype(float)) & (df["size_bytes"] > 0)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # N/A


def _collective(name: str) -> str:
    return name[:-5] if name.endswith("_perf") else name


def parse_nccl_tests(text: str, collective: str | None = None) -> pd.DataFrame:
    """The measured rows of one or more nccl-tests runs (see the module docstring)."""
    current = collective
    rows = []
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw).strip()
        start = _START.search(line)
        if start:
            current = _collective(start.group(1))
            continue
        if current is None and "NCCL INFO" not in line:
            binary = _BINARY.search(line)
            if binary:
                current = _collective(binary.group(1))
        if not line or line.startswith("#") or "NCCL INFO" in line:
            continue
        tok = line.split()
        if len(tok) not in (12, 13) or not (tok[0].isdigit() and tok[1].isdigit()) or tok[2][0].isdigit():
            continue
        has_root = len(tok) == 13
        root = int(tok[4]) if has_root else -1
        rest = tok[5:] if has_root else tok[4:]
        try:
            vals = [float(rest[i]) for i in (0, 1, 2, 4, 5, 6)]
        except ValueError:
            continue
        for place, (t, alg, bus), wrong in (("out", vals[0:3], rest[3]), ("in", vals[3:6], rest[7])):
            rows.append({"collective": current or "unknown", "size_bytes": int(tok[0]), "count": int(tok[1]),
                         "type": tok[2], "redop": tok[3], "root": root, "place": place, "time_us": t,
                         "algbw": alg, "busbw": bus, "wrong": _float(wrong)})
    return pd.DataFrame(rows, columns=COLUMNS)


def fit_collectives(df: pd.DataFrame, place: str = "out", min_bytes: float = 0.0,
                    max_bytes: float = float("inf")) -> dict[str, dict[str, float]]:
    """Per collective: latency (s), bandwidth (algorithmic, bytes/s), bus_bandwidth (bytes/s),
    bus_factor, ranks (from the bus factor), n (rows fitted), min_bytes / max_bytes (sizes fitted)
    and mape (of the fit on its own rows)."""
    from scipy.optimize import lsq_linear

    out: dict[str, dict[str, float]] = {}
    size_ok = (df["size_bytes"] >= min_bytes) & (df["size_bytes"] <= max_bytes)
    sel = df[(df["place"] == place) & usable_rows(df) & size_ok]
    for name, g in sel.groupby("collective", sort=False):
        t = g["time_us"].to_numpy(float) * 1e-6
        size = g["size_bytes"].to_numpy(float)
        a = np.column_stack([np.ones_like(t), size]) / t[:, None]  # relative residuals: (lat + size*inv)/t - 1
        res = lsq_linear(a, np.ones_like(t), bounds=([0.0, 0.0], [np.inf, np.inf]))
        latency, inv = float(res.x[0]), float(res.x[1])
        ok = (g["algbw"] > 0).to_numpy()
        factor = float(np.median(g["busbw"].to_numpy(float)[ok] / g["algbw"].to_numpy(float)[ok])) if ok.any() \
            else float("nan")
        bandwidth = 1.0 / inv if inv > 0 else float("inf")
        pred = latency + size * inv
        out[str(name)] = {"latency": latency, "bandwidth": bandwidth, "bus_bandwidth": bandwidth * factor,
                          "bus_factor": factor, "ranks": _ranks(str(name), factor), "n": int(len(g)),
                          "min_bytes": float(size.min()), "max_bytes": float(size.max()),
                          "mape": float(np.mean(np.abs(pred - t) / t))}
    return out


# nccl-tests names of the collectives the simulator runs, and its comm kinds (simulator/comm_cost.py)
COMM_KIND = {"alltoall": "all_to_all", "all_reduce": "all_reduce"}


def _ranks(name: str, factor: float) -> int:
    """Ranks from nccl-tests' bus factor: (n-1)/n for all-to-all and all-gather, 2(n-1)/n for all-reduce."""
    if not np.isfinite(factor) or factor <= 0:
        return 0
    scale = 2.0 if name == "all_reduce" else 1.0
    return int(round(scale / (scale - factor))) if factor < scale else 0


def log_hosts(text: str) -> int:
    """Distinct hosts in a log's `#  Rank  0 Group  0 Pid 123 on HOST device ...` lines (0: none listed)."""
    return len(set(re.findall(r"#\s*Rank\s+\d+\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)", text)))


def comm_costs(fits: dict[str, dict[str, float]], link_bandwidth: float, path_latency: float) -> tuple[dict, list[str]]:
    """The simulator's comm kernel costs {kind: {floor, efficiency, half_bytes}} of the collectives it
    runs, from `fit_collectives` on a link of `link_bandwidth` (B/s, before efficiency) whose
    device-to-device paths take `path_latency` (the latency the engine adds itself, once per
    collective: its flows' path; a measured all-reduce floor stands for the ring's steps, which
    the engine then does not add, simulator/allreduce.py); and warnings."""
    costs, warnings = {}, []
    for name, fit in fits.items():
        kind = COMM_KIND.get(name)
        if kind is None:
            continue
        eff = fit["bus_bandwidth"] / link_bandwidth if np.isfinite(fit["bus_bandwidth"]) else 1.0
        if eff > 1.0:
            warnings.append(f"{name}: bus bandwidth {fit['bus_bandwidth'] / 1e9:.0f} GB/s is above the link's "
                            f"{link_bandwidth / 1e9:.0f} GB/s (NVLS, in-network reduction?); efficiency set to 1")
            eff = 1.0
        engine_latency = path_latency  # the flows' one path; the floor holds the rest (a ring's steps too)
        floor = fit["latency"] - engine_latency
        if floor < 0:
            warnings.append(f"{name}: fitted latency {fit['latency'] * 1e6:.1f} us is below the path latency the "
                            f"simulator adds ({engine_latency * 1e6:.1f} us); floor set to 0")
        costs[kind] = {"floor": max(floor, 0.0), "efficiency": float(eff), "half_bytes": 0.0}
    return costs, warnings


def cluster_with_fits(cluster_name: str, fits: dict[str, dict[str, float]], logs: list[str], multi_node: bool,
                      date: str = "") -> tuple[dict, list[str]]:
    """A cluster profile variant (a dict to write as YAML) whose `collectives` hold the fitted costs
    for the link the logs measured (the NIC's network link across hosts, else the intra-node link),
    each citing "fitted from nccl-tests LOG"; and warnings."""
    from moesim.hardware_profiles import build_topology, compute_routes, load_cluster, load_link

    cluster = load_cluster(cluster_name)
    node = cluster.node
    if multi_node and node.nic is None:
        raise ValueError(f"the logs span several hosts, but cluster {cluster.name} has no NIC (node.nic)")
    link = load_link(node.nic.link if multi_node else node.intra_node.link)
    probe = cluster.model_copy(update={"nodes": 2 if multi_node else 1, "collectives": {}})
    routes = compute_routes(build_topology(probe))
    other = node.devices_per_node if multi_node else 1
    path_latency = float(routes.pair_latency[0, other]) if routes.num_devices > other else 0.0
    costs, warnings = comm_costs(fits, link.bandwidth, path_latency)
    if not costs:
        raise ValueError("the logs hold none of the collectives the simulator runs (alltoall_perf, all_reduce_perf)")
    data = cluster.model_dump(mode="json", exclude_defaults=True)
    data["name"] = f"{cluster.name}-nccl"
    collectives = {k: dict(v) for k, v in data.get("collectives", {}).items()}
    sources = dict(data.get("sources", {}))
    names = ", ".join(logs)
    for kind, cost in costs.items():
        collectives.setdefault(kind, {})[link.name] = cost
        fit = fits[next(n for n, k in COMM_KIND.items() if k == kind and n in fits)]
        sources[f"collectives.{kind}.{link.name}"] = (
            f"fitted from nccl-tests {names}{' (' + date + ')' if date else ''}: latency {fit['latency'] * 1e6:.1f} us, "
            f"bus bandwidth {fit['bus_bandwidth'] / 1e9:.1f} GB/s over {int(fit['n'])} sizes "
            f"{int(fit['min_bytes'])}-{int(fit['max_bytes'])} B, MAPE {fit['mape']:.1%}")
    data["collectives"] = collectives
    data["sources"] = sources
    return data, warnings
