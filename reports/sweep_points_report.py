"""The report of `moesim sweep`: every point's axis values and headline metrics, and its Pareto front.

`write_points_report(table, out, title, facts, x, y)` writes report.html (self-contained) and
report.md beside pareto.png: the front of the sweep's `pareto` pair (x smaller is better, y larger
is better: devices against throughput per device by default), the points on it first, then
every point with its status (a failed point's error in full). A sweep over serving load adds
offered_vs_achieved.png (reports/load_plot.py). Every number is simulated.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from moesim.reports.html_page import Figure, Table, finish_axes, pyplot, save_figure, write_page
from moesim.reports.load_plot import LOAD_PNG, is_load_sweep, offered_vs_achieved

PARETO_PNG = "pareto.png"
META = ("status", "error", "key", "pareto")


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.4g}"
    return str(v)


def _pareto_plot(table: pd.DataFrame, out: Path, x: str, y: str, title: str) -> bool:
    ok = table[(table["status"] == "ok")] if "status" in table else table.iloc[:0]
    if x not in ok or y not in ok or ok[[x, y]].dropna().empty:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(ok[x], ok[y], s=18, color="#999999", label="points")
    front = ok[ok["pareto"]].sort_values(x)
    ax.plot(front[x], front[y], "o-", color="#c0392b", label="Pareto front")
    positive = (ok[x] > 0).all() and (ok[y] > 0).all()
    finish_axes(ax, x, y, title, logx=bool(positive), logy=bool(positive))
    save_figure(fig, out / PARETO_PNG)
    return True


def write_points_report(table: pd.DataFrame, out: Path, title: str, facts: list[tuple[str, str]],
                        x: str, y: str) -> Path:
    """Write report.html / report.md and pareto.png into `out`; returns the HTML path."""
    axes = [c for c in table.columns if "." in c]  # config paths are the axes
    metrics = [c for c in table.columns if c not in META and c not in axes]
    blocks: list[tuple[str, object]] = []
    if _pareto_plot(table, out, x, y, title):
        blocks.append(("figure", Figure(PARETO_PNG, f"Pareto front: {x} (smaller) against {y} (larger)",
                                        "Every finished point (grey) and those no other point beats on both "
                                        "(red); simulated.")))
    if is_load_sweep(table, axes):
        labels = [", ".join(f"{a.rsplit('.', 1)[-1]}={_cell(r[a])}" for a in axes) for _, r in table.iterrows()]
        if offered_vs_achieved(table, out, labels, title=title.removesuffix(" (simulated)")) is not None:
            blocks.append(("figure", Figure(LOAD_PNG, "Offered against achieved load",
                                            "Achieved requests/s (finished) against offered requests/s (arriving) "
                                            "of every finished serving point, with the line achieved = offered and "
                                            "the 90% saturation threshold (left); output tokens/s against offered "
                                            "load (right). From the sweep table's offered_requests_per_s, "
                                            "achieved_requests_per_s and output_tokens_per_s; simulated.")))
    front = table[table["pareto"]] if "pareto" in table else table.iloc[:0]
    if not front.empty:
        blocks += [("h2", "On the front"),
                   ("table", Table(axes + [x, y], [[_cell(r[c]) for c in axes + [x, y]] for _, r in front.iterrows()]))]
    blocks += [("h2", "Every point"),
               ("note", "One row per point in the sweep's order; numbers from each simulation's summary (model "
                        "outputs, not measurements); a failed point says why."),
               ("table", Table(axes + ["status"] + metrics + ["error"],
                               [[_cell(r.get(c, "")) for c in axes + ["status"] + metrics + ["error"]]
                                for _, r in table.iterrows()]))]
    return write_page(out, "report", title, facts, blocks)
