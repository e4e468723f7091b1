"""Read nccl-tests output (all_reduce_perf, all_gather_perf, alltoall_perf, reduce_scatter_perf, ...)
and fit each collective's latency and bandwidth.

`parse_nccl_tests(text, collective=None)` returns one row per (message size, placement):
collective, size_bytes, count, type, redop, root, place ("out" = out-of-place, "in" = in-place),
time_us, algbw, busbw (GB/s as printed), wrong, ranks (the run's rank count: the `#  Rank r ...`
lines it lists, else its largest messages' bus factor) and section (which run of the log). It
reads the table rows nccl-tests prints, with or without the `root` column (added in nccl-tests
2.10), with `[rank]` prefixes and NCCL INFO lines interleaved (mpirun logs), `N/A` in #wrong, and
several tests in one log: the collective is taken from the `# Collective test starting:
all_reduce_perf` line, or from the first `*_perf` name the log mentions (the command line), or
the `collective` argument.

`fit_collectives(df, place="out")` fits, per collective and rank count, time = latency + size /
bandwidth by least squares with relative residuals ((pred - t) / t, so a 1 KiB message weighs as
much as a 1 GiB one and the latency is set by the small sizes), latency and 1 / bandwidth >= 0.
The fitted `bandwidth` is the algorithmic bandwidth (buffer bytes per second: it reproduces the
collective's time for a given buffer size); `bus_bandwidth` = bandwidth x busbw / algbw
(nccl-tests' bus factor: 2(n-1)/n for all-reduce, (n-1)/n for all-gather, reduce-scatter and
all-to-all) is what each GPU's link carries, the number to compare with a link profile's
bandwidth. `min_bytes` / `max_bytes` restrict the fit to a message-size range (e.g. the sizes a
MoE layer sends). Logs at several rank counts (-g 2, 4, 8) are fitted one rank count at a time.

`comm_costs(fits, link_bandwidth, path_latency, prior_half_bytes)` turns the fits into the
simulator's communication kernel costs (simulator/comm_cost.py) for one link: eff_max = bus
bandwidth / the link's bandwidth; the fitted latency less the path latency the engine adds itself
is floor + the per-message overhead of the size-efficiency curve (half_bytes x messages per rank
/ (bandwidth x eff_max)). One rank count cannot separate the two, so half_bytes keeps the link's
datasheet value and the floor takes the rest; all-to-all logs at several rank counts fit
half_bytes (the constant grows with the n - 1 messages per rank), and every kind measured at
several rank counts gets a floor per group size (`floors`), each reproducing its log.
`moesim calibrate --from-nccl-tests LOG... --profile CLUSTER` writes them into a cluster profile variant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from moesim.yaml_io import read_text_file

COLUMNS = ["collective", "size_bytes", "count", "type", "redop", "root", "place", "time_us", "algbw", "busbw", "wrong",
           "ranks", "section"]
_RANK_LINE = re.compile(r"^#\s*Rank\s+\d+\s")
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
    section, listed, ranks_of = 0, 0, {}  # a test run's rank count: the `#  Rank r ...` lines it lists
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw).strip()
        start = _START.search(line)
        if start:
            current = _collective(start.group(1))
            section, listed = section + 1, 0
            continue
        if _RANK_LINE.match(line):
            if rows and rows[-1]["section"] == section:  # a new run's device list after result rows
                section, listed = section + 1, 0
            listed += 1
            ranks_of[section] = listed
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
                         "algbw": alg, "busbw": bus, "wrong": _float(wrong), "ranks": 0, "section": section})
    df = pd.DataFrame(rows, columns=COLUMNS)
    if not df.empty:
        df["ranks"] = df["section"].map(ranks_of).fillna(0).astype(int)
        df.loc[df["ranks"] == 0, "ranks"] = _ranks_from_bus_factor(df[df["ranks"] == 0])
    return df


def _ranks_from_bus_factor(df: pd.DataFrame) -> pd.Series:
    """Rank counts of runs whose log lists no devices: from the bus factor busbw / algbw of each run's
    largest messages (small ones print too few digits to tell)."""
    out = pd.Series(0, index=df.index, dtype=int)
    for (_, name), g in df.groupby(["section", "collective"], sort=False):
        big = g[g["algbw"] > 0].nlargest(3, "algbw")
        if not big.empty:
            out[g.index] = _ranks(str(name), float(np.median(big["busbw"] / big["algbw"])))
    return out


def _fit_rows(g: pd.DataFrame) -> dict[str, float]:
    """time = latency + size / bandwidth over one collective's rows at one rank count (relative
    residuals, both terms >= 0), with the bus factor, ranks and the fit's own MAPE."""
    from scipy.optimize import lsq_linear

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
    return {"latency": latency, "bandwidth": bandwidth, "bus_bandwidth": bandwidth * factor,
            "bus_factor": factor, "ranks": int(g["ranks"].iloc[0]), "n": int(len(g)),
            "min_bytes": float(size.min()), "max_bytes": float(size.max()),
            "mape": float(np.mean(np.abs(pred - t) / t))}


