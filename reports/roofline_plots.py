"""Roofline charts and the `moesim roofline --out DIR` folder: PNGs, CSV tables, a short page.

Charts: every op of a layer on each device's roofline (one panel per phase), the expert GEMM's
achieved FLOP/s over tokens per expert with each device's ridge crossing, and each op group's
share of the layer's time. Measured points (a calibration's CSV: device, op, flops, bytes,
time_s) are drawn against the theoretical roof when given. Every modelled number comes from the
engine's cost function (simulator/roofline.py); measured points say they are measured.
"""

from __future__ import annotations

import warnings

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import Figure, Table, finish_axes, pyplot, save_figure, write_page
from moesim.simulator.roofline import Roof

ROOFLINE_PNG, SWEEP_PNG, SHARE_PNG = "roofline.png", "expert-sweep.png", "time-share.png"
GROUP_MARKERS = {"attention": "o", "router": "v", "shared expert": "s", "routed expert": "D", "dense FFN": "P",
                 "communication": "*"}
GROUP_ORDER = list(GROUP_MARKERS)
MEASURED_COLUMNS = ("device", "op", "flops", "bytes", "time_s")


def load_measured(path: str | Path, device_name: str | None = None) -> pd.DataFrame:
    """Measured op timings: a CSV with columns device, op, flops, bytes, time_s, or the
    measurements.csv `moesim calibrate` writes (compute ops only: copies have no FLOPs).
    A file that is not such a CSV, a missing column, or a value that is not a finite number of
    the right sign is a ConfigError naming the file, the column and the line."""
    from moesim.errors import ConfigError

    from moesim.yaml_io import check_file

    path = check_file(path, "measured points file")
    try:
        with warnings.catch_warnings():  # a row with more fields than the header: an error, not a silent loss
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"the file is empty; expected a CSV with the header {','.join(MEASURED_COLUMNS)}",
                          file=path) from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"not a readable CSV file ({type(err).__name__}: {first})", file=path) from None
    calibrate = "measured_s" in df.columns and "time_s" not in df.columns  # a `moesim calibrate` measurements.csv
    needed = ("kind", "flops", "bytes", "measured_s") if calibrate else MEASURED_COLUMNS
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ConfigError(f"lacks column(s) {', '.join(missing)}; a measured points CSV has the columns "
                          f"{', '.join(MEASURED_COLUMNS)} (one row per measured op), or is a `moesim calibrate` "
                          f"measurements.csv (kind, flops, bytes, measured_s); found "
                          f"{', '.join(map(str, df.columns)) or 'none'}", file=path, field=missing[0])
    if not len(df):
        raise ConfigError("has a header but no rows of measured points", file=path)
    time_col = "measured_s" if calibrate else "time_s"
    for col, ok, need in (("flops", lambda v: v >= 0, "a number >= 0"), ("bytes", lambda v: v > 0, "a number > 0"),
                          (time_col, lambda v: v > 0, "a number > 0")):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if not bad.any():
            bad = ~ok(values)
        if bad.any():
            i = int(np.argmax(bad))
            row = int(df.index[i])
            need = "a finite number" if not np.isfinite(values[i]) else need
            raw = df[col].iloc[i]
            shown = f"{values[i]:g}" if np.isfinite(values[i]) or isinstance(raw, (int, float, np.number)) else repr(raw)
            raise ConfigError(f"row {row} (line {row + 2}): expected {need}, got {shown}", file=path, field=col)
        df = df.assign(**{col: values})
        if calibrate and col == "flops":  # copies (no FLOPs) are not roofline points
            df = df[df["flops"] > 0]
    if calibrate:
        df = df.rename(columns={"measured_s": "time_s", "kind": "op"})
        df["device"] = df.get("device", device_name or "measured")
    return df


def _colors(devices: list[str]) -> dict[str, str]:
    palette = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {d: palette[i % len(palette)] for i, d in enumerate(devices)}


