"""The notebook surface (docs/python.md): dir(moesim) lists documented public functions, a config
mapping works wherever a config path does, with --set style overrides."""

import copy

import moesim

from conftest import DATA


def test_dir_lists_the_public_functions_each_documented():
    names = dir(moesim)
    for name in ("load_scenario", "simulate", "write_run_dir", "load_sweep", "run_sweep", "load_recommend",
                 "run_recommend", "bisect_capacity", "load_device", "load_cluster", "load_model"):
        assert name in names
        assert getattr(moesim, name).__doc__, name


def test_a_mapping_is_a_config(toy_config):
    cfg = copy.deepcopy(toy_config)
    base = DATA / "toy"
    sc = moesim.load_scenario(cfg, ["workload.kv_len=199"], base_dir=base)
    assert sc.config.workload.kv_len == 199 and cfg["workload"]["kv_len"] == 99  # the dict is not changed
    direct = moesim.simulate(sc)
    from_path = moesim.simulate(moesim.load_scenario(base / "toy-scenario.yaml", ["workload.kv_len=199"]))
    assert direct.summary["step_latency_s"] == from_path.summary["step_latency_s"]
