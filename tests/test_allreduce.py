"""All-reduce algorithms of TP and MoE-TP groups (issue 26): vLLM's choice by message size, the
bytes each algorithm moves, and the engine's all-reduce time against a hand calculation."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from moesim.simulator.allreduce import (AUTO, NCCL, NCCL_RING, ONE_SHOT, ONE_SHOT_ALWAYS, TWO_SHOT,
                                        TWO_SHOT_ALWAYS, GroupAllReduce, vllm_choice)
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario

from conftest import toy_file

KIB = 1024


@pytest.mark.parametrize("n,size,one_node,want", [
    (8, 255 * KIB, True, ONE_SHOT), (8, 256 * KIB, True, TWO_SHOT), (8, 8 * 1024 * KIB - 1, True, TWO_SHOT),
    (8, 8 * 1024 * KIB, True, NCCL_RING), (4, 511 * KIB, True, ONE_SHOT), (4, 512 * KIB, True, TWO_SHOT),
    (2, 4 * 1024 * KIB, True, ONE_SHOT), (8, 8 * KIB, False, NCCL_RING), (16, 8 * KIB, True, NCCL_RING)])
def test_auto_picks_what_vllms_custom_all_reduce_runs(n, size, one_node, want):
    assert vllm_choice(size, n, one_node) is want


def test_each_algorithm_moves_its_bytes_and_adds_its_rounds():
    """Four ranks, a 1 MiB message (ring form: 1.5 MiB per rank): the ring sends it to the next rank
    only, one-shot the whole message to every peer, two-shot a half (2 S / n) to every peer."""
    S = 1024 * KIB
    ring_bytes = 2 * 3 / 4 * S
    hop = 2e-6
    ring, added, name = GroupAllReduce(NCCL, 4, 4, hop, True).terms(ring_bytes)
    assert name == "nccl" and added == pytest.approx(5 * hop)
    assert ring[0, 1] == ring_bytes and ring[3, 0] == ring_bytes and ring.sum() == 4 * ring_bytes
    one, added, _ = GroupAllReduce(ONE_SHOT_ALWAYS, 4, 4, hop, True).terms(ring_bytes)
    assert added == pytest.approx(2 * hop)
    np.testing.assert_allclose(one, S * (1 - np.eye(4)))
    two, added, _ = GroupAllReduce(TWO_SHOT_ALWAYS, 4, 4, hop, True).terms(ring_bytes)
    assert added == pytest.approx(3 * hop)
    np.testing.assert_allclose(two, S / 2 * (1 - np.eye(4)))
    groups, _, _ = GroupAllReduce(ONE_SHOT_ALWAYS, 8, 4, hop, True).terms(ring_bytes)
    assert groups[:4, 4:].sum() == 0 and groups[4:, :4].sum() == 0  # two groups of four, apart
    assert GroupAllReduce(AUTO, 4, 4, hop, True).terms(ring_bytes)[2] == "two_shot"


def _toy_tp2(tmp_path, toy_config, algorithm: str):
    cfg = copy.deepcopy(toy_config)
    cfg["parallelism"] = {"ep": 2, "tp": 2, "dp": 1}
    cfg["workload"]["routing"] = {"generator": "uniform"}
    cfg["workload"]["steps"] = 2
    cfg["policies"] = {"tp_allreduce": algorithm}
    tmp_path.mkdir(parents=True, exist_ok=True)
    return simulate(load_scenario(toy_file(tmp_path, cfg)))


def test_one_shot_and_the_ring_of_two_ranks_differ_by_one_round(tmp_path, toy_config):
    """Two ranks move the same bytes under both (the ring's 2 (n-1)/n x S = S to the one peer), so
    the all-reduce takes exactly one path latency longer under one-shot's two barriers than under
    the ring's one extra step (hand calculation)."""
    ring, one = (_toy_tp2(tmp_path / a, toy_config, a) for a in ("nccl", "one_shot"))
    hop = ring.scenario.routes.pair_latency[0, 1]
    spans = [r.phases[r.phases.phase == "tp_allreduce"].set_index(["step", "layer", "device"]).duration_s
             for r in (ring, one)]
    np.testing.assert_allclose((spans[1] - spans[0]).to_numpy(), hop, rtol=1e-9)
