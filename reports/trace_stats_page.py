"""The HTML page of `moesim trace stats`: the statistics the terminal prints, per layer and per
layer pair, and the plots, in one self-contained page (images and tables embedded).

`moesim trace stats TRACE --out DIR` writes it as DIR/stats.html (and stats.md) beside the
files of `trace_plots.write_stats_dir`; `--html PAGE` writes the page alone (its plots drawn in a
temporary folder and embedded). A page starts with `MARK`, so `--force` replaces a page this
command wrote and refuses any other file (`check_html_target`). Every number is measured from
the trace, not simulated.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError
from moesim.reports.html_page import Figure, Table, write_page

STATS_HTML = "stats.html"
MARK = "<!-- written by moesim trace stats -->"
DATA_FILES = ("stats.json", "layers.csv", "pairs.csv", "steps.csv")
HTML_SUFFIXES = (".html", ".htm")


def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None or v != v else format(v, fmt)


def trace_stats_rows(summary: dict) -> list[tuple[str, str]]:
    """(statistic, value) of the headline statistics, as the terminal and the page show them."""
    imb, aff, drift = summary["imbalance"], summary["affinity"], summary["drift"]
    return [
        ("load max/mean (whole trace; per step)", f"{_f(imb['max_over_mean'])}; {_f(imb['step_max_over_mean'])}"),
        ("load CV / normalized entropy", f"{_f(imb['cv'])} / {_f(imb['entropy'])}"),
        ("Zipf exponent (fitted per layer, mean)", _f(imb["zipf_alpha"])),
        ("P(top next expert | expert), lift", f"{_f(aff['top1_conditional'])}, x{_f(aff['lift'], '.2f')}"),
        ("mutual information / H(next layer)", _f(aff["mutual_info"])),
        (f"pairs on one device of {aff['devices']}: contiguous / best / if independent / random",
         f"{_f(aff['colocated_contiguous'])} / {_f(aff['colocated_best'])} / "
         f"{_f(aff['colocated_best_if_independent'])} / {_f(aff['colocated_random'])}"),
        ("step-to-step TV (sampling alone)", f"{_f(drift['step_to_step_tv'])} ({_f(drift['sampling_tv'])})"),
        ("first vs last quarter TV", _f(drift["first_vs_last_quarter_tv"])),
        (f"{summary['source_kind']} popularity TV from the layer's", _f(summary["locality"]["source_tv"])),
    ]


def _frame_table(df) -> Table:
    cols = list(df.columns)
    rows = [[str(int(v)) if c in ("moe_layer", "from_layer", "to_layer") else _f(float(v), ".4g")
             for c, v in zip(cols, r)] for r in df.itertuples(index=False, name=None)]
    return Table(cols, rows)


FIGURES = {  # plot file (trace_plots.write_stats_dir) -> (title, caption)
    "load_heatmap.png": ("Expert load per MoE layer", "Each expert's share of its layer's assignments over the "
                         "uniform share (white = uniform, red = hotter, blue = colder); measured from the trace."),
    "imbalance.png": ("Load imbalance per layer", "max/mean of expert load over the whole trace and per step "
                      "(averaged), and the coefficient of variation; measured."),
    "drift.png": ("Popularity drift", "Left: total-variation distance of each step's expert popularity from the "
                  "trace mean (mean over layers), with what sampling alone would give; right: the hottest experts' "
                  "shares of MoE layer 0 over steps; measured."),
}


def _figures(folder: Path) -> list[Figure]:
    figs = [Figure(name, *FIGURES[name]) for name in ("load_heatmap.png", "imbalance.png") if (folder / name).is_file()]
    for p in sorted(folder.glob("affinity_layer*_to_*.png"), key=lambda p: int(p.stem.split("layer")[1].split("_")[0])):
        a, b = p.stem.removeprefix("affinity_layer").split("_to_")
        figs.append(Figure(p.name, f"Affinity, MoE layer {a} to {b}",
                           f"P(expert at layer {b} | expert at layer {a}), rows in expert order; measured."))
    if (folder / "drift.png").is_file():
        figs.append(Figure("drift.png", *FIGURES["drift.png"]))
    return figs


def write_stats_page(stats, trace_name: str, folder: Path, data_files: bool = True) -> Path:
    """Write folder/stats.html (self-contained) and stats.md from `stats` (workloads.trace_stats
    TraceStats) and the plots already in `folder`; returns the HTML path."""
    s = stats.summary
    facts = [("trace", trace_name), ("model", str(s.get("model") or "–")),
             ("rows", f"{s['rows']:,} (step, token, MoE layer) rows, {s['steps']} steps, "
                      f"{_f(s.get('tokens_per_step_mean'), '.1f')} tokens per step"),
             ("shape", f"{s['moe_layers']} MoE layers x {s['experts']} experts, top-{s['top_k']}; "
                       f"{s.get('sources')} {s['source_kind']} source(s)"),
             ("source", "every number measured from the trace (moesim trace stats), not simulated")]
    blocks: list[tuple[str, object]] = [
        ("h2", "Headline statistics"),
        ("note", "The statistics `moesim trace stats` prints: load imbalance, inter-layer affinity, co-location of "
                 f"consecutive experts on {s['affinity']['devices']} devices, drift and locality (README, Routing "
                 "traces, defines each)."),
        ("table", Table(["statistic", "value (measured)"], [list(r) for r in trace_stats_rows(s)])),
        ("h2", "Per MoE layer"), ("table", _frame_table(stats.layers)),
    ]
    if len(stats.pairs):
        blocks += [("h2", "Per pair of consecutive MoE layers"), ("table", _frame_table(stats.pairs))]
    if data_files:
        blocks.append(("files", [n for n in DATA_FILES if (folder / n).is_file()]))
    blocks += [("figure", f) for f in _figures(folder)]
    page = write_page(folder, Path(STATS_HTML).stem, f"Routing trace statistics: {trace_name} (measured)", facts,
                      blocks)
    text = page.read_text(encoding="utf-8")
    page.write_text(text.replace("<!DOCTYPE html>\n", f"<!DOCTYPE html>\n{MARK}\n", 1), encoding="utf-8")
    return page


def write_stats_html(stats, tally, trace_name: str, target: Path, written: Path | None = None) -> None:
    """The page alone at `target` (a path atomic_file yielded): a copy of `written` (the --out
    folder's stats.html of the same statistics) when given, else drawn in a temporary folder
    (plots and data embedded) that is removed afterwards."""
    from moesim.reports.trace_plots import write_stats_dir

    if written is not None:
        shutil.copyfile(written, target)
        return
    with tempfile.TemporaryDirectory(prefix="moesim-trace-stats-") as tmp:
        folder = Path(tmp)
        write_stats_dir(stats, tally, folder)
        page = write_stats_page(stats, trace_name, folder)
        shutil.copyfile(page, target)


def is_stats_page(path: Path) -> bool:
    """A file this command wrote: its first lines hold MARK (read as moesim's own output)."""
    from moesim.outputs import reading_own_output

    try:
        with reading_own_output(), open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(256)
    except OSError:
        return False
    return MARK in head


def check_html_target(path: Path, force: bool, out_dir: Path | None) -> None:
    """Refuse an --html page before any work: not .html, a folder, under --out (which writes its
    own stats.html), there already without --force, or (with --force) a file this command did
    not write."""
    from moesim.outputs import check_file_target

    option = "--html"
    if path.suffix.lower() not in HTML_SUFFIXES:
        raise ConfigError(f"{path} must end in .html (the page is HTML)", field=option)
    if out_dir is not None:
        try:
            inside = path.resolve().is_relative_to(Path(out_dir).resolve())
        except (OSError, RuntimeError):
            inside = False
        if inside:
            raise ConfigError(f"{path} lies in the --out folder {out_dir}, which gets its own {STATS_HTML}; give "
                              "--html a path outside it, or drop --html", field=option)
    check_file_target(path, option, force)
    if force and (path.exists() or path.is_symlink()) and not is_stats_page(path):
        raise ConfigError(f"{path} exists and was not written by `moesim trace stats` (it lacks the page's "
                          "marker), so --force will not replace it and nothing was changed; give another file name",
                          field=option)


def write_stats_pages(stats, trace_name: str, folder: Path) -> list[Path]:
    """stats.html and stats.md into the --out folder (beside write_stats_dir's files); returns both."""
    page = write_stats_page(stats, trace_name, folder)
    return [page, page.with_suffix(".md")]
