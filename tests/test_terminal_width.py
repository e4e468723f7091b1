"""Every terminal table printer at 80 columns: no cell is wrapped or cut, so every number a printer
puts in a cell reads back intact from the text, and no line is wider than the terminal; off a
terminal (the wide pipe console) the tables keep their boxed, natural layout."""

from __future__ import annotations

import io
import re
from collections import Counter
from types import SimpleNamespace
from typing import Any, Callable

import pandas as pd
import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from moesim.reports import terminal
from moesim.reports.terminal import (PIPE_WIDTH, print_calibration_errors, print_placement_table, print_profile_list,
                                     print_rebalance_table, print_roofline, print_serving_summary, print_summary,
                                     print_sweep_table, print_table, print_trace_stats)

NARROW = 80
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-]\d+)?%?")
NOT_SHOWN = re.compile(r"not shown at this width: ([^;]+);")
LONG_NAME = "mixtral-8x22b-on-dgx-h100-x4-ep32-decode-long-context-sweep"


# ---------------------------------------------------------------- inputs shaped as the CLI passes them


def _scenario() -> SimpleNamespace:
    """A Scenario as the summary printers read it (name, model, cluster, parallelism)."""
    return SimpleNamespace(name=LONG_NAME, model=SimpleNamespace(name="Mixtral-8x22B"),
                           cluster=SimpleNamespace(name="dgx-h100-x4-infiniband-ndr"), ep=32, tp=1, dp=32)


def _offload() -> dict[str, Any]:
    """summary["offload"] of an offloading run (simulator/offload/metrics.py's offload_summary)."""
    return {"tier": "host", "policy": "lru", "cache_capacity": 46100, "prefetch": {"policy": "next_layer_topk"},
            "hit_rate": 0.87654, "hits": 1234567, "misses": 173912, "bytes_fetched": {"0": 1.405e11, "1": 2.0e10},
            "bytes_fetched_by_kind": {"demand": 1.205e11, "prefetch": 4.0e10}, "prefetches": 98765,
            "prefetches_used": 87654, "prefetches_wasted": 11111, "late_prefetches": 4321,
            "host_experts_run": 2345, "host_activation_bytes": 3.21e9,
            "stall_s": {"worst_device_per_step_mean_s": 0.0123456, "share_of_device_time": 0.321},
            "copy_engine_utilization": 0.9123, "peak_device_memory_bytes": 7.9e10}


def _sim_result() -> SimpleNamespace:
    """A fixed-batch SimResult (summary as simulator/metrics.py's summarize writes it), with offloading."""
    summary = {
        "step_latency_s": {"mean": 0.0461234, "p99": 0.0987654},
        "throughput_tokens_per_s": 1234567.4, "tokens_per_step": 65536,
        "straggler_ratio": {"mean": 1.321, "max": 4.6102},
        "tokens": {"dropped_assignments": 12345, "routed_assignments": 1234567},
        "all_to_all_payload_bytes": {"dispatch": 1.2e9, "combine": 1.2e9, "dispatch_inter_node": 4.61e8,
                                     "combine_inter_node": 4.61e8},
        "memory_per_device_bytes": {"max": 7.91e10, "capacity": 8.0e10},
        "error_bar": {"relative": 0.0461},
        "time_share": {"attention": 0.321, "expert": 0.4567, "dispatch": 0.1, "combine": 0.1, "idle": 0.0223,
                       "tp_allreduce": 0.0},
        "offload": _offload(),
    }
    return SimpleNamespace(summary=summary, scenario=_scenario(), requests=None)


