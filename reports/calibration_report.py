"""The validation report of a calibration: simulated against measured time, before and after.

report.html (self-contained: images and errors.csv embedded) and report.md beside the raw
measurements: a verdict first (did calibration make the held-out errors better or worse, computed
from the report's own measurements), predicted-versus-measured log-log plots per split, the
error table (MAPE, median and p90 APE, signed bias, before/after, next to the measurements' own
run-to-run spread), the fitted parameters, the model form and the machine and library versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.reports.html_page import Figure, Table, finish_axes, pyplot, save_figure, write_page
from moesim.validation.errors import error_stats

SCATTER_PNG = "predicted-vs-measured.png"
ERROR_PNG = "error-by-size.png"
SPLIT_STYLE = {"fit": ("C0", "o"), "holdout_random": ("C1", "s"), "holdout_slice": ("C2", "D"), "e2e": ("C3", "*")}


def plot_scatter(table: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True, sharey=True)
    meas = table["measured_s"].to_numpy() * 1e6
    for ax, col, title in ((axes[0], "sim_before_s", "before: datasheet profile"),
                           (axes[1], "sim_after_s", "after: calibrated profile")):
        for split, (color, marker) in SPLIT_STYLE.items():
            sel = (table["split"] == split).to_numpy() & np.isfinite(table[col].to_numpy())
            if sel.any():
                ax.scatter(meas[sel], table[col].to_numpy()[sel] * 1e6, color=color, marker=marker, s=28,
                           edgecolor="black", linewidth=0.3, label=split)
        finite = np.concatenate([meas, table[["sim_before_s", "sim_after_s"]].to_numpy().ravel() * 1e6])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        lo, hi = finite.min() / 2, finite.max() * 2
        x = np.geomspace(lo, hi, 10)
        ax.plot(x, x, color="black", lw=1)
        ax.fill_between(x, x / 1.2, x * 1.2, color="gray", alpha=0.15, label="±20%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured time (us, median of repetitions)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("simulated time (us)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels),
               frameon=False)  # below both panels, not over the points
    save_figure(fig, path)


def plot_error_by_size(table: pd.DataFrame, path: Path) -> None:
    """Signed relative error against measured time: where the model is off (small or large ops)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    meas = table["measured_s"].to_numpy()
    for col, color, label in (("sim_before_s", "gray", "before"), ("sim_after_s", "C0", "after")):
        rel = (table[col].to_numpy() - meas) / meas * 100
        ax.scatter(meas * 1e6, rel, color=color, s=18, alpha=0.8, label=label)
    ax.axhline(0, color="black", lw=0.8)
    finish_axes(ax, "measured time (us)", "(simulated - measured) / measured (%)",
                "Signed error per measured op (positive: the simulator is pessimistic)", logy="symlog", legend_size=8)
    save_figure(fig, path)


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x * 100:.1f}%"


def error_rows(errors: pd.DataFrame) -> Table:
    headers = ["split", "kind", "n", "MAPE before", "MAPE after", "median APE after", "p90 APE after",
               "bias before", "bias after", "noise floor"]
    rows = [[r.split, r.kind, str(r.n), _pct(r.before_mape), _pct(r.after_mape), _pct(r.after_median_ape),
             _pct(r.after_p90_ape), _pct(r.before_bias), _pct(r.after_bias), _pct(r.noise_floor)]
            for r in errors.itertuples()]
    return Table(headers, rows)


FIT_SPLIT = "fit"


