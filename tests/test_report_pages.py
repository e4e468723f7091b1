"""Every HTML report is self-contained, and what the reports say is honest (issue 15, point 7).

Each report type that is cheap to produce here (run, offloading run, comparison, placement,
roofline, calibration) is written, then its HTML page is copied ALONE into a fresh folder and
parsed: every src/href/srcset/... attribute and every CSS url() must be a data: URI, an #anchor or
an http(s) link, never a file beside the report. Also: the straggler map paints a perfectly
balanced layer in the neutral colour, an offloading run's link table counts the bytes of its
expert copies, and the calibration report's verdict follows its own numbers.
"""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from moesim.reports.compare_report import write_comparison_report
from moesim.reports.html_page import Table
from moesim.reports.run_report import STRAGGLER_CMAP, straggler_colors
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate
from moesim.simulator.run_tables import OFFLOAD_COPY, link_table
from moesim.validation.errors import error_table
from moesim.reports.calibration_report import verdict, write_validation_report

from conftest import in_background

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN = "tiny-moe-trace-8xh100.yaml"  # 8 devices: straggler map, traffic, links; simulates in a blink
OFFLOAD = "offload-mixtral-4090-lru.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
URL_ATTRS = {"src", "href", "srcset", "data", "poster", "action", "xlink:href", "background", "formaction"}
ALLOWED = ("data:", "#", "http://", "https://")


