"""The placement report: report.html with its plots embedded, report.md with the PNG files beside it."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from moesim.placement.ilp import IlpOptions
from moesim.placement.methods import compare_methods
from moesim.placement.problem import problem_from_routing
from moesim.reports.placement_report import node_boundaries, write_placement_report
from moesim.studies.placement_study import (
    PlacementStudy,
    pick_best,
    run_study,
    write_study,
)
from moesim.simulator.scenario import load_scenario
from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "mixtral-decode-8xh100.yaml"
TRACE_EXAMPLE = EXAMPLES / "tiny-moe-trace-8xh100.yaml"  # 2 MoE layers: the MILP solves in well under 1 s
METHODS = ["contiguous", "eplb", "ilp_load"]


class _Images(HTMLParser):
    """Collects the src of every <img>."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src" and v]


def _images(page: Path) -> list[str]:
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.srcs


def _check_pngs(out: Path, srcs: list[str]) -> None:
    """Every image of report.html is an embedded PNG, one per image of report.md, whose files exist."""
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), f"image {src[:60]} is not embedded"
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG", "an embedded image is not a PNG"
    files = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text(encoding="utf-8"))
    assert len(files) == len(srcs)
    for name in files:
        assert "/" not in name and ":" not in name, f"report.md image {name} is not a relative file name"
        f = out / name
        assert f.is_file(), f"{name} is referenced but missing"
        assert f.read_bytes()[:4] == b"\x89PNG", f"{name} is not a PNG"


def _simulated_study(path: Path, methods: list[str]) -> PlacementStudy:
    sc = load_scenario(path)
    sc.config.workload.steps = 2
    return run_study(sc, methods, steps=4, redundant=8, slots=2, options=IlpOptions(time_limit=2), simulate=True)


def test_report_from_simulated_study(tmp_path: Path) -> None:
    """Recorded-trace scenario: every method simulated, one of them a MILP."""
    study = _simulated_study(TRACE_EXAMPLE, METHODS)
    write_study(study, tmp_path)
    page = write_placement_report(study, tmp_path)
    assert page == tmp_path / "report.html"
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    text = page.read_text(encoding="utf-8")

    srcs = _images(page)
    assert len(srcs) >= 4
    _check_pngs(tmp_path, srcs)
    for name in METHODS:
        assert name in md
    chosen = pick_best(study)
    assert chosen in text
    assert "simulation" in text and 'download="methods.csv" href="data:text/csv;base64,' in text
    assert "](methods.csv)" in md
    assert "MILP solves" in text  # ilp_load ran
    assert ("in-sample" if study.in_sample else "out-of-sample") in text


@pytest.mark.slow  # places and simulates the whole Mixtral example (32 MoE layers), then plots it
def test_report_out_of_sample_mixtral(tmp_path: Path) -> None:
    """Mixtral decode (32 MoE layers, zipf routing): baselines only, simulated out of sample."""
    study = _simulated_study(EXAMPLE, ["contiguous", "eplb"])
    write_study(study, tmp_path)
    page = write_placement_report(study, tmp_path)
    srcs = _images(page)
    assert len(srcs) >= 4
    _check_pngs(tmp_path, srcs)
    text = page.read_text(encoding="utf-8")
    assert "out-of-sample" in text and pick_best(study) in text and "MILP solves" not in text


def test_report_multi_node_without_simulation(tmp_path: Path) -> None:
    """Hand-built study: several nodes, no simulation and no ILP; out_dir is created."""
    sc = load_scenario(EXAMPLE)
    D, per_node = 16, 4
    node_of = np.arange(D) // per_node
    cost = np.where(node_of[:, None] == node_of[None, :], 1e-8, 1e-7) * (1 - np.eye(D))
    routing = SyntheticRouting(RoutingModelConfig(popularity={"kind": "zipf", "alpha": 0.8}, affinity=0.5),
                               32, 4, 3, 0)
    problem = problem_from_routing(routing, np.full(D, 64), 3, node_of=node_of, token_cost=cost,
                                   redundant=16, steps=2)
    results = compare_methods(problem, ["round_robin", "eplb"])
    st = PlacementStudy(sc, problem, results, in_sample=False)
    out = tmp_path / "new"
    page = write_placement_report(st, out, best="eplb")
    srcs = _images(page)
    assert len(srcs) >= 4
    _check_pngs(out, srcs)
    text = page.read_text(encoding="utf-8")
    assert "round_robin" in text and "eplb" in text and "MILP solves" not in text
    assert node_boundaries(node_of) == [3.5, 7.5, 11.5]
