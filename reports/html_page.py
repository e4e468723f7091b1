"""Pieces every HTML/Markdown report shares: figures, tables, the page style, PNG embedding.

Reports are static pages: tables of already formatted cells and matplotlib PNGs. The HTML
embeds its images as base64 data URIs so one file opens anywhere with no server; the Markdown
references the PNG files written beside it.
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
    ax.legend(fontsize=legend_size)


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
tr.chosen td { background: #fff4c2; font-weight: bold; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #555; font-size: 0.9em; }
"""


def embedded_png(path: Path) -> str:
    """A PNG file as a data URI for an <img src=...>."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_page(out: Path, stem: str, title: str, facts: list[tuple[str, str]], blocks: list[tuple[str, object]]
               ) -> Path:
    """Write `stem`.html (PNGs embedded) and `stem`.md (PNGs by file name) from blocks in order:
    ("h2", text), ("note", text), ("table", Table) or ("figure", Figure). Returns the HTML path."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>",
             f"<style>{CSS}</style>\n</head>\n<body>", f"<h1>{esc(title)}</h1>", "<dl>"]
    parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts]
    parts.append("</dl>")
    md = [f"# {title}", "\n".join(f"- **{k}**: {v}" for k, v in facts)]
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
        else:
            f: Figure = item  # type: ignore[assignment]
            parts += [f"<h2>{esc(f.title)}</h2>", f'<figure><img src="{embedded_png(out / f.file)}" '
                      f'alt="{esc(f.title)}"><figcaption>{esc(f.caption)}</figcaption></figure>']
            md += [f"## {f.title}", f"![{f.title}]({f.file})", f.caption]
    parts.append("</body>\n</html>\n")
    page = out / f"{stem}.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    (out / f"{stem}.md").write_text("\n\n".join(md) + "\n", encoding="utf-8")
    return page
