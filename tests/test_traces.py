"""Routing traces: lossless round trip, dump formats, clear errors, streaming, trace-faithful simulation."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from moesim.errors import ConfigError, TraceError
from moesim.simulator.scenario import load_scenario
from moesim.simulator.roofline import scenario_plan
from moesim.workloads import load_model
from moesim.workloads.synthetic_routing import RoutingModelConfig
from moesim.workloads.trace_format import StepRows, TraceMeta, write_trace
from moesim.workloads.trace_loaders import logits_to_topk
from moesim.workloads.trace_reader import open_trace
from moesim.workloads.trace_synth import synthesize_trace

from conftest import example_config, write_config

MIXTRAL = load_model("Mixtral-8x7B")
SKEWED = RoutingModelConfig.model_validate(
    {"popularity": {"kind": "zipf", "alpha": 1.0}, "affinity": 0.6, "locality": 0.2, "batch_concentration": 200}
)


def small_trace(path, steps=3, tokens=(5, 7), weights=True, seed=0):
    """Hand-built trace of Mixtral shape (32 MoE layers, 8 experts, top-2) with random rows."""
    rng = np.random.default_rng(seed)
    L, T = 32, sum(tokens)
    meta = TraceMeta(num_moe_layers=L, num_experts=8, top_k=2, num_sources=len(tokens), has_weights=weights,
                     model="Mixtral-8x7B")
    rows = []
    for s in range(steps):
        experts = np.argsort(rng.random((L * T, 8)), axis=1)[:, :2]
        rows.append(StepRows(step=10 * s, token=np.tile(np.arange(T), L), layer=np.repeat(np.arange(L), T),
                             source=np.tile(np.repeat(np.arange(len(tokens)), tokens), L), experts=experts,
                             weights=rng.random((L * T, 2)).astype(np.float32) if weights else None))
    write_trace(path, meta, rows)
    return rows


def test_parquet_round_trip_is_lossless(tmp_path):
    rows = small_trace(tmp_path / "t.parquet")
    trace = open_trace(tmp_path / "t.parquet", MIXTRAL)
    assert trace.meta.num_sources == 2 and trace.meta.has_weights
    back = list(trace.steps())
    assert [r.step for r in back] == [0, 10, 20]
    for a, b in zip(rows, back):
        for name in ("token", "source", "layer", "experts", "weights"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    write_trace(tmp_path / "again.parquet", trace.meta, back)
    assert pq.read_table(tmp_path / "t.parquet").equals(pq.read_table(tmp_path / "again.parquet"))


def test_streaming_in_small_batches_gives_the_same_steps(tmp_path):
    small_trace(tmp_path / "t.parquet", steps=4)
    whole = list(open_trace(tmp_path / "t.parquet", MIXTRAL).steps())
    pieces = list(open_trace(tmp_path / "t.parquet", MIXTRAL, batch_rows=37).steps())
    assert len(pieces) == 4
    for a, b in zip(whole, pieces):
        assert np.array_equal(a.experts, b.experts) and a.first_row == b.first_row


def test_router_logits_become_top_k_with_softmax_weights(tmp_path):
    logits = np.random.default_rng(1).normal(size=(32, 6, 8))
    np.savez(tmp_path / "d.npz", router_logits=logits, source=np.array([0, 0, 1, 1, 2, 2]))
    step = next(open_trace(tmp_path / "d.npz", MIXTRAL).steps())
    first = step.experts[(step.layer == 3) & (step.token == 4)][0]
    assert set(first) == set(np.argsort(-logits[3, 4])[:2])
    p = np.exp(logits[3, 4]) / np.exp(logits[3, 4]).sum()
    assert step.weights[(step.layer == 3) & (step.token == 4)][0] == pytest.approx(np.sort(p)[::-1][:2], rel=1e-6)
    ids, _ = logits_to_topk(np.array([[1.0, 3.0, 3.0, 0.0]]), 2)
    assert ids.tolist() == [[1, 2]]  # ties go to the lower id


def test_dense_npz_and_jsonl_give_the_same_trace(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.argsort(rng.random((2, 32, 3, 8)), axis=-1)[..., :2]  # (steps, layers, tokens, k)
    np.savez(tmp_path / "d.npz", topk_ids=ids, source=np.array([1, 0, 1]))
    with open(tmp_path / "d.jsonl", "w") as fh:
        for s in range(2):
            for t in range(3):
                fh.write(json.dumps({"step": s, "token": t, "source": [1, 0, 1][t],
                                     "experts": ids[s, :, t].tolist()}) + "\n")
    a = list(open_trace(tmp_path / "d.npz", MIXTRAL).steps())
    b = list(open_trace(tmp_path / "d.jsonl", MIXTRAL).steps())
    for x, y in zip(a, b):
        assert np.array_equal(x.counts(32, 2, 8), y.counts(32, 2, 8))


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r.experts.__setitem__((40, 1), 9), "expert id out of range [0, 8)"),
    (lambda r: r.experts.__setitem__((40, 1), r.experts[40, 0]), "same expert appears twice"),
    (lambda r: r.layer.__setitem__(40, 32), "moe_layer out of range"),
    (lambda r: r.token.__setitem__(40, r.token[41]), "appears twice at this layer"),
])
def test_a_corrupt_row_is_named_by_file_row_and_layer(tmp_path, corrupt, message):
    rows = small_trace(tmp_path / "ok.parquet", steps=2)
    corrupt(rows[1])
    meta = open_trace(tmp_path / "ok.parquet", MIXTRAL).meta
    write_trace(tmp_path / "bad.parquet", meta, rows)
    with pytest.raises(TraceError) as err:
        list(open_trace(tmp_path / "bad.parquet", MIXTRAL).steps())
    text = str(err.value)
    assert message in text and "bad.parquet" in text
    if "moe_layer out" not in message:
        assert f"row {rows[0].num_rows + 40}" in text and "step 10" in text


def test_mismatched_model_and_unsorted_steps_and_garbage_are_clear(tmp_path):
    small_trace(tmp_path / "t.parquet")
    with pytest.raises(TraceError, match="num_moe_layers=32 but model DeepSeek-V3 has 58"):
        open_trace(tmp_path / "t.parquet", load_model("DeepSeek-V3"))
    table = pq.read_table(tmp_path / "t.parquet")
    pq.write_table(table.take(np.argsort(-table.column("step").to_numpy(), kind="stable")), tmp_path / "u.parquet")
    with pytest.raises(TraceError, match="not sorted by step"):
        list(open_trace(tmp_path / "u.parquet", MIXTRAL).steps())
    from moesim.cli import main

    assert main(["trace", "convert", str(tmp_path / "u.parquet"), str(tmp_path / "s.parquet"), "--sort"]) == 0
    assert [r.step for r in open_trace(tmp_path / "s.parquet", MIXTRAL).steps()] == [0, 10, 20]
    pq.write_table(table.drop(["moe_layer"]), tmp_path / "m.parquet")
    with pytest.raises(TraceError, match="missing column 'moe_layer'"):
        open_trace(tmp_path / "m.parquet", MIXTRAL)
    (tmp_path / "g.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TraceError, match="not a readable Parquet file"):
        open_trace(tmp_path / "g.parquet", MIXTRAL)
    (tmp_path / "b.jsonl").write_text('{"experts": [[1, 2]]}\n{"experts": [[1, 2\n')
    with pytest.raises(TraceError, match="line 2"):
        open_trace(tmp_path / "b.jsonl", MIXTRAL)


def test_trace_without_metadata_is_checked_against_the_model(tmp_path):
    small_trace(tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet").replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "plain.parquet")
    trace = open_trace(tmp_path / "plain.parquet", MIXTRAL)
    assert (trace.meta.num_experts, trace.meta.top_k, trace.meta.num_sources) == (8, 2, 2)
    assert len(list(trace.steps())) == 3


def direct_traffic(path, placement_devices):
    """(dispatch[l, src, dst], load[l, e]) per step straight from the Parquet file with pandas."""
    df = pd.read_parquet(path)
    long = df.melt(id_vars=["step", "source", "moe_layer"], value_vars=["expert_0", "expert_1"], value_name="expert")
    long["dst"] = placement_devices[long["expert"]]
    out = {}
    for step, part in long.groupby("step"):
        dispatch = np.zeros((32, 8, 8))
        g = part.groupby(["moe_layer", "source", "dst"]).size()
        dispatch[tuple(np.array(g.index.tolist()).T)] = g.to_numpy()
        load = np.zeros((32, 8))
        g = part.groupby(["moe_layer", "expert"]).size()
        load[tuple(np.array(g.index.tolist()).T)] = g.to_numpy()
        out[step] = (dispatch, load)
    return out


def test_simulation_uses_the_traces_actual_routing(tmp_path):
    path = synthesize_trace(tmp_path / "trace.parquet", SKEWED, 32, 8, 2, [16] * 8, steps=3, seed=5,
                            model_name="Mixtral-8x7B")
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["routing"] = {"generator": "trace", "trace": "trace.parquet"}
    cfg["workload"]["steps"] = 3
    del cfg["workload"]["batch_size"]
    sc = load_scenario(write_config(tmp_path, cfg))
    assert sc.moe_tokens.tolist() == [16] * 8  # sized from the trace
    expected = direct_traffic(path, sc.placement.slot_device[0])
    token_bytes = sc.model.hidden_size * 2  # bf16 dispatch
    for step in range(3):
        plan = scenario_plan(sc, step)
        dispatch, load = expected[step]
        assert np.array_equal(plan.dispatch / token_bytes, dispatch)
        assert np.array_equal(plan.expert_tokens, load)
        assert plan.rows_routed.tolist() == [16 * 8 * 2] * 32


def test_simulating_past_the_end_of_a_trace_is_an_error_unless_repeated(tmp_path):
    from moesim.simulator.run import simulate

    synthesize_trace(tmp_path / "trace.parquet", SKEWED, 32, 8, 2, [4] * 8, steps=2, model_name="Mixtral-8x7B")
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["routing"] = {"generator": "trace", "trace": "trace.parquet"}
    cfg["workload"]["steps"] = 3
    with pytest.raises(ConfigError, match="3 steps asked but the trace trace.parquet has 2"):
        load_scenario(write_config(tmp_path, cfg))
    cfg["workload"]["routing"]["repeat"] = True
    assert simulate(load_scenario(write_config(tmp_path, cfg))).summary["steps"] == 3


def test_a_trace_for_another_model_is_a_config_error(tmp_path):
    synthesize_trace(tmp_path / "trace.parquet", SKEWED, 4, 8, 2, [4] * 8, steps=1)
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["routing"] = {"generator": "trace", "trace": "trace.parquet"}
    with pytest.raises(ConfigError, match="num_moe_layers=4 but model Mixtral-8x7B has 32"):
        load_scenario(write_config(tmp_path, cfg))


def test_cli_stats_fit_and_simulate_from_the_fitted_generator(tmp_path):
    from moesim.cli import main
    from moesim.simulator.run import simulate

    synthesize_trace(tmp_path / "t.parquet", SKEWED, 32, 8, 2, [8] * 8, steps=4, model_name="Mixtral-8x7B")
    assert main(["trace", "stats", str(tmp_path / "t.parquet"), "--model", "Mixtral-8x7B", "--out",
                 str(tmp_path / "stats")]) == 0
    for name in ("stats.json", "layers.csv", "pairs.csv", "load_heatmap.png", "drift.png",
                 "affinity_layer0_to_1.png"):
        assert (tmp_path / "stats" / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert summary["rows"] == 4 * 64 * 32 and summary["source"] == "measured from the trace"
    assert main(["trace", "fit", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "gen.yaml")]) == 0
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"].update(steps=2, routing={"generator": "synthetic", "synthetic": "gen.yaml"})
    result = simulate(load_scenario(write_config(tmp_path, cfg)))
    assert result.summary["routing"]["generator"] == "synthetic"
    assert result.summary["tokens"]["routed_assignments"] == 2 * 32 * 64 * 8 * 2
    assert main(["trace", "stats", str(tmp_path / "missing.parquet")]) == 2


def test_ids_must_be_integers_and_an_empty_trace_is_refused(tmp_path):
    small_trace(tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("expert_0"), "expert_0",
                                    table.column("expert_0").cast("float64")), tmp_path / "f.parquet")
    with pytest.raises(TraceError, match="column 'expert_0' must hold integers"):
        open_trace(tmp_path / "f.parquet", MIXTRAL)
    pq.write_table(table.slice(0, 0), tmp_path / "e.parquet")
    with pytest.raises(TraceError, match="no rows"):
        open_trace(tmp_path / "e.parquet", MIXTRAL)
    np.savez(tmp_path / "f.npz", topk_ids=np.full((32, 2, 2), 0.5))
    with pytest.raises(TraceError, match="integer ids"):
        open_trace(tmp_path / "f.npz", MIXTRAL)
    (tmp_path / "s.jsonl").write_text('{"step": "one", "experts": [[1, 2]]}\n')
    with pytest.raises(TraceError, match=r"line 1.*'step' must be a whole number"):
        open_trace(tmp_path / "s.jsonl", MIXTRAL)


def test_synthesizing_an_empty_trace_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--steps"):
        synthesize_trace(tmp_path / "t.parquet", SKEWED, 32, 8, 2, [4, 4], 0)
    with pytest.raises(ConfigError, match="--sources"):
        synthesize_trace(tmp_path / "t.parquet", SKEWED, 32, 8, 2, [], 1)
    with pytest.raises(ConfigError, match="--tokens"):
        synthesize_trace(tmp_path / "t.parquet", SKEWED, 32, 8, 2, [4, 0], 1)
    assert not (tmp_path / "t.parquet").exists()
