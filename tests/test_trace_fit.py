"""Generator properties, trace statistics on hand cases, and the fit on a planted trace."""

import numpy as np
import pytest

from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting
from moesim.workloads.trace_fit import calibration_steps, fit_routing_model
from moesim.workloads.trace_reader import open_trace
from moesim.workloads.trace_stats import compute_stats, conditional_concentration, imbalance, layer_pairs, tally
from moesim.workloads.trace_synth import synthesize_trace


def model(**kw) -> RoutingModelConfig:
    return RoutingModelConfig.model_validate(kw)


def test_generator_is_deterministic_and_conserves_tokens():
    cfg = model(popularity={"kind": "dirichlet", "concentration": 0.5}, affinity=0.5, locality=0.3,
                drift={"sigma": 0.05}, batch_concentration=100)
    tokens = np.array([30, 50, 20])
    a = SyntheticRouting(cfg, 16, 4, 5, seed=3).step(7, tokens, 5)
    b = SyntheticRouting(cfg, 16, 4, 5, seed=3).step(7, tokens, 5)
    c = SyntheticRouting(cfg, 16, 4, 5, seed=4).step(7, tokens, 5)
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    assert (a.counts.sum(axis=2) == tokens * 4).all()
    for experts in a.token_experts:  # distinct top-k per token
        assert (np.sort(experts, axis=1)[:, 1:] != np.sort(experts, axis=1)[:, :-1]).all()
    direct = SyntheticRouting(model(popularity={"kind": "zipf", "alpha": 1.2}), 16, 4, 5, seed=3).step(0, tokens, 5)
    assert (direct.counts.sum(axis=2) == tokens * 4).all() and (direct.counts <= tokens[None, :, None]).all()


def test_affinity_concentrates_the_next_layer_and_keeps_popularity():
    def pairs(strength):
        gen = SyntheticRouting(model(popularity={"kind": "zipf", "alpha": 0.8}, affinity=strength), 32, 1, 2, seed=1,
                               per_token=True)
        return layer_pairs(gen.step(0, np.array([20000]), 2).token_experts, 32)[0]

    mi = [conditional_concentration(pairs(a))["mi"] for a in (0.0, 0.5, 1.0)]
    assert mi[0] < 0.01 < mi[1] < mi[2]
    # the marginal of the next layer does not depend on the affinity (the latent position stays uniform)
    assert np.abs(pairs(0.0).sum(axis=0) - pairs(1.0).sum(axis=0)).max() / 20000 < 0.02


def test_imbalance_and_concentration_match_hand_calculations():
    out = imbalance(np.array([[6, 2, 2, 2]]))
    assert out["max_over_mean"][0] == pytest.approx(2.0)
    assert out["cv"][0] == pytest.approx(np.std([6, 2, 2, 2]) / 3)
    p = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert out["entropy"][0] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    deterministic = conditional_concentration(np.diag([5, 5, 5, 5]))
    assert deterministic["top1"] == 1.0 and deterministic["mi"] == pytest.approx(1.0)
    independent = conditional_concentration(np.outer([1, 3], [2, 2]))
    assert independent["mi"] == pytest.approx(0.0, abs=1e-12) and independent["lift"] == pytest.approx(1.0)


def test_stats_of_a_trace_with_planted_affinity_see_co_location(tmp_path):
    path = synthesize_trace(tmp_path / "t.parquet", model(affinity=1.0), 4, 16, 1, [500] * 2, steps=3)
    stats = compute_stats(tally(open_trace(path)), devices=4)
    aff = stats.summary["affinity"]
    assert aff["top1_conditional"] > 0.9  # uniform popularity, u carried over: next expert nearly determined
    assert aff["colocated_best"] > 0.9 and aff["colocated_best_if_independent"] == pytest.approx(0.25, abs=0.03)
    assert stats.summary["rows"] == 3 * 1000 * 4


PLANTED = model(popularity={"kind": "zipf", "alpha": 1.0}, affinity=0.6, drift={"sigma": 0.04},
                batch_concentration=400, locality=0.3)
