"""Speculative decoding with multi-token prediction (simulator/speculative.py): the accepted-token count,
the verification batch, the draft passes and how they compose into the headline figures."""

import copy

import pytest

from moesim.simulator.ops import decode_keys
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.simulator.speculative import expected_accepted

from conftest import toy_file


def test_expected_accepted_tokens_hand_calculation():
    assert expected_accepted([0.8, 0.5]) == pytest.approx(1 + 0.8 + 0.8 * 0.5)
    assert expected_accepted([1.0, 1.0, 1.0]) == 4.0
    assert expected_accepted([0.0, 1.0]) == 1.0  # a rejected first draft discards the rest


def test_verification_reads_the_cache_once_for_all_queries():
    assert decode_keys(10, 1, None) == (11.0, 11.0)  # plain decode: kv_len + 1 keys
    assert decode_keys(10, 3, None) == (11 + 12 + 13, 13.0)
    assert decode_keys(10, 3, 12) == (11 + 12 + 12, 12.0)  # a sliding window caps what each query sees


def _run(tmp_path, toy_config, name, speculative=None, steps=1):
    cfg = copy.deepcopy(toy_config)
    cfg["workload"]["routing"] = {"generator": "uniform"}
    cfg["workload"]["steps"] = steps
    cfg["outputs"] = {"trace_steps": 0}
    if speculative is not None:
        cfg["policies"] = {"speculative": speculative}
    (tmp_path / name).mkdir()
    return simulate(load_scenario(toy_file(tmp_path / name, cfg)))


def test_a_step_verifies_one_plus_draft_tokens_and_emits_the_accepted_ones(tmp_path, toy_config):
    plain = _run(tmp_path, toy_config, "plain")
    spec = _run(tmp_path, toy_config, "spec", {"draft_tokens": 2, "acceptance": [0.9, 0.5]})
    s, p = spec.summary, plain.summary
    # the verification pass routes (1 + 2) tokens per sequence through every MoE layer
    assert s["tokens"]["routed_assignments"] == 3 * p["tokens"]["routed_assignments"]
    sec = s["speculative"]
    assert sec["accepted_tokens_per_step"] == pytest.approx(1 + 0.9 + 0.45)
    assert sec["verify_step_s"] > sec["plain_step_s"]  # more tokens through the same weights
    assert sec["plain_step_s"] == pytest.approx(p["step_latency_s"]["mean"])
    assert sec["step_s"] == pytest.approx(sec["verify_step_s"] + 2 * sec["draft_pass_s"])
    assert 0 < sec["draft_pass_s"] <= sec["plain_step_s"]  # one MoE layer of a plain step (the toy has one)
    sequences = 4 * 2  # batch 4 on each of dp 2 replicas
    assert s["throughput_tokens_per_s"] == pytest.approx(sequences * sec["accepted_tokens_per_step"] / sec["step_s"])
    assert s["time_per_output_token_s"] == pytest.approx(sec["step_s"] / sec["accepted_tokens_per_step"])
    assert sec["speedup_vs_plain"] == pytest.approx(
        sec["plain_step_s"] * sec["accepted_tokens_per_step"] / sec["step_s"])


def test_speedup_grows_with_acceptance_and_is_a_loss_when_nothing_is_accepted(tmp_path, toy_config):
    speedups = [_run(tmp_path, toy_config, f"a{a}", {"draft_tokens": 1, "acceptance": a}).summary["speculative"]
                ["speedup_vs_plain"] for a in (0.0, 0.5, 1.0)]
    assert speedups[0] < 1.0  # drafts and a bigger verification for no extra token
    assert speedups[0] < speedups[1] < speedups[2]


def test_the_cache_grows_by_the_accepted_tokens_a_step(tmp_path, toy_config):
    run = _run(tmp_path, toy_config, "steps", {"draft_tokens": 1, "acceptance": 1.0}, steps=3)
    from moesim.simulator.compose import step_source_for

    kv = [inp.kv_len for inp in step_source_for(run.scenario)]
    assert kv == [99, 101, 103]  # two tokens accepted a step
    assert all(inp.seq_len == 2 for inp in step_source_for(run.scenario))
