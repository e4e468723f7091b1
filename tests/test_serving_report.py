"""Reports of serving runs: the Serving section of the run report (present for a serving run with its
plots embedded, absent for a fixed-batch run) and the load-sweep report (self-contained, one table
row per point in load order, numbers equal to the runs' summaries, the knee where p99 TPOT doubles).
Toy-sized runs: each simulates in a fraction of a second."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import DATA, toy_file
from moesim.errors import MoesimError
from moesim.reports.run_report import SERVING_BATCH_PNG, SERVING_CDF_PNG, write_run_report
from moesim.reports.sweep_report import COLUMNS, knee, knee_sentence, sweep_table, write_sweep_report
from moesim.simulator.run import simulate, write_run_dir
from moesim.simulator.scenario import load_scenario
from test_report_pages import assert_self_contained

RATES = (200.0, 2000.0, 20000.0)  # requests/s on the toy deployment: light, busy, overloaded


def serving_config(rate: float) -> dict:
    return {"name": "toy-serving", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
            "parallelism": {"ep": 4, "tp": 1, "dp": 4}, "routing": {"generator": "uniform"},
            "serving": {"prompt_tokens": {"dist": "fixed", "value": 64}, "output_tokens": {"dist": "fixed", "value": 8},
                        "num_requests": 24, "warmup": 0.1, "arrivals": {"process": "poisson", "rate": rate},
                        "slo": {"ttft": "1 ms", "tpot": "60 us"}},
            "outputs": {"trace_steps": 0}, "seed": 3}


def _run(tmp: Path, config: dict) -> Path:
    tmp.mkdir(parents=True)
    return write_run_dir(simulate(load_scenario(toy_file(tmp, config))), tmp / "run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The sweep's serving runs (label -> run directory, in load order) and a fixed-batch run."""
    root = tmp_path_factory.mktemp("serving-report")
    sweep = {f"rate={r:g}/s": _run(root / f"rate{int(r)}", serving_config(r)) for r in RATES}
    fixed = _run(root / "fixed", yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text()))
    return {"sweep": sweep, "fixed": fixed}


class _Page(HTMLParser):
    """Headings, every <img alt -> src>, and the text of every table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: dict[str, str] = {}
        self.rows: list[list[str]] = []
        self._tag: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a.get("alt") or ""] = a.get("src") or ""
        if tag in ("h2", "h3"):
            self._tag = tag
            self.headings.append("")
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self._tag = None
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._tag:
            self.headings[-1] += data
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def test_serving_run_report_has_the_serving_section(runs, tmp_path: Path) -> None:
    run = runs["sweep"]["rate=2000/s"]
    page = write_run_report(run, tmp_path / "report")
    text = assert_self_contained(page, tmp_path, min_images=2)
    p = _parse(page)
    assert "Serving" in p.headings
    assert p.headings.index("Serving") < p.headings.index("Headline metrics")  # near the top
    for title in ("Latency distributions", "Batch size and KV-cache use over time"):
        assert p.images[title].startswith("data:image/png;base64,")
    for png in (SERVING_CDF_PNG, SERVING_BATCH_PNG):
        assert (tmp_path / "report" / png).is_file()
        assert f"]({png})" in (tmp_path / "report" / "report.md").read_text()
    serving = json.loads((run / "summary.json").read_text())["metrics"]["serving"]
    rows = {r[0]: r for r in p.rows if r}
    assert rows["TTFT (time to first token)"][1] == str(serving["latency"]["ttft_s"]["count"])
    for label in ("ITL (inter-token latency)", "TPOT (time per output token)", "E2E (end-to-end latency)",
                  "queueing", "output tokens/s per GPU", "output tokens/s per user", "weights (this rank's shard)"):
        assert label in rows
    assert any(k.startswith("goodput (TTFT <= 1 ms and TPOT <= 60 µs") for k in rows), list(rows)
    assert "warm-up excluded" in text and "Simulated, not measured" in text
    assert (tmp_path / "report" / "serving_latency.csv").is_file()


def test_fixed_batch_run_report_has_no_serving_section(runs, tmp_path: Path) -> None:
    page = write_run_report(runs["fixed"], tmp_path / "report")
    p = _parse(page)
    assert "Serving" not in p.headings and "Headline metrics" in p.headings
    assert not any(k in p.images for k in ("Latency distributions", "Batch size and KV-cache use over time"))
    assert not (tmp_path / "report" / SERVING_CDF_PNG).exists()
    assert "Simulated, not measured: requests" not in page.read_text()


def test_sweep_report_is_self_contained_with_one_row_per_point(runs, tmp_path: Path) -> None:
    points = list(runs["sweep"].items())
    page = write_sweep_report(points, tmp_path / "sweep", "toy sweep")
    assert page == tmp_path / "sweep" / "report.html"
    text = assert_self_contained(page, tmp_path, min_images=1)
    assert (tmp_path / "sweep" / "report.md").is_file()
    p = _parse(page)
    assert next(iter(p.images.values())).startswith("data:image/png;base64,")
    table = next(i for i, r in enumerate(p.rows) if r and r[0] == "load")
    body = [r[0] for r in p.rows[table + 1:table + 1 + len(points)]]
    assert body == [label for label, _ in points]
    assert len([r for r in p.rows if r and r[0].startswith("rate=")]) == len(points)
    assert "simulated" in text.lower() and "TPOT &lt;= 60 µs" in text
    assert ("Latency turns up at" in text) or ("does not turn up" in text)


def test_sweep_table_equals_the_summaries(runs) -> None:
    points = list(runs["sweep"].items())
    t = sweep_table(points)
    assert list(t["load"]) == [label for label, _ in points]
    assert list(t.columns) == ["load"] + [name for name, _ in COLUMNS]
    for (label, run), (_, row) in zip(points, t.iterrows()):
        sv = json.loads((run / "summary.json").read_text())["metrics"]["serving"]
        for name, path in COLUMNS:
            v = sv
            for k in path:
                v = v[k]
            if v is None:
                assert math.isnan(row[name]), (label, name)
            else:
                assert row[name] == v, (label, name)
    # more load, more throughput on this toy deployment
    assert t["output_tokens_per_s_per_gpu"].is_monotonic_increasing


def test_knee_is_the_first_point_past_twice_the_lowest_load_p99_tpot() -> None:
    t = pd.DataFrame({"load": ["a", "b", "c", "d"], "tpot_p99_s": [0.010, 0.019, 0.025, 0.030],
                      "output_tokens_per_s_per_gpu": [1.0, 2.0, 3.0, 3.1]})
    assert knee(t) == (2, 0)
    assert "turns up at c" in knee_sentence(t)
    flat = t.assign(tpot_p99_s=[0.010, 0.012, 0.015, 0.020])  # exactly 2x is not past it
    assert knee(flat) is None
    assert "does not turn up" in knee_sentence(flat)
    missing = t.assign(tpot_p99_s=[float("nan"), 0.010, 0.015, 0.021])  # baseline: lowest load with a value
    assert knee(missing) == (3, 1)


def test_sweep_refuses_a_fixed_batch_run(runs, tmp_path: Path) -> None:
    with pytest.raises(MoesimError, match="metrics.serving"):
        sweep_table([("users=1", runs["fixed"])])
    with pytest.raises(MoesimError, match="summary.json"):
        write_sweep_report([("users=1", tmp_path)], tmp_path / "out", "x")
