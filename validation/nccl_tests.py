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
each GPU's link carries, the number to compare with a link profile's bandwidth.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

COLUMNS = ["collective", "size_bytes", "count", "type", "redop", "root", "place", "time_us", "algbw", "busbw", "wrong"]
_PREFIX = re.compile(r"^\s*(\[\d+\]\s*)+")
_START = re.compile(r"Collective test starting:\s*(\S+)")
_BINARY = re.compile(r"\b([a-z_]+_perf)\b")


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


def fit_collectives(df: pd.DataFrame, place: str = "out") -> dict[str, dict[str, float]]:
    """Per collective: latency (s), bandwidth (algorithmic, bytes/s), bus_bandwidth (bytes/s),
    bus_factor, n (rows fitted) and mape (of the fit on its own rows)."""
    from scipy.optimize import lsq_linear

    out: dict[str, dict[str, float]] = {}
    sel = df[(df["place"] == place) & (df["time_us"] > 0) & (df["size_bytes"] > 0)]
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
                          "bus_factor": factor, "n": int(len(g)), "mape": float(np.mean(np.abs(pred - t) / t))}
    return out