def plot_roofline(rows: pd.DataFrame, roofs: dict[str, Roof], path: Path, measured: pd.DataFrame | None = None) -> None:
    """Ops on each device's roof, one panel per phase; log-log FLOP/byte vs TFLOP/s."""
    plt = pyplot()
    phases = list(dict.fromkeys(rows["phase"]))
    fig, axes = plt.subplots(1, len(phases), figsize=(7.5 * len(phases), 5.5), squeeze=False)
    colors = _colors(list(roofs))
    compute = rows[rows["kind"] != "comm"]
    lo = max(1e-2, float(compute["intensity"].replace(np.inf, np.nan).min()) / 3) if len(compute) else 1e-2
    hi = max(1e4, float(rows["intensity"].replace(np.inf, np.nan).max()) * 3)
    x = np.geomspace(lo, hi, 200)
    for ax, phase in zip(axes[0], phases):
        for name, roof in roofs.items():
            c = colors[name]
            ax.plot(x, roof.attainable(x) / 1e12, color=c, lw=2, label=f"{name} ({roof.dtype}, achievable)")
            ax.plot(x, np.minimum(roof.peak_theoretical, x * roof.bandwidth_theoretical) / 1e12, color=c, lw=0.8,
                    ls="--", alpha=0.7)
            ax.axvline(roof.ridge, color=c, lw=0.6, ls=":", alpha=0.8)
        sub = rows[rows["phase"] == phase]
        for (dev, group), g in sub.groupby(["device", "group"], sort=False):
            ax.scatter(g["intensity"], g["achieved_flops_per_s"] / 1e12, color=colors.get(dev, "black"),
                       marker=GROUP_MARKERS.get(group, "o"), s=45, edgecolor="black", linewidth=0.4, zorder=3)
        net = sub[sub["kind"] == "comm"]
        for i, (_, r) in enumerate(net.iterrows()):
            ax.annotate(r["op"], (r["intensity"], r["achieved_flops_per_s"] / 1e12), fontsize=8,
                        xytext=(-40, 8 if i % 2 == 0 else -14), textcoords="offset points")
        if measured is not None and len(measured):
            ax.scatter(measured["flops"] / measured["bytes"], measured["flops"] / measured["time_s"] / 1e12,
                       marker="x", color="black", s=35, zorder=4, label="measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("performance (TFLOP/s)")
        ax.set_title(f"{phase}: ops of one layer (modelled); dashed = theoretical roof")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for group in GROUP_ORDER:
        if group in set(rows["group"]):
            handles.append(plt.Line2D([], [], ls="", marker=GROUP_MARKERS[group], color="gray", markeredgecolor="black"))
            labels.append(group)
    # below the panels, not over the data: the roofs and ridge points reach every corner
    fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 4), frameon=False)
    save_figure(fig, path)


