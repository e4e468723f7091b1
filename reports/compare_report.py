"""Side-by-side report of several simulated runs: report.html (self-contained), report.md, PNGs, comparison.csv.

Reads each run directory from disk (summary.json, phases.parquet, layers.csv), like the run
report, so it compares runs made earlier. The first run is the reference: every later run gets a
"change vs first" column, and a change is marked better (green) or worse (red) by the metric's
direction (lower is better for latency, stalls, stragglers, memory and traffic; higher for
throughput and the cache hit rate); a change in a metric with no direction is marked grey. Runs
that did different work than the first (another model, step count, phase or request count;
reports/compare_guard.py) are named in a warning at the top and their changes marked grey. All
numbers are model outputs of the simulator.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.reports.compare_guard import comparison_warning, mismatches
from moesim.reports.html_page import Figure, Table, legend_below, pyplot, save_figure
from moesim.reports.run_report import (
    PHASE_ORDER,
    RUN_CSS,
    Block,
    Metric,
    RunData,
    _flatten,
    value_axis,
    headline_metrics,
    load_run,
    phase_color,
    render_html,
    render_markdown,
    step_latency,
    time_unit,
)

COMPARE_CSS = RUN_CSS + """
td.better { background: #d4efd4; }
td.worse { background: #f7d4d4; }
td.changed { background: #ececec; }
"""

STEPS_PNG = "compare-step-latency.png"
SHARE_PNG = "compare-time-share.png"
EXPERT_PNG = "compare-expert-time-by-layer.png"
OFFLOAD_PNG = "compare-offload.png"

SAME = 1e-9  # relative difference below which two values count as equal
MAX_CONFIG_ROWS = 60


# ---------------------------------------------------------------- names and metrics


def run_names(runs: list[RunData]) -> list[str]:
    """summary.json names; duplicates get their folder name, and a number if that is not enough."""
    names = [r.name for r in runs]
    counts = pd.Series(names).value_counts()
    names = [f"{n} ({r.path.name})" if counts[n] > 1 else n for n, r in zip(names, runs)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n} #{seen[n]}")
    return out


def change(first: float | None, value: float | None, better: str | None) -> tuple[str, str, float | None]:
    """(text, css class, percent) of a later run's value against the first run's."""
    if first is None or value is None or pd.isna(first) or pd.isna(value):
        return "–", "", None
    if abs(value - first) <= SAME * max(abs(first), abs(value), 1e-300):
        return "±0%", "", 0.0
    if better == "lower":
        cls = "better" if value < first else "worse"
    elif better == "higher":
        cls = "better" if value > first else "worse"
    else:
        cls = "changed"
    if first == 0:
        return "n/a (first is 0)", cls, None
    pct = (value - first) / abs(first) * 100
    return f"{pct:+.1f}%", cls, pct


def metric_rows(runs: list[RunData]) -> tuple[list[str], list[dict[str, Metric]]]:
    """Metric keys in order (dropping those no run has) and each run's metrics by key."""
    per_run = [{m.key: m for m in headline_metrics(r.summary, for_comparison=True)} for r in runs]
    keys: list[str] = []
    for d in per_run:
        keys += [k for k in d if k not in keys]
    keys = [k for k in keys if any(k in d and d[k].value is not None for d in per_run)]
    return keys, per_run


def comparison_table(runs: list[RunData], names: list[str]) -> tuple[list[str], list[list[str]], list[list[str]],
                                                                         pd.DataFrame]:
    """Headers, cell texts, cell classes and the raw comparison frame (for comparison.csv)."""
    keys, per_run = metric_rows(runs)
    headers = ["metric", names[0]]
    for n in names[1:]:
        headers += [n, f"change vs first: {n}"]
    rows, classes, records = [], [], []
    for k in keys:
        ms = [d.get(k) for d in per_run]
        ref = next(m for m in ms if m is not None)
        label = ref.label + {"lower": " (lower is better)", "higher": " (higher is better)"}.get(ref.better or "", "")
        first = ms[0].value if ms[0] is not None else None
        row = [label, ms[0].text if ms[0] is not None else "–"]
        cls = ["", ""]
        rec: dict[str, Any] = {"metric": k, "label": ref.label, "unit": ref.unit, "better": ref.better or "",
                               names[0]: first}
        for n, m in zip(names[1:], ms[1:]):
            value = m.value if m is not None else None
            text, c, pct = change(first, value, ref.better)
            if m is not None and ms[0] is not None and value is not None and m.text == ms[0].text:
                text, c, pct = "±0%", "", 0.0  # a difference too small to show is no change
            row += [m.text if m is not None else "–", text]
            cls += [c, c]
            rec[n] = value
            rec[f"change_vs_first_pct: {n}"] = pct
        rows.append(row)
        classes.append(cls)
        records.append(rec)
    return headers, rows, classes, pd.DataFrame(records)


def class_table_html(headers: list[str], rows: list[list[str]], classes: list[list[str]]) -> str:
    """An HTML table whose cells carry their own class (better / worse / changed)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row, cls in zip(rows, classes):
        cells = "".join((f'<td class="{c}">' if c else "<td>") + html.escape(t) + "</td>" for t, c in zip(row, cls))
        body.append(f"<tr>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def class_table_markdown(headers: list[str], rows: list[list[str]], classes: list[list[str]]) -> str:
    """The same table in Markdown; better / worse changes are marked in words (and bold)."""
    def cell(t: str, c: str, is_change: bool) -> str:
        t = t.replace("|", "\\|")
        if is_change and c in ("better", "worse"):
            return f"**{t} ({c})**"
        return t

    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for row, cls in zip(rows, classes):
        lines.append("| " + " | ".join(cell(t, c, j >= 3 and (j - 3) % 2 == 0) for j, (t, c)
                                       in enumerate(zip(row, cls))) + " |")
    return "\n".join(lines)


def runs_table(runs: list[RunData], names: list[str]) -> Table:
    rows = []
    spec = [("run directory", lambda r: str(r.path)),
            ("config file", lambda r: str(r.summary.get("config_file") or "–")),
            ("model", lambda r: str(r.resolved.get("model", "–"))),
            ("cluster", lambda r: f"{r.resolved.get('cluster', '–')} ({r.num_devices} × {r.resolved.get('device', '–')})"),
            ("parallelism", lambda r: f"ep={r.resolved.get('ep', '–')} tp={r.resolved.get('tp', '–')} "
                                      f"dp={r.resolved.get('dp', '–')}"),
            ("workload", lambda r: str(((r.summary.get("config") or {}).get("workload") or {}).get("phase", "–"))),
            ("steps", lambda r: str(r.steps)),
            ("seed", lambda r: str(r.summary.get("seed", "–"))),
            ("moesim version", lambda r: str(r.summary.get("moesim_version", "–")))]
    for label, f in spec:
        rows.append([label] + [f(r) for r in runs])
    return Table(["run"] + names, rows)


def config_differences(runs: list[RunData], names: list[str]) -> Table | None:
    """Config fields (dotted paths) whose values differ between runs; None when the configs agree."""
    flat = [_flatten(r.summary.get("config") or {}) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    rows = []
    for k in keys:
        vals = [f.get(k) for f in flat]
        if len({repr(v) for v in vals}) > 1:
            rows.append([k] + ["–" if v is None else str(v) for v in vals])
    if not rows:
        return None
    if len(rows) > MAX_CONFIG_ROWS:
        rows = rows[:MAX_CONFIG_ROWS] + [[f"… {len(rows) - MAX_CONFIG_ROWS} more"] + [""] * len(runs)]
    return Table(["config field"] + names, rows)


# ---------------------------------------------------------------- plots


def _run_colors(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]


def plot_run_lines(series: list[pd.Series], names: list[str], path: Path, xlabel: str, ylabel: str, title: str,
                   with_mean: bool = False) -> None:
    """One line per run over steps or layers (seconds, shown in a readable unit)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10.0, 4.5))
    scale, unit = time_unit(max(float(s.max()) for s in series if len(s)))
    values = np.concatenate([s.to_numpy() * scale for s in series if len(s)])
    for i, (s, n, c) in enumerate(zip(series, names, _run_colors(len(names)))):
        if len(s):
            label = f"{n} (mean {s.mean() * scale:.4g} {unit})" if with_mean else n
            ax.plot(s.index, s.to_numpy() * scale, marker="o" if len(s) <= 64 else None, ms=3, color=c,
                    ls="-" if i < 10 else "--", label=label)
    value_axis(ax, values, xlabel, f"{ylabel} ({unit}")
    ax.set_title(title)
    # under the plot, runs side by side: long run names beside it would squeeze the data
    legend_below(ax, ncol=min(3, len(names)), offset=-0.14, fontsize="small")
    save_figure(fig, path)


def plot_step_latency(lats: list[pd.Series], names: list[str], path: Path) -> None:
    plot_run_lines(lats, names, path, "step", "step latency", "Step latency per step (simulated)", with_mean=True)


def plot_time_share(runs: list[RunData], names: list[str], path: Path) -> None:
    """One horizontal bar per run: share of device time per phase (and idle)."""
    plt = pyplot()
    shares = [r.metrics.get("time_share") or {} for r in runs]
    present = set().union(*[{k for k, v in s.items() if v > 0} for s in shares])
    phases = [p for p in PHASE_ORDER if p in present] + sorted(p for p in present if p not in PHASE_ORDER
                                                              and p != "idle")
    if "idle" in present:
        phases.append("idle")
    fig, ax = plt.subplots(figsize=(10.0, max(2.8, 1.6 + 0.55 * len(runs))))
    y = np.arange(len(runs))[::-1]
    left = np.zeros(len(runs))
    for p in phases:
        v = np.array([s.get(p, 0.0) for s in shares]) * 100
        ax.barh(y, v, left=left, color=phase_color(p), label=p, height=0.6)
        for yi, li, vi in zip(y, left, v):
            if vi >= 6:
                ax.text(li + vi / 2, yi, f"{vi:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if p in ("attention", "expert", "offload_stall", "tp_allreduce") else "black")
        left += v
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of device time (%)")
    ax.set_title("Where the time goes, per run (simulated; all devices and steps)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="phase")
    save_figure(fig, path)


def expert_time_by_layer(run: RunData) -> pd.Series:
    """Per MoE layer, the slowest device's expert time, mean over steps (seconds)."""
    layers = run.layers
    if layers is None or not len(layers) or "expert_time_max_s" not in layers:
        return pd.Series(dtype=float)
    return layers.groupby("layer")["expert_time_max_s"].mean()


def plot_expert_time(series: list[pd.Series], names: list[str], path: Path) -> None:
    plot_run_lines(series, names, path, "model layer (MoE layers only)", "slowest device's expert time",
                   "Straggler expert time per MoE layer (simulated, mean over steps)")


def plot_offload(runs: list[RunData], names: list[str], path: Path) -> None:
    """Cache hit rate and offload stall share per run (runs without offloading are labelled so)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, max(3.0, 1.6 + 0.5 * len(runs))), sharey=True)
    y = np.arange(len(runs))[::-1]
    colors = _run_colors(len(runs))
    for ax, what in ((left, "hit"), (right, "stall")):
        for yi, r, c in zip(y, runs, colors):
            off = r.offload
            if not off:
                ax.text(2, yi, "no offloading", va="center", fontsize=9, color="#666666", style="italic")
                continue
            v = (off.get("hit_rate") if what == "hit" else (off.get("stall_s") or {}).get("share_of_device_time"))
            if v is None:
                continue
            ax.barh(yi, v * 100, color=c, height=0.6)
            ax.text(v * 100 + 1, yi, f"{v * 100:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, 112)
        ax.set_ylim(-0.6, len(runs) - 0.4)
    left.set_yticks(y)
    left.set_yticklabels(names, fontsize=9)
    left.set_xlabel("expert cache hit rate (%, higher is better)")
    right.set_xlabel("offload stall share of device time (%, lower is better)")
    left.set_title("Cache hit rate (simulated)")
    right.set_title("Waiting for expert weights (simulated)")
    save_figure(fig, path)


# ---------------------------------------------------------------- entry point


def write_comparison_report(run_dirs: list, out_dir: str | Path) -> Path:
    """Write report.html (self-contained), report.md, compare-*.png and comparison.csv into `out_dir`.

    The first run is the reference of every "change vs first" column. Fewer than two runs, or a
    directory without summary.json, raises MoesimError.
    """
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise MoesimError(f"a comparison needs at least two run directories, got {len(dirs)}"
                          + (f" ({dirs[0]})" if dirs else "") + "; pass two or more directories written by "
                          "`moesim simulate --out DIR` (the first is the reference).")
    runs = [load_run(d) for d in dirs]
    names = run_names(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    headers, rows, classes, frame = comparison_table(runs, names)
    frame.to_csv(out / "comparison.csv", index=False)
    first = names[0]
    src = {str(r.metrics.get("source")) for r in runs if r.metrics.get("source")}
    warning = comparison_warning(runs, names)
    for j, why in enumerate(mismatches(runs, names)):  # not like for like: changes shown, not judged
        if why:
            for cls in classes:
                cls[2 + 2 * j:4 + 2 * j] = ["changed" if c in ("better", "worse") else c for c in cls[2 + 2 * j:4 + 2 * j]]
    blocks: list[Block] = ([Block("raw", (f'<p class="verdict mixed">{html.escape(warning)}</p>', f"**{warning}**"))]
                           if warning else [])
    blocks += [
        Block("note", "Every number in this report is simulated, a model output of moesim, not a measurement. "
                      "Source: " + ("; ".join(sorted(src)) or "model (simulated)") + "."),
        Block("h2", "Runs"), Block("table", runs_table(runs, names)),
        Block("h2", "Headline metrics"),
        Block("note", f"Each later run is compared with the first ({first}); changes are percent of the first "
                      "run's value. Green = better, red = worse (lower is better for latency, stalls, stragglers, "
                      "memory and traffic; higher for throughput and hit rate); grey = changed, no direction."),
        Block("raw_table", (class_table_html(headers, rows, classes), class_table_markdown(headers, rows, classes))),
        Block("links", ["comparison.csv"]),
    ]
    diff = config_differences(runs, names)
    blocks += [Block("h2", "Config differences")]
    blocks.append(Block("table", diff) if diff else Block("note", "The runs' resolved configs are identical."))

    blocks.append(Block("h2", "Figures"))
    lats = [step_latency(r) for r in runs]
    if any(len(s) for s in lats):
        plot_step_latency(lats, names, out / STEPS_PNG)
        blocks.append(Block("figure", Figure(STEPS_PNG, "Step latency per step",
                                             "Latency of every simulated step of each run.")))
    else:
        blocks.append(Block("note", "Step latency per step: not shown, no run has phases.parquet."))
    plot_time_share(runs, names, out / SHARE_PNG)
    blocks.append(Block("figure", Figure(SHARE_PNG, "Time share per phase",
                                         "Share of device time each run spends in each phase (all devices and "
                                         "steps); idle is what is left of the simulated time.")))
    expert = [expert_time_by_layer(r) for r in runs]
    if any(len(s) for s in expert):
        plot_expert_time(expert, names, out / EXPERT_PNG)
        blocks.append(Block("figure", Figure(EXPERT_PNG, "Straggler expert time per MoE layer",
                                             "Modelled routed-expert time of the slowest device at each MoE layer, "
                                             "mean over steps: what every device of the layer waits for. The x "
                                             "axis numbers model layers (layers.csv), showing only MoE layers.")))
    else:
        blocks.append(Block("note", "Expert time per layer: not shown, no run has MoE layers in layers.csv."))
    if any(r.offload for r in runs):
        plot_offload(runs, names, out / OFFLOAD_PNG)
        blocks.append(Block("figure", Figure(OFFLOAD_PNG, "Expert offloading",
                                             "Expert cache hit rate and the share of device time spent waiting "
                                             "for expert weights, per offloading run.")))

    title = f"Comparison of {len(runs)} runs: " + ", ".join(names)
    if len(title) > 160:
        title = f"Comparison of {len(runs)} runs (first: {first})"
    (out / "report.md").write_text(render_markdown(title, blocks), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(title, blocks, out, css=COMPARE_CSS), encoding="utf-8")
    return page

