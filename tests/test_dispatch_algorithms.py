"""Dispatch algorithms on a 2-node x 2-GPU toy cluster: hand-calculated traffic, conservation,
dedup/hierarchical never above direct, monotone in link bandwidth, and the counts-only
expectation of distinct destinations against per-token draws."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from moesim.simulator.compose import pipeline_for
from moesim.simulator.dispatch.distinct import distinct_from_tokens, expected_distinct
from moesim.simulator.roofline import scenario_plan
from moesim.simulator.run import simulate
from moesim.simulator.scenario import load_scenario
from moesim.workloads.node_limited_routing import PerTokenRouting

from conftest import toy_file

ROW = 1024 * 2  # one bf16 token row of the toy model
# experts two per device (contiguous): d0 {0,1}, d1 {2,3}, d2 {4,5}, d3 {6,7}; nodes {d0,d1}, {d2,d3}
COUNTS = [[0, 0, 0, 0, 4, 0, 4, 0],  # d0: each of its 4 tokens to experts 4 (d2) and 6 (d3): node 1 twice
          [4, 4, 0, 0, 0, 0, 0, 0],  # d1: experts 0 and 1, both on d0
          [0, 0, 0, 0, 4, 0, 4, 0],  # d2: expert 4 on itself, 6 on d3 (same node)
          [0, 0, 4, 4, 0, 0, 0, 0]]  # d3: experts 2 and 3, both on d1 (node 0, same local rank)


def two_node_config(algorithm: str = "direct", overlap: str = "none", counts=COUNTS) -> dict:
    return {
        "name": f"toy-2x2-{algorithm}", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
        "parallelism": {"ep": 4, "tp": 1, "dp": 4},
        "workload": {"phase": "decode", "batch_size": 4, "kv_len": 99, "steps": 2,
                     "routing": {"generator": "fixed", "counts": counts}},
        "policies": {"dispatch": {"algorithm": algorithm}, "overlap": overlap},
        "outputs": {"trace_steps": 0},
    }


def plan_of(tmp_path, cfg: dict):
    sc = load_scenario(toy_file(tmp_path, cfg))
    return sc, scenario_plan(sc, 0)


# hand-calculated token rows of MoE layer 0, stage by stage (diagonal = stays on the device)
DIRECT = {(0, 2): 4, (0, 3): 4, (1, 0): 8, (2, 2): 4, (2, 3): 4, (3, 1): 8}
DEDUP = {(0, 2): 4, (0, 3): 4, (1, 0): 4, (2, 2): 4, (2, 3): 4, (3, 1): 4}
HIER_NET = {(0, 2): 4, (1, 0): 4, (2, 2): 4, (2, 3): 4, (3, 1): 4}  # d0's tokens cross once, to its peer d2
HIER_FWD = {(2, 2): 4, (2, 3): 4, (1, 1): 4}  # d2 keeps d0's tokens for expert 4, forwards them to d3 for expert 6


def _matrix(entries: dict) -> np.ndarray:
    out = np.zeros((4, 4))
    for (s, d), v in entries.items():
        out[s, d] = v
    return out


@pytest.mark.parametrize("algorithm,stages", [("direct", [DIRECT]), ("dedup", [DEDUP]),
                                              ("low_latency", [DIRECT]), ("hierarchical", [HIER_NET, HIER_FWD])])
def test_traffic_matches_hand_calculation(tmp_path, algorithm, stages):
    _, plan = plan_of(tmp_path, two_node_config(algorithm))
    assert len(plan.traffic.dispatch) == len(stages)
    for got, want in zip(plan.traffic.dispatch, stages):
        np.testing.assert_allclose(got[0] / ROW, _matrix(want), atol=1e-9)
    # combine is the reverse path: the same stages transposed, in reverse order
    for got, want in zip(plan.traffic.combine, reversed(stages)):
        np.testing.assert_allclose(got[0] / ROW, _matrix(want).T, atol=1e-9)
    assert plan.traffic.kernel_latency is None  # every kernel takes the cluster profile's floor (comm_cost)


def test_hierarchical_halves_the_network_bytes_of_this_routing(tmp_path):
    inter = {}
    for algorithm in ("direct", "dedup", "hierarchical"):
        sc, plan = plan_of(tmp_path, two_node_config(algorithm))
        inter[algorithm] = float(plan.dispatch[0][sc.routes.pair_inter_node].sum() / ROW)
    assert inter == {"direct": 16.0, "dedup": 12.0, "hierarchical": 8.0}


def _zipf_config(algorithm: str, overlap: str = "none") -> dict:
    cfg = two_node_config(algorithm, overlap)
    cfg["workload"]["routing"] = {"generator": "zipf", "alpha": 1.2}
    cfg["workload"]["batch_size"] = 16
    return cfg


@pytest.mark.parametrize("algorithm", ["direct", "dedup", "hierarchical", "low_latency", "all_gather"])
def test_rows_are_conserved_and_combine_returns_what_dispatch_sent(tmp_path, algorithm):
    sc, plan = plan_of(tmp_path, _zipf_config(algorithm))
    assert np.allclose(plan.rows_computed.sum(axis=1) + plan.rows_dropped, plan.rows_routed)
    sent = plan.dispatch.sum(axis=2)  # what leaves each device (bf16 both ways)
    back = plan.combine.sum(axis=1)  # what returns to it
    np.testing.assert_allclose(sent, back)
    inbound = plan.dispatch.sum(axis=1)
    np.testing.assert_allclose(inbound.sum(), sent.sum())  # what arrives equals what leaves


def test_dedup_and_hierarchical_never_move_more_than_direct(tmp_path):
    """Dedup never moves more bytes than direct on any pair; hierarchical never more across nodes
    than dedup (it may add NVLink forwarding: a token for one expert on a non-peer GPU crosses
    the network once and NVLink once, where direct sends it once)."""
    plans = {a: plan_of(tmp_path, _zipf_config(a)) for a in ("direct", "dedup", "hierarchical")}
    sc = plans["direct"][0]
    inter = sc.routes.pair_inter_node
    direct = plans["direct"][1].dispatch
    dedup = plans["dedup"][1].dispatch
    assert (dedup <= direct * (1 + 1e-12) + 1e-9).all()
    assert dedup.sum() < direct.sum()  # top-2 of 8 over 4 devices: some tokens share a device
    hier_net = plans["hierarchical"][1].traffic.dispatch[0]
    assert hier_net[:, inter].sum() <= dedup[:, inter].sum() * (1 + 1e-12) <= direct[:, inter].sum() * (1 + 1e-12)


@pytest.mark.parametrize("algorithm", ["direct", "dedup", "hierarchical", "low_latency", "all_gather"])
@pytest.mark.parametrize("overlap", ["none", "two_batch", "shortcut"])
def test_more_link_bandwidth_never_slows_a_step(tmp_path, algorithm, overlap):
    latency = []
    for scale in (1.0, 4.0):
        cfg = _zipf_config(algorithm, overlap)
        cfg["hardware"]["scale"] = {"link_bandwidth": scale}
        latency.append(simulate(toy_file(tmp_path, cfg)).summary["step_latency_s"]["mean"])
    assert latency[1] <= latency[0] * (1 + 1e-12)


def test_hierarchical_is_faster_than_direct_when_the_network_is_the_bottleneck(tmp_path):
    t = {a: simulate(toy_file(tmp_path, two_node_config(a))).summary["step_latency_s"]["mean"]
         for a in ("direct", "hierarchical")}
    assert t["hierarchical"] < t["direct"]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_counts_only_expectation_matches_per_token_draws(alpha):
    """Generators that emit counts get the expected distinct (token, device) pairs: within 5% of
    top-k draws without replacement (the expectation assumes independent slots; see dedup.py)."""
    E, k, devices, tokens = 64, 8, 8, 256
    pop = np.arange(1, E + 1, dtype=float) ** -alpha
    routing = PerTokenRouting(E, k, (pop / pop.sum())[None, :], seed=1)
    group = np.arange(E) // (E // devices)
    exact, expected = 0.0, 0.0
    for step in range(20):
        r = routing.step(step, np.array([tokens]), 1)
        exact += distinct_from_tokens(r.token_experts[0], r.token_source, group, 1, devices).sum()
        expected += expected_distinct(r.counts[0].astype(float), np.array([tokens]), group, devices).sum()
    assert expected <= exact  # a token's k experts are distinct: it misses a device less often
    assert expected == pytest.approx(exact, rel=0.05)


def test_local_replica_choice_keeps_tokens_on_their_node(tmp_path):
    """With a replica of every expert on each node, local choice sends nothing across nodes."""
    cfg = _zipf_config("direct")
    placement = tmp_path / "replicated.yaml"
    # 8 experts, each on one device of node 0 and one of node 1
    layers = [[[(e % 4) // 2, 2 + (e % 4) // 2] for e in range(8)] for _ in range(2)]
    import yaml
    placement.write_text(yaml.safe_dump({"num_experts": 8, "num_devices": 4, "layers": layers}))
    cfg["placement"] = {"file": str(placement)}
    inter = {}
    for choice in ("global", "local"):
        c = copy.deepcopy(cfg)
        c["policies"]["dispatch"]["replica_choice"] = choice
        sc, plan = plan_of(tmp_path, c)
        inter[choice] = float(plan.dispatch[:, sc.routes.pair_inter_node].sum())
    assert inter["local"] == 0.0 < inter["global"]


def test_pipeline_stages_are_plain_objects(tmp_path):
    sc = load_scenario(toy_file(tmp_path, two_node_config("hierarchical")))
    pipe = pipeline_for(sc)
    assert pipe.dispatch.name == "hierarchical"
    assert pipe.capacity.capacity(100) is None


def _per_token_config(algorithm: str, **routing) -> dict:
    cfg = two_node_config(algorithm)
    cfg["workload"]["routing"] = {"generator": "zipf", "alpha": 1.0, **routing}
    cfg["workload"]["batch_size"] = 16
    return cfg


@pytest.mark.parametrize("algorithm", ["dedup", "hierarchical"])
def test_per_token_routing_gives_exact_distinct_pairs(tmp_path, algorithm):
    """With per-token ids the dedup family sends exactly one row per distinct (token, device) and
    (token, node) pair, counted here from the drawn ids by hand."""
    sc, plan = plan_of(tmp_path, _per_token_config(algorithm, per_token=True))
    routed = sc.routing.step(0, sc.moe_tokens, len(sc.model.moe_layers))
    device_of = sc.placement.slot_device  # contiguous: slot j is expert j
    node_of = sc.machine.node_of
    for layer, te in enumerate(routed.token_experts):
        per_device = np.zeros((4, 4))
        per_node = np.zeros((4, 2))
        for tok, src in zip(te, routed.token_source):
            for d in set(device_of[layer][tok].tolist()):
                per_device[src, d] += 1
            for k in set(node_of[device_of[layer][tok]].tolist()):
                per_node[src, k] += 1
        np.testing.assert_array_equal(plan.traffic.distinct[layer], per_device)
        if algorithm == "hierarchical":
            first = plan.traffic.dispatch[0][layer] / ROW
            inter = sc.routes.pair_inter_node
            np.testing.assert_allclose(np.where(inter, first, 0).sum(axis=1), per_node[np.arange(4), 1 - node_of])


def test_node_limited_routing_keeps_each_token_within_max_nodes(tmp_path):
    sc, plan = plan_of(tmp_path, _per_token_config("hierarchical", max_nodes=1))
    routed = sc.routing.step(0, sc.moe_tokens, len(sc.model.moe_layers))
    node_of_expert = sc.machine.node_of[sc.placement.slot_device]  # (L, E)
    for layer, te in enumerate(routed.token_experts):
        assert (np.ptp(node_of_expert[layer][te], axis=1) == 0).all()  # one node per token
    # M = 1 here: a token crosses the network at most once, to its one node's peer
    first = plan.traffic.dispatch[0] / ROW
    assert (first[:, sc.routes.pair_inter_node].sum() <= sc.moe_tokens.sum() * len(sc.model.moe_layers))
    _, free = plan_of(tmp_path, _per_token_config("hierarchical", per_token=True))
    inter = sc.routes.pair_inter_node
    assert plan.dispatch[:, inter].sum() < free.dispatch[:, inter].sum()


def test_two_batch_micro_batches_keep_their_tokens_ids(tmp_path):
    """Two-batch overlap splits a step routed token by token into micro-batches that take each
    source's tokens with their ids: their distinct pairs add up to the whole step's exact count
    (node limit kept), where splitting counts would have fallen back to the independence estimate."""
    from moesim.simulator.step_source import FixedBatch
    from moesim.simulator.compose import step_source_for

    cfg = _per_token_config("hierarchical", max_nodes=1)
    cfg["policies"]["overlap"] = "two_batch"
    sc = load_scenario(toy_file(tmp_path, cfg))
    pipe = pipeline_for(sc)
    inp = next(iter(step_source_for(sc)))
    plans = pipe.step_plans(inp)
    assert len(plans) == 2 and all(p.moe_tokens.sum() > 0 for p in (pl.inputs for pl in plans))
    whole = pipe.routing.step(inp.step, np.asarray(inp.moe_tokens), len(sc.model.moe_layers))
    device_of = sc.placement.slot_device
    for layer, te in enumerate(whole.token_experts):
        exact = distinct_from_tokens(te, whole.token_source, device_of[layer], 4, 4)
        np.testing.assert_array_equal(sum(p.traffic.distinct[layer] for p in plans), exact)
    np.testing.assert_array_equal(sum(p.rows_computed for p in plans), pipe.plan(inp).rows_computed)
    assert isinstance(step_source_for(sc), FixedBatch)


def test_per_token_options_apply_to_popularity_generators_only(tmp_path):
    from moesim.errors import ConfigError

    cfg = two_node_config("hierarchical")
    cfg["workload"]["routing"]["max_nodes"] = 1
    with pytest.raises(ConfigError, match="routing.max_nodes"):
        load_scenario(toy_file(tmp_path, cfg))
    cfg = _per_token_config("hierarchical", max_nodes=1)
    cfg["parallelism"] = {"ep": 4, "tp": 1, "dp": 4}
    cfg["workload"]["routing"]["generator"] = "uniform"
    sc = load_scenario(toy_file(tmp_path, cfg))
    assert sc.routing.max_nodes == 1 and sc.routing.expert_node.tolist()[0] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_placement_token_cost_prices_the_chosen_dispatch(tmp_path):
    """The ILP's per-row cost follows the dispatch: dedup never above direct, hierarchical's rows to
    the peer cheaper (once per node over the network), rows beyond the peer adding the NVLink
    hop, same-node rows deduplicated; checked by hand on the 2x2 toy (E=8, k=2, 2 experts a device, 4 a node)."""
    from math import comb

    from moesim.studies.placement_inputs import distinct_per_row, pair_token_cost

    cost = {a: pair_token_cost(load_scenario(toy_file(tmp_path, two_node_config(a))))
            for a in ("direct", "low_latency", "dedup", "hierarchical")}
    np.testing.assert_array_equal(cost["low_latency"], cost["direct"])
    rho_dev = (1 - comb(6, 2) / comb(8, 2)) / (2 * 2 / 8)
    rho_node = (1 - comb(4, 2) / comb(8, 2)) / (2 * 4 / 8)
    assert distinct_per_row(8, 2, 2) == pytest.approx(rho_dev) and distinct_per_row(8, 2, 4) == pytest.approx(rho_node)
    np.testing.assert_allclose(cost["dedup"], cost["direct"] * rho_dev)
    d, h = cost["direct"], cost["hierarchical"]
    assert h[0, 1] == pytest.approx(d[0, 1] * rho_dev)  # same node: NVLink, deduplicated
    assert h[0, 2] == pytest.approx(d[0, 2] * rho_node)  # the peer (same local rank) on node 1
    assert h[0, 3] == pytest.approx(d[0, 2] * rho_node + d[2, 3] * rho_dev)  # via the peer, then NVLink
    assert (cost["dedup"] <= d).all() and h[0, 2] < d[0, 2]


def test_all_gather_sends_every_token_to_every_peer_whatever_the_routing(tmp_path):
    """Megatron's allgather dispatcher by hand: each of the 4 tokens of every device goes to the 3
    other devices of the EP group; the reduce-scatter returns 4 partial rows from each peer. The
    routing (COUNTS, or zipf) changes the experts' rows, never the bytes."""
    everywhere = np.full((4, 4), 4.0) - 4.0 * np.eye(4)
    for cfg in (two_node_config("all_gather"), _zipf_config("all_gather")):
        sc, plan = plan_of(tmp_path, cfg)
        tokens = cfg["workload"]["batch_size"]
        for layer in range(plan.dispatch.shape[0]):
            np.testing.assert_allclose(plan.dispatch[layer] / ROW, everywhere * tokens / 4)
            np.testing.assert_allclose(plan.combine[layer] / ROW, everywhere.T * tokens / 4)
    direct = plan_of(tmp_path, two_node_config("direct"))[1]
    gathered = plan_of(tmp_path, two_node_config("all_gather"))[1]
    np.testing.assert_allclose(gathered.rows_computed, direct.rows_computed)  # the experts' work is the routing's