class _References(HTMLParser):
    """Every URL-bearing attribute value of every tag, every inline style, and every <style> body."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in URL_ATTRS:
                if name == "srcset":  # "url 1x, url 2x": commas inside a data URI have no space after them
                    values = [v.strip().split(" ")[0] for v in re.split(r",\s+", value or "")]
                else:
                    values = [value or ""]
                self.refs += [(tag, name, v) for v in values]
            if name == "style" and value:
                self.styles.append(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _copied_alone(page: Path, tmp_path: Path) -> Path:
    """The page copied without anything beside it into a fresh folder."""
    alone = tmp_path / f"alone-{page.parent.name}"
    alone.mkdir()
    return Path(shutil.copy(page, alone / page.name))


def assert_self_contained(page: Path, tmp_path: Path, min_images: int = 1) -> str:
    """Copy `page` alone, parse it, and fail on any reference to a local file; return the text."""
    copy = _copied_alone(page, tmp_path)
    assert sorted(p.name for p in copy.parent.iterdir()) == [page.name]
    text = copy.read_text(encoding="utf-8")
    parser = _References()
    parser.feed(text)
    parser.close()
    local = [(t, a, v[:80]) for t, a, v in parser.refs if not v.startswith(ALLOWED)]
    assert not local, f"{page.name} references files that do not travel with it: {local}"
    urls = [u for s in parser.styles for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", s)]
    assert all(u.startswith(ALLOWED) for u in urls), f"CSS url() to local files: {urls}"
    images = [v for t, a, v in parser.refs if t == "img" and a == "src"]
    assert len(images) >= min_images
    for src in images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    for t, a, v in parser.refs:  # embedded data files decode
        if v.startswith("data:") and ";base64," in v:
            base64.b64decode(v.split(",", 1)[1], validate=True)
    return text


def _config(name: str, steps: int = 2) -> dict:
    cfg = yaml.safe_load((EXAMPLES / name).read_text())
    cfg["workload"]["steps"] = steps
    cfg.setdefault("outputs", {})["trace_steps"] = 0
    return cfg


@pytest.fixture(scope="module")
def runs(example_runs) -> dict:
    """Each example simulated once for the session (shared with test_run_report, as are their reports):
    its result and its run directory."""
    return {name: example_runs.run(_config(name), Path(name).stem) for name in (RUN, OFFLOAD)}


def _report(example_runs, name: str) -> Path:
    return example_runs.report(_config(name), Path(name).stem)


def test_run_report_is_self_contained(example_runs, tmp_path: Path) -> None:
    page = _report(example_runs, RUN)
    text = assert_self_contained(page, tmp_path, min_images=6)
    assert "Straggler map" in text and 'download="metrics.csv"' in text
    # the Markdown beside it still shows the PNG files by name
    md = (page.parent / "report.md").read_text(encoding="utf-8")
    assert "](run-expert-time.png)" in md and (page.parent / "run-expert-time.png").is_file()


def test_offload_link_table_counts_copied_bytes(runs, example_runs, tmp_path: Path) -> None:
    """An offloading run moves its expert copies over the host link: links.csv, the link table and
    the run report count exactly the bytes of the copies that landed."""
    result, run_dir = runs[OFFLOAD]
    copies = result.raw.offload.copies_table()
    landed = copies[~copies["cancelled"].astype(bool) & copies["end_s"].notna()]
    copied = float(landed["bytes"].sum())
    assert copied > 0
    links = link_table(result)
    assert "source" in links.columns
    offload_rows = links[links["source"] == OFFLOAD_COPY]
    assert float(offload_rows["bytes"].sum()) == pytest.approx(copied, rel=1e-12)
    assert float(offload_rows["bytes"].sum()) == pytest.approx(result.summary["offload"]["bytes_fetched"]["host"])
    assert set(offload_rows["class"]) == {"pcie"}  # host memory -> device over PCIe
    assert set(offload_rows["from"]) == {"n0.host0"} and set(offload_rows["to"]) == {"n0.d0"}
    written = pd.read_csv(run_dir / "links.csv")
    assert float(written.loc[written["source"] == OFFLOAD_COPY, "bytes"].sum()) == pytest.approx(copied)
    assert float(written.loc[written["class"] == "pcie", "bytes"].sum()) > 0  # not "pcie: 0"

    page = _report(example_runs, OFFLOAD)
    assert page.parent == run_dir.parent / f"{run_dir.name}-report"  # the report of this very run
    text = assert_self_contained(page, tmp_path, min_images=5)
    assert "Bytes over links" in text and "offload copy" in text
    assert "no link carried bytes" not in text


@pytest.mark.parametrize("variant", ["host tier", "storage tier behind the host", "cold experts on the host"])
def test_link_table_adds_up_to_bytes_by_link_class(variant: str) -> None:
    """Summed by class, links.csv equals the summary's bytes_by_link_class, offloading included."""
    cfg = _config(OFFLOAD)
    if variant == "storage tier behind the host":
        cfg["offload"]["tier"] = "storage"
    if variant == "cold experts on the host":
        cfg["offload"]["hybrid"] = {"cold_experts": "host"}
    result = simulate(config_from_dict(cfg, EXAMPLES))
    links = link_table(result)
    by_class = links.groupby("class")["bytes"].sum()
    summary = {k: v for k, v in result.summary["bytes_by_link_class"].items() if v > 0}
    assert set(by_class.index) == set(summary) and set(summary) >= {"pcie"}
    for cls, b in summary.items():
        assert by_class[cls] == pytest.approx(b, rel=1e-9), cls
    assert (links["source"] != "collective").all()  # one device: every byte is offload traffic


def test_comparison_report_is_self_contained(runs, tmp_path: Path) -> None:
    page = write_comparison_report([runs[RUN][1], runs[OFFLOAD][1]], tmp_path / "cmp")
    text = assert_self_contained(page, tmp_path, min_images=3)
    assert "MoE layer index" not in text  # layers.csv numbers model layers
    assert 'download="comparison.csv"' in text


def test_placement_report_is_self_contained(tmp_path: Path) -> None:
    """A hand-built study with fast methods (no simulation, no MILP); the files beside the report
    are embedded, not linked."""
    from moesim.placement.methods import compare_methods
    from moesim.placement.problem import problem_from_routing
    from moesim.reports.placement_report import write_placement_report
    from moesim.simulator.scenario import load_scenario
    from moesim.studies.placement_study import PlacementStudy
    from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting

    sc = load_scenario(EXAMPLES / "mixtral-decode-8xh100.yaml")
    D = 8
    node_of = np.arange(D) // 4
    cost = np.where(node_of[:, None] == node_of[None, :], 1e-8, 1e-7) * (1 - np.eye(D))
    routing = SyntheticRouting(RoutingModelConfig(popularity={"kind": "zipf", "alpha": 0.8}), 16, 2, 4, 0)
    problem = problem_from_routing(routing, np.full(D, 32), 4, node_of=node_of, token_cost=cost, redundant=8, steps=2)
    study = PlacementStudy(sc, problem, compare_methods(problem, ["contiguous", "eplb"]), in_sample=False)
    out = tmp_path / "place"
    out.mkdir()
    pd.DataFrame({"method": ["contiguous", "eplb"]}).to_csv(out / "methods.csv", index=False)
    page = write_placement_report(study, out, best="eplb")
    text = assert_self_contained(page, tmp_path, min_images=5)
    assert 'download="methods.csv"' in text
    assert '<div class="scroll">' in text  # the wide methods table scrolls instead of overflowing


