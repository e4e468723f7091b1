"""Pieces every HTML/Markdown report shares: figures, tables, the page style, PNG embedding.

Reports are static pages: tables of already formatted cells and matplotlib PNGs. The HTML is
self-contained: it embeds its images as base64 data URIs and its small data files (CSV, JSON,
YAML) as data-URI downloads, and references no other local file, so report.html copied alone
still shows everything. The Markdown references the PNG and data files written beside it.
Wide tables sit in a horizontally scrolling box; legends are drawn outside the plotting area.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One plot of the report: its file, a heading and a caption."""

    file: str
    title: str
    caption: str


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells; `highlight` marks one row (the chosen method)."""

    headers: list[str]
    rows: list[list[str]]
    highlight: int | None = None


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_axes(ax, xlabel: str, ylabel: str, title: str, logx: bool = True, logy: bool | str = True,
                legend_size: int = 9) -> None:
    """Labels, log scales (True, or a matplotlib scale name), a light grid and the legend."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log" if logy is True else logy, **({"linthresh": 20} if logy == "symlog" else {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax, fontsize=legend_size)


def legend_outside(ax, **kwargs):
    """The axes' legend to the right of the plotting area, so it never covers data (the figure is
    saved with tight_layout / bbox_inches="tight", which keeps room for it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def legend_below(ax, ncol: int = 4, offset: float = -0.16, **kwargs):
    """The axes' legend in rows under the x axis label (for wide plots where a side legend would
    squeeze the data)."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), ncol=ncol, borderaxespad=0.0, **kwargs)


def device_ticks(ax, count: int, axis: str = "x", limit: int = 32) -> None:
    """Every device labelled when at most `limit`, else a power-of-two step that keeps about 16 labels."""
    step = 1 if count <= limit else 2 ** math.ceil(math.log2(count / 16))
    (ax.set_xticks if axis == "x" else ax.set_yticks)(list(range(0, count, step)))


def node_lines(ax, boundaries: list[float], vertical: bool = True, horizontal: bool = False) -> None:
    """Dashed lines between nodes at the given positions (between device d - 1 and d: d - 0.5)."""
    for b in boundaries:
        if vertical:
            ax.axvline(b, color="black", lw=1.2, ls="--")
        if horizontal:
            ax.axhline(b, color="black", lw=1.2, ls="--")


def save_figure(fig, path: Path) -> None:
    """PNG at 120 dpi; the bounding box grows to hold legends and labels drawn outside the axes."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.1)
    pyplot().close(fig)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    """A pipe table; the highlighted row in bold."""
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(t.headers) - 1)) + "|"]
    for i, row in enumerate(t.rows):
        cells = [_md_cell(c) for c in row]
        if i == t.highlight:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_html(t: Table) -> str:
    """An HTML table; the highlighted row gets class "chosen"."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = []
    for i, row in enumerate(t.rows):
        cls = ' class="chosen"' if i == t.highlight else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return scroll_box(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")


def scroll_box(table: str) -> str:
    """A table inside a box that scrolls sideways when the table is wider than the page."""
    return f'<div class="scroll">\n{table}\n</div>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
.scroll { max-width: 100%; overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { max-width: 10em; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
tr.chosen td { background: #fff4c2; font-weight: bold; }
dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #555; font-size: 0.9em; }
.verdict { padding: 0.6em 0.9em; border-left: 5px solid; font-weight: bold; }
.verdict.good { background: #e3f4e3; border-color: #2a9d5c; }
.verdict.bad { background: #fbe3e3; border-color: #c44e52; }
.verdict.mixed { background: #fff4c2; border-color: #c9a227; }
"""


def embedded_png(path: Path) -> str:
    """A PNG file as a data URI for an <img src=...>."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_html(out: Path, f: Figure, heading: str = "h2") -> str:
    """A figure's heading, its PNG embedded as a data URI, and its caption."""
    esc = html.escape
    return (f"<{heading}>{esc(f.title)}</{heading}>\n<figure><img src=\"{embedded_png(out / f.file)}\" "
            f"alt=\"{esc(f.title)}\"><figcaption>{esc(f.caption)}</figcaption></figure>")


EMBED_LIMIT = 1_000_000  # data files up to this size are embedded as downloads; larger ones are named only
MIME = {".csv": "text/csv", ".json": "application/json", ".yaml": "application/yaml", ".yml": "application/yaml",
        ".md": "text/markdown", ".txt": "text/plain"}


def files_html(out: Path, names: list[str], label: str = "Files") -> str:
    """A line offering the data files written beside the report: each small file embedded as a
    data-URI download (so the page still has it when copied alone), a large one named as text."""
    esc = html.escape
    items, more = [], []
    for n in names:
        path = Path(out) / n
        if path.is_file() and path.stat().st_size <= EMBED_LIMIT:
            mime = MIME.get(path.suffix.lower(), "application/octet-stream")
            uri = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
            items.append(f'<a download="{esc(path.name)}" href="{uri}">{esc(n)}</a>')
        else:
            items.append(f"<code>{esc(n)}</code>")
            more.append(n)
    tail = (f' <span class="note">({", ".join(more)}: too large to embed, written beside the report)</span>'
            if more else "")
    return f"<p>{esc(label)} (embedded; click to save): " + ", ".join(items) + tail + "</p>"


def write_page(out: Path, stem: str, title: str, facts: list[tuple[str, str]], blocks: list[tuple[str, object]],
               intro: list[tuple[str, object]] | None = None) -> Path:
    """Write `stem`.html (PNGs and data files embedded) and `stem`.md (files by name): the title,
    the `intro` blocks (a verdict, say), the facts, then the blocks in order. A block is ("h2", text),
    ("note", text), ("verdict", (class good / bad / mixed, text)), ("table", Table), ("files", [names])
    or ("figure", Figure). Returns the HTML path."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>",
             f"<style>{CSS}</style>\n</head>\n<body>", f"<h1>{esc(title)}</h1>"]
    md = [f"# {title}"]
    _render(out, intro or [], parts, md)
    parts += ["<dl>"] + [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts] + ["</dl>"]
    md.append("\n".join(f"- **{k}**: {v}" for k, v in facts))
    _render(out, blocks, parts, md)
    parts.append("</body>\n</html>\n")
    page = out / f"{stem}.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    (out / f"{stem}.md").write_text("\n\n".join(md) + "\n", encoding="utf-8")
    return page


def _render(out: Path, blocks: list[tuple[str, object]], parts: list[str], md: list[str]) -> None:
    """Append the HTML and Markdown of `blocks` (see write_page) to `parts` and `md`."""
    esc = html.escape
    for kind, item in blocks:
        if kind == "h2":
            parts.append(f"<h2>{esc(str(item))}</h2>")
            md.append(f"## {item}")
        elif kind == "note":
            parts.append(f'<p class="note">{esc(str(item))}</p>')
            md.append(str(item))
        elif kind == "table":
            parts.append(table_html(item))  # type: ignore[arg-type]
            md.append(table_markdown(item))  # type: ignore[arg-type]
        elif kind == "verdict":
            cls, text = item  # type: ignore[misc]
            parts.append(f'<p class="verdict {esc(cls)}">{esc(text)}</p>')
            md.append(f"**{text}**")
        elif kind == "files":
            parts.append(files_html(out, list(item)))  # type: ignore[call-overload]
            md.append("Files: " + ", ".join(f"[{n}]({n})" for n in item))  # type: ignore[attr-defined]
        else:
            f: Figure = item  # type: ignore[assignment]
            parts.append(figure_html(out, f))
            md += [f"## {f.title}", f"![{f.title}]({f.file})", f.caption]
