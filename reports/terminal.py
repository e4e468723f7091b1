"""Rich terminal output: the headline metrics of a run and the bundled profiles.

Output must survive pipes, CI logs and narrow terminals: off a terminal the console is wide
(tables keep their natural width, lines are not wrapped), and every table goes through
`print_table`, which never wraps or cuts a cell: a table too wide for the terminal loses its
optional columns, or else is printed as one block of `column  value` lines per row.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from moesim.units import fmt_bytes, fmt_time

if TYPE_CHECKING:
    import pandas as pd

PIPE_WIDTH = 400  # off a terminal: wide enough that no table of ours wraps
MEASURE_WIDTH = 10_000  # room to measure a table in: no column is squeezed
GAP = "  "  # between a record's column name and its value
# columns a table drops (in this order) before it falls back to one block per row: each is
# derivable from the others or a solver detail, and the files written beside hold all of them
ROOFLINE_OPTIONAL = ("roof TFLOP/s", "share")  # = TFLOP/s / of roof; = time / the layer's time
PLACEMENT_OPTIONAL = ("solve", "gap", "x-dev flow")
SWEEP_OPTIONAL = ("output_tokens_per_s_per_gpu", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s")  # sweep.csv has them
REBALANCE_OPTIONAL = ("copies_moved", "gb_moved")  # what move_s prices; rebalance.csv has them


def console_for(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): the terminal's own width, or a wide plain one off a terminal."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True, color_system=None)


def natural_width(console: Console, table: Table) -> int:
    """How many terminal columns the table takes with no cell wrapped (its title, which may wrap, aside)."""
    return Measurement.get(console, console.options.update_width(MEASURE_WIDTH), table).maximum


def print_table(console: Console, table: Table, optional: Sequence[str] = ()) -> None:
    """Print a table without ever wrapping or cutting a cell, so no number is split across lines.

    At its natural width when that fits the console; else without as many of its `optional`
    columns (headers, dropped in the order given) as it takes to fit, with a note naming them;
    else as one block per row (`_print_records`)."""
    for col in table.columns:
        col.no_wrap = True
    if natural_width(console, table) <= console.width:
        _print_boxed(console, table)
        return
    present = {str(col.header) for col in table.columns}
    dropped: list[str] = []
    for header in (h for h in optional if h in present):
        dropped.append(header)
        narrow = _without_columns(table, dropped)
        if natural_width(console, narrow) <= console.width:
            _print_boxed(console, narrow)
            console.print(Text(f"(not shown at this width: {', '.join(dropped)}; widen the terminal for them)",
                               style="dim"))
            return
    _print_records(console, table)


def _print_boxed(console: Console, table: Table) -> None:
    """A table that fits, as rich prints it; but a title with a word wider than the table (a long
    scenario name), which rich would fold mid-word at the table's width, goes above it on its own."""
    if table.title:
        title = _cell_text(console, table.title, "table.title")
        if max((cell_len(word) for word in title.plain.split()), default=0) > natural_width(console, table):
            console.print(title)
            table = copy.copy(table)
            table.title = None
    console.print(table)


def _without_columns(table: Table, headers: Sequence[str]) -> Table:
    """A shallow copy of the table without the columns of these headers (the rest keep their cells)."""
    out = copy.copy(table)
    kept = [col for col in table.columns if str(col.header) not in headers]
    out.columns = [dataclasses.replace(col, _index=i) for i, col in enumerate(kept)]
    return out