ROOFLINE = in_background("test_roofline_page_is_self_contained", "-m", "moesim.cli", "roofline",
                         EXAMPLES / "mixtral-decode-8xh100.yaml", "--out", "{out}/roof")  # beside the tests


def test_roofline_page_is_self_contained(background, tmp_path: Path) -> None:
    rc, _, err, folder = background.run(ROOFLINE)
    assert rc == 0, err
    assert_self_contained(folder / "roof" / "roofline.html", tmp_path, min_images=3)


def _calibration_table(after_factor: float) -> pd.DataFrame:
    """Measured ops of every split; the datasheet is 40% low, the calibrated profile `after_factor` off."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("fit", 8), ("holdout_random", 4), ("holdout_slice", 4), ("e2e", 1)):
        for i in range(n):
            meas = float(rng.uniform(1e-5, 1e-3))
            rows.append({"kind": "gemm" if split != "e2e" else "moe_layer", "split": split, "measured_s": meas,
                         "spread": 0.05, "sim_before_s": meas * 0.6, "sim_after_s": meas * after_factor})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("after_factor, cls, words", [(1.05, "good", "improved held-out errors"),
                                                      (0.3, "bad", "made held-out errors worse")])
def test_calibration_report_verdict_and_self_contained(tmp_path: Path, after_factor, cls, words) -> None:
    table = _calibration_table(after_factor)
    errors = error_table(table)
    got_cls, sentence = verdict(table, errors)
    assert got_cls == cls and words in sentence
    before, after = 40.0, abs(after_factor - 1) * 100
    assert f"{before:.1f}% -> {after:.1f}%" in sentence  # its own numbers: pooled held-out MAPE
    if cls == "bad":
        assert "Do not use this profile" in sentence
    table.to_csv(tmp_path / "measurements.csv", index=False)
    errors.to_csv(tmp_path / "errors.csv", index=False)
    page = write_validation_report(table, errors, [("device", "test")], Table(["kind"], [["gemm"]]), tmp_path)
    text = assert_self_contained(page, tmp_path, min_images=2)
    assert f'class="verdict {cls}"' in text and sentence.split(":")[0] in text
    assert text.index('class="verdict') < text.index("<dl>")  # the verdict comes first
    assert f"**{sentence}**" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_straggler_map_paints_a_balanced_layer_neutral() -> None:
    """Uniform routing must not look like all stragglers: a layer whose devices all take the same
    expert time is the colour map's centre (near white), whatever its absolute time."""
    import matplotlib

    neutral = np.array(matplotlib.colormaps[STRAGGLER_CMAP](0.5))
    assert (neutral[:3] > 0.9).all()  # the centre of the diverging map is near white
    grid = np.array([[2e-4] * 4,  # perfectly balanced, slow layer
                     [1e-5] * 4,  # perfectly balanced, fast layer
                     [1e-4, 1e-4, 1e-4, 1.6e-4]])  # device 3 straggles
    colors = straggler_colors(grid)
    np.testing.assert_allclose(colors[0], np.tile(neutral, (4, 1)))
    np.testing.assert_allclose(colors[1], np.tile(neutral, (4, 1)))
    red, blue = colors[2, 3], colors[2, 0]
    assert red[0] > 2 * red[2] and red[0] > 2 * red[1] and blue[2] > blue[0]  # straggler red, others blue
    # all layers balanced (uniform routing): the whole map is neutral, not solid dark red
    np.testing.assert_allclose(straggler_colors(np.full((5, 8), 3e-4)), np.tile(neutral, (5, 8, 1)))
