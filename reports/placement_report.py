"""The expert-placement report of `moesim place --out DIR`: report.html and report.md with plots.

Written next to the study's methods.csv: a header with the problem and the chosen method, the
methods compared (model scores, and simulation where each placement was simulated), device
loads before and after placement, the chosen method's expert-to-device shares and copies, the
device-to-device dispatch traffic, and the MILP solves. The HTML is self-contained: the PNGs
are embedded as data URIs and the small study files (methods.csv, problem.json, placement.yaml)
as data-URI downloads, so report.html copied alone shows everything; the Markdown references
the files beside it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from moesim.placement.methods import MethodResult
from moesim.placement.problem import PlacementProblem
from moesim.reports.html_page import (CSS, Figure, Table, device_ticks, figure_html, files_html, legend_below,
                                      legend_outside, node_lines, pyplot, save_figure, table_html, table_markdown)
from moesim.studies.placement_study import PlacementStudy, pick_best

LOADS_PNG = "placement-loads.png"
BALANCE_PNG = "placement-balance-by-layer.png"
SHARES_PNG = "placement-shares.png"
COPIES_PNG = "placement-copies.png"
TRAFFIC_PNG = "placement-traffic.png"

ANNOTATE_CELLS = 400  # heatmaps with more cells than this get no per-cell numbers


# ---------------------------------------------------------------- helpers


def _result(study: PlacementStudy, method: str) -> MethodResult:
    return next(r for r in study.results if r.method == method)


def baseline_method(study: PlacementStudy) -> str:
    """The placement the chosen one is compared with: contiguous if run, else the first method."""
    names = [r.method for r in study.results]
    return "contiguous" if "contiguous" in names else names[0]


def before_after(study: PlacementStudy, chosen: str) -> tuple[str, str, str]:
    """(before, after, note) for the comparison plots: the baseline and the chosen method, or, when
    the baseline was chosen, the baseline and the most balanced other method (with a note saying so)."""
    baseline = baseline_method(study)
    others = [r for r in study.results if r.method != baseline]
    if chosen != baseline or not others:
        return baseline, chosen, ""
    other = max(others, key=lambda r: r.score.balancedness).method
    return baseline, other, (f"{chosen} is both the baseline and the chosen method, so the before/after plots "
                             f"compare it with {other}, the most balanced alternative (model).")


def _pair(before: str, after: str) -> str:
    return before if before == after else f"{before} and {after}"


def max_over_mean(device_tokens: np.ndarray) -> np.ndarray:
    """(L,) most loaded device's tokens over the mean device's, per layer (1 = balanced)."""
    mean = device_tokens.mean(axis=1)
    peak = device_tokens.max(axis=1)
    return np.divide(peak, mean, out=np.ones_like(peak, dtype=float), where=mean > 0)


def worst_layer(device_tokens: np.ndarray) -> int:
    """MoE layer whose device loads are the most imbalanced (highest max/mean)."""
    return int(np.argmax(max_over_mean(device_tokens)))


def device_traffic(problem: PlacementProblem, shares: np.ndarray) -> np.ndarray:
    """(D, D) dispatch tokens per step from source device to serving device, summed over layers."""
    return np.einsum("lse,led->lsd", problem.dispatch, shares).sum(axis=0)


def node_boundaries(node_of: np.ndarray) -> list[float]:
    """Positions between devices (d - 0.5) where the node changes, for drawing lines."""
    return [d - 0.5 for d in range(1, node_of.size) if node_of[d] != node_of[d - 1]]


def _time_scale(unit: str) -> tuple[float, str]:
    """Factor and label to show expert times: milliseconds for a fitted model, else tokens."""
    return (1e3, "ms") if unit == "s" else (1.0, unit)


# ---------------------------------------------------------------- plots


def plot_device_loads(problem: PlacementProblem, before: MethodResult, after: MethodResult, layer: int,
                      path: Path) -> None:
    """Bars of tokens per device at one MoE layer: the baseline (before) next to the method compared (after)."""
    plt = pyplot()
    D = problem.num_devices
    fig, ax = plt.subplots(figsize=(max(8.0, min(18.0, 3 + 0.22 * D)), 4.5))
    x = np.arange(D)
    same = before.method == after.method
    width = 0.8 if same else 0.4
    for i, (r, role) in enumerate([(before, "")] if same else [(before, "before, "), (after, "after, ")]):
        t = r.score.device_tokens[layer]
        ratio = max_over_mean(r.score.device_tokens[layer:layer + 1])[0]
        ax.bar(x + (0 if same else (i - 0.5) * width), t, width, color=f"C{i}",
               label=f"{r.method} ({role}max/mean {ratio:.2f})")
    ax.axhline(before.score.device_tokens[layer].mean(), color="grey", ls=":", lw=1.2, label="mean (perfect balance)")
    node_lines(ax, node_boundaries(problem.node_of))
    device_ticks(ax, D)
    ax.set_xlim(-0.6, D - 0.4)
    ax.set_xlabel("device (group-local index" + ("; dashed lines: node boundaries)" if problem.num_nodes > 1 else ")"))
    ax.set_ylabel("expert assignments per step (tokens)")
    ax.set_title(f"Tokens each device serves per step at MoE layer {layer}\n"
                 f"(the layer where {before.method} is most imbalanced; model)")
    legend_below(ax, ncol=3, offset=-0.17, fontsize="small")
    save_figure(fig, path)


def plot_balance_by_layer(problem: PlacementProblem, results: list[MethodResult], path: Path) -> None:
    """Per MoE layer, for every method: max/mean device tokens, and the slowest device's expert time."""
    plt = pyplot()
    from matplotlib.ticker import (
        LogLocator,
        MaxNLocator,
        NullFormatter,
        ScalarFormatter,
    )

    L = problem.num_layers
    scale, unit = _time_scale(problem.time_model.unit)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, min(16.0, 4 + 0.15 * L)), 7), sharex=True)
    marker = "o" if L <= 64 else None
    layers = np.arange(L)
    markers = "osD^vP*Xhp"
    for i, r in enumerate(results):  # earlier methods drawn wider, so methods that coincide stay visible
        style = {"color": f"C{i % 10}", "marker": markers[i % 10] if marker else None, "ms": 7 - 4 * i / len(results),
                 "lw": 3.5 - 2.3 * i / len(results), "label": r.method, "ls": "-" if i < 10 else "--"}
        top.plot(layers, max_over_mean(r.score.device_tokens), **style)
        bottom.plot(layers, r.score.device_time.max(axis=1) * scale, **style)
    top.axhline(1.0, color="grey", lw=0.8)
    if max(float(max_over_mean(r.score.device_tokens).max()) for r in results) > 4:
        top.set_yscale("log")  # keeps near-balanced methods apart when a baseline is far off
        top.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        top.yaxis.set_major_formatter(ScalarFormatter())
        top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("max / mean device tokens" + (" (log scale)" if top.get_yscale() == "log" else ""))
    top.set_title("Load imbalance per MoE layer (1 = perfectly balanced; model)")
    legend_outside(top, fontsize="small", title="method")
    bottom.set_ylabel(f"slowest device's expert time ({unit})")
    bottom.set_title("Straggler expert time per MoE layer (model)")
    bottom.set_xlabel("MoE layer (0 = the model's first MoE layer)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylim(bottom=0)
    save_figure(fig, path)


def plot_shares(problem: PlacementProblem, chosen: MethodResult, layer: int, path: Path) -> None:
    """(devices x experts) image of the chosen placement's token shares at one MoE layer."""
    plt = pyplot()
    E, D = problem.num_experts, problem.num_devices
    shares = chosen.placement.share_matrix(layer).T  # (D, E)
    fig, ax = plt.subplots(figsize=(max(7.0, min(16.0, 3 + E / 18)), max(3.5, min(10.0, 2 + D / 7))))
    masked = np.ma.masked_where(shares <= 0, shares)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#f2f2f2")
    im = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if E * D <= ANNOTATE_CELLS:
        for d, e in zip(*np.nonzero(shares)):
            v = shares[d, e]
            ax.text(e, d, f"{v:.2f}".rstrip("0").rstrip("."), ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 else "black")
    node_lines(ax, node_boundaries(problem.node_of), vertical=False, horizontal=True)
    device_ticks(ax, D, "y")
    if E <= 64:
        device_ticks(ax, E, "x")
    replicated = int(((shares > 0).sum(axis=0) > 1).sum())
    ax.set_xlabel("expert id")
    ax.set_ylabel("device")
    ax.set_title(f"{chosen.method}: share of each expert's tokens served per device, MoE layer {layer}\n"
                 f"{replicated} expert(s) replicated; grey = no copy")
    fig.colorbar(im, ax=ax, label="share of the expert's tokens (0-1)")
    save_figure(fig, path)


def plot_copies(problem: PlacementProblem, chosen: MethodResult, path: Path) -> None:
    """(MoE layers x devices) expert copies the chosen placement puts on each device."""
    plt = pyplot()
    copies = chosen.score.copies
    L, D = copies.shape
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 3 + D / 5)), max(3.5, min(12.0, 2 + L / 6))))
    hi = max(int(copies.max()), int(problem.slots.max()), 1)
    im = ax.imshow(copies, aspect="auto", cmap=plt.get_cmap("YlGnBu", hi + 1), vmin=-0.5, vmax=hi + 0.5,
                   interpolation="nearest")
    if L * D <= ANNOTATE_CELLS and L <= 40:
        for (l, d), v in np.ndenumerate(copies):
            ax.text(d, l, str(int(v)), ha="center", va="center", fontsize=7,
                    color="white" if v > hi * 0.6 else "black")
    node_lines(ax, node_boundaries(problem.node_of))
    device_ticks(ax, D)
    ax.set_xlabel("device")
    ax.set_ylabel("MoE layer (0 = first MoE layer)")
    slots = problem.slots
    cap = str(int(slots[0])) if (slots == slots[0]).all() else f"{int(slots.min())}-{int(slots.max())}"
    ax.set_title(f"{chosen.method}: expert copies per device and MoE layer\n(slots per device: {cap})")
    bar = fig.colorbar(im, ax=ax, label="expert copies held")
    bar.set_ticks(range(0, hi + 1, max(1, -(-(hi + 1) // 10))))
    save_figure(fig, path)


def plot_traffic(problem: PlacementProblem, before: MethodResult, after: MethodResult, path: Path) -> None:
    """Side-by-side (source x destination) dispatch tokens per step, before and after (one colour scale)."""
    plt = pyplot()
    D = problem.num_devices
    pair = [before] if before.method == after.method else [before, after]
    mats = [device_traffic(problem, r.placement.shares()) for r in pair]
    off = ~np.eye(D, dtype=bool)
    vmax = max(float(m[off].max()) if D > 1 else 0.0 for m in mats) or 1.0
    side = max(4.5, min(8.0, 2 + D / 10))
    fig, axes = plt.subplots(1, len(pair), figsize=(side * len(pair) + 1.5, side + 0.8), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("Blues").with_extremes(bad="#d9d9d9")
    for ax, r, m in zip(axes[0], pair, mats):
        shown = np.ma.masked_where(~off, m)
        im = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        if D * D <= 100:
            for (s, d), v in np.ndenumerate(m):
                if s != d:
                    ax.text(d, s, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.55 * vmax else "black")
        node_lines(ax, node_boundaries(problem.node_of), vertical=True, horizontal=True)
        device_ticks(ax, D)
        device_ticks(ax, D, "y")
        ax.set_xlabel("destination device (serves the expert)")
        ax.set_ylabel("source device (sends the token)")
        ax.set_title(f"{r.method}: {r.score.dispatch_remote:.1%} off-device, "
                     f"{r.score.dispatch_inter_node:.1%} inter-node", fontsize=10)
    fig.colorbar(im, ax=list(axes[0]), label="tokens per step, summed over MoE layers", shrink=0.85)
    fig.suptitle("Dispatch traffic between devices (model; diagonal = served locally, not shown)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- tables


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:.1%}"


def _num(fmt: str) -> Callable[[float], str]:
    return lambda x: "–" if pd.isna(x) else format(x, fmt)


def _ms(x: float) -> str:
    return "–" if pd.isna(x) else f"{x * 1e3:.4g}"


def _seconds(x: float) -> str:
    return "–" if pd.isna(x) else ("<0.01" if x < 0.01 else f"{x:.2f}")


def method_columns(unit: str) -> dict[str, tuple[str, Callable]]:
    """Column of study.table() -> (header with unit and source, formatter)."""
    _, shown = _time_scale(unit)
    return {
        "method": ("method", str),
        "balancedness": ("balancedness, mean/max (model)", _num(".3f")),
        "bottleneck_tokens": ("bottleneck tokens/step, Σ layers (model)", _num(",.0f")),
        "bottleneck_time": (f"bottleneck expert time, {shown} (model)",
                            _ms if unit == "s" else _num(",.0f")),
        "max_copies": ("max copies / device", _num(".0f")),
        "dispatch_remote": ("dispatch off-device (model)", _pct),
        "dispatch_inter_node": ("dispatch inter-node (model)", _pct),
        "traffic_time": ("all-to-all time, ms (model)", _ms),
        "flow_cross_device": ("layer→layer flow cross-device (model)", _pct),
        "flow_cross_node": ("layer→layer flow cross-node (model)", _pct),
        "solve_s": ("solve time, s", _seconds),
        "gap": ("MILP gap", _pct),
        "status": ("status", str),
        "sim_step_s": ("step time, ms (simulation)", _ms),
        "sim_straggler": ("straggler ratio (simulation)", _num(".3f")),
    }


def methods_table(study: PlacementStudy, chosen: str) -> Table:
    """study.table() with units in the headers and numbers formatted; the chosen row marked."""
    df = study.table()
    cols = method_columns(study.problem.time_model.unit)
    headers, formatters = [], []
    for c in df.columns:
        head, fmt = cols.get(c, (c, lambda x: "–" if pd.isna(x) else f"{x:.4g}" if isinstance(x, float) else str(x)))
        headers.append(head)
        formatters.append(fmt)
    rows = [[f(v) for f, v in zip(formatters, row)] for row in df.itertuples(index=False)]
    return Table(headers, rows, list(df["method"]).index(chosen))


def solve_table(results: list[MethodResult]) -> Table | None:
    """Per ILP method: subproblems, solvers, statuses, summed solver time and worst gap (None if no ILP)."""
    rows = []
    for r in results:
        if r.ilp is None:
            continue
        reps = r.ilp.reports
        rows.append([r.method, str(len(reps)), ", ".join(sorted({x.solver for x in reps})) or "–",
                     r.ilp.statuses or "–", _seconds(r.ilp.seconds), _seconds(r.seconds), _pct(r.ilp.worst_gap),
                     str(sum(x.kept_warm_start for x in reps))])
    if not rows:
        return None
    return Table(["method", "subproblems", "solver", "statuses", "solver time, s", "total time, s",
                  "worst gap", "kept warm start"], rows)


def problem_facts(study: PlacementStudy, chosen: str, baseline: str) -> list[tuple[str, str]]:
    """(label, value) lines of the header: problem size, routing provenance, chosen method."""
    p = study.problem
    prov = dict(p.provenance)
    slots = p.slots
    slot_text = str(int(slots[0])) if (slots == slots[0]).all() else f"{int(slots.min())} to {int(slots.max())}"
    steps = prov.pop("steps", None)
    step_text = f"steps {steps[0]} to {steps[1] - 1} ({steps[1] - steps[0]} steps)" if steps else "unknown"
    sample = ("in-sample: the simulation replays the steps the placement was fitted on" if study.in_sample
              else "out-of-sample: the simulation replays steps the placement was not fitted on")
    tm = p.time_model
    model = ("tokens (balance assignments)" if tm.unit != "s"
             else f"{tm.fixed * 1e6:.1f} µs per active expert copy + {tm.per_token * 1e9:.1f} ns per token")
    facts = [
        ("scenario", str(getattr(study.scenario, "name", prov.get("scenario", "–")))),
        ("experts", str(p.num_experts)),
        ("devices (expert-parallel group)", f"{p.num_devices} on {p.num_nodes} node(s)"),
        ("MoE layers", str(p.num_layers)),
        ("top-k", str(p.top_k)),
        ("redundant copies", f"{p.redundant} (copy budget {p.budget} per layer)"),
        ("slots per device", slot_text),
        ("expert time model", model),
        ("routing fitted on", f"{step_text}; {sample}" if study.simulated else step_text),
    ]
    facts += [(f"provenance: {k}", str(v)) for k, v in prov.items() if k != "scenario"]
    facts += [("baseline", baseline), ("chosen method", chosen + (" (lowest simulated step time)" if study.simulated
                                                               else " (lowest modelled bottleneck + traffic time)"))]
    return facts


def figures(chosen: str, before: str, after: str, layer: int, note: str, multi_node: bool = True) -> list[Figure]:
    """The report's plots, in order, with captions that say where the numbers come from."""
    note = f" {note}" if note else ""
    nodes = " Dashed lines: node boundaries." if multi_node else ""
    return [
        Figure(LOADS_PNG, "Before and after: device loads",
               f"Tokens each device serves per step at MoE layer {layer}, where {before} is most imbalanced, "
               f"under {_pair(before, after)}. From the placement model (mean routing of the fitted steps).{note}"),
        Figure(BALANCE_PNG, "Balance by MoE layer",
               "Top: most loaded device over the mean device per MoE layer for every method. Bottom: the "
               "slowest device's modelled expert time per layer (what the straggler waits on). Model."),
        Figure(SHARES_PNG, f"Expert-to-device shares of {chosen}",
               f"Which device serves each expert at MoE layer {layer} and what share of its tokens; replicated "
               f"experts show in several rows.{nodes}"),
        Figure(COPIES_PNG, f"Expert copies of {chosen}",
               f"Expert copies each device holds at every MoE layer (limited by the device's slots).{nodes}"),
        Figure(TRAFFIC_PNG, "Dispatch traffic",
               f"Tokens per step sent from each source device to the device serving the expert, summed over MoE "
               f"layers, for {_pair(before, after)} on one colour scale. Model.{nodes}{note}"),
    ]


# ---------------------------------------------------------------- rendering


def _links(out: Path) -> list[str]:
    return [n for n in ("methods.csv", "problem.json", "placement.yaml") if (out / n).exists()]


def render_html(title: str, facts: list[tuple[str, str]], methods: Table, solves: Table | None,
                figs: list[Figure], links: list[str], note: str, out: Path) -> str:
    """The self-contained page: PNGs embedded as data URIs, the study files as data-URI downloads."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>",
             f"<style>{CSS}</style>\n</head>\n<body>", f"<h1>{esc(title)}</h1>", "<dl>"]
    parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts]
    parts += ["</dl>", "<h2>Methods compared</h2>", f"<p class=\"note\">{esc(note)}</p>", table_html(methods)]
    if links:
        parts.append(files_html(out, links))
    parts += [figure_html(out, f) for f in figs]
    if solves:
        parts += ["<h2>MILP solves</h2>", table_html(solves)]
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def render_markdown(title: str, facts: list[tuple[str, str]], methods: Table, solves: Table | None,
                    figs: list[Figure], links: list[str], note: str) -> str:
    """The same report as Markdown (images by relative file name)."""
    parts = [f"# {title}", "\n".join(f"- **{k}**: {v}" for k, v in facts), "## Methods compared", note,
             table_markdown(methods)]
    if links:
        parts.append("Files: " + ", ".join(f"[{n}]({n})" for n in links))
    for f in figs:
        parts += [f"## {f.title}", f"![{f.title}]({f.file})", f.caption]
    if solves:
        parts += ["## MILP solves", table_markdown(solves)]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- entry point


def write_placement_report(study: PlacementStudy, out_dir: str | Path, *, best: str | None = None) -> Path:
    """Write report.html, report.md and the placement-*.png plots into `out_dir`; return report.html.

    `best` names the chosen method (default: `pick_best(study)`); the baseline is contiguous when
    it was run, else the first method.
    """
    if not study.results:
        raise ValueError("the placement study has no methods to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen_name = best or pick_best(study)
    baseline_name = baseline_method(study)
    before_name, after_name, pair_note = before_after(study, chosen_name)
    before, after, chosen = (_result(study, m) for m in (before_name, after_name, chosen_name))
    p = study.problem
    layer = worst_layer(before.score.device_tokens)

    plot_device_loads(p, before, after, layer, out / LOADS_PNG)
    plot_balance_by_layer(p, study.results, out / BALANCE_PNG)
    plot_shares(p, chosen, layer, out / SHARES_PNG)
    plot_copies(p, chosen, out / COPIES_PNG)
    plot_traffic(p, before, after, out / TRAFFIC_PNG)

    title = f"Expert placement: {getattr(study.scenario, 'name', 'study')}"
    facts = problem_facts(study, chosen_name, baseline_name)
    note = ("Columns marked (model) are the placement model's scores on the fitted routing (mean per step); "
            "(simulation) columns come from simulating each placement. Bottleneck = sum over MoE layers of the "
            f"most loaded device; the chosen method ({chosen_name}) is highlighted.")
    tables = (methods_table(study, chosen_name), solve_table(study.results))
    figs = figures(chosen_name, before_name, after_name, layer, pair_note, multi_node=p.num_nodes > 1)
    links = _links(out)
    (out / "report.md").write_text(render_markdown(title, facts, *tables, figs, links, note), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(title, facts, *tables, figs, links, note, out), encoding="utf-8")
    return page