def fit_collectives(df: pd.DataFrame, place: str = "out", min_bytes: float = 0.0,
                    max_bytes: float = float("inf")) -> dict[str, dict]:
    """Per collective: latency (s), bandwidth (algorithmic, bytes/s), bus_bandwidth (bytes/s),
    bus_factor, ranks (from the bus factor), n (rows fitted), min_bytes / max_bytes (sizes fitted)
    and mape (of the fit on its own rows) -- of its largest rank count; and `by_ranks`, the same per
    rank count where the logs hold several (nccl-tests at -g 2, 4, 8: fitted one by one, since
    latency and bandwidth both change with the group)."""
    out: dict[str, dict] = {}
    size_ok = (df["size_bytes"] >= min_bytes) & (df["size_bytes"] <= max_bytes)
    sel = df[(df["place"] == place) & usable_rows(df) & size_ok]
    if sel.empty:
        return out
    for name, g in sel.groupby("collective", sort=False):
        by = {int(r): _fit_rows(rows) for r, rows in g.groupby("ranks", sort=True)}
        top = dict(by[max(by)])
        if len(by) > 1:
            top["by_ranks"] = by
        out[str(name)] = top
    return out


# nccl-tests names of the collectives the simulator runs, and its comm kinds (simulator/comm_cost.py)
COMM_KIND = {"alltoall": "all_to_all", "all_reduce": "all_reduce", "all_gather": "all_gather",
             "reduce_scatter": "reduce_scatter"}


def messages_per_rank(kind: str, ranks: int) -> int:
    """Peer messages on a rank's busiest link in the engine's form of a collective over a switch (its
    uplink): an all-to-all sends one to every peer; NCCL's rings one to the ring neighbour however
    many steps they take."""
    return ranks - 1 if kind == "all_to_all" else 1


def link_messages(routes, kind: str, ranks: int) -> int:
    """Peer messages on the busiest link when ranks 0..ranks-1 of `routes` run a collective of `kind`
    (every pair for an all-to-all, ring neighbours otherwise): what the per-message overhead is paid
    for in series (a switch's uplink carries them all; a full mesh gives each pair its own link)."""
    n = routes.num_devices
    src = np.repeat(np.arange(ranks), ranks)
    dst = np.tile(np.arange(ranks), ranks)
    if kind != "all_to_all":
        src, dst = np.arange(ranks), (np.arange(ranks) + 1) % ranks
    keep = src != dst
    pairs = src[keep] * n + dst[keep]
    if not pairs.size:
        return 0
    links = np.concatenate([routes.pair_links[routes.pair_ptr[p]:routes.pair_ptr[p + 1]] for p in pairs])
    return int(np.bincount(links).max()) if links.size else 0


def _ranks(name: str, factor: float) -> int:
    """Ranks from nccl-tests' bus factor: (n-1)/n for all-to-all and all-gather, 2(n-1)/n for all-reduce."""
    if not np.isfinite(factor) or factor <= 0:
        return 0
    scale = 2.0 if name == "all_reduce" else 1.0
    return int(round(scale / (scale - factor))) if factor < scale else 0


def log_hosts(text: str) -> int:
    """Distinct hosts in a log's `#  Rank  0 Group  0 Pid 123 on HOST device ...` lines (0: none listed)."""
    return len(set(re.findall(r"#\s*Rank\s+\d+\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)", text)))


