"""Released plans (simulator/traffic_totals.py, `Engine._release`): once every device has left a
step, its traffic arrays are reduced to the totals the summary and tables read, its per-slot
arrays dropped and its timeline stored as arrays. The summary, the per-layer and traffic tables
and the timeline must be identical to a run that keeps every plan whole, with one micro-batch
and with two (two-batch overlap), and memory per step must fall."""

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.simulator import engine as engine_mod
from moesim.simulator.config import config_from_dict
from moesim.simulator.run import simulate
from moesim.simulator.run_tables import traffic_table
from moesim.simulator.scenario import resolve
from moesim.simulator.traffic_totals import TrafficTotals, reduce_traffic, traffic_totals

from conftest import EXAMPLES


def _run(monkeypatch, keep: int, overlap: str):
    cfg = yaml.safe_load((EXAMPLES / "mixtral-decode-8xh100.yaml").read_text())
    cfg["workload"].update(steps=14, routing={"generator": "zipf", "alpha": 1.1})
    cfg["policies"] = dict(cfg.get("policies") or {}, overlap=overlap)
    cfg["outputs"] = {"trace_steps": 0}
    monkeypatch.setattr(engine_mod, "KEEP_FULL_PLANS", keep)
    return simulate(resolve(config_from_dict(cfg, EXAMPLES)))


@pytest.mark.parametrize("overlap", ["none", "two_batch"])
def test_released_steps_give_the_whole_plans_results(monkeypatch, overlap):
    whole, released = _run(monkeypatch, 10**9, overlap), _run(monkeypatch, 0, overlap)
    assert not any(isinstance(p.traffic, TrafficTotals) for p in whole.raw.plans)
    slim = [isinstance(p.traffic, TrafficTotals) for p in released.raw.plans]
    assert sum(slim) >= 10 and not all(slim)  # the last steps are still held whole when the run ends
    assert released.summary == whole.summary
    np.testing.assert_array_equal(released.raw.start, whole.raw.start)
    np.testing.assert_array_equal(released.raw.end, whole.raw.end)
    pd.testing.assert_frame_equal(released.layers, whole.layers, check_exact=True)
    pd.testing.assert_frame_equal(traffic_table(released), traffic_table(whole), check_exact=True)


def test_totals_match_the_arrays_and_a_released_plan_says_what_to_read(monkeypatch):
    result = _run(monkeypatch, 10**9, "none")
    plan, inter = result.raw.plans[3], result.scenario.routes.pair_inter_node
    t = reduce_traffic(plan.traffic, inter)
    n = plan.dispatch.shape[1]
    off = ~np.eye(n, dtype=bool)
    assert t.off_device["combine"] == pytest.approx(plan.combine[:, off].sum(), rel=1e-12)
    assert t.inter_node["dispatch"] == pytest.approx(plan.dispatch[:, inter].sum(), rel=1e-12)
    np.testing.assert_array_equal(t.combine_senders(), plan.combine > 0)
    np.testing.assert_array_equal(t.pair_bytes["dispatch"], plan.dispatch.sum(axis=0))
    again = traffic_totals(plan, inter)  # from the arrays; a released plan's totals are returned as they are
    assert again.off_device == t.off_device and again.inter_node == t.inter_node
    released = type(plan)(**{**plan.__dict__, "traffic": t})
    assert traffic_totals(released, inter) is t
    with pytest.raises(Exception, match="reduced to its totals"):
        t.total("dispatch")


def test_micro_batch_totals_merge_to_the_totals_of_the_merged_arrays():
    """A serving iteration replayed from the iteration cache holds released plans (the cache keeps
    only totals); merging its micro-batches' totals gives what reducing their merged arrays gives:
    bytes add up (whole numbers here, so exactly) and a pair combines where any micro-batch does."""
    from moesim.simulator.compose import pipeline_for, step_source_for
    from moesim.simulator.engine import _released
    from moesim.simulator.step_plan import merge_microbatches

    cfg = yaml.safe_load((EXAMPLES / "mixtral-decode-8xh100.yaml").read_text())
    cfg["workload"].update(steps=1, routing={"generator": "zipf", "alpha": 1.1})
    cfg["policies"] = dict(cfg.get("policies") or {}, overlap="two_batch")
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    per_mb = pipeline_for(sc).step_plans(next(iter(step_source_for(sc))))
    assert len(per_mb) == 2
    inter = sc.routes.pair_inter_node
    expected = reduce_traffic(merge_microbatches(per_mb).traffic, inter)
    got = merge_microbatches([_released(p, inter) for p in per_mb])
    assert isinstance(got.traffic, TrafficTotals) and got.slot_tokens is None
    for field in ("off_device", "inter_node", "layer_bytes", "pair_bytes"):
        for role in ("dispatch", "combine"):
            np.testing.assert_array_equal(getattr(got.traffic, field)[role], getattr(expected, field)[role])
    np.testing.assert_array_equal(got.traffic.combine_senders(), expected.combine_senders())
    np.testing.assert_array_equal(got.expert, merge_microbatches(per_mb).expert)
