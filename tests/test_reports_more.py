"""Reports people ask for (issue 27): the per-request timeline of a serving run, queue length and
KV use over time, TTFT against prompt length, offered against achieved load of a load sweep, the
Perfetto link of every run report, `trace stats --html`, CDF axes fitted to the data, and the
warning of a comparison of runs that did different work. Most figures are drawn from small tables
built by hand, so the numbers each one must show are known; the rest use toy runs of a fraction of
a second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import DATA, toy_file
from moesim import cli
from moesim.reports import request_timeline as timeline_mod
from moesim.reports import serving_plots
from moesim.reports.cdf_axes import cdf_range
from moesim.reports.load_plot import LOAD_PNG, is_load_sweep, load_points, offered_vs_achieved
from moesim.reports.queue_kv_plot import kv_use, queue_and_kv, queue_length
from moesim.reports.request_timeline import request_timeline, timeline_bars
from moesim.reports.sweep_points_report import write_points_report
from moesim.reports.trace_stats_page import MARK
from moesim.reports.ttft_plot import ttft_slo, ttft_vs_prompt
from test_report_pages import assert_self_contained

PNG = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


# ---------------------------------------------------------------- hand-built serving tables

def _requests() -> pd.DataFrame:
    """Three requests (seconds): A on replica 0 prefills over three iterations and decodes two more
    tokens; B on replica 1 waits 0.05 s, prefills in one iteration and stops at its first token; C on
    replica 0 arrives and is never scheduled."""
    return pd.DataFrame({
        "request_id": [0, 1, 2], "arrival_s": [0.0, 0.05, 0.35], "prompt_tokens": [300, 80, 50],
        "output_tokens": [3, 1, 4], "replica": [0, 1, 0], "first_scheduled_s": [0.0, 0.1, NAN],
        "preemptions": [0, 0, 0], "queue_s": [0.0, 0.05, NAN], "ttft_s": [0.3, 0.15, NAN],
        "tpot_s": [0.05, NAN, NAN], "e2e_s": [0.4, 0.15, NAN],
        "itl_s": pd.Series([[0.05, 0.05], [], []], dtype=object), "tokens_emitted": [3, 1, 0],
        "finished": [True, True, False], "finish_s": [0.4, 0.2, NAN], "warmup": [False, False, False]})


def _iterations() -> pd.DataFrame:
    """Replica 0: three prefill iterations, then one decode-only; replica 1: one prefill iteration
    in the middle, idle otherwise."""
    rows = [  # iteration, replica, start, end, batch, prefill, decode, kv used, kv capacity
        (0, 0, 0.0, 0.1, 1, 128, 0, 128, 1000), (0, 1, 0.0, 0.1, 0, 0, 0, 0, 1000),
        (1, 0, 0.1, 0.2, 1, 128, 0, 256, 1000), (1, 1, 0.1, 0.2, 1, 80, 0, 80, 1000),
        (2, 0, 0.2, 0.3, 1, 44, 0, 303, 1000), (2, 1, 0.2, 0.3, 0, 0, 0, 0, 1000),
        (3, 0, 0.3, 0.4, 1, 0, 1, 303, 1000), (3, 1, 0.3, 0.4, 0, 0, 0, 0, 1000),
    ]
    return pd.DataFrame(rows, columns=["iteration", "replica", "start_s", "end_s", "batch_sequences",
                                       "prefill_tokens", "decode_tokens", "kv_used_tokens", "kv_capacity_tokens"])


def _capture(monkeypatch, module) -> list:
    """The figures `module` saves, kept open for the test to read (each still written)."""
    figs = []
    real = module.save_figure

    def keep(fig, path):
        figs.append((fig, [ax.get_xlim() for ax in fig.axes], [ax.get_xscale() for ax in fig.axes],
                     [len(ax.patches) for ax in fig.axes]))
        real(fig, path)

    monkeypatch.setattr(module, "save_figure", keep)
    return figs


def test_timeline_bars_of_a_hand_built_case():
    bars = timeline_bars(_requests(), _iterations())
    got = {rid: sorted(g["kind"]) for rid, g in bars.groupby("request_id")}
    assert got == {0: ["decode", "prefill", "prefill", "prefill"], 1: ["prefill", "queue"], 2: ["queue"]}
    a = bars[bars["request_id"] == 0].sort_values("start_s")
    assert np.allclose(a["start_s"], [0.0, 0.1, 0.2, 0.3]) and np.allclose(a["end_s"], [0.1, 0.2, 0.3, 0.4])
    b = bars[bars["request_id"] == 1].set_index("kind")
    assert (b.loc["queue", "start_s"], b.loc["queue", "end_s"]) == pytest.approx((0.05, 0.1))
    assert (b.loc["prefill", "start_s"], b.loc["prefill", "end_s"]) == pytest.approx((0.1, 0.2))
    c = bars[bars["request_id"] == 2].iloc[0]
    assert (c["start_s"], c["end_s"]) == pytest.approx((0.35, 0.4))  # waits to the horizon: the last iteration's end
    assert list(bars["replica"].drop_duplicates()) == [0, 1]  # grouped by replica


def test_timeline_draws_one_bar_per_row(tmp_path, monkeypatch):
    figs = _capture(monkeypatch, timeline_mod)
    path = request_timeline(_requests(), _iterations(), tmp_path, run_name="hand-built")
    assert _is_png(path)
    (fig, _, _, patches), = figs
    assert patches == [7]  # 4 bars of A, 2 of B, 1 of C
    ax = fig.axes[0]
    assert "simulated time" in ax.get_xlabel() and "ms" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["replica 0, request 0", "replica 0, request 2",
                                                            "replica 1, request 1"]


def test_timeline_keeps_at_most_the_requests_asked_for():
    many = pd.concat([_requests().assign(request_id=lambda d, k=k: d["request_id"] + 10 * k,
                                         arrival_s=lambda d, k=k: d["arrival_s"] + k) for k in range(5)])
    many["warmup"] = many["arrival_s"] < 1.0
    bars = timeline_bars(many, None, max_requests=4)
    shown = sorted(bars["request_id"].unique())
    assert len(shown) <= 4 and min(shown) >= 10  # the first after the warm-up


def test_queue_length_and_kv_use(tmp_path):
    q = queue_length(_requests())
    t0, n0 = q[("", 0)]
    level = lambda t: n0[np.searchsorted(t0, t, side="right") - 1]  # noqa: E731
    assert level(0.01) == 0 and level(0.36) == 1  # A is admitted as it arrives; C never is
    t1, n1 = q[("", 1)]
    assert n1[np.searchsorted(t1, 0.07, side="right") - 1] == 1
    assert n1[np.searchsorted(t1, 0.15, side="right") - 1] == 0
    kv = kv_use(_iterations())
    t, used, cap = kv[("", 0)]
    assert cap == 1000 and used.max() == 303 and used[-1] == 0  # the deployment is idle after 0.4 s
    path = queue_and_kv(_requests(), _iterations(), tmp_path, run_name="hand-built")
    assert _is_png(path)


def test_ttft_against_prompt_length(tmp_path):
    summary = {"metrics": {"serving": {"goodput": {"slo": {"ttft_s": 0.2, "tpot_s": None}}}}}
    assert ttft_slo(summary) == 0.2 and ttft_slo({"metrics": {}}) is None
    assert _is_png(ttft_vs_prompt(_requests(), tmp_path, ttft_slo(summary), run_name="hand-built"))
    assert _is_png(ttft_vs_prompt(_requests(), tmp_path, None, name="no-slo.png"))


def _sweep_table() -> pd.DataFrame:
    return pd.DataFrame({"serving.arrivals.rate": [1.0, 4.0, 16.0], "status": ["ok", "ok", "ok"], "error": ["", "", ""],
                         "key": ["a", "b", "c"], "devices": [4, 4, 4], "offered_requests_per_s": [1.0, 4.1, 15.8],
                         "achieved_requests_per_s": [1.0, 4.0, 6.0], "saturated": [0.0, 0.0, 1.0],
                         "output_tokens_per_s": [100.0, 400.0, 600.0], "pareto": [False, False, True]})


def test_offered_against_achieved(tmp_path):
    table = _sweep_table()
    assert list(load_points(table)["achieved_requests_per_s"]) == [1.0, 4.0, 6.0]
    assert is_load_sweep(table, ["serving.arrivals.rate"]) and is_load_sweep(table)
    assert not is_load_sweep(table.assign(offered_requests_per_s=4.0), ["seed"])
    assert _is_png(offered_vs_achieved(table, tmp_path, ["1/s", "4/s", "16/s"]))
    assert offered_vs_achieved(table.drop(columns=["achieved_requests_per_s"]), tmp_path / "none") is None


def test_sweep_report_plots_offered_against_achieved(tmp_path):
    page = write_points_report(_sweep_table(), tmp_path, "load: sweep (simulated)",
                               [("source", "hand-built")], "devices", "output_tokens_per_s")
    assert _is_png(tmp_path / LOAD_PNG)
    assert "Offered against achieved load" in page.read_text(encoding="utf-8")
    fixed = _sweep_table().drop(columns=["serving.arrivals.rate"]).assign(**{"workload.batch_size": [1, 2, 4]})
    fixed = fixed.drop(columns=["offered_requests_per_s", "achieved_requests_per_s"])
    (tmp_path / "fixed").mkdir()
    write_points_report(fixed, tmp_path / "fixed", "fixed: sweep (simulated)", [], "devices", "output_tokens_per_s")
    assert not (tmp_path / "fixed" / LOAD_PNG).exists()  # no serving load: no such plot


# ---------------------------------------------------------------- CDF axes

@pytest.mark.parametrize("values", [
    [1.20, 1.21, 1.25, 1.22],  # far from zero: an axis from 0 would hide them
    [1e-4, 2e-4, 3e-4, 0.5],  # a tail over decades
    [0.003],  # one value
    [0.0, 0.0],  # all zero
    [-2.0, 1.0, 3.0],
])
def test_cdf_range_contains_the_data(values):
    left, right, log = cdf_range(values)
    assert left <= min(values) and right >= max(values) and left < right
    if min(values) >= 0:
        assert left >= 0
    if values[0] == 1.20:
        assert left > 1.0 and not log  # fitted, not anchored at 0
    if values[-1] == 0.5:
        assert log


def test_latency_cdf_axes_follow_the_samples(tmp_path, monkeypatch):
    figs = _capture(monkeypatch, serving_plots)
    table = _requests().assign(ttft_s=[1.20, 1.25, 1.22], finished=True, tpot_s=[0.05, 0.06, 0.07],
                               e2e_s=[1.5, 1.6, 1.7], itl_s=pd.Series([[0.05, 0.05], [0.06], [0.07]], dtype=object))
    serving_plots.latency_cdfs(table, tmp_path)
    (_, xlims, _, _), = figs
    samples = serving_plots.measured_latencies(table)
    for (left, right), key in zip(xlims, ("ttft_s", "tpot_s", "itl_s", "e2e_s")):
        v = samples[key] * (1e3 if samples[key].max() < 10 else 1.0)  # the panels draw milliseconds
        assert left <= v.min() and right >= v.max()
    assert xlims[0][0] > 1000.0  # TTFT: 1200 to 1250 ms, not from 0


# ---------------------------------------------------------------- run reports: Perfetto and the serving figures

def _serving_config(trace_steps: int) -> dict:
    return {"name": "toy-serving", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
            "parallelism": {"ep": 4, "tp": 1, "dp": 4}, "routing": {"generator": "uniform"},
            "serving": {"prompt_tokens": {"dist": "uniform", "low": 32, "high": 400},
                        "output_tokens": {"dist": "fixed", "value": 4}, "num_requests": 12, "warmup": 0.1,
                        "arrivals": {"process": "poisson", "rate": 4000}, "scheduler": {"max_batch_tokens": 128, "max_running": 64},
                        "slo": {"ttft": "1 ms", "tpot": "60 us"}},
            "outputs": {"trace_steps": trace_steps}, "seed": 3}


def _simulate(tmp: Path, config: dict, name: str = "run") -> Path:
    from moesim.simulator.run import simulate, write_run_dir
    from moesim.simulator.scenario import load_scenario

    tmp.mkdir(parents=True, exist_ok=True)
    return write_run_dir(simulate(load_scenario(toy_file(tmp, config))), tmp / name)


@pytest.fixture(scope="module")
def serving_run(tmp_path_factory) -> Path:
    return _simulate(tmp_path_factory.mktemp("serving"), _serving_config(trace_steps=2))


def test_run_report_links_its_perfetto_trace_and_draws_the_request_figures(serving_run, tmp_path):
    from moesim.reports.run_report import write_run_report

    page = write_run_report(serving_run, tmp_path / "report")
    text = assert_self_contained(page, tmp_path, min_images=5)
    assert "https://ui.perfetto.dev" in text and "drag the file" in text
    assert 'download="trace.json" href="data:application/json;base64,' in text
    for title in ("Per-request timeline", "Queue length and KV-cache use over time", "TTFT against prompt length"):
        assert f'alt="{title}"' in text
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "ui.perfetto.dev" in md and "trace.json" in md
    for png in ("run-serving-timeline.png", "run-serving-queue-kv.png", "run-serving-ttft-vs-prompt.png"):
        assert _is_png(tmp_path / "report" / png)


def test_run_report_without_a_trace_says_how_to_get_one(tmp_path):
    from moesim.reports.run_report import write_run_report

    cfg = yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text()) | {"outputs": {"trace_steps": 0}}
    run = _simulate(tmp_path / "fixed", cfg)
    assert not (run / "trace.json").exists()
    text = write_run_report(run).read_text(encoding="utf-8")
    assert "No Perfetto trace" in text and "outputs.trace_steps" in text


# ---------------------------------------------------------------- comparisons of unlike runs

def test_comparing_different_models_warns_instead_of_judging(tmp_path, capsys):
    toy = yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())
    a = _simulate(tmp_path / "a", toy)
    b = _simulate(tmp_path / "b", toy | {"model": "toy-moe8.yaml", "workload": toy["workload"]
                                         | {"routing": {"generator": "uniform"}}})
    same = _simulate(tmp_path / "c", toy | {"seed": 1})
    capsys.readouterr()
    assert cli.main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "Not like for like" in out and "model Toy-MoE8 against Toy-MoE" in out
    html = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert html.index("Not like for like") < html.index("<h2>Runs</h2>")  # at the top
    assert 'class="better"' not in html and 'class="worse"' not in html
    assert "Not like for like" in (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert cli.main(["report", str(a), str(same), "--out", str(tmp_path / "cmp2")]) == 0
    assert "Not like for like" not in capsys.readouterr().out
    assert "Not like for like" not in (tmp_path / "cmp2" / "report.html").read_text(encoding="utf-8")


def test_comparing_different_step_counts_warns(tmp_path):
    from moesim.reports.compare_guard import warning_for_dirs

    toy = yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())
    a = _simulate(tmp_path / "a", toy)
    b = _simulate(tmp_path / "b", toy | {"workload": toy["workload"] | {"steps": 3}})
    assert "3 steps against 1" in warning_for_dirs([a, b])


# ---------------------------------------------------------------- trace stats --html

def _trace(path: Path) -> Path:
    """A routing trace for toy-moe8 (2 MoE layers, 8 experts, top-2): 4 steps of 16 tokens."""
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("step", "token", "source", "moe_layer", "expert_0", "expert_1")}
    for step in range(4):
        for token in range(16):
            for layer in range(2):
                e = rng.choice(8, size=2, replace=False)
                for k, v in zip(rows, (step, token, token % 2, layer, int(e[0]), int(e[1]))):
                    rows[k].append(v)
    pq.write_table(pa.table(rows), path)
    return path


def _stats(trace: Path, *more: str) -> int:
    return cli.main(["trace", "stats", str(trace), "--model", str(DATA / "toy" / "toy-moe8.yaml"), "--devices", "2",
                     *more])


def test_trace_stats_html_writes_the_page_and_refuses_files_it_did_not_write(tmp_path, capsys):
    trace = _trace(tmp_path / "t.parquet")
    page = tmp_path / "stats.html"
    assert _stats(trace, "--html", str(page), "--out", str(tmp_path / "out")) == 0
    text = assert_self_contained(page, tmp_path, min_images=2)
    assert text.splitlines()[1] == MARK
    assert "load max/mean (whole trace; per step)" in text and "Per MoE layer" in text
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert f"{stats['imbalance']['max_over_mean']:.3f}" in text  # the page shows the numbers stats.json holds
    assert (tmp_path / "out" / "stats.html").read_text(encoding="utf-8").splitlines()[1] == MARK
    capsys.readouterr()

    assert _stats(trace, "--html", str(page)) == 2  # there already: --force needed
    assert "--force" in capsys.readouterr().err
    assert _stats(trace, "--html", str(page), "--force") == 0  # its own page: replaced

    mine = tmp_path / "mine.html"
    mine.write_text("<p>my notes</p>")
    assert _stats(trace, "--html", str(mine), "--force") == 2
    assert "not written by" in capsys.readouterr().err
    assert mine.read_text() == "<p>my notes</p>"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left