def plot_sweep(sweep: pd.DataFrame, ridges: dict[str, float | None], roofs: dict[str, Roof], path: Path,
               actual: np.ndarray | None = None) -> None:
    """Expert GEMM performance over tokens per expert; where each device turns compute-bound."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    colors = _colors(list(dict.fromkeys(sweep["device"])))
    bottom = float(sweep["achieved_flops_per_s"].min()) / 1e12
    for i, (dev, df) in enumerate(sweep.groupby("device", sort=False)):
        c = colors[dev]
        ax.plot(df["tokens_per_expert"], df["achieved_flops_per_s"] / 1e12, color=c, lw=2, label=dev)
        if dev in roofs:
            ax.axhline(roofs[dev].peak / 1e12, color=c, lw=0.8, ls="--", alpha=0.7)
        n = ridges.get(dev)
        if n:
            ax.axvline(n, color=c, lw=1, ls=":")
            ax.annotate(f"{dev}: compute-bound from {n:.0f}", (n, bottom), rotation=90, fontsize=8, color=c,
                        xytext=(3 + 11 * i, 5), textcoords="offset points")
    if actual is not None and len(actual):
        for n in np.unique(np.round(actual)):
            ax.axvline(n, color="dimgray", lw=1.0, ls="--", alpha=0.6)
        ax.plot([], [], color="dimgray", lw=1.0, ls="--", label="this layer's tokens per expert")
    finish_axes(ax, "tokens per expert (GEMM rows)", "achieved TFLOP/s (modelled)",
                "One routed expert's GEMM: memory-bound below the ridge, compute-bound above (dashed: peak)")
    save_figure(fig, path)


def plot_time_share(rows: pd.DataFrame, path: Path) -> None:
    """Share of one layer's time per op group, one bar per (device, phase)."""
    plt = pyplot()
    table = rows.pivot_table(index=["device", "phase"], columns="group", values="time_s", aggfunc="sum", fill_value=0.0,
                             sort=False)
    table = table[[g for g in GROUP_ORDER if g in table.columns]]
    share = table.div(table.sum(axis=1), axis=0) * 100
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(share) + 2.4))
    left = np.zeros(len(share))
    labels = [f"{d} / {p}" for d, p in share.index]
    for group in share.columns:
        ax.barh(labels, share[group], left=left, label=group)
        left += share[group].to_numpy()
    totals = table.sum(axis=1).to_numpy()
    for i, t in enumerate(totals):
        ax.annotate(f"{t * 1e3:.3g} ms", (100, i), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_xlabel("share of the layer's modelled time (%)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.5 / len(share)))
    ax.set_title("Where one layer's time goes")
    save_figure(fig, path)


def _fmt(x: float, unit: str = "") -> str:
    if not np.isfinite(x):
        return "inf"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def op_table(rows: pd.DataFrame) -> Table:
    headers = ["device", "phase", "op", "FLOPs", "bytes", "FLOP/B", "time", "achieved", "roof", "of roof", "bound",
               "share"]
    out = []
    for _, r in rows.iterrows():
        out.append([r["device"], r["phase"], r["op"], _fmt(r["flops"]), _fmt(r["bytes"], "B"), f"{r['intensity']:.3g}",
                    f"{r['time_s'] * 1e6:.3g} us", _fmt(r["achieved_flops_per_s"], "FLOP/s"),
                    _fmt(r["attainable_flops_per_s"], "FLOP/s"), f"{r['roof_fraction']:.0%}", r["bound"],
                    f"{r['share_of_layer']:.1%}"])
    return Table(headers, out)


def write_roofline(rows: pd.DataFrame, sweep: pd.DataFrame, ridges: dict[str, float | None],
                   roofs: dict[str, Roof], out_dir: str | Path, title: str, facts: list[tuple[str, str]],
                   measured: pd.DataFrame | None = None, actual_tokens: np.ndarray | None = None) -> Path:
    """Write the charts, roofline.csv, expert-sweep.csv, ridge.csv and roofline.html/.md; return the HTML."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_roofline(rows, roofs, out / ROOFLINE_PNG, measured)
    plot_sweep(sweep, ridges, roofs, out / SWEEP_PNG, actual_tokens)
    plot_time_share(rows, out / SHARE_PNG)
    rows.to_csv(out / "roofline.csv", index=False)
    sweep.to_csv(out / "expert-sweep.csv", index=False)
    pd.DataFrame([(d, n, roofs[d].ridge if d in roofs else np.nan) for d, n in ridges.items()],
                 columns=["device", "compute_bound_from_tokens_per_expert", "ridge_flop_per_byte"]
                 ).to_csv(out / "ridge.csv", index=False)
    figs = [Figure(ROOFLINE_PNG, "Ops on the roofline", "Each op of one layer at its arithmetic intensity and "
                   "modelled performance (from the engine's cost function). Solid: achievable roof (profile "
                   "efficiencies); dashed: theoretical; dotted vertical: ridge point. Communication ops sit on the "
                   "network roof: the expert FLOP/s the link could feed." + (" Crosses: measured." if measured is
                                                                               not None else "")),
            Figure(SWEEP_PNG, "Expert GEMM over tokens per expert", "Where a routed expert turns compute-bound "
                   "on each device; grey lines: the token counts this layer's experts actually get."),
            Figure(SHARE_PNG, "Share of layer time", "Modelled time of each op group in one layer.")]
    blocks = [("figure", f) for f in figs] + [("h2", "Ops"), ("table", op_table(rows)),
                                              ("files", ["roofline.csv", "expert-sweep.csv", "ridge.csv"])]
    page = write_page(out, "roofline", title, facts, blocks)
    return page
