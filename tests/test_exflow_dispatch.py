"""ExFlow dispatch (simulator/dispatch/token_stays.py): a token stays on its top-1 expert's device
between MoE layers. Hand-calculated traffic, conservation of (token, destination) pairs, zero
movement under perfect affinity, the error without per-token ids, compute following the tokens,
combines that move nothing costing nothing, and end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from moesim.errors import ConfigError
from moesim.simulator.compose import pipeline_for
from moesim.simulator.dispatch import DispatchLayout, TokenIds
from moesim.simulator.dispatch.dedup import Dedup
from moesim.simulator.dispatch.token_stays import TokenStays
from moesim.simulator.roofline import scenario_plan
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.simulator.step_plan import follow_residency

from conftest import toy_file
from test_dispatch_algorithms import two_node_config


def layout(n: int, ep: int | None = None, dispatch_bytes: float = 10.0, combine_bytes: float = 100.0):
    return DispatchLayout(n, ep or n, np.zeros(n, dtype=int), np.arange(n), dispatch_bytes, combine_bytes)


def run(ids: TokenIds, slot_device: np.ndarray, lay: DispatchLayout, kv=()):
    n = lay.num_devices
    return TokenStays(tuple(kv))(np.zeros((len(ids.token_experts), n, n)), None, slot_device,
                                 np.bincount(ids.token_source, minlength=n), lay, ids)


def test_hand_calculation_two_devices_top1():
    """2 devices, 2 experts (expert e on device e), 2 MoE layers, 4 tokens from [d0, d0, d0, d1].
    Layer 0: experts [0, 1, 1, 1]: t1, t2 go d0 -> d1 and stay there; no combine leaves a device.
    Layer 1 (the last): experts [0, 0, 1, 0] from cur [0, 1, 1, 1]: t1, t3 go d1 -> d0; combine
    returns every token to its source: t2 d1 -> d0, t3 d0 -> d1."""
    ids = TokenIds([np.array([[0], [1], [1], [1]]), np.array([[0], [0], [1], [0]])], np.array([0, 0, 0, 1]))
    slot_device = np.array([[0, 1], [0, 1]])
    tr = run(ids, slot_device, layout(2), kv=(0.0, 7.0))
    np.testing.assert_array_equal(tr.distinct[0], [[1, 2], [0, 1]])
    np.testing.assert_array_equal(tr.distinct[1], [[1, 0], [2, 1]])
    np.testing.assert_array_equal(tr.residency, [[3, 1], [1, 3]])
    # dispatch: 10 B a token copy; layer 1 adds each resident token's 7 B of KV to the other device
    np.testing.assert_array_equal(tr.dispatch[0][0], [[10, 20], [0, 10]])
    np.testing.assert_array_equal(tr.dispatch[0][1], [[10, 0 + 1 * 7], [20 + 3 * 7, 10]])
    np.testing.assert_array_equal(tr.combine[0][0], [[100, 0], [0, 300]])  # local only
    np.testing.assert_array_equal(tr.combine[0][1], [[200, 100], [100, 0]])
    assert tr.combine_skipped.tolist() == [True, False]
    # dedup of the same ids: the token goes back home after every layer (two all-to-alls a layer)
    dd = Dedup()(np.zeros((2, 2, 2)), np.zeros((1, 2, 2, 2)), slot_device, np.array([3, 1]), layout(2), ids)
    np.testing.assert_array_equal(dd.combine[0][0], [[100, 0], [200, 100]])
    assert dd.residency is None and dd.combine_skipped is None


def _reference(ids: TokenIds, slot_device: np.ndarray, n: int, ep: int):
    """Per-token loops: (dispatch pairs, combine pairs, residency) per layer."""
    L = len(ids.token_experts)
    cur = ids.token_source.copy()
    disp, comb, res = np.zeros((L, n, n)), np.zeros((L, n, n)), np.zeros((L, n))
    for layer, te in enumerate(ids.token_experts):
        for t, experts in enumerate(te):
            res[layer, cur[t]] += 1
            off = ids.token_source[t] // ep * ep
            devs = [off + slot_device[layer, e] for e in experts]
            home = devs[0] if layer < L - 1 else ids.token_source[t]
            for d in set(devs):
                disp[layer, cur[t], d] += 1
                comb[layer, d, home] += 1
            cur[t] = home
    return disp, comb, res


@pytest.mark.parametrize("ep", [4, 2])
def test_top2_pairs_are_conserved_and_combine_goes_to_the_new_home(ep):
    """Every (token, distinct destination) pair is local or dispatched exactly once from where the
    token is; combine rows go to the top-1 expert's device (the source at the last layer)."""
    rng = np.random.default_rng(0)
    n, E, T, L = 4, 8, 40, 3
    src = rng.integers(0, n, T)
    experts = [np.stack([rng.choice(E, 2, replace=False) for _ in range(T)]) for _ in range(L)]
    slot_device = np.stack([rng.permutation(np.repeat(np.arange(ep), E // ep)) for _ in range(L)])
    ids = TokenIds(experts, src)
    tr = run(ids, slot_device, layout(n, ep, 1.0, 1.0))
    disp, comb, res = _reference(ids, slot_device, n, ep)
    np.testing.assert_array_equal(tr.distinct, disp)
    np.testing.assert_array_equal(tr.combine[0], comb)
    np.testing.assert_array_equal(tr.residency, res)
    assert (tr.residency.sum(axis=1) == T).all()
    group = np.arange(n) // ep
    assert not tr.dispatch[0][:, group[:, None] != group[None, :]].any()  # never leaves its EP group
    # each token has 1 or 2 distinct destinations; all its pairs are counted once
    distinct = sum(len({slot_device[layer, e] for e in row}) for layer in range(L) for row in experts[layer])
    assert tr.distinct.sum() == distinct == tr.combine[0].sum()


def test_perfect_affinity_moves_nothing_between_layers():
    """Both of a token's experts in every layer sit on one device, the same device in every layer:
    only the first dispatch and the last combine move tokens (and kv_sync's all-gather)."""
    rng = np.random.default_rng(1)
    n, T, L = 4, 64, 4
    slot_device = np.stack([rng.permutation(np.repeat(np.arange(n), 2)) for _ in range(L)])  # 8 experts
    home = rng.integers(0, n, T)
    experts = [np.stack([rng.permutation(np.flatnonzero(slot_device[layer] == h)) for h in home]) for layer in range(L)]
    ids = TokenIds(experts, rng.integers(0, n, T))
    tr = run(ids, slot_device, layout(n))
    off = ~np.eye(n, dtype=bool)
    assert tr.dispatch[0][0][off].sum() > 0 and tr.combine[0][-1][off].sum() > 0
    assert not tr.dispatch[0][1:][:, off].any()
    assert not tr.combine[0][:-1][:, off].any()
    assert tr.combine_skipped.tolist() == [True] * (L - 1) + [False]
    kv = run(ids, slot_device, layout(n), kv=(0.0, 5.0, 5.0, 5.0))
    # kv_sync: only each resident token's KV entry to every other device of the group moves
    np.testing.assert_array_equal(kv.dispatch[0][1:] * off, tr.residency[1:, :, None] * 5.0 * off)


def _exflow_config(**routing) -> dict:
    cfg = two_node_config("exflow")
    cfg["workload"]["routing"] = {"generator": "zipf", "alpha": 1.0, **routing}
    cfg["workload"]["batch_size"] = 16
    return cfg


def test_a_clear_error_without_per_token_ids(tmp_path):
    for cfg, field in ((_exflow_config(), "workload.routing"),
                       (two_node_config("exflow"), "workload.routing"),  # fixed counts
                       ({**_exflow_config(per_token=True), "policies": {"dispatch": {"algorithm": "exflow"},
                                                                        "overlap": "two_batch"}}, "policies.overlap"),
                       ({**_exflow_config(per_token=True), "policies": {"dispatch": {"algorithm": "exflow"},
                                                                        "capacity_factor": 1.0, "overflow": "drop"}},
                        "policies.overflow")):
        with pytest.raises(ConfigError, match="policies.dispatch.algorithm: exflow") as err:
            load_scenario(toy_file(tmp_path, cfg))
        assert err.value.field == field and "per_token: true" in str(err.value)
    with pytest.raises(ValueError, match="policies.dispatch.algorithm: exflow"):
        TokenStays()(np.zeros((1, 2, 2)), None, np.array([[0, 1]]), np.array([1, 1]), layout(2), None)


def test_a_swapped_placement_with_replicas_is_refused(tmp_path):
    """A study may swap the placement after the config was checked: the pipeline checks again."""
    from dataclasses import replace

    from moesim.simulator.compose import overlap_schedule
    from moesim.simulator.dispatch.token_stays import exflow_problem

    sc = load_scenario(toy_file(tmp_path, _exflow_config(per_token=True)))
    pl = sc.placement
    replicas = replace(pl, slot_expert=np.concatenate([pl.slot_expert, pl.slot_expert[:, :1]], axis=1),
                       slot_device=np.concatenate([pl.slot_device, (pl.slot_device[:, :1] + 1) % 4], axis=1),
                       slot_share=np.concatenate([pl.slot_share, pl.slot_share[:, :1]], axis=1) *
                       np.where(np.arange(pl.slot_expert.shape[1] + 1) % pl.slot_expert.shape[1] == 0, 0.5, 1.0))
    assert exflow_problem(replace(sc, placement=replicas), overlap_schedule(sc))[0] == "placement"
    with pytest.raises(ConfigError, match="redundant expert copies"):
        pipeline_for(replace(sc, placement=replicas))


def test_compute_follows_the_tokens():
    """Layers 0..5, MoE layers [1, 3, 4]: layers 0-1 at the sources, 2-3 at residency[1], 4 at
    residency[2], 5 at the sources again; a device with no own tokens takes the layer's mean."""
    L = 6
    tokens = np.array([4, 4, 0])
    times = np.array([[8.0, 8.0, 0.0]] * L) + np.arange(L)[:, None] * np.array([4.0, 4.0, 0.0])  # 2+l per token
    residency = np.array([[4, 4, 0], [2, 2, 4], [8, 0, 0]])
    out = follow_residency(times, tokens, residency, np.array([1, 3, 4]))
    per_token = (8.0 + 4.0 * np.arange(L)) / 4
    np.testing.assert_allclose(out[[0, 1, 5]], times[[0, 1, 5]])
    np.testing.assert_allclose(out[2], per_token[2] * np.array([2, 2, 4]))
    np.testing.assert_allclose(out[3], per_token[3] * np.array([2, 2, 4]))
    np.testing.assert_allclose(out[4], per_token[4] * np.array([8, 0, 0]))
    np.testing.assert_allclose(out.sum(axis=1), times.sum(axis=1))  # equal time per token: totals conserved


def test_plan_residency_and_conserved_attention(tmp_path):
    sc = load_scenario(toy_file(tmp_path, _exflow_config(per_token=True)))
    plan = scenario_plan(sc, 0)
    res = plan.traffic.residency
    assert res.shape == (2, 4) and (res.sum(axis=1) == sc.moe_tokens.sum()).all()
    np.testing.assert_array_equal(res[0], sc.moe_tokens)
    base = scenario_plan(load_scenario(toy_file(tmp_path, two_node_config("dedup") | {
        "workload": _exflow_config(per_token=True)["workload"]})), 0)
    np.testing.assert_allclose(plan.attention.sum(axis=1), base.attention.sum(axis=1))
    np.testing.assert_allclose(plan.attention[1], base.attention[1, 0] / sc.moe_tokens[0] * res[1])
    np.testing.assert_array_equal(plan.attention[0], base.attention[0])


def test_other_algorithms_are_unchanged(tmp_path):
    """Every other algorithm leaves the new fields unset (no rescale, every combine launched); the
    step times below were simulated before exflow existed."""
    before = {"direct": 8.364937600027083e-05, "dedup": 8.16832960001562e-05, "hierarchical": 8.197001599995709e-05}
    for algorithm, latency in before.items():
        sc = load_scenario(toy_file(tmp_path, two_node_config(algorithm)))
        plan = scenario_plan(sc, 0)
        assert plan.traffic.residency is None and plan.traffic.combine_skipped is None
        assert simulate(sc).summary["step_latency_s"]["mean"] == pytest.approx(latency, rel=1e-9)


def _top1_model(tmp_path) -> None:
    model = yaml.safe_load((tmp_path / "toy-moe8.yaml").read_text())
    model["name"], model["num_layers"], model["moe"]["top_k"] = "Toy-MoE8-top1", 3, 1
    (tmp_path / "toy-top1.yaml").write_text(yaml.safe_dump(model))


def test_end_to_end_top1_skips_empty_combines(tmp_path):
    """A top-1 model under exflow: the first two layers' combines move nothing and cost nothing
    (no kernel floor), the last returns the tokens; dedup pays a combine every layer."""
    cfg = _exflow_config(per_token=True)
    toy_file(tmp_path, cfg)
    _top1_model(tmp_path)
    out = {}
    for algorithm, kv in (("exflow", "per_layer"), ("exflow", "none"), ("dedup", "per_layer")):
        cfg["model"] = "toy-top1.yaml"
        cfg["policies"]["dispatch"] = {"algorithm": algorithm, "kv_sync": kv}
        out[algorithm, kv] = simulate(toy_file(tmp_path, cfg))
    pay = {k: r.summary["all_to_all_payload_bytes"] for k, r in out.items()}
    assert pay["exflow", "none"]["combine"] < pay["dedup", "per_layer"]["combine"]
    assert pay["exflow", "per_layer"]["dispatch"] > pay["exflow", "none"]["dispatch"]
    assert pay["exflow", "per_layer"]["combine"] == pay["exflow", "none"]["combine"]
    for (algorithm, _), r in out.items():
        ph = r.phases
        waits = ph[ph.phase.isin(["combine", "straggler_wait"])].groupby("layer", observed=True).duration_s.sum()
        if algorithm == "exflow":
            assert waits[0] == 0.0 and waits[1] == 0.0 and waits[2] > 0.0  # no kernel, no floor, no wait
        else:
            assert (waits > 0).all()
    cfg["policies"]["dispatch"] = {"algorithm": "exflow"}
    sc = load_scenario(toy_file(tmp_path, cfg))
    assert scenario_plan(sc, 0).traffic.combine_skipped.tolist() == [True, True, False]


def test_top1_flow_pairs_each_tokens_home_with_its_next_experts():
    from moesim.workloads.routing import layer_pairs

    ids = [np.array([[1, 2], [3, 0]]), np.array([[0, 1], [2, 3]])]
    every = layer_pairs(ids, 4)[0]
    home = layer_pairs(ids, 4, from_top1=True)[0]
    assert every.sum() == home.sum() == 8  # k x k pairs per token either way
    expected = np.zeros((4, 4), dtype=int)
    expected[1, 0] = expected[1, 1] = expected[3, 2] = expected[3, 3] = 2  # home 1 -> {0, 1}, home 3 -> {2, 3}
    np.testing.assert_array_equal(home, expected)
    assert every[2, 0] == 1 and home[2].sum() == 0  # the second expert at l leads nowhere for exflow


def test_place_prices_exflow_moves_from_the_top1_expert(tmp_path):
    from moesim.studies.placement_inputs import problem_from_scenario

    cfg = _exflow_config(per_token=True)
    exflow = problem_from_scenario(load_scenario(toy_file(tmp_path, cfg)), steps=2)
    cfg["policies"] = {"dispatch": {"algorithm": "dedup"}}
    dedup = problem_from_scenario(load_scenario(toy_file(tmp_path, cfg)), steps=2)
    assert "top-1" in exflow.provenance["flow"] and "top-1" not in dedup.provenance["flow"]
    np.testing.assert_allclose(exflow.load, dedup.load)  # only the flow differs
    np.testing.assert_allclose(exflow.flow.sum(axis=(1, 2)), dedup.flow.sum(axis=(1, 2)))
    assert not np.allclose(exflow.flow, dedup.flow)
