"""The report of a load sweep: serving runs of one deployment at increasing load (closed-loop users
or open-loop arrival rate), read back from their run directories.

`sweep_table` is one row per point with the numbers of each run's summary.json (metrics.serving),
unchanged: load, offered and achieved requests/s and whether the point is saturated (achieved short
of offered, see serving/results.offered_and_achieved), requests/s, output tokens/s (total and per GPU), TTFT / TPOT p50 and p99, E2E p50
and the goodput share. `write_sweep_report` writes report.html (self-contained: the plot embedded as
a data URI, the table as a data-URI download) and report.md beside the PNG and CSV, with the table,
the throughput-latency plot, offered against achieved load (reports/load_plot.py) and where latency turns up (the knee: the first point whose p99 TPOT
exceeds KNEE_FACTOR times that of the lowest load) or saturates. Every number is simulated, a model output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.errors import MoesimError
from moesim.reports.html_page import Figure, Table, write_page
from moesim.reports.load_plot import LOAD_PNG, offered_vs_achieved
from moesim.reports.serving_plots import throughput_latency

KNEE_FACTOR = 2.0
SWEEP_PNG = "throughput_latency.png"
SWEEP_CSV = "sweep.csv"
# sweep_table's columns: (name, path into metrics.serving); "load" is the point's label
COLUMNS = (
    ("offered_requests_per_s", ("load", "offered_requests_per_s")),
    ("achieved_requests_per_s", ("load", "achieved_requests_per_s")),
    ("saturated", ("load", "saturated")),  # 1.0 / 0.0, NaN where a point is not judged
    ("requests_per_s", ("throughput", "requests_per_s")),
    ("output_tokens_per_s", ("throughput", "output_tokens_per_s")),
    ("output_tokens_per_s_per_gpu", ("throughput", "output_tokens_per_s_per_gpu")),
    ("ttft_p50_s", ("latency", "ttft_s", "p50")),
    ("ttft_p99_s", ("latency", "ttft_s", "p99")),
    ("tpot_p50_s", ("latency", "tpot_s", "p50")),
    ("tpot_p99_s", ("latency", "tpot_s", "p99")),
    ("e2e_p50_s", ("latency", "e2e_s", "p50")),
    ("goodput_share", ("goodput", "share")),
)
HEADERS = ["load", "offered req/s", "achieved req/s", "saturated", "requests/s", "output tokens/s",
           "output tokens/s per GPU", "TTFT p50", "TTFT p99",
           "TPOT p50", "TPOT p99", "E2E p50", "goodput share"]


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A finished serving run's summary.json; MoesimError when it is missing, unreadable or not serving."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MoesimError(f"cannot use {run_dir} in a load sweep: it has no summary.json (not a finished run "
                          "directory); simulate the serving config first, or drop the point") from None
    except (OSError, ValueError) as err:
        raise MoesimError(f"cannot use {run_dir} in a load sweep: summary.json could not be read as JSON "
                          f"({err}); simulate the point again") from None
    if not isinstance(summary, dict) or not isinstance((summary.get("metrics") or {}).get("serving"), dict):
        raise MoesimError(f"cannot use {run_dir} in a load sweep: its summary.json has no metrics.serving, so it "
                          "is a fixed-batch run; a sweep point is a run of a config with a serving: section")
    return summary


def _get(d: Any, path: Sequence[str]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return float(d)


def _row(label: str, serving: dict[str, Any]) -> dict[str, Any]:
    return {"load": label, **{name: _get(serving, path) for name, path in COLUMNS}}


def sweep_table(points: Sequence[tuple[str, Path]]) -> pd.DataFrame:
    """One row per (label, run directory), in the given order: the load label and the numbers of
    the run's summary.json metrics.serving (seconds, shares as fractions; NaN where undefined)."""
    rows = [_row(label, read_summary(run)["metrics"]["serving"]) for label, run in points]
    return pd.DataFrame(rows, columns=["load"] + [name for name, _ in COLUMNS]).astype(
        {name: float for name, _ in COLUMNS})


def knee(table: pd.DataFrame, factor: float = KNEE_FACTOR) -> tuple[int, int] | None:
    """(row of the knee, row of the baseline): the baseline is the lowest load with a p99 TPOT, the
    knee the first later row whose p99 TPOT exceeds `factor` times the baseline's; None if none does."""
    tpot = table["tpot_p99_s"].to_numpy(dtype=float)
    base = next((i for i, v in enumerate(tpot) if v == v), None)
    if base is None:
        return None
    for i in range(base + 1, len(tpot)):
        if tpot[i] == tpot[i] and tpot[i] > factor * tpot[base]:
            return i, base
    return None