def test_all_gather_needs_no_placement_to_price(tmp_path):
    """The placement ILP pays nothing for a row under all-gather: no placement moves a byte."""
    from moesim.studies.placement_inputs import pair_token_cost

    sc = load_scenario(toy_file(tmp_path, two_node_config("all_gather")))
    assert not pair_token_cost(sc).any()


# ---- auto: the kernels by phase (issue 26) ---------------------------------------------------

@pytest.mark.slow  # a prefill and a decode run of DeepSeek-V3 (~7 s)
def test_auto_dispatch_runs_normal_kernels_for_prefill_and_low_latency_for_decode():
    """A fixed prefill batch under auto runs exactly as hierarchical, a decode batch exactly as
    low_latency (the same timeline); in serving, an iteration with a prefill chunk anywhere runs
    the normal kernels on every rank and micro-batch, a decode-only one the low-latency kernels."""
    import copy

    from moesim.simulator.compose import engine_for
    from moesim.simulator.config import config_from_dict
    from moesim.simulator.scenario import resolve

    from conftest import EXAMPLES, example_config, shrink_serving

    for example, same in (("deepseek-v3-prefill-4x8-h800.yaml", "hierarchical"),
                          ("deepseek-v3-decode-4x8-h800.yaml", "low_latency")):
        runs = {}
        for algo in ("auto", same):
            cfg = example_config(example)
            cfg["workload"]["steps"] = 1
            cfg["policies"]["dispatch"] = {"algorithm": algo}
            runs[algo] = engine_for(resolve(config_from_dict(cfg, EXAMPLES))).run()
        np.testing.assert_array_equal(runs["auto"].end, runs[same].end)
    cfg = shrink_serving(example_config("serving-deepseek-v3-4x8-h800-deepep.yaml"), requests=8, output_tokens=6)
    cfg["policies"]["dispatch"] = {"algorithm": "auto"}
    cfg["serving"]["iteration_cache"] = False
    engine = engine_for(resolve(config_from_dict(copy.deepcopy(cfg), EXAMPLES)))
    raw = engine.run()
    for it, plans in zip(engine.source.iterations, raw.microbatch_plans):
        prefill = any(item.phase == "prefill" for batch in it.batches for item in batch)
        assert {p.traffic.kind for p in plans} == {"hierarchical" if prefill else "low_latency"}
    kinds = {p.traffic.kind for p in raw.plans}
    assert kinds == {"hierarchical", "low_latency"}
