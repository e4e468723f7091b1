"""The report of one simulated run: report.html (self-contained) and report.md with plots and CSVs.

Reads a run directory from disk (what `moesim simulate --out DIR` wrote: summary.json,
phases.parquet, layers.csv, traffic.csv, links.csv, expert_time.csv, and copies.csv when
offloading), so it works on runs made earlier and never imports the simulator. Every number in
it is a model output of the simulator, never a measurement; the page says so.

Content: the run's identity, headline metrics, time share per phase, where the time goes per
layer and per device, the straggler map (expert time per device and MoE layer), the all-to-all
traffic matrix, the busiest links, step latency per step, the offloading section (when the run
offloaded experts) and the resolved config. The HTML is self-contained: every PNG and the small
CSV tables are embedded as data URIs and no other local file is referenced; the Markdown
references the PNG and CSV files written beside it.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from moesim.errors import ConfigError, MoesimError
from moesim.reports.html_page import (
    CSS,
    Figure,
    Table,
    device_ticks,
    figure_html,
    files_html,
    legend_outside,
    node_lines,
    pyplot,
    save_figure,
    scroll_box,
    table_html,
    table_markdown,
)
from moesim.simulator.phases import PHASES
from moesim.units import fmt_bytes, fmt_time

# Phases in timeline order (simulator/phases.py is their one source), each with one colour used by
# every figure (run and comparison reports); tests/test_contracts.py checks every phase has one.
PHASE_ORDER = list(PHASES)
PHASE_COLORS = {
    "attention": "#4C72B0",
    "tp_allreduce": "#8172B3",
    "dense_ffn": "#64B5CD",
    "shared_expert": "#8FD175",
    "dispatch": "#DD8452",
    "offload_stall": "#C44E52",
    "expert": "#2A9D5C",
    "straggler_wait": "#DA8BC3",
    "combine": "#CCB974",
    "moe_allreduce": "#937860",
    # a training step's (lighter or darker shades of the forward's own)
    "recompute": "#A6BDDB",
    "attention_bwd": "#2B4C7E",
    "tp_allreduce_bwd": "#5A4E8C",
    "dense_ffn_bwd": "#3D8AA6",
    "shared_expert_bwd": "#5FA347",
    "dispatch_bwd": "#B5622E",
    "expert_bwd": "#1B6B3D",
    "combine_bwd": "#A8963F",
    "grad_sync": "#E377C2",
    "grad_sync_expert": "#F7B6D2",
    "optimizer": "#7F7F7F",
    "param_gather": "#BCBD22",
    "pp_recv": "#17BECF",
    "param_gather_bwd": "#8C564B",
    "straggler_wait_bwd": "#F4A6D7",
    "peer_wait_bwd": "#D62728",
    "idle": "#C8C8C8",
}
LINK_CLASS_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

PHASE_LAYER_PNG = "run-time-by-layer.png"
PHASE_DEVICE_PNG = "run-time-by-device.png"
STRAGGLER_PNG = "run-expert-time.png"
TRAFFIC_PNG = "run-traffic.png"
LINKS_PNG = "run-links.png"
STEPS_PNG = "run-step-latency.png"
OFFLOAD_PNG = "run-offload-by-layer.png"

RUN_CSS = CSS + """
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
h3 { margin-bottom: 0.2em; }
"""

TOP_LINKS = 30
# links.csv `source` values (simulator/run_tables.py); a links.csv without the column is all collective
COLLECTIVE = "collective"
DECADES = 2.0  # an axis spanning more than this many decades gets a log scale


def phase_color(phase: str) -> str:
    return PHASE_COLORS.get(phase, "#999999")


# ---------------------------------------------------------------- reading a run directory


@dataclass
class RunData:
    """The files of one run directory (None where a file is absent)."""

    path: Path
    summary: dict[str, Any]
    phases: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None
    utilization: pd.DataFrame | None = None
    traffic: pd.DataFrame | None = None
    links: pd.DataFrame | None = None
    expert_time: pd.DataFrame | None = None
    copies: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary.get("metrics") or {}

    @property
    def resolved(self) -> dict[str, Any]:
        return self.summary.get("resolved") or {}

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    @property
    def steps(self) -> int:
        steps = self.metrics.get("steps")
        if steps:
            return int(steps)
        if self.phases is not None and len(self.phases):
            return int(self.phases["step"].nunique())
        return 1

    @property
    def num_devices(self) -> int:
        devices = self.resolved.get("devices")
        if devices:
            return int(devices)
        for df, cols in ((self.utilization, ["device"]), (self.phases, ["device"]),
                         (self.traffic, ["src", "dst"]), (self.expert_time, ["device"])):
            if df is not None and len(df):
                return int(max(df[c].max() for c in cols)) + 1
        return 1

    @property
    def offload(self) -> dict[str, Any] | None:
        return self.metrics.get("offload") or None


def _damaged(path: Path, err: Exception) -> ConfigError:
    """A run file that exists but cannot be read (truncated, overwritten, not what simulate wrote)."""
    first = str(err).splitlines()[0] if str(err) else ""
    return ConfigError(f"this file of the run directory is damaged and cannot be read ({type(err).__name__}: "
                       f"{first[:200]}); simulate the scenario again to rewrite the run", file=path)


#: columns every version of `moesim simulate` wrote to each table, which the report indexes by
_KEY_COLUMNS = {"layers.csv": ("step", "layer"), "utilization.csv": ("device",), "traffic.csv": ("src", "dst"),
                "links.csv": ("from", "to", "bytes"), "expert_time.csv": ("layer", "device", "expert_time_s")}


def _read_csv(path: Path) -> pd.DataFrame | None:
    """A run directory's CSV table (None when absent; a damaged one is a ConfigError naming it)."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, UnicodeDecodeError, OSError) as err:  # ParserError is a ValueError
        raise _damaged(path, err) from None


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A run directory's Parquet table; a truncated or foreign file is a ConfigError naming it."""
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, KeyError ... for a bad file
        raise _damaged(path, err) from None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; a missing or unreadable summary.json raises MoesimError."""
    path = Path(run_dir)
    summary_path = path / "summary.json"
    if not path.is_dir():
        raise MoesimError(
            f"cannot report on run directory {path}: it does not exist (or is not a directory). A run "
            "directory is what `moesim simulate CONFIG --out DIR` writes (summary.json, phases.parquet, "
            "layers.csv, traffic.csv, links.csv, expert_time.csv); simulate the scenario first or pass the "
            "directory it wrote.")
    if not summary_path.is_file():
        raise MoesimError(
            f"cannot report on run directory {path}: summary.json is missing, so this is not (or no longer) "
            "a complete moesim run directory. A run directory is what `moesim simulate CONFIG --out DIR` "
            "writes (summary.json with the headline metrics and the resolved config, plus phases.parquet, "
            "layers.csv, traffic.csv, links.csv and expert_time.csv); simulate the scenario again or pass "
            "the directory it wrote.")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MoesimError(f"cannot report on run directory {path}: summary.json could not be read as JSON "
                          f"({err}); simulate the scenario again to rewrite it.") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise MoesimError(f"cannot report on run directory {path}: summary.json has no 'metrics' mapping, so "
                          "it was not written by `moesim simulate`; simulate the scenario again.")
    run = RunData(path, summary)
    phases = path / "phases.parquet"
    if phases.is_file():
        run.phases = _read_parquet(phases, ["step", "layer", "device", "phase", "start_s", "end_s", "duration_s"])
        run.phases["phase"] = run.phases["phase"].astype(str)
    else:
        run.missing.append("phases.parquet")
    for attr, name in (("layers", "layers.csv"), ("utilization", "utilization.csv"), ("traffic", "traffic.csv"),
                       ("links", "links.csv"), ("expert_time", "expert_time.csv"), ("copies", "copies.csv")):
        df = _read_csv(path / name)
        lacking = [c for c in _KEY_COLUMNS.get(name, ()) if df is not None and len(df.columns) and c not in df.columns]
        if lacking:
            raise ConfigError(f"this file of the run directory lacks column(s) {', '.join(lacking)} (found "
                              f"{', '.join(map(str, df.columns))[:200]}), so it is not the table `moesim simulate` "
                              "wrote; simulate the scenario again to rewrite the run", file=path / name)
        setattr(run, attr, df)
        if df is None and (attr != "copies" or run.offload):
            run.missing.append(name)
    return run


# ---------------------------------------------------------------- derived tables


def _phase_columns(present: Sequence[str]) -> list[str]:
    known = [p for p in PHASE_ORDER if p in present]
    return known + sorted(p for p in present if p not in PHASE_ORDER)


def time_by_layer(run: RunData) -> pd.DataFrame:
    """Per layer (rows) and phase (columns): mean seconds per step, averaged over devices."""
    ph = run.phases
    if ph is None or not len(ph):
        return pd.DataFrame()
    t = ph.pivot_table(index="layer", columns="phase", values="duration_s", aggfunc="sum", fill_value=0.0)
    t = t / (run.steps * run.num_devices)
    cols = [c for c in _phase_columns(list(t.columns)) if t[c].sum() > 0]
    t = t[cols]
    t.columns.name = None
    return t


def time_by_device(run: RunData) -> pd.DataFrame:
    """Per device (rows) and phase (columns): seconds per step, plus idle (step time left over)."""
    ph = run.phases
    if ph is None or not len(ph):
        return pd.DataFrame()
    t = ph.pivot_table(index="device", columns="phase", values="duration_s", aggfunc="sum", fill_value=0.0)
    t = t.reindex(range(run.num_devices), fill_value=0.0) / run.steps
    cols = [c for c in _phase_columns(list(t.columns)) if t[c].sum() > 0]
    t = t[cols]
    makespan = run.metrics.get("makespan_s")
    if makespan:
        t["idle"] = (float(makespan) / run.steps - t.sum(axis=1)).clip(lower=0.0)
    t.columns.name = None
    return t


def step_latency(run: RunData) -> pd.Series:
    """Seconds from the first phase start to the last phase end of every step."""
    ph = run.phases
    if ph is None or not len(ph):
        return pd.Series(dtype=float)
    g = ph.groupby("step")
    out = g["end_s"].max() - g["start_s"].min()
    out.name = "step_latency_s"
    return out


def traffic_matrix(run: RunData) -> np.ndarray | None:
    """(D, D) dispatch + combine bytes summed over the run, off-device only (None if no traffic)."""
    tr = run.traffic
    if tr is None or not len(tr):
        return None
    n = max(run.num_devices, int(max(tr["src"].max(), tr["dst"].max())) + 1)
    m = np.zeros((n, n))
    np.add.at(m, (tr["src"].to_numpy(int), tr["dst"].to_numpy(int)),
              tr["dispatch_bytes"].to_numpy(float) + tr["combine_bytes"].to_numpy(float))
    np.fill_diagonal(m, 0.0)
    return m if (m > 0).any() else None


_DEVICE_NAME = re.compile(r"^n(\d+)\.d(\d+)$")


def devices_per_node(run: RunData) -> int | None:
    """Devices per node when knowable: summary's resolved section, else the run's link endpoint names
    (n<node>.d<index>), checked against traffic.csv's inter_node column. None when unknown or one node."""
    n = run.num_devices
    per = run.resolved.get("devices_per_node")
    if not per and run.links is not None and len(run.links):
        names = pd.concat([run.links["from"], run.links["to"]]).astype(str).unique()
        found = [tuple(map(int, m.groups())) for m in map(_DEVICE_NAME.match, names) if m]
        if found:
            per = max(j for _, j in found) + 1
            if max(k for k, _ in found) + 1 < 2:
                return None
    if not per or per >= n or n % int(per):
        return None
    per = int(per)
    tr = run.traffic
    if tr is not None and len(tr) and "inter_node" in tr:
        inferred = (tr["src"].to_numpy(int) // per) != (tr["dst"].to_numpy(int) // per)
        if not np.array_equal(inferred, tr["inter_node"].astype(bool).to_numpy()):
            return None
    return per


def link_sources(links: pd.DataFrame) -> pd.Series:
    """What moved each links.csv row's bytes (collective, offload copy, ...)."""
    if "source" in links:
        return links["source"].fillna(COLLECTIVE).astype(str)
    return pd.Series([COLLECTIVE] * len(links), index=links.index)


def link_bytes_by_class(links: pd.DataFrame | None, steps: int) -> Table | None:
    """Bytes every link class carried, per source (collectives between devices, offload copies over
    the host link or storage path, ...), with the busiest link's busy share. None without rows."""
    if links is None or not len(links):
        return None
    df = links.assign(source=link_sources(links), cls=links["class"].astype(str))
    rows = []
    for (cls, src), g in df.groupby(["cls", "source"], sort=True):
        total = float(g["bytes"].sum())
        rows.append([cls, src, str(len(g)), fmt_bytes(total), fmt_bytes(total / max(steps, 1)),
                     _pct(float(g["utilization"].max()) if "utilization" in g else None, 2)])
    for cls, g in df.groupby("cls", sort=True):
        if g["source"].nunique() > 1:
            total = float(g["bytes"].sum())
            rows.append([cls, "all sources", str(len(g)), fmt_bytes(total), fmt_bytes(total / max(steps, 1)), "–"])
    return Table(["link class", "source", "directed links", "bytes (whole run)", "bytes per step",
                  "busiest link busy share"], rows)


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Factor and unit label for plotting times whose largest value is `max_seconds`."""
    if max_seconds >= 10.0:
        return 1.0, "s"
    if max_seconds >= 1e-4 or max_seconds <= 0:
        return 1e3, "ms"
    return 1e6, "µs"


def _spans_decades(values: Any) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return v.size > 1 and math.log10(v.max() / v.min()) > DECADES


def value_axis(ax, values: np.ndarray, xlabel: str, ylabel: str, headroom: float = 1.15) -> None:
    """Log y when the values span decades, else linear from 0; integer x ticks; axis labels."""
    from matplotlib.ticker import MaxNLocator

    if _spans_decades(values):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0, top=float(np.max(values)) * headroom)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (", log scale)" if ax.get_yscale() == "log" else ")"))


# ---------------------------------------------------------------- formatting


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or pd.isna(x) else f"{x * 100:.{digits}f}%"


def _ms(x: float | None) -> str:
    return "–" if x is None or pd.isna(x) else f"{x * 1e3:.4g} ms"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "–" if x is None or pd.isna(x) else format(x, fmt)


def _sig(x: float | None) -> str:
    """Whole numbers with separators from 1000 up, three significant digits below."""
    if x is None or pd.isna(x):
        return "–"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _gb(x: float | None) -> str:
    return "–" if x is None or pd.isna(x) else fmt_bytes(float(x))


# ---------------------------------------------------------------- headline metrics


@dataclass(frozen=True)
class Metric:
    """One headline number: raw value (None when it does not apply), its text, and which way is better."""

    key: str
    label: str
    value: float | None
    text: str
    unit: str
    better: str | None = None  # "lower", "higher" or None (neither)


def error_bar_line(bar: dict | None) -> str:
    """How sure the headline numbers are: the interval from a calibrated profile's held-out error."""
    if not bar or bar.get("relative") is None:
        return ("Error bar: none. " + (bar["source"] if bar else "This run predates error bars.")
                + " Every number here is a model output.")
    lo, hi = bar["step_latency_s"]
    rel = bar["relative"]
    width = (f"{rel[0]:+.1%} .. {rel[1]:+.1%}, a {bar['level']:.0%} interval" if isinstance(rel, list)
             else f"±{rel:.1%}")
    return (f"Error bar: {width} ({bar['source']}): step latency {_ms(lo)} .. {_ms(hi)}. "
            "Communication is costed from link profiles and is not covered by this interval.")


def headline_metrics(summary: dict[str, Any], *, for_comparison: bool = False) -> list[Metric]:
    """The run's headline metrics from summary.json (all simulated). Metrics that do not apply to the
    run (time per output token of a prefill, cache hit rate without offloading) are left out, unless
    `for_comparison`, where they are kept with value None so runs line up row by row."""
    m = summary.get("metrics") or {}
    steps = int(m.get("steps") or 1)
    lat = m.get("step_latency_s") or {}
    out: list[Metric] = []

    def add(key: str, label: str, value: Any, text: str, unit: str, better: str | None = None,
            applies: bool = True) -> None:
        if applies:
            out.append(Metric(key, label, None if value is None else float(value), text, unit, better))
        elif for_comparison:
            out.append(Metric(key, label, None, "–", unit, better))

    for k in ("mean", "p50", "p99"):
        v = lat.get(k)
        add(f"step_latency_{k}_s", f"step latency {k}", v, _ms(v), "s", "lower", v is not None)
    tput = m.get("throughput_tokens_per_s")
    add("throughput_tokens_per_s", "throughput", tput, f"{_sig(tput)} tokens/s", "tokens/s", "higher",
        tput is not None)
    tpot = m.get("time_per_output_token_s")
    add("time_per_output_token_s", "time per output token (decode)", tpot, _ms(tpot), "s", "lower", tpot is not None)
    tps = m.get("tokens_per_step")
    add("tokens_per_step", "tokens per step", tps, _num(tps), "tokens", None, tps is not None)
    add("steps", "steps simulated", steps, _num(steps), "steps", None)
    mk = m.get("makespan_s")
    add("makespan_s", "simulated time (all steps)", mk, "–" if mk is None else fmt_time(float(mk)), "s", "lower",
        mk is not None)
    sr = m.get("straggler_ratio") or {}
    for k in ("mean", "max"):
        v = sr.get(k)
        add(f"straggler_ratio_{k}", f"straggler ratio {k} (max/mean expert time)", v, _num(v, ".3f"), "ratio",
            "lower", v is not None)
    tok = m.get("tokens") or {}
    dropped, routed = tok.get("dropped_assignments"), tok.get("routed_assignments")
    if dropped is not None:
        share = dropped / routed if routed else 0.0
        add("dropped_rows", "dropped (token, expert) rows", dropped,
            f"{_num(dropped)} of {_num(routed)} routed ({_pct(share, 2)})", "rows", "lower")
    pay = m.get("all_to_all_payload_bytes") or {}
    if pay:
        total = float(pay.get("dispatch", 0.0)) + float(pay.get("combine", 0.0))
        inter = float(pay.get("dispatch_inter_node", 0.0)) + float(pay.get("combine_inter_node", 0.0))
        add("all_to_all_bytes_per_step", "all-to-all payload per step (dispatch + combine)", total / steps,
            f"{fmt_bytes(total / steps)} ({fmt_bytes(total)} in all)", "bytes", "lower")
        add("inter_node_share", "inter-node share of the all-to-all payload", inter / total if total else None,
            _pct(inter / total) if total else "– (no all-to-all traffic)", "share", "lower")
    share = m.get("time_share") or {}
    if "idle" in share:
        add("idle_share", "idle share of device time", share["idle"], _pct(share["idle"]), "share", "lower")
    mem = m.get("memory_per_device_bytes") or {}
    if mem.get("max") is not None:
        cap = mem.get("capacity")
        text = fmt_bytes(mem["max"]) + (f" of {fmt_bytes(cap)} ({_pct(mem['max'] / cap)})" if cap else "")
        add("memory_per_device_bytes", "memory per device (max) vs capacity", mem["max"], text, "bytes", "lower")
    off = m.get("offload")
    hit = m.get("cache_hit_rate")
    add("cache_hit_rate", "expert cache hit rate (on time)", hit, _pct(hit), "share", "higher",
        bool(off) and hit is not None)
    miss = (off or {}).get("miss_rate")  # late hits are neither: they waited on a prefetch's copy
    add("cache_miss_rate", "expert cache miss rate", miss, _pct(miss), "share", "lower", miss is not None)
    stall = ((off or {}).get("stall_s") or {})
    add("offload_stall_share", "offload stall share of device time", stall.get("share_of_device_time"),
        _pct(stall.get("share_of_device_time")), "share", "lower", "share_of_device_time" in stall)
    add("offload_stall_per_step_s", "offload stall per step (worst device)", stall.get("worst_device_per_step_mean_s"),
        _ms(stall.get("worst_device_per_step_mean_s")), "s", "lower", "worst_device_per_step_mean_s" in stall)
    peak = (off or {}).get("peak_device_memory_bytes")
    add("peak_device_memory_bytes", "peak device memory (offloading)", peak, _gb(peak), "bytes", "lower",
        peak is not None)
    return out


def metrics_frame(metrics: list[Metric]) -> pd.DataFrame:
    return pd.DataFrame([{"metric": x.key, "label": x.label, "value": x.value, "unit": x.unit, "text": x.text}
                         for x in metrics])


def offload_rows(off: dict[str, Any], steps: int) -> list[tuple[str, str]]:
    """(label, value) rows of the offloading table from summary.json's metrics.offload."""
    rows: list[tuple[str, str]] = []
    tier_bw = off.get("tier_bandwidth_bytes_per_s")
    rows.append(("slow tier", f"{off.get('tier', '–')}" + (f" ({fmt_bytes(tier_bw)}/s)" if tier_bw else "")))
    rows.append(("cache policy and capacity", f"{off.get('policy', '–')}, {off.get('cache_capacity', '–')}"
                 + (" (holds every expert)" if off.get("cache_holds_all_experts") else "")))
    pf = off.get("prefetch") or {}
    pol = pf.get("policy", "none")
    extra = [] if pol == "none" else [f"lookahead {pf.get('lookahead')}"]
    if pol == "predictor":
        extra.append(f"accuracy {pf.get('accuracy')}")
    rows.append(("prefetch policy", pol + (f" ({', '.join(extra)})" if extra else "")))
    hy = off.get("hybrid") or {}
    if hy:
        rows.append(("hybrid execution", ", ".join(f"{k}: {v}" for k, v in hy.items())))
    rows.append(("cache hit rate", _pct(off.get("hit_rate"))))
    rows.append(("hits / misses", f"{_num(off.get('hits'))} / {_num(off.get('misses'))}"))
    rows.append(("evictions", _num(off.get("evictions"))))
    rows.append(("prefetches issued", _num(off.get("prefetches"))))
    rows.append(("prefetches used / wasted / late", f"{_num(off.get('prefetches_used'))} / "
                 f"{_num(off.get('prefetches_wasted'))} / {_num(off.get('late_prefetches'))}"))
    if off.get("prefetch_accuracy") is not None:
        rows.append(("prefetch accuracy (used / issued)", _pct(off["prefetch_accuracy"])))
    rows.append(("copies cancelled", _num(off.get("copies_cancelled"))))
    for tier, b in (off.get("bytes_fetched") or {}).items():
        rows.append((f"bytes fetched from {tier}", f"{fmt_bytes(b)} ({fmt_bytes(b / steps)} per step)"))
    kinds = off.get("bytes_fetched_by_kind") or {}
    if kinds:
        rows.append(("fetched on demand / by prefetch", " / ".join(fmt_bytes(kinds.get(k, 0.0))
                                                                  for k in ("demand", "prefetch"))))
    if off.get("host_experts_run"):
        rows.append(("experts run on the host CPU", f"{_num(off['host_experts_run'])} "
                     f"({fmt_bytes(off.get('host_activation_bytes', 0.0))} of activations over the link)"))
    stall = off.get("stall_s") or {}
    if stall:
        rows.append(("stall, summed over devices", fmt_time(stall.get("total_device_s", 0.0))))
        rows.append(("stall per step (worst device, mean)", _ms(stall.get("worst_device_per_step_mean_s"))))
        rows.append(("stall share of device time", _pct(stall.get("share_of_device_time"))))
    rows.append(("copy engine utilization", _pct(off.get("copy_engine_utilization"))))
    rows.append(("peak device memory", _gb(off.get("peak_device_memory_bytes"))))
    st = off.get("statistics") or {}
    if st:
        rows.append(("routing statistics (hotness, affinity)",
                     f"{st.get('steps_sampled')} steps from step {st.get('first_step')}"
                     + (" (in-sample: overlaps the simulated steps)" if st.get("in_sample") else " (out-of-sample)")))
    return rows


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list):
        return {prefix: json.dumps(d)}
    return {prefix: d}