def _print_records(console: Console, table: Table) -> None:
    """The table for a console too narrow for it: its title, then per row a `header: first cell`
    heading and indented `header  value` lines (a header-less key/value table: just its rows as
    `key  value` lines). Values start in one column (and right align when all fit); a value too
    long for its line goes on the next one, and only one wider than the console wraps (at spaces)."""
    if table.title:
        console.print(_cell_text(console, table.title, "table.title"))
    cols = table.columns
    cells = [[_cell_text(console, cell, col.style) for cell in col.cells] for col in cols]
    rows = list(zip(*cells))
    if table.show_header:
        keys = [_cell_text(console, col.header, "") for col in cols]
        blocks = [(Text.assemble(keys[0], ": ", row[0], style="bold"), list(zip(keys[1:], row[1:]))) for row in rows]
        indent = 2
    else:
        blocks = [(None, [(row[0], Text(GAP).join(row[1:])) for row in rows])]
        indent = 0
    items = [item for _, block in blocks for item in block]
    room = console.width - indent - len(GAP)
    one_line = [(key, value) for key, value in items if key.cell_len + value.cell_len <= room]
    key_w = max((key.cell_len for key, _ in one_line), default=0)
    value_w = max((value.cell_len for _, value in one_line), default=0)
    right = len(one_line) == len(items) and key_w + value_w <= room  # values as one right-aligned column
    for heading, block in blocks:
        if heading is not None:
            _print_line(console, heading)
        for key, value in block:
            if key.cell_len <= key_w and key_w + (value_w if right else value.cell_len) <= room:  # names padded
                pad = key_w - key.cell_len + (value_w - value.cell_len if right else 0)
                _print_line(console, Text.assemble(" " * indent, key, " " * pad + GAP, value))
            elif key.cell_len + value.cell_len <= room:
                _print_line(console, Text.assemble(" " * indent, key, GAP, value))
            else:
                _print_line(console, Text.assemble(" " * indent, key))
                _print_line(console, Text.assemble(" " * (indent + 2), value))
    if table.caption:
        console.print(_cell_text(console, table.caption, "table.caption"))


def _cell_text(console: Console, cell: RenderableType, style: Any) -> Text:
    """A table cell (markup string, Text, or anything else by its str) as styled Text."""
    if isinstance(cell, str):
        text = console.render_str(cell, highlight=False)
    elif isinstance(cell, Text):
        text = cell.copy()
    else:
        text = Text(str(cell))
    if style:
        text.stylize(style)
    return text


def _print_line(console: Console, line: Text) -> None:
    """One record line, never wrapped when it fits the console (else wrapped at spaces, not inside a word)."""
    console.print(line, no_wrap=line.cell_len <= console.width, overflow="fold")


def print_frame(console: Console, frame: pd.DataFrame, title: str | None = None,
                optional: Sequence[str] = ()) -> None:
    """A DataFrame through `print_table`: a column per frame column (the first left aligned, the
    rest right), floats as `{:.4g}`, anything else (ints, strings, bools) by its str."""
    t = Table(title=title)
    for i, col in enumerate(frame.columns):
        t.add_column(str(col), justify="left" if i == 0 else "right")
    for row in frame.itertuples(index=False, name=None):
        t.add_row(*(Text(f"{v:.4g}" if _is_float(v) else str(v)) for v in row))
    print_table(console, t, optional)