def _time(x: float) -> str:
    if x != x:
        return "–"
    if abs(x) >= 1.0:
        return f"{x:.3g} s"
    return f"{x * 1e3:.3g} ms" if abs(x) >= 1e-3 or x == 0 else f"{x * 1e6:.3g} µs"


def _sig(x: float) -> str:
    if x != x:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _pct(x: float) -> str:
    return "–" if x != x else f"{x * 100:.0f}%"


def knee_sentence(table: pd.DataFrame, factor: float = KNEE_FACTOR) -> str:
    """Where latency turns up, in words."""
    if not len(table) or table["tpot_p99_s"].isna().all():
        return "No point has a p99 TPOT (no measured request finished with two or more output tokens), so the " \
               "sweep shows no knee."
    found = knee(table, factor)
    tpot = table["tpot_p99_s"]
    base = int(tpot.notna().to_numpy().argmax())
    b = table.iloc[base]
    saturated = saturation_sentence(table)
    if found is None and saturated:
        return (f"{saturated} p99 TPOT stays within {factor:g}x of the lowest load's ({_time(b['tpot_p99_s'])} at "
                f"{b['load']}), so TPOT alone does not show it.")
    if found is None:
        return (f"Latency does not turn up in this range: p99 TPOT stays within {factor:g}x of the lowest load's "
                f"({_time(b['tpot_p99_s'])} at {b['load']}) at every point, the highest being "
                f"{_time(float(tpot.max()))}.")
    k = table.iloc[found[0]]
    prev = table.iloc[found[0] - 1]
    return (f"Latency turns up at {k['load']}: p99 TPOT {_time(k['tpot_p99_s'])}, "
            f"{k['tpot_p99_s'] / b['tpot_p99_s']:.1f}x the {_time(b['tpot_p99_s'])} at the lowest load "
            f"({b['load']}), the first point above {factor:g}x; output tokens/s per GPU there "
            f"{_sig(k['output_tokens_per_s_per_gpu'])} (against {_sig(prev['output_tokens_per_s_per_gpu'])} "
            f"at {prev['load']})." + (f" {saturated}" if saturated else ""))


def _yes_no(x: float) -> str:
    return "–" if x != x else ("yes" if x else "no")


def saturated_rows(table: pd.DataFrame) -> list[int]:
    """Rows whose deployment did not keep up with the offered load."""
    if "saturated" not in table:
        return []
    return [i for i, v in enumerate(table["saturated"].to_numpy(dtype=float)) if v == 1.0]


def saturation_sentence(table: pd.DataFrame) -> str:
    """The saturated points in words, or "" when none is."""
    rows = saturated_rows(table)
    if not rows:
        return ""
    parts = []
    for i in rows:
        r = table.iloc[i]
        if r["achieved_requests_per_s"] == r["achieved_requests_per_s"]:
            parts.append(f"{r['load']} (achieved {_sig(r['achieved_requests_per_s'])} of "
                         f"{_sig(r['offered_requests_per_s'])} req/s offered)")
        else:
            parts.append(f"{r['load']} (requests left unfinished at the horizon)")
    return ("Saturated at " + ", ".join(parts) + ": the deployment finishes requests more slowly than they arrive, "
            "so its queue grows for as long as the load lasts and the latencies there depend on the run's length.")


def _cells(row: pd.Series) -> list[str]:
    return [str(row["load"]), _sig(row["offered_requests_per_s"]), _sig(row["achieved_requests_per_s"]),
            _yes_no(row["saturated"]), _sig(row["requests_per_s"]), _sig(row["output_tokens_per_s"]),
            _sig(row["output_tokens_per_s_per_gpu"]), _time(row["ttft_p50_s"]), _time(row["ttft_p99_s"]),
            _time(row["tpot_p50_s"]), _time(row["tpot_p99_s"]), _time(row["e2e_p50_s"]), _pct(row["goodput_share"])]


def _slo(serving: dict[str, Any]) -> str:
    slo = (serving.get("goodput") or {}).get("slo") or {}
    limits = [f"{label} <= {_time(float(v))}" for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"))
              if (v := slo.get(key)) is not None]
    return " and ".join(limits) if limits else "none given (every measured finished request counts)"