def verdict(table: pd.DataFrame, errors: pd.DataFrame) -> tuple[str, str]:
    """(css class good / bad / mixed, sentence): did calibration improve the ops the fit did not see?

    Pooled over every held-out op (each split but "fit", e2e included) from `table`'s own
    simulated and measured times: MAPE before -> after. Worse pooled = "bad" (do not use the
    profile); better pooled but some held-out split worse = "mixed"; better everywhere = "good"."""
    held = table[table["split"] != FIT_SPLIT]
    before = error_stats(held["sim_before_s"].to_numpy(float), held["measured_s"].to_numpy(float))
    after = error_stats(held["sim_after_s"].to_numpy(float), held["measured_s"].to_numpy(float))
    if not after["n"] or not np.isfinite(before["mape"]) or not np.isfinite(after["mape"]):
        return "mixed", ("No verdict: there are no held-out measurements (every op was used by the fit), so "
                         "nothing shows whether the calibrated profile predicts unseen ops better.")
    change = f"{_pct(before['mape'])} -> {_pct(after['mape'])} over {after['n']} held-out ops"
    per_split = errors[(errors["kind"] == "all") & (errors["split"] != FIT_SPLIT)]
    worse = [f"{r.split} ({_pct(r.before_mape)} -> {_pct(r.after_mape)})" for r in per_split.itertuples()
             if np.isfinite(r.before_mape) and np.isfinite(r.after_mape) and r.after_mape > r.before_mape]
    if after["mape"] > before["mape"]:
        return "bad", (f"Calibration made held-out errors worse: MAPE {change}. Do not use this profile; "
                       "calibrate again on an idle machine, or with more measurements (--size full).")
    if worse:
        return "mixed", (f"Calibration improved held-out errors overall (MAPE {change}) but made "
                         f"{', '.join(worse)} worse; use this profile with care for those ops.")
    return "good", f"Calibration improved held-out errors: MAPE {change}, better in every held-out split."


def write_validation_report(table: pd.DataFrame, errors: pd.DataFrame, facts: list[tuple[str, str]],
                            params: Table, out_dir: Path) -> Path:
    out = Path(out_dir)
    plot_scatter(table, out / SCATTER_PNG)
    plot_error_by_size(table, out / ERROR_PNG)
    figs = [Figure(SCATTER_PNG, "Simulated against measured", "Every measured op, simulated with the datasheet "
                   "profile (left) and the calibrated one (right); held-out splits were not used by the fit; e2e "
                   "are whole MoE layers composed from the fitted op costs."),
            Figure(ERROR_PNG, "Signed error by op size", "Relative error of each op before and after calibration.")]
    blocks = [("h2", "Errors"),
              ("note", "APE = |simulated - measured| / measured; bias = mean signed relative error; noise floor = "
                       "median run-to-run spread (IQR / median) of the measurements."),
              ("table", error_rows(errors)), ("files", ["errors.csv", "measurements.csv"])]
    blocks += [("figure", f) for f in figs]
    blocks += [("h2", "Fitted parameters"), ("table", params)]
    page = write_page(out, "report", "Calibration: simulated versus measured", facts, blocks,
                      intro=[("verdict", verdict(table, errors))])
    return page


def params_table(kinds: dict, links: dict, tile: int) -> Table:
    """The fitted efficiencies, overheads and link terms, one row per op kind or link."""
    rows = [[kind, f"{k.compute_max:.3g}", f"{k.rows_half:.3g}", f"{k.memory_max:.3g}", f"{k.bytes_half:.3g}",
             f"{k.overhead * 1e6:.3g} us"] for kind, k in kinds.items()]
    rows += [[f"link {name}", "", "", f"{v['bandwidth'] / 1e9:.3g} GB/s", "", f"{v['latency'] * 1e6:.3g} us"]
             for name, v in links.items()]
    rows.append(["gemm tile", str(tile), "", "", "", ""])
    return Table(["kind", "compute max", "rows half", "memory max / link bandwidth", "bytes half",
                  "overhead / latency"], rows)


def write_calibration_report(cal) -> Path:
    """report.html / report.md of a finished calibration (`validation.calibrate.Calibration`)."""
    spec = cal.profile.calibration
    return write_validation_report(cal.table, cal.errors, cal.facts,
                                   params_table(spec.kinds, spec.links, cal.profile.gemm_tile), cal.out_dir)
