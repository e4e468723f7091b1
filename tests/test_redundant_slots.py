"""ep that does not divide the experts (issue 27): the placement gets redundant copies so every
device holds the same number of slots (DeepSeek's EP144: 256 experts + 32 copies, 2 per GPU),
and the run is made, not refused."""

import copy

import numpy as np
import yaml

from moesim.placement.placement import contiguous, with_redundant_slots
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario

from conftest import DATA, toy_file


def test_deepseek_ep144_layout():
    p = with_redundant_slots(contiguous(256, 144, 3))
    for layer in range(3):
        assert (np.bincount(p.slot_device[layer], minlength=144) == 2).all()  # 288 slots, 2 per GPU
        devices = p.expert_devices(layer)
        assert sum(len(d) - 1 for d in devices) == 32  # 32 redundant copies
        assert all(len(set(d)) == len(d) for d in devices)  # never two copies on one device
        shares = np.zeros(256)
        np.add.at(shares, p.slot_expert[layer], p.slot_share[layer])
        np.testing.assert_allclose(shares, 1.0)  # every expert's tokens served exactly once


def test_a_dividing_ep_is_left_as_it_is():
    base = contiguous(8, 4, 1)
    assert with_redundant_slots(base) is base


def test_a_run_with_ep_not_dividing_the_experts_conserves_tokens(tmp_path, toy_config):
    cfg = copy.deepcopy(toy_config)
    model = yaml.safe_load((DATA / "toy" / "toy-model.yaml").read_text())
    model["moe"]["num_experts"] = 6
    cfg["hardware"] = {"cluster": "toy-cluster-2x2.yaml"}
    cfg["parallelism"] = {"ep": 4, "tp": 1, "dp": 4}
    cfg["workload"]["routing"] = {"generator": "uniform"}
    path = toy_file(tmp_path, cfg)
    (tmp_path / "toy-model.yaml").write_text(yaml.safe_dump(model))
    sc = load_scenario(path)
    assert (np.bincount(sc.placement.slot_device[0], minlength=4) == 2).all()
    res = simulate(sc)
    tok = res.summary["tokens"]
    assert tok["routed_assignments"] == 4 * 4 * 1  # batch 4 on each of 4 replicas, top-1
    assert tok["computed_assignments"] == tok["routed_assignments"]  # split between copies, none lost


def test_place_fills_every_device_when_there_are_more_devices_than_experts(tmp_path):
    """Mixtral's 8 experts on 32 GPUs: the placement problem takes 24 redundant copies (one slot
    per GPU), so EPLB spreads the hot experts instead of leaving 24 GPUs idle."""
    from conftest import example_config, write_config

    from moesim.placement.methods import run_method
    from moesim.studies.placement_inputs import problem_from_scenario

    cfg = example_config("deepseek-v3-prefill-4x8-h800.yaml")
    cfg["model"] = "Mixtral-8x7B"
    cfg["parallelism"] = {"ep": 32, "tp": 1, "dp": 32}
    cfg["workload"] = {"phase": "decode", "batch_size": 16, "kv_len": 1024, "steps": 2,
                       "routing": {"generator": "zipf", "alpha": 1.2}}
    problem = problem_from_scenario(load_scenario(write_config(tmp_path, cfg)), steps=2)
    assert problem.redundant == 24 and (problem.slots == 1).all()
    placement = run_method("eplb", problem).placement
    assert (np.bincount(placement.slot_device[0], minlength=32) == 1).all()  # every GPU holds an expert
