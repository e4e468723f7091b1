"""The run report and the comparison report: self-contained HTML, Markdown with PNG files, CSV tables."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ExampleRuns, shrink_serving
from moesim.errors import MoesimError
from moesim.reports.compare_report import change, run_names, write_comparison_report
from moesim.reports.run_report import load_run, write_run_report
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate, write_run_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DECODE = "mixtral-decode-8xh100.yaml"
OFFLOAD = "offload-mixtral-4090-lru.yaml"
MULTI_NODE = "deepseek-v3-decode-4x8-h800.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
# examples whose full size makes even a couple of steps slow: fewer steps and shorter prompts (still valid)
SLOW = {"deepseek-v3-prefill-4x8-h800.yaml": {"steps": 1, "seq_len": 512}}


class _Page(HTMLParser):
    """Collects every <img src>, every <link>/<script src> and every class attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a.get("href") or a.get("src") or "")
        if a.get("class"):
            self.classes += (a["class"] or "").split()


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    p.close()
    return p


def _check_page(page: Path, min_images: int = 1) -> _Page:
    """One self-contained page: every image a PNG data URI; the Markdown's images are files beside it."""
    assert page.is_file()
    parsed = _parse(page)
    assert not parsed.external, f"external resources in {page}: {parsed.external}"
    assert len(parsed.srcs) >= min_images
    for src in parsed.srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    md = (page.parent / "report.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == len(parsed.srcs)
    for name in images:
        f = page.parent / name
        assert f.is_file(), f"report.md shows {name}, which is missing"
        assert f.read_bytes()[:8] == PNG
        assert f.stat().st_size > 5000, f"{name} looks empty"
    return parsed


def _config(name: str, steps: int = 2, **workload) -> dict:
    cfg = yaml.safe_load((EXAMPLES / name).read_text())
    if "serving" in cfg:
        return shrink_serving(cfg) | {"outputs": {"trace_steps": 0}}
    extra = dict(SLOW.get(name, {}))
    cfg["workload"]["steps"] = min(steps, extra.pop("steps", steps))
    cfg["workload"].update(extra, **workload)
    cfg.setdefault("outputs", {})["trace_steps"] = 0
    return cfg


def _run(cfg: dict, out: Path) -> Path:
    return write_run_dir(simulate(config_from_dict(cfg, EXAMPLES)), out)


@pytest.fixture
def root(example_runs: ExampleRuns) -> ExampleRuns:
    """The session's example runs, shared with the other report tests (conftest.ExampleRuns)."""
    return example_runs


def _example_run(root: ExampleRuns, name: str) -> Path:
    """Each example simulated once (2 steps, fewer for the slow ones) for the whole session."""
    return root.run(_config(name), Path(name).stem)[1]


def _example_report(root: ExampleRuns, name: str) -> Path:
    """Each example's report written once, into a folder of its own (not the default run/report)."""
    return root.report(_config(name), Path(name).stem)


def test_run_report(root: ExampleRuns) -> None:
    page = _example_report(root, DECODE)
    run = _example_run(root, DECODE)
    out = page.parent
    assert page == run.parent / f"{run.name}-report" / "report.html"
    assert not (run / "report").exists()
    _check_page(page, min_images=6)  # per layer, per device, steps, straggler map, traffic, links
    text = page.read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("mixtral-decode-8xh100", "Mixtral-8x7B", "dgx-h100", "simulated", "step latency p99",
                   "time per output token", "straggler ratio", "memory per device", "Resolved config"):
        assert needle in text and needle in md, needle
    assert "Expert offloading" not in text and "cache hit rate" not in text
    assert "node boundaries" not in text  # one node
    assert "```yaml" in md and "<pre>" in text
    for name in ("metrics.csv", "time_by_layer.csv", "time_by_device.csv", "step_latency.csv"):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.csv")
    summary = load_run(run).metrics
    row = metrics.set_index("metric").loc["step_latency_mean_s"]
    assert row["value"] == pytest.approx(summary["step_latency_s"]["mean"])
    by_layer = pd.read_csv(out / "time_by_layer.csv")
    assert len(by_layer) == 32 and "expert_ms" in by_layer
    by_device = pd.read_csv(out / "time_by_device.csv")
    assert len(by_device) == 8
    # the per-device phase times plus idle add up to the mean step time (makespan / steps)
    per_step = summary["makespan_s"] / summary["steps"] * 1e3
    assert by_device.drop(columns="device").sum(axis=1).to_numpy() == pytest.approx(per_step, rel=1e-6)
    steps = pd.read_csv(out / "step_latency.csv")
    assert steps["step_latency_s"].mean() == pytest.approx(summary["step_latency_s"]["mean"], rel=1e-6)


@pytest.mark.slow  # DeepSeek-V3's 61 layers x 32 devices: seconds of plotting
def test_multi_node_run_report(root: ExampleRuns) -> None:
    page = _example_report(root, MULTI_NODE)
    _check_page(page, min_images=6)
    text = page.read_text(encoding="utf-8")
    assert "node boundaries (8 devices per node)" in text
    assert "cross nodes" in text and "inter-node share" in text


def test_offload_run_report(root: ExampleRuns) -> None:
    page = _example_report(root, OFFLOAD)
    out = page.parent
    parsed = _check_page(page, min_images=4)
    text = page.read_text(encoding="utf-8")
    for needle in ("Expert offloading", "cache hit rate", "hits / misses", "evictions",
                   "prefetches used / wasted / late", "bytes fetched from host", "stall share of device time",
                   "copy engine utilization", "peak device memory", "Offload stall and fetched bytes"):
        assert needle in text, needle
    # one device: no traffic or straggler map, and the page says so instead of failing; the host link
    # carried the expert copies, so it is in the link table and the busiest-links plot
    assert "one device" in text and "no link carried bytes" not in text
    assert "Bytes over links" in text and "offload copy" in text
    assert len(parsed.srcs) == 5  # per layer, per device, steps, links, offload per layer
    for name in ("offload.csv", "offload_by_layer.csv"):
        assert (out / name).is_file()
    per_layer = pd.read_csv(out / "offload_by_layer.csv")
    assert {"offload_stall_max_s", "fetched_bytes"} <= set(per_layer.columns)
    assert per_layer["fetched_bytes"].sum() > 0


def test_comparison_of_placements(root: ExampleRuns, tmp_path: Path) -> None:
    """Mixtral with EP4 (two experts per device): contiguous against round-robin placement."""
    dirs = []
    for policy in ("contiguous", "round_robin"):
        cfg = _config(DECODE)
        cfg["parallelism"] = {"ep": 4, "tp": 1, "dp": 8}
        cfg["placement"] = {"policy": policy}
        dirs.append(_run(cfg, tmp_path / policy))
    page = write_comparison_report(dirs, tmp_path / "cmp")
    parsed = _check_page(page, min_images=3)
    text = page.read_text(encoding="utf-8")
    assert "mixtral-decode-8xh100 (contiguous)" in text and "mixtral-decode-8xh100 (round_robin)" in text
    assert "change vs first" in text
    assert {"better", "worse"} & set(parsed.classes)
    assert "placement.policy" in text  # the config difference
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert "change_vs_first_pct: mixtral-decode-8xh100 (round_robin)" in table.columns
    assert "step_latency_mean_s" in set(table["metric"])


def test_comparison_of_offload_policies(root: ExampleRuns, tmp_path: Path) -> None:
    oracle = _config(OFFLOAD)
    oracle["name"] = "offload-oracle"
    oracle["offload"]["prefetch"] = {"policy": "oracle", "lookahead": 1}
    runs = [_example_run(root, OFFLOAD), _run(oracle, tmp_path / "oracle"), _example_run(root, DECODE)]
    page = write_comparison_report(runs, tmp_path)
    parsed = _check_page(page, min_images=4)  # steps, time share, expert time, offload
    text = page.read_text(encoding="utf-8")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    for name in ("offload-mixtral-4090-lru", "offload-oracle", "mixtral-decode-8xh100"):
        assert name in text and name in md
    assert "better" in parsed.classes
    assert "td.better" in text and "td.worse" in text  # the page's own style, no external CSS
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("metric")
    # an oracle prefetch turns misses into hits, on time or late (a late hit waits on its copy)
    assert table.loc["cache_miss_rate", "offload-oracle"] < table.loc["cache_miss_rate", "offload-mixtral-4090-lru"]
    assert table.loc["cache_hit_rate", "offload-oracle"] >= table.loc["cache_hit_rate", "offload-mixtral-4090-lru"]
    assert pd.isna(table.loc["cache_hit_rate", "mixtral-decode-8xh100"])
    assert "Expert offloading" in text and "(better)" in md


def test_change_direction() -> None:
    assert change(10.0, 8.0, "lower")[:2] == ("-20.0%", "better")
    assert change(10.0, 12.0, "lower")[:2] == ("+20.0%", "worse")
    assert change(0.5, 0.6, "higher")[1] == "better"
    assert change(3.0, 3.0, "lower")[1] == ""
    assert change(1.0, 2.0, None)[1] == "changed"
    assert change(None, 2.0, "lower")[1] == ""


def test_duplicate_names(root: ExampleRuns, tmp_path: Path) -> None:
    run = _example_run(root, DECODE)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "summary.json").write_text((run / "summary.json").read_text())
    a, b = load_run(run), load_run(copy)
    assert run_names([a, b]) == [f"mixtral-decode-8xh100 ({run.name})", "mixtral-decode-8xh100 (copy)"]
    assert len(set(run_names([a, a]))) == 2