# ---------------------------------------------------------------- plots


def _node_boundaries(count: int, per_node: int | None) -> list[float]:
    return [b - 0.5 for b in range(per_node, count, per_node)] if per_node else []


def _log_ticks(axis) -> None:
    """Plain-number labels at 1, 2 and 5 times each power of ten on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _stacked_bars(ax, table: pd.DataFrame, scale: float) -> None:
    x = table.index.to_numpy()
    bottom = np.zeros(len(table))
    width = 0.8
    for phase in table.columns:
        v = table[phase].to_numpy() * scale
        ax.bar(x, v, width, bottom=bottom, color=phase_color(phase), label=phase, linewidth=0)
        bottom += v


def plot_time_by_layer(table: pd.DataFrame, run_name: str, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(max(10.0, min(18.0, 4 + 0.12 * len(table))), 4.5))
    scale, unit = time_unit(float(table.sum(axis=1).max()))
    _stacked_bars(ax, table, scale)
    ax.set_xlabel("model layer (every layer: attention, dense or MoE)")
    ax.set_ylabel(f"time per step ({unit}, mean over devices)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(table.index.min() - 0.6, table.index.max() + 0.6)
    ax.set_title(f"{run_name}: where each layer's time goes (simulated)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="phase")
    save_figure(fig, path)


def plot_time_by_device(table: pd.DataFrame, run_name: str, per_node: int | None, path: Path) -> None:
    plt = pyplot()
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(10.0, min(18.0, 4 + 0.2 * n)), 4.5))
    scale, unit = time_unit(float(table.sum(axis=1).max()))
    _stacked_bars(ax, table, scale)
    node_lines(ax, _node_boundaries(n, per_node))
    device_ticks(ax, n)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("device" + ("  (dashed lines: node boundaries)" if per_node else ""))
    ax.set_ylabel(f"time per step ({unit})")
    ax.set_title(f"{run_name}: time per step on each device, by phase (simulated)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="phase")
    save_figure(fig, path)


STRAGGLER_CMAP = "RdBu_r"  # diverging: blue below the layer mean, white at it, red above
STRAGGLER_MIN_HALF_RANGE = 0.05  # the colour scale spans at least 0.95 to 1.05


def straggler_ratio_grid(grid: np.ndarray) -> np.ndarray:
    """Each cell's expert time over its row's (MoE layer's) mean over devices: 1 = at the mean,
    so a perfectly balanced layer is all ones; the row maximum is the layer's max/mean."""
    grid = np.asarray(grid, dtype=float)
    mean = np.nanmean(grid, axis=1, keepdims=True) if grid.size else np.zeros((grid.shape[0], 1))
    return np.divide(grid, mean, out=np.ones_like(grid), where=np.isfinite(grid) & (mean > 0))


def straggler_norm(ratio: np.ndarray):
    """Linear colour scale centred on 1 (the layer mean), symmetric: 1 ± the largest deviation."""
    from matplotlib.colors import Normalize

    finite = np.asarray(ratio, dtype=float)
    finite = finite[np.isfinite(finite)]
    half = max(float(np.abs(finite - 1.0).max()) if finite.size else 0.0, STRAGGLER_MIN_HALF_RANGE)
    return Normalize(vmin=1.0 - half, vmax=1.0 + half)


def straggler_colors(grid: np.ndarray) -> np.ndarray:
    """(L, D, 4) RGBA the straggler map paints each (layer, device) cell of expert times `grid`."""
    plt = pyplot()
    ratio = straggler_ratio_grid(grid)
    return plt.get_cmap(STRAGGLER_CMAP)(straggler_norm(ratio)(ratio))


def plot_expert_time(et: pd.DataFrame, run_name: str, per_node: int | None, path: Path) -> None:
    """Heatmap of each device's expert time over its MoE layer's mean: layers (rows) x devices (columns).

    Coloured on a diverging scale centred on the layer mean (white), so a balanced layer is white
    whatever its absolute time and only a device slower than its layer's mean shows red."""
    plt = pyplot()

    grid = et.pivot_table(index="layer", columns="device", values="expert_time_s", aggfunc="mean")
    vals = grid.to_numpy(dtype=float)
    ratio = straggler_ratio_grid(vals)
    norm = straggler_norm(ratio)
    L, D = grid.shape
    fig, ax = plt.subplots(figsize=(max(8.0, min(14.0, 4 + 0.25 * D)), max(4.0, min(9.0, 1.6 + 0.1 * L))))
    im = ax.imshow(np.ma.masked_invalid(ratio), aspect="auto", cmap=STRAGGLER_CMAP, norm=norm,
                   interpolation="nearest")
    node_lines(ax, _node_boundaries(D, per_node))
    device_ticks(ax, D, limit=24)
    layers = grid.index.to_numpy()
    step = max(1, math.ceil(L / 24))
    ax.set_yticks(range(0, L, step))
    ax.set_yticklabels([str(v) for v in layers[::step]])
    ax.set_xlabel("device" + ("  (dashed lines: node boundaries)" if per_node else ""))
    ax.set_ylabel("model layer (MoE layers only)")
    row_max = np.nanmax(ratio, axis=1)
    scale, unit = time_unit(float(np.nanmax(vals)))
    ax.set_title(f"{run_name}: routed-expert time per device over its layer's mean (simulated)\n"
                 f"max/mean over devices: {np.nanmean(row_max):.2f} on average, {np.nanmax(row_max):.2f} at worst "
                 f"(layer {layers[int(np.nanargmax(row_max))]}); mean expert time "
                 f"{np.nanmean(vals) * scale:.3g} {unit} per step", fontsize=10)
    fig.colorbar(im, ax=ax, label="expert time / layer mean over devices (1 = balanced)")
    save_figure(fig, path)


def plot_traffic(m: np.ndarray, steps: int, run_name: str, per_node: int | None, path: Path) -> None:
    plt = pyplot()
    from matplotlib.colors import LogNorm

    D = m.shape[0]
    per_step = m / steps / 1e6  # MB per step
    pos = per_step[per_step > 0]
    hi = float(pos.max())
    lo = min(float(pos.min()), hi / 100)  # at least two decades: near-even traffic reads as one colour
    norm = LogNorm(vmin=lo, vmax=hi)
    side = max(5.0, min(9.0, 3 + D / 8))
    fig, ax = plt.subplots(figsize=(side + 1.8, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_where(per_step <= 0, per_step), cmap=cmap, norm=norm, interpolation="nearest")
    if D <= 12:
        for (s, d), v in np.ndenumerate(per_step):
            if v > 0:
                ax.text(d, s, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if math.log(v / lo + 1e-30) < 0.5 * math.log(hi / lo + 1e-30) else "black")
    node_lines(ax, _node_boundaries(D, per_node), vertical=True, horizontal=True)
    device_ticks(ax, D, limit=16)
    device_ticks(ax, D, "y", limit=16)
    ax.set_xlabel("destination device")
    ax.set_ylabel("source device")
    ax.set_title(f"{run_name}: all-to-all traffic per step (simulated)\n"
                 "dispatch + combine; grey = none (diagonal stays on the device)"
                 + ("; dashed: node boundaries" if per_node else ""), fontsize=10)
    bar = fig.colorbar(im, ax=ax, label="MB per step (log scale)", shrink=0.9)
    _log_ticks(bar.ax.yaxis)
    save_figure(fig, path)


def _busiest(count: int) -> str:
    return "one directed link" if count == 1 else f"{min(TOP_LINKS, count)} busiest directed links"


def plot_links(links: pd.DataFrame, run_name: str, path: Path) -> None:
    plt = pyplot()
    from matplotlib.patches import Patch

    top = links.sort_values("utilization", ascending=False).head(TOP_LINKS).iloc[::-1]
    classes = sorted(links["class"].astype(str).unique())
    colors = {c: LINK_CLASS_COLORS[i % len(LINK_CLASS_COLORS)] for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(10.0, max(3.0, min(8.5, 1.4 + 0.22 * len(top)))))
    y = np.arange(len(top))
    util = top["utilization"].to_numpy(float) * 100
    ax.barh(y, util, color=[colors[str(c)] for c in top["class"]])
    ax.set_yticks(y)
    sources = top["source"].astype(str) if "source" in top else pd.Series([COLLECTIVE] * len(top))
    ax.set_yticklabels([f"{a} → {b}" + ("" if s == COLLECTIVE else f" ({s})")
                        for a, b, s in zip(top["from"], top["to"], sources)], fontsize=8)
    ax.set_ylim(-0.6, len(top) - 0.4)
    if _spans_decades(util):
        ax.set_xscale("log")
    ax.set_xlabel("busy share of the simulated time (%)" + (", log scale" if ax.get_xscale() == "log" else ""))
    busiest = links.groupby(links["class"].astype(str))["utilization"].max()
    ax.legend(handles=[Patch(color=colors[c], label=f"{c} (busiest {busiest[c] * 100:.3g}%)") for c in classes],
              title="link class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    shown = (f"the {len(top)} busiest of {len(links)} directed links" if len(links) > len(top)
             else f"all {len(links)} directed links" if len(links) > 1 else "the one directed link")
    ax.set_title(f"{run_name}: link utilization,\n{shown} that carried bytes (simulated)")
    save_figure(fig, path)


def plot_step_latency(lat: pd.Series, run_name: str, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(10.0, 4.0))
    scale, unit = time_unit(float(lat.max()))
    v = lat.to_numpy() * scale
    ax.plot(lat.index, v, marker="o" if len(v) <= 60 else None, ms=4, color="C0", label="step latency")
    ax.axhline(float(v.mean()), color="grey", ls=":", lw=1.2, label=f"mean {v.mean():.4g} {unit}")
    value_axis(ax, v, "step", f"step latency ({unit}", headroom=1.12)
    ax.set_title(f"{run_name}: latency of every simulated step")
    legend_outside(ax, fontsize="small")
    save_figure(fig, path)


def offload_by_layer(layers: pd.DataFrame) -> pd.DataFrame:
    """Per MoE layer, mean over steps: worst-device stall, mean stall, bytes fetched, host-run experts."""
    cols = [c for c in ("offload_stall_max_s", "offload_stall_mean_s", "fetched_bytes", "host_experts")
            if c in layers]
    return layers.groupby("layer")[cols].mean()


def plot_offload(per_layer: pd.DataFrame, run_name: str, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10.0, 6.0), sharex=True)
    x = per_layer.index.to_numpy()
    scale, unit = time_unit(float(per_layer["offload_stall_max_s"].max()))
    stall = per_layer["offload_stall_max_s"].to_numpy() * scale
    top.bar(x, stall, color=phase_color("offload_stall"), label="worst device")
    if "offload_stall_mean_s" in per_layer and not np.allclose(per_layer["offload_stall_mean_s"],
                                                               per_layer["offload_stall_max_s"]):
        top.plot(x, per_layer["offload_stall_mean_s"].to_numpy() * scale, "k.", ms=5, label="mean over devices")
    top.set_ylabel(f"stall per step ({unit})")
    top.set_title(f"{run_name}: waiting for expert weights per MoE layer (simulated, mean over steps)")
    legend_outside(top, fontsize="small")
    top.set_ylim(bottom=0)
    fetched = per_layer["fetched_bytes"].to_numpy() / 1e6 if "fetched_bytes" in per_layer else np.zeros(len(x))
    bottom.bar(x, fetched, color="#4C72B0")
    if _spans_decades(fetched):
        bottom.set_yscale("log")
    bottom.set_ylabel("fetched per step (MB" + (", log)" if bottom.get_yscale() == "log" else ")"))
    bottom.set_xlabel("model layer (MoE layers only)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_title("Expert bytes copied into device memory per MoE layer (simulated, mean over steps)")
    save_figure(fig, path)


# ---------------------------------------------------------------- page blocks and rendering


@dataclass(frozen=True)
class Block:
    """One piece of the page: kind is h2, h3, p, note, facts, table, figure, raw_table, raw, links or code."""

    kind: str
    content: Any


def render_html(title: str, blocks: list[Block], out: Path, css: str = RUN_CSS) -> str:
    """One self-contained page: every figure embedded as a base64 PNG data URI, the CSV tables as
    data-URI downloads; nothing else on disk is referenced."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>",
             f"<style>{css}</style>\n</head>\n<body>", f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            parts.append(f"<{b.kind}>{esc(b.content)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{esc(b.content)}</p>")
        elif b.kind == "note":
            parts.append(f"<p class=\"note\">{esc(b.content)}</p>")
        elif b.kind == "facts":
            parts.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in b.content) + "</dl>")
        elif b.kind == "table":
            parts.append(table_html(b.content))
        elif b.kind == "raw_table":  # (html, markdown) of a table with per-cell classes
            parts.append(scroll_box(b.content[0]))
        elif b.kind == "raw":  # (html, markdown) written by its module (the Perfetto paragraph)
            parts.append(b.content[0])
        elif b.kind == "links":  # data files beside the report, embedded as downloads
            parts.append(files_html(out, list(b.content), "Tables"))
        elif b.kind == "figure":
            parts.append(figure_html(out, b.content, "h3"))
        elif b.kind == "code":
            parts.append(f"<pre>{esc(b.content)}</pre>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def render_markdown(title: str, blocks: list[Block]) -> str:
    """The same page as Markdown, images by relative file name."""
    parts = [f"# {title}"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"## {b.content}")
        elif b.kind == "h3":
            parts.append(f"### {b.content}")
        elif b.kind in ("p", "note"):
            parts.append(str(b.content))
        elif b.kind == "facts":
            parts.append("\n".join(f"- **{k}**: {v}" for k, v in b.content))
        elif b.kind == "table":
            parts.append(table_markdown(b.content))
        elif b.kind in ("raw_table", "raw"):
            parts.append(b.content[1])
        elif b.kind == "links":
            parts.append("Tables: " + ", ".join(f"[{n}]({n})" for n in b.content))
        elif b.kind == "figure":
            f = b.content
            parts += [f"### {f.title}", f"![{f.title}]({f.file})", f.caption]
        elif b.kind == "code":
            parts.append(f"```yaml\n{b.content.rstrip()}\n```")
    return "\n\n".join(parts) + "\n"


def run_title(run: RunData) -> str:
    r = run.resolved
    par = f"EP{r.get('ep', '?')} TP{r.get('tp', '?')} DP{r.get('dp', '?')}"
    hw = f"{r.get('cluster', '?')} ({run.num_devices} × {r.get('device', '?')})"
    return f"{run.name}: {r.get('model', '?')} on {hw}, {par}"


def source_line(summary: dict[str, Any]) -> str:
    src = (summary.get("metrics") or {}).get("source") or "model (simulated)"
    return f"Every number in this report is simulated, a model output of moesim, not a measurement. Source: {src}."


def run_facts(run: RunData) -> list[tuple[str, str]]:
    s, r = run.summary, run.resolved
    cfg = s.get("config") or {}
    wl = cfg.get("workload") or {}
    facts = [("run directory", str(run.path)), ("config file", str(s.get("config_file") or "–")),
             ("moesim version", str(s.get("moesim_version", "–"))), ("seed", str(s.get("seed", "–"))),
             ("model", str(r.get("model", "–"))),
             ("cluster / device", f"{r.get('cluster', '–')} / {r.get('device', '–')}, {run.num_devices} device(s)"),
             ("parallelism", f"ep={r.get('ep', '–')}, tp={r.get('tp', '–')}, dp={r.get('dp', '–')}")]
    if r.get("moe_layers") is not None:
        facts.append(("MoE layers", str(r["moe_layers"])))
    if serving_of(s) is not None:  # the fixed-batch workload defaults do not apply to a serving run
        facts.append(("workload", f"serving, {serving_load(cfg.get('serving') or {})}, {run.steps} scheduler "
                                  "iteration(s) simulated"))
    elif wl:
        phase = wl.get("phase", "–")
        shape = (f"batch {wl.get('batch_size')}, kv_len {wl.get('kv_len')}" if phase == "decode"
                 else f"batch {wl.get('batch_size')}, seq_len {wl.get('seq_len')}")
        facts.append(("workload", f"{phase}, {shape}, {run.steps} step(s)"))
    routing = (s.get("metrics") or {}).get("routing")
    if routing:
        facts.append(("routing", ", ".join(f"{k}={v}" for k, v in _flatten(routing).items() if v is not None)))
    pl = cfg.get("placement") or {}
    if pl:
        facts.append(("placement", str(pl.get("policy")) + (f" ({pl['file']})" if pl.get("file") else "")))
    if run.missing:
        facts.append(("files missing", ", ".join(run.missing)))
    return facts


# ---------------------------------------------------------------- serving section (serving runs only)

SERVING_CDF_PNG = "run-serving-latency-cdf.png"
SERVING_BATCH_PNG = "run-serving-batch-kv.png"
# (summary key, label, how the statistic is taken; see simulator/serving/results.py)
SERVING_LATENCIES = (
    ("ttft_s", "TTFT (time to first token)",
     "first output token - arrival (queueing and prefill included); every measured request that emitted one"),
    ("itl_s", "ITL (inter-token latency)", "each gap between consecutive output tokens, pooled over the measured "
                                           "finished requests"),
    ("tpot_s", "TPOT (time per output token)", "(last - first output token) / (output tokens - 1), one per "
                                               "measured finished request"),
    ("e2e_s", "E2E (end-to-end latency)", "last output token - arrival, measured finished requests"),
    ("queue_s", "queueing", "first scheduled - arrival (wait before the scheduler admits the request), measured "
                            "finished requests"),
)


def serving_of(summary: dict[str, Any]) -> dict[str, Any] | None:
    """summary.json's metrics.serving (None for a fixed-batch run)."""
    sv = (summary.get("metrics") or {}).get("serving")
    return sv if isinstance(sv, dict) else None


def _time(x: float | None) -> str:
    """A latency: seconds from 1 s up, milliseconds from 1 ms up, else microseconds; three significant digits."""
    if x is None or pd.isna(x):
        return "–"
    if abs(x) >= 1.0:
        return f"{x:.3g} s"
    return f"{x * 1e3:.3g} ms" if abs(x) >= 1e-3 or x == 0 else f"{x * 1e6:.3g} µs"


def _slo_text(slo: dict[str, Any] | None) -> str:
    limits = [f"{label} <= {_time(v)}" for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"))
              if (v := (slo or {}).get(key)) is not None]
    return " and ".join(limits) if limits else "no SLO given (every measured finished request counts)"


def _items(d: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in (d or {}).items() if v is not None) if isinstance(d, dict) else str(d)


def serving_load(cfg: dict[str, Any]) -> str:
    """The offered load in words, from the resolved config's serving section."""
    if cfg.get("users") is not None:
        think = cfg.get("think_time") or 0.0
        think_text = _items(think) if isinstance(think, dict) else (_time(float(think)) if think else "0")
        ramp = cfg.get("ramp_up") or 0.0
        start = f", users start over {_time(float(ramp))} ({cfg.get('ramp', 'even')})" if ramp else ", all at t = 0"
        return f"closed loop, {cfg['users']} concurrent user(s), think time {think_text}{start}"
    return f"open loop, arrivals {_items(cfg.get('arrivals'))}"


def serving_facts(run: RunData, sv: dict[str, Any]) -> list[tuple[str, str]]:
    cfg = (run.summary.get("config") or {}).get("serving") or {}
    req, thr = sv.get("requests") or {}, sv.get("throughput") or {}
    facts = [("load (offered)", serving_load(cfg) if cfg else "–")]
    if cfg:
        facts.append(("request lengths", f"prompt {_items(cfg.get('prompt_tokens'))}; output "
                                         f"{_items(cfg.get('output_tokens'))}"))
        facts.append(("scheduler", _items(cfg.get("scheduler"))))
    facts.append(("requests", f"{_num(req.get('total'))} in all, {_num(req.get('finished'))} finished, "
                              f"{_num(req.get('unfinished'))} unfinished at the horizon "
                              f"({_time(sv.get('horizon_s'))} simulated)"))
    share = req.get("warmup_share")
    facts.append(("warm-up excluded", f"the {_num(req.get('warmup_excluded'))} earliest arrivals (warm-up share "
                                      f"{_pct(share, 0)}) are left out of every statistic below; "
                                      f"{_num(req.get('measured'))} requests measured, "
                                      f"{_num(req.get('measured_finished'))} of them finished"))
    if thr.get("window_s") is not None:
        facts.append(("measured window", f"{_time(thr.get('window_start_s'))} to {_time(thr.get('window_end_s'))} "
                                         f"({_time(thr['window_s'])}): first measured arrival to last measured finish"))
    facts.append(("deployment", f"{_num(sv.get('num_gpus'))} GPU(s), {_num(sv.get('replicas'))} attention "
                                f"replica(s), {_num(sv.get('iterations'))} scheduler iterations"))
    return facts


def _text_table(t: Table) -> Block:
    """A table whose last column is prose: left-aligned in the HTML (raw_table), plain in the Markdown."""
    esc = html.escape
    left, keep = ' style="text-align:left"', ' style="white-space:nowrap"'
    head = "".join(f"<th>{esc(h)}</th>" for h in t.headers[:-1]) + f"<th{left}>{esc(t.headers[-1])}</th>"
    body = "\n".join("<tr>" + "".join(f"<td{keep if i else ''}>{esc(c)}</td>" for i, c in enumerate(row[:-1]))
                     + f"<td{left}>{esc(row[-1])}</td></tr>" for row in t.rows)
    return Block("raw_table", (f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>",
                               table_markdown(t)))


def serving_latency_table(sv: dict[str, Any]) -> Table:
    lat = sv.get("latency") or {}
    rows = []
    for key, label, how in SERVING_LATENCIES:
        p = lat.get(key) or {}
        rows.append([label, _num(p.get("count"))] + [_time(p.get(k)) for k in ("mean", "p50", "p90", "p99")] + [how])
    return Table(["latency (simulated)", "samples", "mean", "p50", "p90", "p99", "taken over"], rows)


def serving_throughput_table(sv: dict[str, Any]) -> Table:
    thr, good, batch = sv.get("throughput") or {}, sv.get("goodput") or {}, sv.get("batch") or {}
    little = sv.get("littles_law") or {}
    gps = good.get("requests_per_s")
    rows = [
        ["output tokens/s", _sig(thr.get("output_tokens_per_s")),
         f"every output token emitted in the measured window ({_num(thr.get('output_tokens_in_window'))}, "
         "warm-up and unfinished requests' tokens included) / window length"],
        ["output tokens/s per GPU", _sig(thr.get("output_tokens_per_s_per_gpu")),
         f"the above / {_num(sv.get('num_gpus'))} GPUs"],
        ["output tokens/s per user", _sig(thr.get("output_tokens_per_s_per_user")),
         "mean over measured finished requests of 1 / TPOT (the decode speed one user sees)"],
        ["requests/s", _sig(thr.get("requests_per_s")), "measured finished requests / window length"],
        [f"goodput ({_slo_text(good.get('slo'))})",
         "–" if gps is None else f"{_sig(gps)} requests/s ({_pct(good.get('share'))})",
         f"measured finished requests meeting every SLO ({_num(good.get('requests_meeting_slo'))}) / window "
         "length; in brackets their share of the measured finished requests"],
        ["batch size: mean / max sequences",
         f"{_num(batch.get('mean_sequences'), '.3g')} / {_num(batch.get('max_sequences'))}",
         f"sequences per (iteration, replica), {batch.get('scope', '–')} ({_num(batch.get('iterations'))} rows)"],
        ["tokens per iteration: prefill / decode",
         f"{_num(batch.get('mean_prefill_tokens'), '.4g')} / {_num(batch.get('mean_decode_tokens'), '.4g')}",
         "mean per (iteration, replica), same rows"],
        ["KV-cache use: mean / max", f"{_pct(batch.get('kv_use_mean'), 2)} / {_pct(batch.get('kv_use_max'), 2)}",
         "KV tokens held / KV capacity of the replica, same rows"],
        ["Little's law: requests in system / rate x mean E2E",
         f"{_num(little.get('mean_in_system'), '.3g')} / {_num(little.get('predicted_in_system'), '.3g')}",
         "time average over the window against measured arrival rate x mean E2E; near 1:1 in steady state"],
    ]
    return Table(["metric", "value (simulated)", "how it is computed"], rows)


def serving_memory_table(sv: dict[str, Any]) -> Table | None:
    mem = sv.get("memory_per_rank_bytes") or {}
    if not mem:
        return None
    cap = mem.get("capacity")

    def share(v: Any) -> str:
        return _pct(float(v) / float(cap), 2) if cap and v is not None else "–"

    parts = [("weights (this rank's shard)", "weights"), ("activations", "activations"),
             ("communication buffers", "comm_buffers"), ("runtime reserve", "runtime_reserve")]
    rows = [[label, _gb(mem.get(key)), share(mem.get(key))] for label, key in parts]
    kv, per_tok = mem.get("kv_cache"), mem.get("kv_bytes_per_token")
    rows.append([f"KV cache ({_num(mem.get('kv_tokens'))} tokens at {_gb(per_tok)} per token)"
                 if per_tok else "KV cache", _gb(kv), share(kv)])
    total = sum(float(mem[k]) for _, k in parts + [("", "kv_cache")] if mem.get(k) is not None)
    rows.append(["total", _gb(total), share(total)])
    rows.append(["device memory (capacity)", _gb(cap), "100.00%" if cap else "–"])
    return Table(["per rank (simulated budget)", "bytes", "share of capacity"], rows)


def _serving_tables(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    req = path / "requests.parquet"
    requests = _read_parquet(req) if req.is_file() else None
    return requests, _read_csv(path / "iterations.csv")


def serving_blocks(run: RunData, sv: dict[str, Any], out: Path, csvs: list[str]) -> list[Block]:
    """The Serving section of a serving run's report: latency, throughput and goodput, memory per
    rank, the latency CDFs and batch / KV-cache use over time."""
    from moesim.reports.serving_plots import batch_and_kv, latency_cdfs

    blocks = [Block("h2", "Serving"),
              Block("note", "Simulated, not measured: requests drawn from the config's serving: section (seeded), "
                            "scheduled by moesim's continuous batcher, every iteration timed by the cost model "
                            f"(source: {(run.metrics.get('source') or 'model (simulated)')}). Numbers come "
                            "from summary.json (metrics.serving), the plots from requests.parquet and "
                            "iterations.csv of the run; the statistics follow vLLM's serving benchmark definitions."),
              Block("facts", serving_facts(run, sv)),
              Block("h3", "Latency"), _text_table(serving_latency_table(sv)),
              Block("h3", "Throughput and goodput"), _text_table(serving_throughput_table(sv))]
    lat = sv.get("latency") or {}
    pd.DataFrame([{"statistic": k, **(lat.get(k) or {})} for k, _, _ in SERVING_LATENCIES]).to_csv(
        out / "serving_latency.csv", index=False)
    csvs.append("serving_latency.csv")
    mem = serving_memory_table(sv)
    if mem is not None:
        blocks += [Block("h3", "Memory per rank"),
                   Block("note", "The per-rank memory budget the serving simulation admits requests against: "
                                 "what weights, activations, buffers and the reserve leave is the KV cache. "
                                 "Simulated."),
                   Block("table", mem)]
    requests, iterations = _serving_tables(run.path)
    if requests is not None and len(requests):
        latency_cdfs(requests, out, SERVING_CDF_PNG, run.name)
        blocks.append(Block("figure", Figure(
            SERVING_CDF_PNG, "Latency distributions",
            "Empirical CDF of TTFT, TPOT, ITL and E2E over the measured requests (warm-up excluded), p50 and p99 "
            "marked; from requests.parquet. Simulated.")))
    else:
        blocks.append(Block("note", "Latency distributions: not shown, the run has no requests.parquet rows."))
    if iterations is not None and len(iterations):
        batch_and_kv(iterations, out, SERVING_BATCH_PNG, run.name)
        blocks.append(Block("figure", Figure(
            SERVING_BATCH_PNG, "Batch size and KV-cache use over time",
            "Sequences per scheduler iteration (top) and KV cache held as a share of capacity (bottom), per "
            "attention replica, over the whole simulated run (warm-up included); from iterations.csv. Simulated.")))
    else:
        blocks.append(Block("note", "Batch size and KV-cache use: not shown, the run has no iterations.csv rows."))
    if requests is not None and len(requests):
        blocks += serving_more_blocks(run, requests, iterations, out)
    blocks.append(Block("note", "Below: the engine view of the same run, where a step is one scheduler iteration "
                                "(its step latency is the iteration time; its throughput counts tokens over the "
                                "whole simulated time, idle gaps included, unlike the measured window above)."))
    return blocks


def serving_more_blocks(run: RunData, requests: pd.DataFrame, iterations: pd.DataFrame | None,
                        out: Path) -> list[Block]:
    """The per-request figures of a serving run: its timeline, queue length and KV use over time,
    TTFT against prompt length (reports/request_timeline.py, queue_kv_plot.py, ttft_plot.py)."""
    from moesim.reports.queue_kv_plot import QUEUE_KV_PNG, queue_and_kv
    from moesim.reports.request_timeline import MAX_REQUESTS, TIMELINE_PNG, request_timeline
    from moesim.reports.ttft_plot import TTFT_PNG, ttft_slo, ttft_vs_prompt

    request_timeline(requests, iterations, out, TIMELINE_PNG, run.name)
    queue_and_kv(requests, iterations, out, QUEUE_KV_PNG, run.name)
    slo = ttft_slo(run.summary)
    ttft_vs_prompt(requests, out, slo, TTFT_PNG, run.name)
    return [
        Block("figure", Figure(
            TIMELINE_PNG, "Per-request timeline",
            f"One row per request (at most {MAX_REQUESTS}: the first after the warm-up, by arrival), grouped by "
            "replica: queueing (arrival to first scheduled), prefill chunks (each iteration of its replica that ran "
            "prefill tokens between its admission and its first token) and decode (first to last output token; a "
            "preempted request's wait again lies inside). From requests.parquet and iterations.csv. Simulated.")),
        Block("figure", Figure(
            QUEUE_KV_PNG, "Queue length and KV-cache use over time",
            "Requests arrived and not yet first admitted, per replica (top; a preempted request waiting again is "
            "not counted), and KV-cache tokens held per replica at each iteration's start (bottom). From "
            "requests.parquet and iterations.csv, warm-up included. Simulated.")),
        Block("figure", Figure(
            TTFT_PNG, "TTFT against prompt length",
            "Time to first token (queueing and prefill) of every request that emitted one, against its prompt "
            "length; warm-up requests hollow; "
            + ("the config's TTFT SLO is the dashed line (named in the title instead when it lies far above every "
               "point)." if slo is not None else "the config sets no TTFT SLO.")
            + " From requests.parquet. Simulated.")),
    ]


# ---------------------------------------------------------------- entry point


def _figure_or_note(blocks: list[Block], fig: Figure | None, note: str) -> None:
    blocks.append(Block("figure", fig) if fig is not None else Block("note", note))


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.html (self-contained), report.md, the run-*.png plots and CSV tables; return report.html.

    `out_dir` defaults to `run_dir / "report"`. A directory without summary.json raises MoesimError.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    m, name = run.metrics, run.name
    per_node = devices_per_node(run)
    steps = run.steps
    nodes = f" Dashed lines: node boundaries ({per_node} devices per node)." if per_node else ""

    metrics = headline_metrics(run.summary)
    metrics_frame(metrics).to_csv(out / "metrics.csv", index=False)
    csvs = ["metrics.csv"]
    headline = Table(["metric", "value (simulated)"], [[x.label, x.text] for x in metrics])

    share = m.get("time_share") or {}
    mk = m.get("makespan_s")
    share_rows = []
    for p in _phase_columns([k for k in share if k != "idle"]) + (["idle"] if "idle" in share else []):
        if share[p] > 0.0005 or p == "idle":
            share_rows.append([p, _pct(share[p]), _ms(share[p] * mk / steps) if mk else "–"])
    share_table = Table(["phase", "share of device time", "per step per device"], share_rows)

    blocks: list[Block] = [Block("note", source_line(run.summary)), Block("facts", run_facts(run))]
    from moesim.reports.perfetto_link import perfetto_block

    blocks += [Block("h2", "Timeline in Perfetto"), Block("raw", perfetto_block(run.path, out, run.summary))]
    sv = serving_of(run.summary)
    if sv is not None:
        blocks += serving_blocks(run, sv, out, csvs)
    training = run.summary.get("metrics", {}).get("training")
    if training is not None:
        from moesim.reports.training_section import training_tables

        head, kinds = training_tables(training)
        blocks += [Block("h2", "Training step"), Block("table", head),
                   Block("note", training.get("flops_count", {}).get("convention", "")),
                   Block("h3", "Where the device time went"), Block("table", kinds)]
    blocks += [Block("h2", "Headline metrics"), Block("table", headline),
               Block("note", error_bar_line(run.summary.get("metrics", {}).get("error_bar"))),
               Block("h2", "Time share per phase"),
               Block("note", "Share of device time (all devices, all steps) spent in each phase; "
                             "idle is what is left of the simulated time."),
               Block("table", share_table), Block("h2", "Where the time goes")]

    by_layer = time_by_layer(run)
    fig = None
    if len(by_layer):
        (by_layer * 1e3).add_suffix("_ms").rename_axis("layer").to_csv(out / "time_by_layer.csv")
        csvs.append("time_by_layer.csv")
        plot_time_by_layer(by_layer, name, out / PHASE_LAYER_PNG)
        fig = Figure(PHASE_LAYER_PNG, "Time per layer by phase",
                     "Mean time per step each layer spends in each phase, averaged over devices. Exposed "
                     "waits (dispatch, straggler_wait, combine, offload_stall) count where the device waited. "
                     "Simulated.")
    _figure_or_note(blocks, fig, "Time per layer: not shown, the run has no phases.parquet (or it is empty).")

    by_device = time_by_device(run)
    fig = None
    if len(by_device):
        (by_device * 1e3).add_suffix("_ms").rename_axis("device").to_csv(out / "time_by_device.csv")
        csvs.append("time_by_device.csv")
        plot_time_by_device(by_device, name, per_node, out / PHASE_DEVICE_PNG)
        fig = Figure(PHASE_DEVICE_PNG, "Time per device by phase",
                     "Time per step on each device, summed over layers, by phase; idle is the step time "
                     "left over. Simulated." + nodes)
    _figure_or_note(blocks, fig, "Time per device: not shown, the run has no phases.parquet (or it is empty).")

    lat = step_latency(run)
    fig = None
    if len(lat):
        lat.to_frame().assign(step_latency_ms=lat * 1e3).rename_axis("step").to_csv(out / "step_latency.csv")
        csvs.append("step_latency.csv")
        plot_step_latency(lat, name, out / STEPS_PNG)
        fig = Figure(STEPS_PNG, "Step latency per step",
                     "Time from the first phase start to the last phase end of every simulated step.")
    _figure_or_note(blocks, fig, "Step latency per step: not shown, the run has no phases.parquet.")

    blocks.append(Block("h2", "Stragglers and traffic"))
    et = run.expert_time
    fig = None
    if et is None or not len(et):
        note = "Expert time per device: not shown, the run has no expert_time.csv rows (no MoE layers?)."
    elif run.num_devices < 2:
        note = "Expert time per device: not shown, the run has one device, so no device waits on another."
    else:
        plot_expert_time(et, name, per_node, out / STRAGGLER_PNG)
        fig = Figure(STRAGGLER_PNG, "Straggler map: expert time per device and MoE layer",
                     "Colour: each device's modelled routed-expert time per step at a MoE layer (mean over steps) "
                     "divided by the mean over devices at that layer. White (1.0) = at the layer mean, so a "
                     "perfectly balanced layer is a white row; red = slower than the mean; the reddest cell of a "
                     "row is the layer's straggler, which every device of the expert-parallel group waits for; "
                     "blue = faster than the mean (that device waits). The scale is linear and symmetric "
                     "around 1; rows are model layer numbers. Absolute times: expert_time.csv of the run. "
                     "Simulated." + nodes)
    _figure_or_note(blocks, fig, "" if fig else note)

    tm = traffic_matrix(run)
    fig = None
    if tm is None:
        note = ("All-to-all traffic: not shown, no bytes moved between devices"
                + (" (one device)." if run.num_devices < 2 else "."))
    else:
        plot_traffic(tm, steps, name, per_node, out / TRAFFIC_PNG)
        inter = ""
        if run.traffic is not None and "inter_node" in run.traffic and per_node:
            tr = run.traffic
            tot = (tr["dispatch_bytes"] + tr["combine_bytes"])
            inter = f" {_pct(tot[tr['inter_node'].astype(bool)].sum() / tot.sum())} of the bytes cross nodes."
        fig = Figure(TRAFFIC_PNG, "All-to-all traffic matrix",
                     "Dispatch plus combine payload per step from each source device to each destination device "
                     f"(MB, log colour scale), summed over MoE layers.{inter} Simulated." + nodes)
    _figure_or_note(blocks, fig, "" if fig else note)

    links = run.links
    by_class = link_bytes_by_class(links, steps)
    if by_class is not None:
        blocks += [Block("h3", "Bytes over links"),
                   Block("note", "Everything each link class carried: collective = the fabric's all-to-all and "
                                 "all-reduce between devices; offload copy = expert weights copied from the offload "
                                 "tier into device memory (over the host link, or the storage path); host expert "
                                 "activations = tokens sent to experts run on the host CPU and back. Simulated."),
                   Block("table", by_class)]
    fig = None
    if links is None or not len(links) or not (links["utilization"] > 0).any():
        note = "Link utilization: not shown, no link carried bytes in this run."
    else:
        plot_links(links[links["utilization"] > 0], name, out / LINKS_PNG)
        fig = Figure(LINKS_PNG, "Busiest links",
                     f"Busy share of the simulated time of the {_busiest(len(links))} "
                     "(bytes carried / bandwidth / makespan), coloured by link class; rows that are not collectives "
                     "between devices name their source (offload copy: expert weights copied into the device). "
                     "Simulated.")
    _figure_or_note(blocks, fig, "" if fig else note)

    off = run.offload
    if off:
        blocks += [Block("h2", "Expert offloading"),
                   Block("note", "Experts live on a slower tier; a per-device cache holds what device memory "
                                 "leaves. All numbers simulated.")]
        rows = offload_rows(off, steps)
        blocks.append(Block("table", Table(["offloading", "value (simulated)"], [list(r) for r in rows])))
        pd.DataFrame(sorted(_flatten(off).items()), columns=["key", "value"]).to_csv(out / "offload.csv", index=False)
        csvs.append("offload.csv")
        layers = run.layers
        fig = None
        if layers is not None and len(layers) and "offload_stall_max_s" in layers:
            per_layer = offload_by_layer(layers)
            per_layer.to_csv(out / "offload_by_layer.csv")
            csvs.append("offload_by_layer.csv")
            plot_offload(per_layer, name, out / OFFLOAD_PNG)
            fig = Figure(OFFLOAD_PNG, "Offload stall and fetched bytes per MoE layer",
                         "Top: stall per step at each MoE layer on the worst device (bars) and, where it differs, "
                         "the mean device (dots). Bottom: expert bytes copied into device memory per step at each "
                         "layer (MB). "
                         "Means over steps; simulated.")
        _figure_or_note(blocks, fig, "Offload per layer: not shown, layers.csv has no offload columns.")

    blocks += [Block("h2", "Tables"), Block("links", csvs)]
    cfg = run.summary.get("config")
    if cfg:
        blocks += [Block("h2", "Resolved config"),
                   Block("code", yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False))]

    title = run_title(run)
    (out / "report.md").write_text(render_markdown(title, blocks), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(title, blocks, out), encoding="utf-8")
    return page