SHAPE = dict(num_layers=6, num_experts=32, top_k=2, tokens_per_source=[128] * 8, steps=30)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    source = compute_stats(tally(open_trace(synthesize_trace(tmp / "planted.parquet", PLANTED, **SHAPE, seed=1))))
    cfg, report = fit_routing_model(tally(open_trace(tmp / "planted.parquet")))
    again = compute_stats(tally(open_trace(synthesize_trace(tmp / "fitted.parquet", cfg, **SHAPE, seed=2))))
    return source, cfg, report, again


def test_fit_recovers_the_planted_parameters(planted):
    _, cfg, report, _ = planted
    # tolerances: the estimates are method-of-moments on 30 steps of 1024 tokens
    assert cfg.affinity == pytest.approx(0.6, abs=0.12)
    assert cfg.locality == pytest.approx(0.3, abs=0.08)
    assert cfg.drift.sigma == pytest.approx(0.04, rel=0.5)
    assert cfg.batch_concentration == pytest.approx(400, rel=0.6)
    assert report["zipf_alpha_per_layer_median"] == pytest.approx(1.0, abs=0.15)


def test_a_trace_synthesized_from_the_fit_reproduces_the_statistics(planted):
    source, _, _, again = planted
    s, a = source.summary, again.summary
    # stated tolerances (docs/routing.md, "The routing generator"): imbalance within 10 %, affinity mutual
    # information within 25 %, top-1 conditional within 0.03, drift and locality TV within 25 %
    for key in ("max_over_mean", "cv"):
        assert a["imbalance"][key] == pytest.approx(s["imbalance"][key], rel=0.10), key
    assert a["affinity"]["mutual_info"] == pytest.approx(s["affinity"]["mutual_info"], rel=0.25)
    assert a["affinity"]["top1_conditional"] == pytest.approx(s["affinity"]["top1_conditional"], abs=0.03)
    assert a["drift"]["step_to_step_tv"] == pytest.approx(s["drift"]["step_to_step_tv"], rel=0.25)
    assert a["locality"]["source_tv"] == pytest.approx(s["locality"]["source_tv"], rel=0.25)
    per_layer = again.layers["max_over_mean"] / source.layers["max_over_mean"]
    assert per_layer.between(0.8, 1.2).all()


# A per-token trace with few tokens per step: 1200 steps of 16 tokens (4 sources x 4). Strong
# affinity (uniform popularity, so a carried position lands on one fixed next expert) blurred
# by strong per-step batch variance: pooled over a few large steps that per-step variance
# couples the layers by itself, so a fit calibrated that way finds too little affinity (its
# synthesized MI came out 34 % low here, 0.062 against 0.094; now +2 %).
FEW = model(popularity={"kind": "uniform"}, affinity=0.9, drift={"sigma": 0.005}, batch_concentration=40)
FEW_SHAPE = dict(num_layers=4, num_experts=16, top_k=2, tokens_per_source=[4] * 4, steps=1200)


@pytest.fixture(scope="module")
def few_tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("few")
    source = tally(open_trace(synthesize_trace(tmp / "planted.parquet", FEW, **FEW_SHAPE, seed=1)))
    cfg, _ = fit_routing_model(source)
    again = compute_stats(tally(open_trace(synthesize_trace(tmp / "fitted.parquet", cfg, **FEW_SHAPE, seed=2))))
    return source, cfg, again


def test_the_fit_calibrates_on_the_traces_own_steps(few_tokens):
    source, _, _ = few_tokens
    steps = calibration_steps(source, seed=0)
    assert len(steps) == 1200 and all(s.sum() == 16 and s.size == 4 for s in steps)


def test_fit_keeps_affinity_on_a_trace_with_few_tokens_per_step(few_tokens):
    source, cfg, again = few_tokens
    s, a = compute_stats(source).summary["affinity"], again.summary["affinity"]
    # stated tolerances (docs/routing.md, "The routing generator"): few tokens per step, MI within 15 %,
    # top-1 conditional within 0.03 (measured over seeds: MI +2..+5 %, top-1 +0.008..+0.011)
    assert cfg.affinity == pytest.approx(0.9, abs=0.08)
    assert a["mutual_info"] == pytest.approx(s["mutual_info"], rel=0.15)
    assert a["top1_conditional"] == pytest.approx(s["top1_conditional"], abs=0.03)