def test_missing_summary(tmp_path: Path, root: ExampleRuns) -> None:
    run = _example_run(root, DECODE)
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (empty / "layers.csv").write_text("step,layer\n")
    with pytest.raises(MoesimError, match="summary.json") as err:
        write_run_report(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(MoesimError, match="does not exist"):
        write_run_report(tmp_path / "nowhere")
    with pytest.raises(MoesimError, match=re.escape(str(empty))):
        write_comparison_report([run, empty], tmp_path / "cmp")
    with pytest.raises(MoesimError, match="at least two"):
        write_comparison_report([run], tmp_path / "cmp")


def test_missing_optional_files(root: ExampleRuns, tmp_path: Path) -> None:
    """A run directory with only summary.json still reports (into run/report by default), with notes in
    place of the figures."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "summary.json").write_text((_example_run(root, DECODE) / "summary.json").read_text())
    page = write_run_report(bare)
    assert page == bare / "report" / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "not shown" in text and "phases.parquet" in text
    assert (page.parent / "metrics.csv").is_file()


# The examples whose reports the default tests above write already run by default; every other example's
# report (seconds of plotting each) is in the slow set (pytest -m slow).
@pytest.mark.parametrize("example", [
    pytest.param(name, marks=() if name in (DECODE, OFFLOAD) else pytest.mark.slow)
    for name in sorted(p.name for p in EXAMPLES.glob("*.yaml"))])
def test_every_example_reports(example: str, root: ExampleRuns) -> None:
    page = _example_report(root, example)
    _check_page(page, min_images=3)
    name = yaml.safe_load((EXAMPLES / example).read_text())["name"]
    assert name in page.read_text(encoding="utf-8")


@pytest.mark.slow  # three CLI runs of the Mixtral example, two reports
def test_simulate_report_flag_and_report_command(tmp_path):
    """`moesim simulate --report` writes RUN_DIR/report; `moesim report A B` compares two runs."""
    from moesim.cli import main

    cfg = yaml.safe_load((EXAMPLES / "mixtral-decode-8xh100.yaml").read_text())
    cfg["workload"]["steps"] = 2
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(a), "--out", str(tmp_path / "ra"), "--quiet", "--report"]) == 0
    assert (tmp_path / "ra" / "report" / "report.html").exists()
    cfg["placement"] = {"policy": "round_robin"}
    cfg["parallelism"] = {"ep": 4, "tp": 1, "dp": 8}
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(b), "--out", str(tmp_path / "rb"), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "ra"), str(tmp_path / "rb"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.csv").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