def comm_costs(fits: dict[str, dict], link_bandwidth: float, path_latency: float,
               prior_half_bytes: dict[str, float] | None = None,
               messages: Callable[[str, int], int] = messages_per_rank) -> tuple[dict, list[str]]:
    """The simulator's comm kernel costs {kind: {floor, efficiency, half_bytes[, floors]}} of the
    collectives in `fits` (`fit_collectives`) on a link of `link_bandwidth` (B/s, before efficiency)
    whose device-to-device paths take `path_latency` (the latency the engine adds itself, once per
    collective: its flows' path; a measured all-reduce floor stands for the ring's steps, which the
    engine then does not add, simulator/allreduce.py); and warnings.

    At one rank count n the fitted constant c is floor + path latency + m(n) x half_bytes / (bandwidth
    x eff), m(n) the messages on a rank's busiest link (`messages`: `link_messages` of the cluster,
    else `messages_per_rank`, a switch): one log cannot tell the floor
    from the per-message overhead, so half_bytes keeps the link's datasheet value (`prior_half_bytes`,
    the size-efficiency curve) and the floor takes the rest. All-to-all logs at several rank counts
    fit half_bytes too (c grows with n - 1 by half_bytes / (bandwidth x eff)); every kind measured
    at several rank counts gets `floors` per group size, each reproducing its own log."""
    costs, warnings = {}, []
    prior = prior_half_bytes or {}
    for name, fit in fits.items():
        kind = COMM_KIND.get(name)
        if kind is None:
            continue
        by = fit.get("by_ranks") or {fit["ranks"]: fit}
        bus = np.array([f["bus_bandwidth"] for f in by.values()], dtype=float)
        bus = bus[np.isfinite(bus)]
        eff = float(np.median(bus)) / link_bandwidth if bus.size else 1.0
        if eff > 1.0:
            warnings.append(f"{name}: bus bandwidth {float(np.median(bus)) / 1e9:.0f} GB/s is above the link's "
                            f"{link_bandwidth / 1e9:.0f} GB/s (NVLS, in-network reduction?); efficiency set to 1")
            eff = 1.0
        per_message = 1.0 / (link_bandwidth * eff)  # link seconds per byte of message overhead
        ranks = sorted(by)
        const = np.array([by[n]["latency"] - path_latency for n in ranks])
        msgs = np.array([max(messages(kind, n), 1) for n in ranks], dtype=float)
        half = float(prior.get(kind, 0.0))
        if kind == "all_to_all" and len(set(msgs.tolist())) > 1:  # c - latency = floor + m(n) x half / (bw x eff)
            from scipy.optimize import lsq_linear

            res = lsq_linear(np.column_stack([np.ones_like(msgs), msgs * per_message]), const,
                             bounds=([0.0, 0.0], [np.inf, np.inf]))
            half = float(res.x[1])
        overhead = msgs * half * per_message
        if (const - overhead < 0).any():  # the datasheet's per-message overhead is more than was measured
            half = float(max(np.min(np.maximum(const, 0.0) / (msgs * per_message)), 0.0))
            warnings.append(f"{name}: the measured latency leaves no room for {prior.get(kind, 0.0):.0f} B of "
                            f"per-message overhead; half_bytes set to {half:.0f} B")
            overhead = msgs * half * per_message
        floors = const - overhead
        if (floors < 0).any():
            warnings.append(f"{name}: fitted latency {by[ranks[int(np.argmin(floors))]]['latency'] * 1e6:.1f} us is "
                            f"below the path latency the simulator adds ({path_latency * 1e6:.1f} us); floor set to 0")
        floors = np.maximum(floors, 0.0)
        cost = {"floor": float(floors[-1]), "efficiency": float(eff), "half_bytes": half}
        if len(ranks) > 1:
            cost["floors"] = {int(n): float(f) for n, f in zip(ranks, floors)}
        costs[kind] = cost
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
    ranks = max([n for f in fits.values() for n in (f.get("by_ranks") or {f["ranks"]: f})] + [1])
    nodes = max(-(-ranks // node.devices_per_node), 2) if multi_node else 1
    probe = cluster.model_copy(update={"nodes": nodes, "collectives": {}})
    routes = compute_routes(build_topology(probe))

    def messages(kind: str, n: int) -> int:
        return link_messages(routes, kind, n) if n <= routes.num_devices else messages_per_rank(kind, n)

    other = node.devices_per_node if multi_node else 1
    path_latency = float(routes.pair_latency[0, other]) if routes.num_devices > other else 0.0
    prior = {kind: c.half_bytes for kind, c in link.collectives.items()}
    costs, warnings = comm_costs(fits, link.bandwidth, path_latency, prior, messages)
    if not costs:
        raise ValueError("the logs hold none of the collectives the simulator costs (alltoall_perf, all_reduce_perf, "
                         "all_gather_perf, reduce_scatter_perf)")
    data = cluster.model_dump(mode="json", exclude_defaults=True)
    data["name"] = f"{cluster.name}-nccl"
    collectives = {k: dict(v) for k, v in data.get("collectives", {}).items()}
    sources = dict(data.get("sources", {}))
    names = ", ".join(logs)
    for kind, cost in costs.items():
        collectives.setdefault(kind, {})[link.name] = cost
        fit = fits[next(n for n, k in COMM_KIND.items() if k == kind and n in fits)]
        per = fit.get("by_ranks") or {fit["ranks"]: fit}
        measured = "; ".join(f"{n} ranks: latency {f['latency'] * 1e6:.1f} us, bus bandwidth "
                             f"{f['bus_bandwidth'] / 1e9:.1f} GB/s over {int(f['n'])} sizes "
                             f"{int(f['min_bytes'])}-{int(f['max_bytes'])} B, MAPE {f['mape']:.1%}"
                             for n, f in per.items())
        curve = ("half_bytes fitted across rank counts" if kind == "all_to_all" and len(per) > 1
                 else "half_bytes kept from the link's datasheet (one log cannot separate it from the floor)")
        sources[f"collectives.{kind}.{link.name}"] = (
            f"fitted from nccl-tests {names}{' (' + date + ')' if date else ''}: {measured}; {curve}")
    data["collectives"] = collectives
    data["sources"] = sources
    return data, warnings
