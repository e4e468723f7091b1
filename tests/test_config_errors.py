"""Bad configs get one-paragraph errors naming the file and field; the CLI shows no traceback."""

import subprocess
import sys

import pytest

from moesim.errors import ConfigError
from moesim.simulator.scenario import load_scenario

from conftest import example_config, write_config


def _error(tmp_path, cfg) -> str:
    path = write_config(tmp_path, cfg)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: Mixtral-8x7B\nhardware: {cluster: dgx-h100\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_scenario(path)


def test_unknown_field_names_its_path(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["batchsize"] = 3
    assert "workload.batchsize" in _error(tmp_path, cfg)


def test_unknown_model_lists_valid_names(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["model"] = "Mixtral-8x8B"
    msg = _error(tmp_path, cfg)
    assert "'model'" in msg and "Mixtral-8x7B" in msg and "DeepSeek-V3" in msg


def test_unknown_cluster_and_device_list_valid_names(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardware"]["cluster"] = "dgx-h1000"
    msg = _error(tmp_path, cfg)
    assert "hardware.cluster" in msg and "dgx-h100" in msg
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: c\nnode: {device: H900, devices_per_node: 8, intra_node: {topology: switch, link: NVLink4}}\n")
    cfg["hardware"]["cluster"] = "c.yaml"
    with pytest.raises(ConfigError) as info:
        load_scenario(write_config(tmp_path, cfg))
    assert "node.device" in str(info.value) and "H100-SXM" in str(info.value)
    cluster = tmp_path / "c2.yaml"  # profiles are cached by path
    cfg["hardware"]["cluster"] = "c2.yaml"
    cluster.write_text("name: c\nnode: {device: H100-SXM, devices_per_node: 8, intra_node: {topology: switch, "
                       "link: NVLink4}, host: {device: Xeon-8480, link: PCIe5-x16}, "
                       "storage: {link: NVMe-Gen9, capacity: 1 TB}}\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(write_config(tmp_path, cfg))
    assert "node.storage.link" in str(info.value) and "NVMe-Gen4-x4" in str(info.value)


def test_ep_not_dividing_the_experts_gets_redundant_copies(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["parallelism"] = {"ep": 4, "tp": 1, "dp": 8}
    # ep=4 divides the 8 experts and the 8 devices: valid
    load_scenario(write_config(tmp_path, cfg))
    cfg = example_config("deepseek-v3-prefill-4x8-h800.yaml")
    cfg["model"] = "Mixtral-8x7B"
    cfg["parallelism"] = {"ep": 32, "tp": 1, "dp": 32}
    # more devices than experts (issue 27): each of the 8 experts gets 4 copies, one slot per GPU
    sc = load_scenario(write_config(tmp_path, cfg))
    assert sc.placement.slot_expert.shape[1] == 32
    assert all(len(d) == 4 for d in sc.placement.expert_devices(0))


def test_parallelism_must_match_cluster(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["parallelism"] = {"ep": 8, "tp": 2, "dp": 8}
    assert "must equal the 8 devices" in _error(tmp_path, cfg)


def test_workload_that_does_not_fit_memory(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["batch_size"] = 4096
    msg = _error(tmp_path, cfg)
    assert "workload.batch_size" in msg and "does not fit in memory" in msg and "KV cache" in msg


def test_missing_and_conflicting_workload_fields(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    del cfg["workload"]["kv_len"]
    assert "kv_len" in _error(tmp_path, cfg)
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["tokens_per_device"] = 8
    assert "exactly one of" in _error(tmp_path, cfg)


def test_bad_placement_file_names_expert(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    (tmp_path / "p.yaml").write_text("experts: [0, 1, 2, 3, 4, 5, 6, 9]\n")
    cfg["placement"] = {"file": "p.yaml"}
    with pytest.raises(ConfigError, match=r"experts\[7\].*\[0, 8\)"):
        load_scenario(write_config(tmp_path, cfg))


def test_cli_prints_error_without_traceback(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["model"] = "NoSuchModel"
    path = write_config(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "simulate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "unknown model 'NoSuchModel'" in proc.stderr


def test_name_suggestions_rank_as_a_person_would():
    from moesim.errors import closest_names
    from moesim.hardware_profiles import list_profiles

    assert closest_names("h100", list_profiles("clusters"))[:2] == ["dgx-h100", "h100-2x8"]  # whole-word matches
    assert closest_names("h100", list_profiles("devices"))[0] == "H100-SXM"
    assert closest_names("dgx-h1000", list_profiles("clusters"))[0] == "dgx-h100"
    assert closest_names("zzz", list_profiles("clusters")) == []


def test_duplicate_yaml_key_names_key_and_both_lines_but_merge_keys_may_override(tmp_path):
    from moesim.yaml_io import load_yaml

    path = tmp_path / "d.yaml"
    path.write_text("a: 1\nb:\n  c: 1\n  c: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'c' at line 4 \(first given at line 3\)"):
        load_yaml(path)
    path.write_text("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")
    assert load_yaml(path)["x"] == {"a": 3, "b": 2}


def test_unknown_key_is_reported_before_the_missing_key_it_misspells(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardwre"] = cfg.pop("hardware")
    msg = _error(tmp_path, cfg)
    assert "unknown key 'hardwre'; did you mean 'hardware'?" in msg and "more problem" not in msg


def test_non_finite_numbers_are_refused_at_every_field(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardware"]["scale"] = {"link_bandwidth": float("inf")}
    assert "hardware.scale.link_bandwidth" in _error(tmp_path, cfg)


def test_decode_steps_that_outgrow_memory_blame_the_steps(tmp_path):
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["steps"] = 100_000  # fits at kv_len, not once the cache has grown by 100k tokens
    msg = _error(tmp_path, cfg)
    assert "workload.steps" in msg and "grows the KV cache" in msg


def test_the_c_parser_loads_what_the_python_loader_loads_and_leaves_errors_to_it(tmp_path, monkeypatch):
    """Documents load through libyaml's parser with moesim's checks (several times faster); every
    bundled YAML gives the Python loader's data, and a document the C parser does not load is
    loaded again by the Python loader, so an error reads the same with or without it."""
    import glob

    from moesim import yaml_io

    if yaml_io._FastLoader is None:
        pytest.skip("PyYAML was built without libyaml")
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    bundled = [p for p in glob.glob(str(root / "**" / "*.yaml"), recursive=True) if ".venv" not in p]
    assert len(bundled) > 50
    for path in bundled:
        text = open(path).read()
        assert yaml_io._load_with(yaml_io._FastLoader, text, 10**6) == yaml_io._load_with(
            yaml_io._UniqueKeyLoader, text, 10**6), path
    bad = {"dup.yaml": "a: 1\nb: 2\na: 3\n", "syntax.yaml": "a: [1, 2\nb: 3\n", "tiny.yaml": "x: 1e-400\n",
           "bomb.yaml": "a: &a [1, 1]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip("abcdefghijklmnopqrst",
                                                                                            "bcdefghijklmnopqrstu"))}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    messages = {}
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(yaml_io, "_FastLoader", None)
        for name in bad:
            try:
                got = yaml_io.load_yaml(tmp_path / name)
                messages[fast, name] = repr(got)
            except ConfigError as err:
                messages[fast, name] = str(err)
    for name in bad:
        assert messages[True, name] == messages[False, name], name
    assert "a" in messages[True, "dup.yaml"] and "malformed YAML" in messages[True, "syntax.yaml"]