def _serving_result() -> SimpleNamespace:
    """A serving SimResult (summary["serving"] as simulator/serving/results.py's serving_summary writes it)."""
    pct = {"mean": 0.0461234, "p50": 0.0321, "p90": 0.123456, "p99": 4.61}
    serving = {
        "requests": {"finished": 123456, "total": 123460, "warmup_excluded": 1234},
        "latency": {"ttft_s": pct, "itl_s": dict(pct, p99=None), "tpot_s": pct, "e2e_s": pct, "queue_s": pct},
        "throughput": {"output_tokens_per_s": 1234567.4, "output_tokens_per_s_per_gpu": 38580.2,
                       "output_tokens_per_s_per_user": 46.1, "requests_per_s": 46100.0},
        "goodput": {"slo": {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": None}, "share": 0.321,
                    "requests_per_s": 14798.1},
        "batch": {"mean_sequences": 461.5, "max_sequences": 1024, "kv_use_mean": 0.8765, "kv_use_max": 0.9999},
        "memory_per_rank_bytes": {"weights": 1.405e11, "kv_cache": 2.025e10, "kv_tokens": 1234567,
                                  "activations": 1.2e9, "comm_buffers": 3.4e8, "runtime_reserve": 5.0e9},
    }
    return SimpleNamespace(summary={"serving": serving}, scenario=_scenario(), requests=object())


def _roofline_rows() -> pd.DataFrame:
    """simulator/roofline.py's rows: one per op of the first device's layer, per phase."""
    ops = [("qkv_proj", 2137.0, 690e12, 693e12, "compute", 1.2e-3),
           ("moe_token_passes", 0.0, 0.0, 0.0, "memory", 1.25e-3),
           ("expert[x8]", 46100.0, 692.3e12, 693e12, "compute", 0.0167),
           ("router", 7.98, 19.5e12, 21.4e12, "overhead", 5.05e-6)]
    rows = [{"device": dev, "phase": phase, "op": op, "intensity": i, "achieved_flops_per_s": a,
             "attainable_flops_per_s": r, "roof_fraction": a / r if r else float("nan"), "bound": b, "time_s": t,
             "share_of_layer": t / 0.0198}
            for dev in ("H100-SXM", "B200") for phase in ("prefill", "decode") for op, i, a, r, b, t in ops]
    return pd.DataFrame(rows)


def _trace_summary() -> dict[str, Any]:
    """workloads/trace_stats.py's summary of a routing trace."""
    return {"rows": 1234567, "steps": 4610, "moe_layers": 58, "experts": 256, "top_k": 8,
            "source_kind": "previous-layer",
            "imbalance": {"max_over_mean": 4.6102, "step_max_over_mean": 12.3456, "cv": 0.321, "entropy": 0.98765,
                          "zipf_alpha": 1.2345},
            "affinity": {"top1_conditional": 0.321, "lift": 46.1, "mutual_info": 0.0461, "devices": 32,
                         "colocated_contiguous": 0.321, "colocated_best": 0.4567,
                         "colocated_best_if_independent": 0.125, "colocated_random": 0.03125},
            "drift": {"step_to_step_tv": 0.0461, "sampling_tv": 0.0321, "first_vs_last_quarter_tv": None},
            "locality": {"source_tv": 0.321}}


def _study(simulated: bool, unit: str) -> SimpleNamespace:
    """studies/placement_study.py's PlacementStudy: the problem's facts and table() (with sim columns if
    simulated), placed on modelled time (unit "s") or token counts ("tokens")."""
    methods = ["contiguous", "round_robin", "ilp_affinity", "ilp_robust"]
    df = pd.DataFrame({"method": methods, "balancedness": [0.321, 0.98765, 0.999, 0.4567],
                       "bottleneck_tokens": [1234567.0, 46100.0, 46099.0, 50000.0],
                       "bottleneck_time": [0.0461234, 0.0123, 0.01229, 0.0131],
                       "dispatch_remote": [0.875, 0.8765, 0.7, 0.71], "dispatch_inter_node": [0.321, 0.5, 0.2, 0.21],
                       "flow_cross_device": [0.9, 0.91, 0.45, 0.46], "solve_s": [1.2e-5, 3.4e-5, 46.1, 123.4],
                       "gap": [float("nan"), float("nan"), 0.00461, 0.0123],
                       "sim_step_s": [0.0987654, 0.0461, 0.0321, 0.033], "sim_straggler": [4.6102, 1.321, 1.05, 1.06],
                       "sim_inter_node_bytes": [1.405e11, 2.025e10, 4.61e8, 5.0e8]})
    problem = SimpleNamespace(time_model=SimpleNamespace(unit=unit), num_experts=256, num_devices=32, num_nodes=4,
                              num_layers=58, redundant=32,
                              provenance={"steps": [0, 4610], "dispatch": {"algorithm": "hierarchical",
                                                                           "replica_choice": "local"}})
    sims = {m: {} for m in methods} if simulated else {}
    if not simulated:
        df = df.drop(columns=["sim_step_s", "sim_straggler", "sim_inter_node_bytes"])
    return SimpleNamespace(problem=problem, in_sample=False, simulated=sims, table=lambda: df)


def _sweep() -> pd.DataFrame:
    """reports/sweep_report.py's sweep_table, with the offered / achieved / saturated columns to come."""
    loads = [1, 4, 16, 64, 256]
    return pd.DataFrame({"load": [f"users={u}" for u in loads],
                         "requests_per_s": [0.321, 1.2345, 4.61, 12.3456, 14.0],
                         "output_tokens_per_s": [46100.0, 123456.7, 1234567.4, 2e6, 2.1e6],
                         "output_tokens_per_s_per_gpu": [1440.6, 3858.0, 38580.2, 62500.0, 65625.0],
                         "ttft_p50_s": [0.0461, 0.05, 0.06, 0.1, 4.61], "ttft_p99_s": [0.0987654, 0.1, 0.2, 0.5, 12.3],
                         "tpot_p50_s": [0.0123, 0.0125, 0.013, 0.02, 0.05],
                         "tpot_p99_s": [0.0134, 0.0135, 0.014, 0.04, 0.2],
                         "e2e_p50_s": [1.23, 1.3, 1.4, 2.0, 10.0], "goodput_share": [1.0, 1.0, 0.98765, 0.5, 0.0],
                         "offered": [0.321, 1.2345, 4.61, 18.5, 74.0], "achieved": [0.321, 1.2345, 4.61, 12.3456, 14.0],
                         "saturated": [0.0, 0.0, 0.0, 1.0, 1.0]}).astype({"requests_per_s": float})


def _calibration() -> SimpleNamespace:
    """validation's Calibration: the profile and errors (validation/errors.py's error_table)."""
    errors = pd.DataFrame({"split": ["fit", "fit", "held-out", "e2e"],
                           "kind": ["grouped_gemm_triton", "all", "attention", "all"],
                           "n": [1234, 4610, 321, 987], "before_mape": [0.4610, 0.321, 1.2345, 0.98765],
                           "after_mape": [0.0461, 0.0321, 0.123, 0.0987],
                           "after_bias": [-0.0123, 0.00461, -0.321, 0.05],
                           "noise_floor": [0.00321, 0.0046, 0.0123, 0.0099]})
    return SimpleNamespace(profile=SimpleNamespace(name="H100-SXM-calibrated-2025-01-31-cuda-large"), errors=errors)


def _rebalance() -> pd.DataFrame:
    """studies/placement_rebalance.py's rebalance_from: one verdict row per method."""
    return pd.DataFrame({"method": ["contiguous", "ilp_affinity", "repair"], "verdict": ["stay", "move", "move"],
                         "copies_moved": [0, 1234, 46], "gb_moved": [0.0, 461.2, 12.3456],
                         "move_s": [0.0, 4.61, 0.123], "gain_us_per_step": [0.0, 46100.0, 321.5],
                         "gain_s_over_horizon": [0.0, 2305.0, 16.07], "horizon_steps": [50, 50, 50]})


# name: (printer, strings the output must hold intact wherever they come from: cells, titles or notes)
CASES: dict[str, tuple[Callable[[Console], None], list[str]]] = {
    "summary": (lambda c: print_summary(_sim_result(), c),
                ["1,234,567 tokens/s", "65,536", "1.321 / 4.610", "12,345 of 1,234,567", "±4.6%", "cache of 46100",
                 "32.1%"]),
    "serving": (lambda c: print_serving_summary(_serving_result(), c),
                ["1,234,567", "38,580.2", "4.61 s", "46.1 ms", "4.61e+04", "1,234,567 tokens", "32%"]),
    "roofline": (lambda c: print_roofline(_roofline_rows(), {"H100-SXM": 285.0, "B200": None}, c),
                 ["4.61e+04", "2.14e+03", "7.98", "expert[x8]", "moe_token_passes", "H100-SXM 285"]),
    "trace_stats": (lambda c: print_trace_stats(_trace_summary(), c),
                    ["1,234,567", "4.610; 12.346", "0.321 / 0.457 / 0.125 / 0.031", "x46.10"]),
    "placement": (lambda c: print_placement_table(_study(simulated=False, unit="tokens"), c),
                  ["0.321", "0.988", "46100", "1234567"]),
    "placement_simulated": (lambda c: print_placement_table(_study(simulated=True, unit="s"), c),
                            ["0.321", "4.61", "140 GB", "98.8 ms"]),
    "sweep": (lambda c: print_sweep_table(_sweep(), f"{LONG_NAME}: load sweep (simulated)", c),
              ["4.61e+04", "1.235e+06", "0.321", "12.35", "0.9877", "users=256", "yes"]),
    "calibration": (lambda c: print_calibration_errors(_calibration(), c),
                    ["46.1%", "+0.5%", "-32.1%", "grouped_gemm_triton", "1234"]),
    "rebalance": (lambda c: print_rebalance_table(_rebalance(), c), ["4.61e+04", "2305", "16.07", "0.123", "stay"]),
    "profiles": (lambda c: print_profile_list(c), ["H100-SXM"]),
}


# ---------------------------------------------------------------- rendering and reading back


def _render(printer: Callable[[Console], None], width: int, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[Table]]:
    """The printer's text at this width (a terminal at NARROW, the pipe console of console_for at
    PIPE_WIDTH) and the tables it handed to print_table."""
    tables: list[Table] = []
    real = terminal.print_table

    def spy(console: Console, table: Table, optional: Any = ()) -> None:
        tables.append(table)
        real(console, table, optional)

    monkeypatch.setattr(terminal, "print_table", spy)
    buf = io.StringIO()
    if width == PIPE_WIDTH:
        console = Console(file=buf, width=PIPE_WIDTH, soft_wrap=True, color_system=None)
    else:
        console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    printer(console)
    monkeypatch.setattr(terminal, "print_table", real)
    return buf.getvalue(), tables


def _plain(console: Console, cell: Any) -> str:
    """A cell or title as the text it shows (markup strings rendered)."""
    return cell.plain if isinstance(cell, Text) else console.render_str(str(cell)).plain


def _cells(tables: list[Table], dropped: set[str]) -> list[str]:
    """The text of every cell of these tables, but those of columns the output says it left out."""
    console = Console()
    return [_plain(console, cell) for t in tables for col in t.columns if str(col.header) not in dropped
            for cell in col.cells]


def _numbers(text: str) -> Counter[str]:
    """The number strings of a text (1,234,567 / 4.61e+04 / 32.1%), counted."""
    return Counter(m.group().rstrip(",") for m in NUMBER.finditer(text))


@pytest.mark.parametrize("name", CASES)
def test_no_cell_is_wrapped_or_cut_at_80_columns(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    printer, expected = CASES[name]
    text, tables = _render(printer, NARROW, monkeypatch)
    lines = text.splitlines()
    assert lines, name
    too_wide = [line for line in lines if cell_len(line) > NARROW]
    assert not too_wide, f"{name}: lines wider than {NARROW} columns:\n" + "\n".join(too_wide)
    assert "…" not in text
    dropped = {h.strip() for m in NOT_SHOWN.finditer(text) for h in m.group(1).split(",")}
    cells = _cells(tables, dropped)
    given = sum((_numbers(c) for c in cells + [_plain(Console(), t.title or "") for t in tables]), Counter())
    lost = given - _numbers(text)
    assert not lost, f"{name}: numbers of the cells and titles that do not read back: {dict(lost)}\n{text}"
    for cell in cells:  # a cell is never wrapped: it reads back whole, on one line
        assert any(cell in line for line in lines), f"{name}: cell {cell!r} is not intact in\n{text}"
    for s in expected:
        assert s in text, f"{name}: {s!r} not intact in\n{text}"


@pytest.mark.parametrize("name", CASES)
def test_off_a_terminal_tables_keep_their_natural_layout(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    printer, expected = CASES[name]
    text, tables = _render(printer, PIPE_WIDTH, monkeypatch)
    lines = text.splitlines()
    assert "not shown at this width" not in text
    for cell in _cells(tables, set()):  # every cell sits in a boxed table row
        assert any(cell in line and "│" in line for line in lines), f"{name}: {cell!r} not in a table row\n{text}"
    for s in expected:
        assert s in text


def test_the_cases_cover_every_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns the cases exercise all three layouts: as is, optional columns dropped, one block per row."""
    layouts = {}
    for name, (printer, _) in CASES.items():
        text, tables = _render(printer, NARROW, monkeypatch)
        layouts[name] = ("dropped" if "not shown at this width" in text
                         else "records" if tables and "│" not in text else "table")
    assert layouts["roofline"] == layouts["placement"] == layouts["rebalance"] == "dropped"
    assert layouts["placement_simulated"] == layouts["sweep"] == layouts["trace_stats"] == "records"
    assert layouts["summary"] == "table"


# ---------------------------------------------------------------- print_table's layouts


def _wide_table() -> Table:
    """A name and nine number columns of 8 characters: 109 columns wide, too wide for 80."""
    t = Table(title="results")
    t.add_column("name")
    for i in range(9):
        t.add_column(f"col{i}", justify="right")
    t.add_row("first", *(f"{4.61e4 * (i + 1):.3g}" for i in range(9)))
    t.add_row("second", *(f"{0.321 * (i + 1):.3f}" for i in range(9)))
    return t


def _print(table: Table, width: int, optional: tuple[str, ...] = ()) -> str:
    """What print_table writes for this table in a terminal this wide."""
    buf = io.StringIO()
    print_table(Console(file=buf, width=width, force_terminal=True, color_system=None), table, optional)
    return buf.getvalue()


def test_a_table_that_fits_prints_as_rich_would() -> None:
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=True, color_system=None).print(_wide_table())
    assert _print(_wide_table(), 200) == buf.getvalue()


def test_optional_columns_go_first_and_only_as_many_as_needed() -> None:
    out = _print(_wide_table(), NARROW, optional=("col8", "col7", "col6", "col5", "col4"))
    lines = out.splitlines()
    assert "(not shown at this width: col8, col7, col6;" in out and "col5" in lines[2]
    assert "4.61e+04" in out and "1.284" in out and all(cell_len(line) <= NARROW for line in lines)


def test_too_wide_without_optional_columns_prints_one_block_per_row() -> None:
    lines = _print(_wide_table(), NARROW).splitlines()
    assert lines[:3] == ["results", "name: first", "  col0  4.61e+04"] and "name: second" in lines
    assert "  col8     2.889" in lines and not any("│" in line for line in lines)


def test_a_value_too_long_for_its_line_goes_on_the_next() -> None:
    value = "weights 140.5 GB, KV 20.25 GB (1,234,567 tokens), other 1.54 GB, reserve 5 GB"
    t = Table(show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    t.add_row("memory per rank", value)
    t.add_row("throughput", "1,234,567 tokens/s")
    assert _print(t, 90).splitlines() == ["memory per rank", "  " + value, "throughput  1,234,567 tokens/s"]


def test_a_title_word_wider_than_the_table_goes_above_it_unfolded() -> None:
    name = "mixtral-8x7b-sweep-at-4.61e+04-tokens-per-s"
    t = Table(title=f"{name}: two numbers")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("balance", "0.321")
    lines = _print(t, NARROW).splitlines()
    assert lines[0] == f"{name}: two numbers" and "0.321" in lines[-2] and "│" in lines[-2]
