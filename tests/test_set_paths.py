"""Relative paths given by --set (and load_scenario's items) resolve against the working directory;
paths written in a config file still resolve against the file's folder; a bundled profile name given
by --set stays a name; a sweep file's axes resolve against the base config's folder
(simulator/config.py `anchor_set_paths`). Bad inputs are in test_bad_inputs.py (SET_PATH_CASES)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from moesim.cli import main
from moesim.errors import ConfigError
from moesim.simulator.config import load_config, looks_like_path
from moesim.simulator.scenario import load_scenario

from conftest import DATA

TOY = DATA / "toy"


@pytest.fixture
def shell(tmp_path, monkeypatch) -> Path:
    """tmp/cfg holds the toy scenario and its profiles; the shell stands in tmp, one folder up."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    for f in TOY.glob("*.yaml"):
        shutil.copy(f, cfg / ("scenario.yaml" if f.name == "toy-scenario.yaml" else f.name))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cluster_copy(folder: Path, name: str) -> Path:
    """A copy of the toy cluster (and the profiles it names) under `folder`, renamed `name`."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("toy-device.yaml", "toy-link.yaml", "toy-nic.yaml"):
        shutil.copy(TOY / f, folder / f)
    data = yaml.safe_load((TOY / "toy-cluster.yaml").read_text())
    data["name"] = name
    (folder / "c.yaml").write_text(yaml.safe_dump(data))
    return folder / "c.yaml"


@pytest.mark.parametrize("value, path", [
    ("h800-4x8", False), ("DeepSeek-V3.2", False), ("Mixtral-8x7B", False), ("GLM-4.5", False),
    ("c.yaml", True), ("config.json", True), ("sub/dir", True), ("./hf-model", True), ("/abs/name", True),
])
def test_which_name_or_path_values_are_paths(value, path):
    assert looks_like_path(value) is path


def test_a_set_path_resolves_against_the_shell_and_a_file_path_against_the_file(shell, capsys):
    cluster = _cluster_copy(shell / "other", "toy-copy")
    assert main(["simulate", "cfg/scenario.yaml", "--out", "run", "--quiet",
                 "--set", "hardware.cluster=other/c.yaml"]) == 0
    summary = json.loads((shell / "run" / "summary.json").read_text())
    assert summary["resolved"]["cluster"] == "toy-copy"  # from the shell's other/, not cfg/other/
    assert summary["config"]["hardware"]["cluster"] == str(cluster)  # recorded absolute
    assert summary["overrides"] == ["hardware.cluster=other/c.yaml"]  # as typed
    assert summary["config"]["model"] == "toy-model.yaml"  # written in the file: found beside it, in cfg/
    assert main(["simulate", "cfg/scenario.yaml", "--out", "run2", "--quiet"]) == 0  # no --set: all from cfg/


def test_a_bundled_name_given_by_set_stays_a_name(shell):
    (shell / "dgx-h100").write_text("not a profile")  # a file of that name in the shell changes nothing
    sf = load_config("cfg/scenario.yaml", ["hardware.cluster=dgx-h100", "model=Mixtral-8x7B"])
    assert sf.config.hardware.cluster == "dgx-h100" and sf.config.model == "Mixtral-8x7B"


def test_path_only_fields_and_sections_given_by_set(shell):
    (shell / "arrivals.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.0,16,2\n0.5,16,2\n1.0,16,2\n")
    serve = {"name": "s", "model": "toy-model.yaml", "hardware": {"cluster": "toy-cluster.yaml"},
             "parallelism": {"ep": 2, "tp": 1, "dp": 2}, "routing": {"generator": "uniform"},
             "serving": {"arrivals": {"process": "poisson", "rate": 10}, "num_requests": 4,
                         "prompt_tokens": {"dist": "fixed", "value": 16},
                         "output_tokens": {"dist": "fixed", "value": 2}}}
    (shell / "cfg" / "serve.yaml").write_text(yaml.safe_dump(serve))
    sc = load_scenario("cfg/serve.yaml", ["serving.arrivals={process: file, path: arrivals.csv}", "outputs.dir=out/x"])
    assert sc.config.serving.arrivals.path == str(shell / "arrivals.csv")  # a whole section given by --set
    assert sc.config.outputs.dir == str(shell / "out" / "x")  # an output folder: relative to the shell too

    from moesim.simulator.serving.source import request_table

    assert len(request_table(sc.config.serving, sc.seed, sc.source.base_dir)) == 3


def test_python_api_items_mean_what_set_means(shell):
    """load_scenario(path, items): a relative path in an item resolves against the working directory
    (as --set); items_relative_to="config" resolves it as if written in the config."""
    _cluster_copy(shell / "other", "toy-copy")
    assert load_scenario("cfg/scenario.yaml", ["hardware.cluster=other/c.yaml"]).cluster.name == "toy-copy"
    _cluster_copy(shell / "cfg" / "other", "toy-beside")
    sc = load_scenario("cfg/scenario.yaml", ["hardware.cluster=other/c.yaml"], items_relative_to="config")
    assert sc.cluster.name == "toy-beside"
    # a mapping: its own paths against base_dir, the items against the working directory
    data = yaml.safe_load((shell / "cfg" / "scenario.yaml").read_text())
    sc = load_scenario(data, ["hardware.cluster=other/c.yaml"], base_dir=shell / "cfg")
    assert sc.cluster.name == "toy-copy" and sc.model.name == "Toy-MoE"
    with pytest.raises(ConfigError, match="working directory") as err:
        load_scenario("cfg/scenario.yaml", ["hardware.cluster=toy-cluster.yaml"])
    assert err.value.field == "hardware.cluster" and str(shell / "cfg" / "toy-cluster.yaml") in str(err.value)


def test_sweep_axis_paths_resolve_against_the_base_config(shell):
    from moesim.studies.sweep import plan
    from moesim.studies.sweep_config import load_sweep

    (shell / "cfg" / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "scenario.yaml", "axes": {"hardware.cluster": ["toy-cluster.yaml"], "hardware.scale.flops": [1, 2]}}))
    cfg, base = load_sweep(shell / "cfg" / "sweep.yaml")
    rows = plan(cfg, base)
    assert [error for _, _, _, error in rows] == ["", ""], rows  # cfg/toy-cluster.yaml, though the shell is a level up
