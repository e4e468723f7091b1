"""The run report's pointer to its Perfetto trace: where trace.json is and how to open it.

`moesim simulate` writes `trace.json` (Chrome trace event format, simulator/trace_export.py) into
the run directory for the first `outputs.trace_steps` steps, none when that is 0. The report
names the file and says how to open it in https://ui.perfetto.dev. The HTML page stays
self-contained: a trace up to `EMBED_LIMIT` is embedded as a data-URI download (saved with its
own name, then dragged into Perfetto), a larger one is named by its path; the Markdown links it
by its path relative to the report.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from moesim.reports.html_page import EMBED_LIMIT
from moesim.units import fmt_bytes

PERFETTO = "https://ui.perfetto.dev"
TRACE = "trace.json"


def trace_steps(summary: dict[str, Any]) -> int | None:
    """outputs.trace_steps of the run's resolved config (None when the summary does not say)."""
    v = ((summary.get("config") or {}).get("outputs") or {}).get("trace_steps")
    return int(v) if isinstance(v, (int, float)) else None


def how_to_open() -> str:
    return (f"Open {PERFETTO} in a browser and drag the file onto the page (or use \"Open trace file\"); "
            "one process per device, with its compute and communication tracks (expert copies, host-CPU "
            "experts and unit hand-offs where the run had them). chrome://tracing opens it too.")


def perfetto_block(run_dir: Path, report_dir: Path, summary: dict[str, Any]) -> tuple[str, str]:
    """(HTML, Markdown) of the report's "Timeline in Perfetto" paragraph for the run in `run_dir`."""
    esc = html.escape
    trace = Path(run_dir) / TRACE
    steps = trace_steps(summary)
    if not trace.is_file():
        why = ("the run was simulated with outputs.trace_steps: 0" if steps == 0
               else "the run directory has no trace.json")
        text = (f"No Perfetto trace: {why}. Simulate again with --set outputs.trace_steps=4 (the first 4 steps) "
                f"to get {TRACE}, then open it in {PERFETTO}.")
        return f'<p class="note">{esc(text)}</p>', text
    size = trace.stat().st_size
    span = f"the first {steps} step(s)" if steps else "the traced steps"
    what = f"{fmt_bytes(size)}, {span} of the simulated timeline"
    where = os.path.abspath(trace)
    rel = os.path.relpath(trace, Path(report_dir))
    if size <= EMBED_LIMIT:
        uri = "data:application/json;base64," + base64.b64encode(trace.read_bytes()).decode("ascii")
        link = f'<a download="{esc(TRACE)}" href="{uri}">{esc(TRACE)}</a> (embedded; click to save)'
    else:
        link = f"<code>{esc(TRACE)}</code> (too large to embed)"
    page = (f"<p>Trace of this run: {link}, in the run directory at <code>{esc(where)}</code>; "
            f"{esc(span)} of the simulated timeline, {esc(fmt_bytes(size))}.</p>\n"
            f'<p class="note">{esc(how_to_open())} <a href="{PERFETTO}">{PERFETTO}</a></p>')
    md = f"Trace of this run: [{TRACE}]({rel.replace(os.sep, '/')}) ({what}, at `{where}`). {how_to_open()}"
    return page, md
