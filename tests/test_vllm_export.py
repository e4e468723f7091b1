"""A serving run's results in vLLM's serving-benchmark JSON layout (simulator/serving/vllm_export.py,
`moesim simulate SERVE.yaml --vllm-json PATH`): the layout against the field list of vLLM's source,
the values against a hand-built case, and a measured and a simulated file diffed field by field."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from moesim.cli import main
from moesim.simulator.serving.results import request_table
from moesim.simulator.serving.vllm_export import (BACKEND, NOTE_KEY, metric_keys, vllm_diff, vllm_result,
                                                  vllm_result_from_run)

from conftest import toy_file

# The keys `vllm bench serve --save-result --save-detailed --percentile-metrics ttft,tpot,itl,e2el`
# (default --metric-percentiles 99, no --metadata, no ramp-up) writes, in its order: vllm-project/vllm,
# vllm/benchmarks/serve.py at commit def9ce85ba1079af970a58ed3d42dd861ae35d58 -- `main_async` builds
# result_json (date ... max_concurrency), merges `benchmark`'s result (duration ...
# max_concurrent_requests; input_lens ... errors are kept by --save-detailed), and `process_one_metric`
# adds mean_/median_/std_/p99_{metric}_ms for each selected metric.
VLLM_SETUP = ["date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
              "request_rate", "burstiness", "max_concurrency"]
VLLM_RESULT = ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
               "request_goodput", "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
               "itls", "generated_texts", "errors", "max_output_tokens_per_s", "max_concurrent_requests"]
VLLM_METRICS = [f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
                for stat in ("mean", "median", "std", "p99")]
VLLM_FIELDS = VLLM_SETUP + VLLM_RESULT + VLLM_METRICS


def _hand() -> tuple[pd.DataFrame, dict]:
    """Five requests (prompt 100 each), the earliest a warm-up request, the last unfinished at the
    4 s horizon:
    id 0 (warm-up): arrives 0.0, tokens at 0.1, 0.2
    id 1: arrives 0.0, tokens at 1.0, 1.5, 2.5  -> TTFT 1.0, ITL 0.5 1.0, E2EL 2.5, TPOT 0.75
    id 2: arrives 1.0, tokens at 1.25, 2.0      -> TTFT 0.25, ITL 0.75, E2EL 1.0, TPOT 0.75
    id 3: arrives 2.0, one token at 2.5         -> TTFT 0.5, E2EL 0.5, no TPOT
    id 4: arrives 3.0, 1 of 3 tokens at 3.5     -> failed (unfinished at the horizon)"""
    req = pd.DataFrame({"request_id": [0, 1, 2, 3, 4], "arrival_s": [0.0, 0.0, 1.0, 2.0, 3.0],
                        "prompt_tokens": [100] * 5, "output_tokens": [2, 3, 2, 1, 3], "replica": [0] * 5,
                        "first_scheduled_s": [0.0, 0.0, 1.0, 2.0, 3.0], "preemptions": [0] * 5})
    times = {0: [0.1, 0.2], 1: [1.0, 1.5, 2.5], 2: [1.25, 2.0], 3: [2.5], 4: [3.5]}
    table = request_table(req, times, horizon_s=4.0, warmup_share=0.2)
    summary = {"name": "hand", "moesim_version": "test", "seed": 0, "config_file": None,
               "resolved": {"model": "Toy-MoE"},
               "config": {"model": "toy-model.yaml", "serving": {"arrivals": {"process": "poisson", "rate": 2.0}}},
               "metrics": {"serving": {"horizon_s": 4.0, "goodput": {"slo": {"ttft_s": 0.6, "tpot_s": 0.8}}}}}
    return table, summary


def test_layout_is_vllms_field_list_in_its_order():
    table, summary = _hand()
    out = vllm_result(table, summary, date="20250101-000000")
    assert list(out) == VLLM_FIELDS + [NOTE_KEY]
    assert metric_keys() == VLLM_METRICS
    assert metric_keys(("ttft",), (50, 99.9)) == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_ttft_ms",
                                                  "p99.9_ttft_ms"]  # vLLM's p_word: 99.9 stays 99.9
    assert out["backend"] == out["endpoint_type"] == BACKEND == "moesim-simulated"
    note = out[NOTE_KEY]
    assert note["simulated"] is True and "generated_texts" in note["not_known"]
    assert out["generated_texts"] == [None] * 4  # a simulation generates no text
    json.dumps(out, allow_nan=False)  # strict JSON


def test_values_of_a_hand_built_case():
    table, summary = _hand()
    out = vllm_result(table, summary, date="20250101-000000")
    assert out["num_prompts"] == 4 and out[NOTE_KEY]["warmup_excluded"] == 1  # request 0 is warm-up
    assert out["completed"] == 3 and out["failed"] == 1
    assert out["errors"][:3] == ["", "", ""] and "unfinished" in out["errors"][3]
    assert out["input_lens"] == [100] * 4 and out["output_lens"] == [3, 2, 1, 0]
    assert out["ttfts"] == pytest.approx([1.0, 0.25, 0.5, 0.5])
    assert out["itls"] == [pytest.approx([0.5, 1.0]), pytest.approx([0.75]), [], []]
    assert out["duration"] == pytest.approx(4.0)  # first measured arrival 0 to the horizon (one unfinished)
    assert out["total_input_tokens"] == 300 and out["total_output_tokens"] == 6
    assert out["request_throughput"] == pytest.approx(3 / 4)
    assert out["output_throughput"] == pytest.approx(6 / 4)
    assert out["total_token_throughput"] == pytest.approx(306 / 4)
    assert out["request_goodput"] == pytest.approx(2 / 4)  # id 1 misses TTFT <= 0.6 s; id 3's TPOT counts as 0
    assert out["request_rate"] == 2.0 and out["burstiness"] == 1.0 and out["max_concurrency"] is None
    # busiest second from t = 0: tokens at 1.0 1.25 1.5 | 2.0 2.5 2.5; requests in flight 1 | 2 | 3
    assert out["max_output_tokens_per_s"] == 3.0 and out["max_concurrent_requests"] == 3

    ttft = [1.0, 0.25, 0.5]  # completed requests only, as vLLM
    m = sum(ttft) / 3
    assert out["mean_ttft_ms"] == pytest.approx(m * 1e3)
    assert out["median_ttft_ms"] == pytest.approx(500.0)
    assert out["std_ttft_ms"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in ttft) / 3) * 1e3)
    assert out["p99_ttft_ms"] == pytest.approx((0.5 + 0.98 * 0.5) * 1e3)  # sorted .25 .5 1: index 1.98
    assert out["mean_tpot_ms"] == pytest.approx(750.0) and out["std_tpot_ms"] == pytest.approx(0.0)
    assert out["median_tpot_ms"] == pytest.approx(750.0) and out["p99_tpot_ms"] == pytest.approx(750.0)
    assert out["mean_itl_ms"] == pytest.approx(750.0) and out["median_itl_ms"] == pytest.approx(750.0)
    assert out["p99_itl_ms"] == pytest.approx((0.75 + 0.98 * 0.25) * 1e3)  # pooled .5 .75 1
    assert out["mean_e2el_ms"] == pytest.approx(4000 / 3) and out["median_e2el_ms"] == pytest.approx(1000.0)
    assert out["p99_e2el_ms"] == pytest.approx((1.0 + 0.98 * 1.5) * 1e3)  # sorted .5 1 2.5


@pytest.mark.parametrize("serving, traffic", [
    ({"arrivals": {"process": "gamma", "rate": 4.0, "cv": 0.5}}, (4.0, 4.0, None)),  # vLLM's gamma shape 1/cv^2
    ({"users": 8, "think_time": 0.0, "ramp_up": 0.0}, ("inf", 1.0, 8)),  # --max-concurrency 8 at rate inf
    ({"arrivals": {"process": "file", "path": "a.csv"}}, (None, None, None)),  # replayed times: no vLLM rate
])
def test_traffic_fields(serving, traffic):
    table, summary = _hand()
    summary["config"]["serving"] = serving
    out = vllm_result(table, summary)
    assert (out["request_rate"], out["burstiness"], out["max_concurrency"]) == traffic
    if traffic[0] is None:
        assert out[NOTE_KEY]["traffic_notes"]


def test_no_slo_leaves_goodput_null_and_no_completion_gives_vllms_zeros():
    table, summary = _hand()
    summary["metrics"]["serving"]["goodput"] = {"slo": {"ttft_s": None, "tpot_s": None}}
    assert vllm_result(table, summary)["request_goodput"] is None  # vLLM without --goodput
    table = table.assign(finished=False)
    out = vllm_result(table, summary)
    assert out["completed"] == 0 and out["mean_ttft_ms"] == 0.0 and out["p99_e2el_ms"] == 0.0  # np.mean(x or 0)


def _measured_vllm_json() -> dict:
    """What a measured `vllm bench serve` run with the flags above writes (made-up numbers)."""
    lists = {"input_lens": [100, 100], "output_lens": [3, 2], "ttfts": [0.9, 0.3], "itls": [[0.4, 0.9], [0.7]],
             "generated_texts": ["a b c", "d e"], "errors": ["", ""]}
    scalars = {"date": "20250101-120000", "endpoint_type": "openai", "backend": "openai", "label": None,
               "model_id": "Toy-MoE", "tokenizer_id": "Toy-MoE", "num_prompts": 2, "request_rate": 2.0,
               "burstiness": 1.0, "max_concurrency": None, "duration": 3.0, "completed": 2, "failed": 0,
               "total_input_tokens": 200, "total_output_tokens": 5, "request_throughput": 2 / 3,
               "request_goodput": 1 / 3, "output_throughput": 5 / 3, "total_token_throughput": 205 / 3,
               "max_output_tokens_per_s": 3.0, "max_concurrent_requests": 2}
    stats = {k: 100.0 for k in VLLM_METRICS}
    return {k: {**scalars, **lists, **stats}[k] for k in VLLM_FIELDS}


def test_a_measured_and_a_simulated_file_diff_field_by_field():
    table, summary = _hand()
    simulated = vllm_result(table, summary)
    measured = _measured_vllm_json()
    assert set(simulated) - {NOTE_KEY} == set(measured)
    diff = vllm_diff(measured, simulated).set_index("field")
    assert not diff["only_in"].astype(bool).any()  # every field on both sides
    assert "ttfts" not in diff.index and NOTE_KEY not in diff.index  # per-request lists and the note left out
    assert diff.loc["mean_tpot_ms", "difference"] == pytest.approx(750.0 - 100.0)
    assert diff.loc["completed", "relative"] == pytest.approx(3 / 2 - 1)
    assert diff.loc["backend", "simulated"] == BACKEND and pd.isna(diff.loc["backend", "difference"])
    one_sided = vllm_diff({**measured, "extra": 1}, simulated).set_index("field")
    assert one_sided.loc["extra", "only_in"] == "measured"


def test_simulate_writes_the_file_and_it_agrees_with_the_run(tmp_path, monkeypatch, capsys):
    cfg = {"name": "toy-serving", "model": "toy-moe8.yaml", "hardware": {"cluster": "toy-cluster-2x2.yaml"},
           "parallelism": {"ep": 4, "tp": 1, "dp": 4}, "routing": {"generator": "uniform"}, "seed": 3,
           "outputs": {"trace_steps": 0},
           "serving": {"prompt_tokens": {"dist": "fixed", "value": 64}, "output_tokens": {"dist": "fixed", "value": 8},
                       "num_requests": 12, "warmup": 0.0, "arrivals": {"process": "poisson", "rate": 200.0},
                       "slo": {"ttft": "1 s", "tpot": "50 ms"}}}
    path = toy_file(tmp_path, cfg)
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", str(path), "--out", "run", "--vllm-json", "bench.json", "--quiet"]) == 0
    out = json.loads((tmp_path / "bench.json").read_text())
    assert list(out) == VLLM_FIELDS + [NOTE_KEY] and out["backend"] == BACKEND
    assert out == {**vllm_result_from_run(tmp_path / "run"), "date": out["date"]}
    req = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    sv = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]["serving"]
    assert out["completed"] == int(req["finished"].sum()) == 12 and out["request_rate"] == 200.0
    # every request finished and none is warm-up: vLLM's statistics and summary.json's agree
    for metric, key in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("itl", "itl_s"), ("e2el", "e2e_s")):
        assert out[f"mean_{metric}_ms"] == pytest.approx(sv["latency"][key]["mean"] * 1e3)
        assert out[f"p99_{metric}_ms"] == pytest.approx(sv["latency"][key]["p99"] * 1e3)
    assert out["request_throughput"] == pytest.approx(sv["throughput"]["requests_per_s"])
    assert out["total_output_tokens"] == 12 * 8
    assert "--goodput ttft:1000 tpot:50" in out[NOTE_KEY]["vllm_flags"]
    # an existing file is kept unless --force
    assert main(["simulate", str(path), "--out", "run2", "--vllm-json", "bench.json", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err and not (tmp_path / "run2").exists()
