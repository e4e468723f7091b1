"""Config inheritance (`extends: base.yaml`, simulator/config_extends.py): merged mapping by mapping,
the chain in order, --set on top, recorded in summary.json; cycles and missing bases refused."""

import copy

import pytest
import yaml

from moesim.errors import ConfigError
from moesim.simulator.config import load_config
from moesim.simulator.config_extends import merged

from conftest import toy_file


def test_mappings_merge_and_other_values_replace():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merged(base, {"a": {"y": [3]}, "c": 4}) == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # the base is not changed


def test_a_chain_of_bases_reads_as_one_config(tmp_path, toy_config):
    toy_file(tmp_path, toy_config)  # scenario.yaml and the toy profiles
    (tmp_path / "mid.yaml").write_text(yaml.safe_dump({"extends": "scenario.yaml",
                                                       "workload": {"batch_size": 8}}))
    (tmp_path / "top.yaml").write_text(yaml.safe_dump({"extends": "mid.yaml", "name": "top",
                                                       "workload": {"kv_len": 7}}))
    sf = load_config(tmp_path / "top.yaml", ["workload.steps=2"])
    wl = sf.config.workload
    assert (wl.batch_size, wl.kv_len, wl.steps, wl.phase) == (8, 7, 2, toy_config["workload"]["phase"])
    assert sf.config.name == "top"
    assert [p.rsplit("/", 1)[-1] for p in sf.extends] == ["mid.yaml", "scenario.yaml"]


def test_the_chain_is_recorded_in_summary_json(tmp_path, toy_config):
    from moesim.simulator.run import simulate, write_run_dir
    from moesim.simulator.scenario import resolve

    cfg = copy.deepcopy(toy_config)
    toy_file(tmp_path, cfg)
    (tmp_path / "top.yaml").write_text(yaml.safe_dump({"extends": "scenario.yaml", "seed": 3}))
    result = simulate(resolve(load_config(tmp_path / "top.yaml")))
    write_run_dir(result, tmp_path / "run")
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["extends"][0].endswith("scenario.yaml") and summary["seed"] == 3


@pytest.mark.parametrize("files,message", [
    ({"top.yaml": {"extends": "top.yaml"}}, "comes back"),
    ({"top.yaml": {"extends": "a.yaml"}, "a.yaml": {"extends": "top.yaml"}}, "comes back"),
    ({"top.yaml": {"extends": "nowhere.yaml"}}, "not a file"),
    ({"top.yaml": {"extends": 3}}, "path of a base config"),
])
def test_bad_chains_are_refused(tmp_path, files, message):
    for name, data in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(tmp_path / "top.yaml")
    assert err.value.field == "extends"