def _is_float(v: Any) -> bool:
    """Whether a frame value is a real, non-integer number (Python or numpy float; not int or bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)  # bool is Integral


@contextmanager
def step_progress(console: Console, mode: str, total: int, label: str,
                  unit: str = "steps") -> Iterator[Callable[[int], None]]:
    """A callback for completed steps: a live bar in a terminal ("auto"/"bar"), a line every ~10%
    or 10 s off a terminal ("auto"/"plain", on stderr), or nothing ("none")."""
    if mode == "auto":
        mode = "bar" if console.is_terminal else "plain"
    if mode == "none":
        yield lambda step: None
        return
    if mode == "bar":
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda step: bar.update(task, completed=step)
        return
    start = last = time.monotonic()
    every = max(1, total // 10)
    shown = -1

    def line(step: int) -> None:
        nonlocal last, shown
        now = time.monotonic()
        if step != shown and (step == total or step % every == 0 or now - last >= 10.0):
            last, shown = now, step
            left = (now - start) / step * (total - step) if step else 0.0
            print(f"{label}: {unit[:-1]} {step}/{total} ({step / total:.0%}), {now - start:.0f} s elapsed"
                  + (f", ~{left:.0f} s left" if step < total else ""), file=sys.stderr, flush=True)

    yield line


@contextmanager
def status(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A callback for what long work is doing: a live status line in a terminal, and off a
    terminal a plain line on stderr at most every 5 s (so CI logs show the run is alive)."""
    if console.is_terminal:
        with console.status(label) as live:
            yield lambda msg: live.update(msg)
        return
    last = 0.0
    print(label, file=sys.stderr, flush=True)

    def line(msg: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 5.0:
            last = now
            print(msg, file=sys.stderr, flush=True)

    yield line


def print_summary(result: Any, console: Console) -> None:
    """Headline metrics and where the time went, from a SimResult."""
    s = result.summary
    sc = result.scenario
    head = Table(title=f"{sc.name}: {sc.model.name} on {sc.cluster.name} "
                       f"(ep={sc.ep}, tp={sc.tp}, dp={sc.dp}) — simulated", show_header=False)
    head.add_column("metric", style="bold")
    head.add_column("value", justify="right")
    lat = s["step_latency_s"]
    head.add_row("step latency mean / p99", f"{fmt_time(lat['mean'])} / {fmt_time(lat['p99'])}")
    head.add_row("throughput", f"{s['throughput_tokens_per_s']:,.0f} tokens/s")
    head.add_row("tokens per step", f"{s['tokens_per_step']:,}")
    spec = s.get("speculative")
    if spec:  # the step latency above is the verification pass; the drafts come on top
        head.add_row("speculative (mtp) step", f"{fmt_time(spec['verify_step_s'])} verify + {spec['draft_tokens']} x "
                     f"{fmt_time(spec['draft_pass_s'])} draft = {fmt_time(spec['step_s'])}")
        head.add_row("accepted tokens per step", f"{spec['accepted_tokens_per_step']:.2f} "
                     f"({spec['speedup_vs_plain']:.2f}x plain decode's tokens/s)")
    head.add_row("straggler ratio mean / max", f"{s['straggler_ratio']['mean']:.3f} / {s['straggler_ratio']['max']:.3f}")
    tok = s["tokens"]
    head.add_row("dropped (token, expert) rows", f"{tok['dropped_assignments']:,} of {tok['routed_assignments']:,}")
    pay = s["all_to_all_payload_bytes"]
    head.add_row("all-to-all bytes (inter-node)",
                 f"{fmt_bytes(pay['dispatch'] + pay['combine'])} ({fmt_bytes(pay['dispatch_inter_node'] + pay['combine_inter_node'])})")
    mem = s["memory_per_device_bytes"]
    head.add_row("memory per device", f"{fmt_bytes(mem['max'])} of {fmt_bytes(mem['capacity'])}")
    for unit, held in (mem.get("on_units") or {}).items():
        head.add_row(f"kept on unit {unit}", fmt_bytes(held))
    units = s.get("units")
    if units:  # a part of the layer ran off the accelerator
        shares = ", ".join(f"{u} {f:.0%}"
                           for u, f in sorted(units["compute_share"].items(), key=lambda kv: -kv[1]))
        head.add_row("compute by unit", f"{shares}, hand-offs {units['handoff_share']:.0%}")
    bar = s.get("error_bar") or {}
    rel = bar.get("relative")
    if isinstance(rel, list):  # an interval from held-out residuals
        text = f"{rel[0]:+.1%} .. {rel[1]:+.1%} ({bar['level']:.0%} interval from held-out residuals)"
    elif rel is not None:
        text = f"±{rel:.1%} (calibrated profile's held-out MAPE)"
    else:
        text = "none (datasheet profile, error never measured)"
    head.add_row("error bar", text)
    print_table(console, head)
    share = Table(title="where the time went (share of device time)")
    share.add_column("phase")
    share.add_column("share", justify="right")
    for phase, frac in sorted(s["time_share"].items(), key=lambda kv: -kv[1]):
        if frac > 0.0005:
            share.add_row(phase, f"{frac:6.1%}")
    print_table(console, share)
    if s.get("offload"):
        print_offload(s["offload"], console)


def print_offload(off: dict, console: Console) -> None:
    """Cache and copy behaviour of an offloading run."""
    t = Table(title=f"expert offloading ({off['tier']} tier, {off['policy']} cache of {off['cache_capacity']}, "
                    f"prefetch {off['prefetch']['policy']})", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    t.add_row("cache hit rate (on time)", f"{off['hit_rate']:.1%} ({off['hits']:,} hits, {off['misses']:,} misses)")
    if off.get("late_hits") is not None and (off["late_hits"] or off["prefetches"]):  # not in older summaries
        t.add_row("late hits (waited on copy)", f"{off['late_hit_rate']:.1%} ({off['late_hits']:,})")
    fetched = sum(off["bytes_fetched"].values())
    kinds = off["bytes_fetched_by_kind"]
    t.add_row(f"bytes fetched from {off['tier']}", f"{fmt_bytes(fetched)} (demand {fmt_bytes(kinds['demand'])}, "
              f"prefetch {fmt_bytes(kinds['prefetch'])})")
    if off["prefetches"]:
        t.add_row("prefetches used / wasted / late", f"{off['prefetches_used']:,} / {off['prefetches_wasted']:,} / "
                  f"{off['late_prefetches']:,}")
    if off["host_experts_run"]:
        t.add_row("experts run on the host CPU", f"{off['host_experts_run']:,} "
                  f"({fmt_bytes(off['host_activation_bytes'])} of activations over the link)")
    stall = off["stall_s"]
    t.add_row("stall per step (worst device)", f"{fmt_time(stall['worst_device_per_step_mean_s'])} "
              f"({stall['share_of_device_time']:.1%} of device time)")
    t.add_row("copy engine busy", f"{off['copy_engine_utilization']:.1%}")
    t.add_row("peak device memory", fmt_bytes(off["peak_device_memory_bytes"]))
    print_table(console, t)


def print_roofline(rows: Any, ridges: dict, console: Console) -> None:
    """The first device's ops: intensity, modelled performance against the roof, bound and time share."""
    first = rows["device"].iloc[0]
    for phase, sub in rows[rows["device"] == first].groupby("phase", sort=False):
        t = Table(title=f"{first}, {phase}: one layer on the roofline (modelled)")
        units = "unit" in sub and sub.loc[sub["kind"] != "comm", "unit"].nunique() > 1  # ops on several units
        for col in ("op",) + (("unit",) if units else ()) + ("FLOP/B", "TFLOP/s", "roof TFLOP/s", "of roof", "bound",
                                                              "time", "share"):
            t.add_column(col, justify="left" if col in ("op", "unit", "bound") else "right")
        for _, r in sub.iterrows():
            t.add_row(Text(r["op"]), *((Text(str(r["unit"])),) if units else ()), f"{r['intensity']:.3g}",
                      f"{r['achieved_flops_per_s'] / 1e12:.3g}",
                      f"{r['attainable_flops_per_s'] / 1e12:.3g}", f"{r['roof_fraction']:.0%}", r["bound"],
                      fmt_time(r["time_s"]), f"{r['share_of_layer']:.1%}")
        print_table(console, t, optional=ROOFLINE_OPTIONAL)
    console.print("expert GEMM compute-bound from (tokens per expert): "
                  + ", ".join(f"{d} {n:.0f}" if n else f"{d} never (<= 8192)" for d, n in ridges.items()))


def print_profile_list(console: Console) -> None:
    from moesim.hardware_profiles import list_profiles
    from moesim.workloads import list_models

    for kind in ("devices", "links", "clusters"):
        console.print(f"[bold]{kind}[/bold]: " + ", ".join(list_profiles(kind)))
    console.print("[bold]models[/bold]: " + ", ".join(list_models()))


def print_profile(name: str, out: Any = None) -> None:
    """Write one profile or model (searched in devices, links, clusters, models) as its YAML file,
    with where it came from (and a cluster's topology) as YAML comments: the output is valid
    YAML however it is piped or redirected."""
    import yaml

    from moesim.errors import ConfigError, unknown_name
    from moesim.hardware_profiles import list_profiles, profile_path
    from moesim.workloads import list_models
    from moesim.workloads.models import MODEL_DIR

    out = out or sys.stdout
    for kind in ("devices", "links", "clusters"):
        names = {n.lower(): n for n in list_profiles(kind)}
        if name.lower() in names:
            path = profile_path(kind, names[name.lower()])
            out.write(f"# {kind[:-1]} {names[name.lower()]} ({path})\n")
            if kind == "clusters":
                out.write(f"# {_topology_line(names[name.lower()])}\n")
            out.write(path.read_text())
            return
    models = {n.lower(): n for n in list_models()}
    if name.lower() in models:
        for path in MODEL_DIR.glob("*.yaml"):
            if yaml.safe_load(path.read_text()).get("name", "").lower() == name.lower():
                out.write(f"# model {models[name.lower()]} ({path})\n")
                out.write(path.read_text())
                return
    every = [n for kind in ("devices", "links", "clusters") for n in list_profiles(kind)] + list_models()
    raise ConfigError(unknown_name("profile", name, every), field="NAME")


def _topology_line(name: str) -> str:
    from moesim.hardware_profiles import build_topology, load_cluster

    g = build_topology(load_cluster(name))
    kinds: dict[str, int] = {}
    for _, attrs in g.nodes(data=True):
        kinds[attrs["kind"]] = kinds.get(attrs["kind"], 0) + 1
    links: dict[str, int] = {}
    for _, _, attrs in g.edges(data=True):
        links[attrs["link"]] = links.get(attrs["link"], 0) + 1
    return ("topology: " + ", ".join(f"{v} x {k}" for k, v in kinds.items())
            + "; directed links: " + ", ".join(f"{v} x {k}" for k, v in links.items()))


def print_trace_stats(summary: dict, console: Console) -> None:
    """The headline statistics of a routing trace (all measured from the trace)."""
    t = Table(title=f"routing trace: {summary['rows']:,} rows, {summary['steps']} steps, "
                    f"{summary['moe_layers']} MoE layers x {summary['experts']} experts, top-{summary['top_k']} "
                    "— measured", show_header=False)
    t.add_column("statistic", style="bold")
    t.add_column("value", justify="right")
    from moesim.reports.trace_stats_page import trace_stats_rows  # the rows the HTML page shows too

    for statistic, value in trace_stats_rows(summary):
        t.add_row(statistic, value)
    print_table(console, t)


def _dispatch_note(provenance: dict) -> str:
    """How the place table's inter-node share was priced (the scenario's dispatch), or nothing."""
    d = provenance.get("dispatch")
    return (f" (inter-node priced for {d['algorithm']} dispatch, {d['replica_choice']} replica choice)"
            if d else "")


def print_placement_table(study: Any, console: Console) -> None:
    """One row per placement method: balance, bottleneck, traffic, solve time, gap, simulated step."""
    p = study.problem
    unit = p.time_model.unit
    m = p.provenance.get("loads")  # a measured load matrix (moesim place --loads, routing: load_matrix)
    source = (f"loads from {', '.join(m['files'])} ({m['kind']}, {m['windows']} window(s), window: {m['window']})"
              if m else f"loads from routing steps {p.provenance.get('steps')}")
    console.print(f"[bold]Expert placement[/bold]: {p.num_experts} experts on {p.num_devices} devices in "
                  f"{p.num_nodes} node(s), {p.num_layers} MoE layers, {p.redundant} redundant copies; {source}"
                  f"{' (in-sample: the simulation replays them)' if study.in_sample else ''}")
    table = Table()
    cols = ["method", "balance", "bottleneck", "remote", "inter-node", "x-dev flow", "solve", "gap"]
    if study.simulated:
        cols += ["sim step", "straggler", "sim inter-node/step"]
    for c in cols:
        table.add_column(c, justify="left" if c == "method" else "right")
    for _, row in study.table().iterrows():
        bott = row["bottleneck_tokens"] if unit == "tokens" else fmt_time(row["bottleneck_time"])
        cells = [row["method"], f"{row['balancedness']:.3f}", f"{bott:.0f}" if unit == "tokens" else bott,
                 f"{row['dispatch_remote']:.1%}", f"{row['dispatch_inter_node']:.1%}",
                 f"{row['flow_cross_device']:.1%}", fmt_time(row["solve_s"]),
                 "-" if row["gap"] != row["gap"] else f"{row['gap']:.2%}"]
        if study.simulated:
            cells += [fmt_time(row["sim_step_s"]), f"{row['sim_straggler']:.2f}", fmt_bytes(row["sim_inter_node_bytes"])]
        table.add_row(*cells)
    print_table(console, table, optional=PLACEMENT_OPTIONAL)
    console.print(f"balance = mean/max device tokens (1 is perfect); bottleneck = slowest device's modelled "
                  f"{'tokens' if unit == 'tokens' else 'expert time'} summed over MoE layers; remote / inter-node = "
                  f"dispatched tokens leaving their device / node{_dispatch_note(p.provenance)}; x-dev flow = "
                  "consecutive-layer expert pairs on different devices; gap = worst layer's (objective - bound) / objective"
                  + ("; sim step = simulated mean step latency; sim inter-node/step = dispatch + combine bytes "
                     "crossing nodes per simulated step" if study.simulated else ""))


def print_serving_summary(result: Any, console: Console) -> None:
    """Headline table of a serving run: latency percentiles, throughput and goodput (simulated)."""
    sc, sv = result.scenario, result.summary["serving"]
    req, lat, thr, good = sv["requests"], sv["latency"], sv["throughput"], sv["goodput"]
    t = Table(title=f"{sc.name}: {sc.model.name} on {sc.cluster.name} serving (ep={sc.ep}, tp={sc.tp}, "
                    f"dp={sc.dp}) — simulated")
    for col in ("metric", "mean", "p50", "p90", "p99"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key, label in (("ttft_s", "TTFT"), ("itl_s", "ITL"), ("tpot_s", "TPOT"), ("e2e_s", "E2E latency"),
                       ("queue_s", "queueing")):
        p = lat[key]
        t.add_row(label, *(fmt_time(p[k]) if p[k] is not None else "-" for k in ("mean", "p50", "p90", "p99")))
    print_table(console, t)
    h = Table(show_header=False)
    h.add_column("metric", style="bold")
    h.add_column("value", justify="right")

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    h.add_row("requests (finished / all)", f"{req['finished']:,} / {req['total']:,} "
              f"({req['warmup_excluded']:,} warm-up excluded from statistics)")
    h.add_row("output tokens/s (per GPU, per user)", f"{num(thr['output_tokens_per_s'], ',.0f')} "
              f"({num(thr['output_tokens_per_s_per_gpu'], ',.1f')}, {num(thr['output_tokens_per_s_per_user'], ',.1f')})")
    h.add_row("requests/s", num(thr["requests_per_s"], ".3g"))
    slo = good["slo"]
    limits = ", ".join(f"{k[:-2].upper()} <= {fmt_time(v)}" for k, v in slo.items() if v is not None) or "none given"
    share = good["share"]
    h.add_row(f"goodput ({limits})", f"{num(good['requests_per_s'], '.3g')} requests/s"
              + (f" ({share:.0%} of requests)" if share is not None else ""))
    b = sv["batch"]
    h.add_row("batch: mean / max sequences", f"{num(b['mean_sequences'], '.1f')} / {b['max_sequences']}")
    h.add_row("KV cache use: mean / max", f"{num(b['kv_use_mean'], '.0%')} / {num(b['kv_use_max'], '.0%')}")
    cache = sv.get("iteration_cache")  # None: the cache was off (absent in older or disaggregated summaries)
    if cache:
        h.add_row("iteration cache: hits / misses", f"{cache['hits']:,} / {cache['misses']:,}, "
                  f"{num(cache['replayed_share'], '.0%')} of time replayed")
    mem = sv["memory_per_rank_bytes"]
    h.add_row("memory per rank", f"weights {fmt_bytes(mem['weights'])}, KV {fmt_bytes(mem['kv_cache'])} "
              f"({mem['kv_tokens']:,} tokens), other {fmt_bytes(mem['activations'] + mem['comm_buffers'])}, "
              f"reserve {fmt_bytes(mem['runtime_reserve'])}")
    print_table(console, h)
    warning = (sv.get("traffic") or {}).get("warning")
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}")


def print_sweep_table(table: pd.DataFrame, title: str, console: Console) -> None:
    """A load sweep's points (`sweep_table`, any extra columns included), one row per load;
    `saturated` (1.0 / 0.0 / NaN in the table) reads yes / no / – ."""
    if "saturated" in table:
        table = table.assign(saturated=["–" if v != v else ("yes" if v else "no") for v in table["saturated"]])
    print_frame(console, table, title, SWEEP_OPTIONAL)


def print_calibration_errors(cal: Any, console: Console) -> None:
    """A calibration's simulated-vs-measured errors per split and kind, before and after the fit."""
    t = Table(title=f"{cal.profile.name}: simulated vs measured (MAPE / bias; noise floor)")
    for col in ("split", "kind", "n", "MAPE before", "MAPE after", "bias after", "noise"):
        t.add_column(col, justify="left" if col in ("split", "kind") else "right")
    for r in cal.errors.itertuples():
        t.add_row(Text(str(r.split)), Text(str(r.kind)), str(r.n), f"{r.before_mape:.1%}", f"{r.after_mape:.1%}",
                  f"{r.after_bias:+.1%}", f"{r.noise_floor:.1%}")
    print_table(console, t)


def print_rebalance_table(df: pd.DataFrame, console: Console) -> None:
    """The rebalance rule's verdict per method (`rebalance_from`), without the horizon every row shares."""
    print_frame(console, df.drop(columns="horizon_steps", errors="ignore"), optional=REBALANCE_OPTIONAL)