def write_sweep_report(points: list[tuple[str, Path]], out_dir: Path, title: str,
                       shown: list[tuple[str, Path]] | None = None) -> Path:
    """Write out_dir/report.html (self-contained) and report.md, the throughput-latency PNG and
    sweep.csv for the serving runs `points` ((label, run directory), in load order); return the HTML.
    `shown` are the run directories as the report names them (where they will be once the sweep
    folder being written is in place), default `points`."""
    if not points:
        raise MoesimError("a load sweep report needs at least one point (label, serving run directory)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [(label, read_summary(run)) for label, run in points]
    serving = [(label, s["metrics"]["serving"]) for label, s in summaries]
    table = pd.DataFrame([_row(label, sv) for label, sv in serving],
                         columns=["load"] + [name for name, _ in COLUMNS]).astype({name: float for name, _ in COLUMNS})
    shown = shown or points
    table.assign(run_dir=[str(run) for _, run in shown]).to_csv(out / SWEEP_CSV, index=False)
    # the plot's own title adds "throughput against latency": name it after the runs, not the page
    throughput_latency(serving, out, SWEEP_PNG, title=str(summaries[0][1].get("name") or "load sweep"))

    first = summaries[0][1]
    r = first.get("resolved") or {}
    sv0 = serving[0][1]
    req0 = sv0.get("requests") or {}
    source = (first.get("metrics") or {}).get("source") or "model (simulated)"
    found = knee(table)
    unfinished = [f"{label} ({(sv.get('requests') or {}).get('unfinished')})" for label, sv in serving
                  if (sv.get("requests") or {}).get("unfinished")]
    facts = [("points", f"{len(points)}: " + ", ".join(label for label, _ in points)),
             ("deployment", f"{r.get('model', '–')} on {r.get('cluster', '–')} ({r.get('devices', '–')} × "
                            f"{r.get('device', '–')}), ep={r.get('ep', '–')}, tp={r.get('tp', '–')}, "
                            f"dp={r.get('dp', '–')}; {sv0.get('num_gpus', '–')} GPU(s) per point"),
             ("SLO (goodput)", _slo(sv0)),
             ("warm-up excluded", f"the earliest {_pct(float(req0.get('warmup_share') or 0.0))} of each point's "
                                  "requests are left out of every statistic"),
             ("run directories", "; ".join(f"{label}: {run}" for label, run in shown)),
             ("source", f"every number simulated, a model output of moesim, not a measurement. Source: {source}")]
    blocks: list[tuple[str, object]] = [
        ("h2", "Per load point"),
        ("note", "Each row is one serving run (simulated): numbers from its summary.json (metrics.serving), warm-up "
                 "excluded. Output tokens/s counts every token emitted over the measured window (first measured "
                 "arrival to last measured finish); goodput share = measured finished requests meeting the SLO / "
                 "measured finished requests."
                 + (f" The knee row ({table.iloc[found[0]]['load']}) is highlighted." if found else "")),
        ("table", Table(HEADERS, [_cells(row) for _, row in table.iterrows()],
                        highlight=found[0] if found else None)),
    ]
    if unfinished:
        blocks.append(("note", "Requests still unfinished at the horizon (not in the latency statistics, so the "
                               "latencies there understate the overload): " + ", ".join(unfinished) + "."))
    blocks += [("files", [SWEEP_CSV]),
               ("figure", Figure(SWEEP_PNG, "Throughput against latency",
                                 "Output tokens/s per GPU against TPOT (left) and TTFT (right), p50 and p99, one "
                                 "point per load, labelled. Simulated; warm-up excluded."))]
    if offered_vs_achieved(table, out, title=str(summaries[0][1].get("name") or "load sweep")) is not None:
        blocks.append(("figure", Figure(LOAD_PNG, "Offered against achieved load",
                                        "Achieved requests/s (finished) against offered requests/s (arriving) per "
                                        "load point, with the line achieved = offered and the 90% saturation "
                                        "threshold (left); output tokens/s against offered load (right). From each "
                                        "run's metrics.serving.load and throughput; simulated.")))
    intro = [("verdict", ("mixed" if found or saturated_rows(table) else "good", knee_sentence(table)))]
    return write_page(out, "report", title, facts, blocks, intro)
