"""Request arrivals and continuous batching: statistical, determinism, file and schedule properties.

Statistical tolerances are 5 standard errors from the CLT / delta method (seeds are fixed, so the
tests are deterministic; a wrong rate parametrisation or shape misses by far more than 5 sigma).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.errors import ConfigError
from moesim.workloads.arrivals import (
    RequestsConfig,
    describe_requests,
    generate_requests,
    load_requests_config,
)
from moesim.workloads.batching import request_metrics, schedule_iterations


def cfg(**kw) -> RequestsConfig:
    base = {"prompt_tokens": {"dist": "fixed", "value": 8}, "output_tokens": {"dist": "fixed", "value": 4}}
    base.update(kw)
    return RequestsConfig.model_validate(base)


def gaps_of(df: pd.DataFrame) -> np.ndarray:
    # the stream starts at t = 0, so the first gap is the first arrival time
    return np.diff(np.concatenate([[0.0], df["arrival_s"].to_numpy()]))


# --- arrival processes -------------------------------------------------------------------

def test_poisson_mean_and_cv():
    rate, n = 5.0, 20_000
    df = generate_requests(cfg(arrivals={"process": "poisson", "rate": rate}, num_requests=n), seed=1)
    g = gaps_of(df)
    # mean of n exponentials: standard error (1/rate)/sqrt(n)
    assert abs(g.mean() - 1 / rate) < 5 * (1 / rate) / math.sqrt(n)
    # cv_hat ~ s/mu - cv*(m-mu)/mu, so sd(cv_hat) <= sd(s)/mu + cv*sd(m)/mu; for the exponential
    # Var(s^2) ~ (mu4 - sigma^4)/n = 8 sigma^4/n, so sd(s)/sigma ~ sqrt(2/n)
    se_cv = math.sqrt(2 / n) + 1 / math.sqrt(n)
    assert abs(g.std() / g.mean() - 1.0) < 5 * se_cv


def test_gamma_mean_and_cv():
    rate, cv, n = 20.0, 3.0, 100_000
    df = generate_requests(cfg(arrivals={"process": "gamma", "rate": rate, "cv": cv}, num_requests=n), seed=2)
    g = gaps_of(df)
    assert abs(g.mean() - 1 / rate) < 5 * cv * (1 / rate) / math.sqrt(n)
    # gamma shape k = 1/cv^2 has kurtosis 3 + 6/k; Var(s^2) ~ sigma^4 (kurtosis - 1)/n,
    # so sd(s)/sigma ~ sqrt((kurtosis - 1)/n)/2; bound sd(cv_hat) as in the Poisson test
    kurt = 3 + 6 * cv**2
    se_cv = cv * math.sqrt((kurt - 1) / n) / 2 + cv / math.sqrt(n)
    assert abs(g.std() / g.mean() - cv) < 5 * se_cv  # ~0.32: rules out cv=1 or cv^2 mistakes


def test_duration_bounds_stream_and_human_units():
    c = cfg(arrivals={"process": "poisson", "rate": 100.0}, duration="30 s")
    assert c.duration == 30.0
    df = generate_requests(c, seed=3)
    assert df["arrival_s"].max() < 30.0
    n = len(df)  # Poisson(3000): sd ~ 55
    assert abs(n - 3000) < 5 * math.sqrt(3000)
    # num_requests stream is a prefix of the duration stream (same draws in order)
    df2 = generate_requests(cfg(arrivals={"process": "poisson", "rate": 100.0}, num_requests=100), seed=3)
    pd.testing.assert_frame_equal(df2, df.iloc[:100].reset_index(drop=True))


def test_columns_dtypes_and_order():
    df = generate_requests(cfg(arrivals={"process": "gamma", "rate": 3, "cv": 2}, num_requests=500), seed=0)
    assert list(df.columns) == ["request_id", "arrival_s", "prompt_tokens", "output_tokens"]
    assert [str(t) for t in df.dtypes] == ["int64", "float64", "int64", "int64"]
    assert (df["request_id"].to_numpy() == np.arange(500)).all()
    assert df["arrival_s"].iloc[0] >= 0 and (np.diff(df["arrival_s"]) >= 0).all()


# --- determinism -------------------------------------------------------------------------

def test_deterministic_under_seed_and_seeds_differ():
    c = cfg(arrivals={"process": "poisson", "rate": 2.0}, num_requests=200,
            prompt_tokens={"dist": "uniform", "low": 1, "high": 1000})
    a, b = generate_requests(c, seed=7), generate_requests(c, seed=7)
    pd.testing.assert_frame_equal(a, b)
    other = generate_requests(c, seed=8)
    assert not np.array_equal(a["arrival_s"], other["arrival_s"])
    assert not np.array_equal(a["prompt_tokens"], other["prompt_tokens"])


def test_length_distribution_does_not_move_arrivals():
    arr = {"process": "gamma", "rate": 4.0, "cv": 2.0}
    a = generate_requests(cfg(arrivals=arr, num_requests=300,
                              output_tokens={"dist": "uniform", "low": 1, "high": 50}), seed=11)
    b = generate_requests(cfg(arrivals=arr, num_requests=300,
                              prompt_tokens={"dist": "lognormal", "mean": 500, "std": 300},
                              output_tokens={"dist": "uniform", "low": 1, "high": 50}), seed=11)
    assert np.array_equal(a["arrival_s"], b["arrival_s"])
    assert np.array_equal(a["output_tokens"], b["output_tokens"])
    assert not np.array_equal(a["prompt_tokens"], b["prompt_tokens"])


# --- lengths -----------------------------------------------------------------------------

@pytest.mark.parametrize("dist", [
    {"dist": "fixed", "value": 1},
    {"dist": "uniform", "low": 1, "high": 3},
    {"dist": "normal", "mean": 2, "std": 10},
    {"dist": "normal", "mean": 100, "std": 50, "min": 10, "max": 120},
    {"dist": "lognormal", "mean": 3, "std": 20},
])
def test_lengths_are_integers_at_least_one(dist):
    df = generate_requests(cfg(arrivals={"process": "poisson", "rate": 1}, num_requests=2000,
                               prompt_tokens=dist), seed=5)
    x = df["prompt_tokens"]
    assert x.dtype == np.int64 and x.min() >= 1
    lo, hi = dist.get("min", 1), dist.get("max")
    assert x.min() >= lo and (hi is None or x.max() <= hi)


def test_lognormal_is_parametrised_by_length_mean_and_std():
    m, s, n = 1000.0, 500.0, 20_000
    df = generate_requests(cfg(arrivals={"process": "poisson", "rate": 1}, num_requests=n,
                               prompt_tokens={"dist": "lognormal", "mean": m, "std": s}), seed=9)
    x = df["prompt_tokens"].to_numpy(dtype=float)
    assert abs(x.mean() - m) < 5 * s / math.sqrt(n) + 0.5  # + rounding
    assert abs(x.std() / s - 1) < 0.1  # if (m, s) were log-space parameters this would be off by e^500


def test_uniform_is_inclusive():
    df = generate_requests(cfg(arrivals={"process": "poisson", "rate": 1}, num_requests=3000,
                               prompt_tokens={"dist": "uniform", "low": 4, "high": 6}), seed=1)
    assert set(df["prompt_tokens"]) == {4, 5, 6}


def test_empirical_file_lengths(tmp_path):
    pd.DataFrame({"len": [3, 7, 7, 100]}).to_csv(tmp_path / "lens.csv", index=False)
    c = cfg(arrivals={"process": "poisson", "rate": 1}, num_requests=1000,
            output_tokens={"dist": "file", "path": "lens.csv", "column": "len"})
    df = generate_requests(c, seed=0, base_dir=tmp_path)
    assert set(df["output_tokens"]) == {3, 7, 100}


# --- files -------------------------------------------------------------------------------

def _write(df: pd.DataFrame, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, double_precision=15)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_file_arrivals_round_trip(tmp_path, suffix):
    src = generate_requests(cfg(arrivals={"process": "gamma", "rate": 10, "cv": 2}, num_requests=300,
                                prompt_tokens={"dist": "uniform", "low": 1, "high": 4000}), seed=4)
    _write(src.drop(columns="request_id"), tmp_path / f"reqs{suffix}")
    c = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": f"reqs{suffix}"}})
    back = generate_requests(c, seed=123, base_dir=tmp_path)
    np.testing.assert_allclose(back["arrival_s"], src["arrival_s"], rtol=1e-13)
    pd.testing.assert_frame_equal(back.drop(columns="arrival_s"), src.drop(columns="arrival_s"))
    # an explicit length distribution overrides the file's column
    c2 = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": f"reqs{suffix}"},
                                        "prompt_tokens": {"dist": "fixed", "value": 9}, "num_requests": 50})
    back2 = generate_requests(c2, seed=0, base_dir=tmp_path)
    assert len(back2) == 50 and (back2["prompt_tokens"] == 9).all()
    assert (back2["output_tokens"].to_numpy() == src["output_tokens"].to_numpy()[:50]).all()


def test_decreasing_arrival_names_file_column_row(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0, 1.5, 3.0], "prompt_tokens": 5, "output_tokens": 5}).to_csv(
        path, index=False)
    c = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": str(path)}})
    with pytest.raises(ConfigError) as e:
        generate_requests(c, seed=0)
    msg = str(e.value)
    assert "bad.csv" in msg and "arrival_s" in msg and "row 3" in msg and "line 5" in msg


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "nocol.parquet"
    pd.DataFrame({"t": [0.0, 1.0], "prompt_tokens": [1, 2], "output_tokens": [1, 2]}).to_parquet(path)
    c = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": str(path)}})
    with pytest.raises(ConfigError) as e:
        generate_requests(c, seed=0)
    assert "nocol.parquet" in str(e.value) and "arrival_s" in str(e.value)


@pytest.mark.parametrize("bad,expect", [(2.5, "2.5"), (0, "0")])
def test_bad_length_in_file_names_row(tmp_path, bad, expect):
    path = tmp_path / "lens.jsonl"
    pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "prompt_tokens": [4, 4, bad],
                  "output_tokens": [1, 1, 1]}).to_json(path, orient="records", lines=True)
    c = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": str(path)}})
    with pytest.raises(ConfigError) as e:
        generate_requests(c, seed=0)
    msg = str(e.value)
    assert "lens.jsonl" in msg and "prompt_tokens" in msg and "row 2" in msg and expect in msg


def test_unreadable_file(tmp_path):
    (tmp_path / "x.parquet").write_text("not parquet")
    c = RequestsConfig.model_validate({"arrivals": {"process": "file", "path": "x.parquet"}})
    with pytest.raises(ConfigError, match="x.parquet"):
        generate_requests(c, seed=0, base_dir=tmp_path)


def test_yaml_config_and_its_errors(tmp_path):
    good = {"requests": {"arrivals": {"process": "poisson", "rate": 2}, "duration": "5 s",
                         "prompt_tokens": {"dist": "fixed", "value": 3},
                         "output_tokens": {"dist": "file", "path": "o.csv", "column": "n"}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(good))
    pd.DataFrame({"n": [2]}).to_csv(tmp_path / "o.csv", index=False)
    c = load_requests_config(tmp_path / "r.yaml")
    assert c.duration == 5.0
    df = generate_requests(c, seed=0)  # relative path resolved against the YAML's folder
    assert (df["output_tokens"] == 2).all()
    bad = {"requests": {"arrivals": {"process": "gamma", "rate": 2}, "num_requests": 3,
                        "prompt_tokens": {"dist": "fixed", "value": 3},
                        "output_tokens": {"dist": "fixed", "value": 3}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        load_requests_config(tmp_path / "bad.yaml")
    assert "bad.yaml" in str(e.value) and "requests.arrivals.gamma.cv" in str(e.value)


def test_describe_requests():
    df = generate_requests(cfg(arrivals={"process": "poisson", "rate": 50}, num_requests=5000,
                               prompt_tokens={"dist": "uniform", "low": 1, "high": 99}), seed=6)
    d = describe_requests(df)
    assert d["count"] == 5000
    assert abs(d["mean_rate_per_s"] / 50 - 1) < 5 / math.sqrt(5000)
    assert abs(d["interarrival_cv"] - 1) < 0.1
    assert d["total_tokens"] == df["prompt_tokens"].sum() + df["output_tokens"].sum()
    assert d["prompt_tokens_p50"] <= d["prompt_tokens_p99"] <= 99


# --- continuous batching -----------------------------------------------------------------

def _requests(rows):
    return pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_tokens", "output_tokens"])


def test_hand_computed_schedule():
    # r0: arrives 0, prompt 5, output 3; r1: arrives 0.5, prompt 3, output 2.
    # budget 4 tokens, 2 running, 1 s per iteration:
    #   it0 [0,1): r0 prefill 4 (kv 0)
    #   it1 [1,2): r0 prefill 1 (kv 4) -> r0's 1st token at 2; r1 admitted, prefill 3 (kv 0) -> 1st token at 2
    #   it2 [2,3): decode r0 (kv 5), decode r1 (kv 3) -> r1 done at 3
    #   it3 [3,4): decode r0 (kv 6) -> r0 done at 4
    req = _requests([(0, 0.0, 5, 3), (1, 0.5, 3, 2)])
    calls = []

    def fn(p, d, kv):
        calls.append((p, d, kv))
        return 1.0

    s = schedule_iterations(req, max_batch_tokens=4, max_running=2, iteration_time_fn=fn)
    got = list(s[["iteration", "start_s", "request_id", "phase", "tokens", "kv_len"]].itertuples(index=False,
                                                                                                name=None))
    assert got == [
        (0, 0.0, 0, "prefill", 4, 0),
        (1, 1.0, 0, "prefill", 1, 4),
        (1, 1.0, 1, "prefill", 3, 0),
        (2, 2.0, 0, "decode", 1, 5),
        (2, 2.0, 1, "decode", 1, 3),
        (3, 3.0, 0, "decode", 1, 6),
    ]
    assert calls == [(4, 0, 0), (4, 0, 4), (0, 2, 8), (0, 1, 6)]
    m = request_metrics(s, req).set_index("request_id")
    assert m.loc[0, "ttft_s"] == 2.0 and m.loc[0, "tpot_s"] == 1.0 and m.loc[0, "e2e_s"] == 4.0
    assert m.loc[1, "ttft_s"] == 1.5 and m.loc[1, "tpot_s"] == 1.0 and m.loc[1, "e2e_s"] == 2.5
    assert m.loc[1, "queue_s"] == 0.5


def test_idle_time_jumps_to_next_arrival_and_single_token_output():
    req = _requests([(0, 2.0, 3, 1), (1, 10.0, 2, 2)])
    s = schedule_iterations(req, 8, 4, lambda p, d, kv: 0.25)
    assert s["start_s"].tolist() == [2.0, 10.0, 10.25]
    m = request_metrics(s, req).set_index("request_id")
    assert m.loc[0, "ttft_s"] == 0.25 and math.isnan(m.loc[0, "tpot_s"]) and m.loc[0, "e2e_s"] == 0.25
    assert m.loc[1, "ttft_s"] == 0.25 and m.loc[1, "tpot_s"] == 0.25


def test_schedule_properties_under_load():
    req = generate_requests(cfg(arrivals={"process": "gamma", "rate": 200, "cv": 3}, num_requests=300,
                                prompt_tokens={"dist": "uniform", "low": 1, "high": 600},
                                output_tokens={"dist": "uniform", "low": 1, "high": 40}), seed=12)
    B, R = 256, 12
    s = schedule_iterations(req, B, R, lambda p, d, kv: 1e-3 + 2e-5 * p + 1e-4 * d + 1e-8 * kv)
    per_it = s.groupby("iteration")
    assert per_it["tokens"].sum().max() <= B
    assert per_it["request_id"].nunique().max() <= R
    assert (per_it["request_id"].count() == per_it["request_id"].nunique()).all()  # one row per request
    # token conservation
    pre = s[s.phase == "prefill"].groupby("request_id")["tokens"].sum()
    dec = s[s.phase == "decode"].groupby("request_id")["tokens"].count()
    r = req.set_index("request_id")
    assert (pre.reindex(r.index) == r["prompt_tokens"]).all()
    assert (dec.reindex(r.index, fill_value=0) == r["output_tokens"] - 1).all()
    # kv_len = the request's tokens in earlier iterations; no request runs before it arrives
    prev = s.groupby("request_id")["tokens"].cumsum() - s["tokens"]
    assert (s["kv_len"] == prev).all()
    assert (s["start_s"].to_numpy() >= r.loc[s["request_id"], "arrival_s"].to_numpy()).all()
    # prefill chunks precede decodes; admission is FIFO by arrival
    last_pre = s[s.phase == "prefill"].groupby("request_id")["iteration"].max()
    first_dec = s[s.phase == "decode"].groupby("request_id")["iteration"].min()
    assert (first_dec > last_pre.reindex(first_dec.index)).all()
    admitted = s.groupby("request_id")["iteration"].min().reindex(r.index)
    assert (np.diff(admitted.to_numpy()) >= 0).all()
    m = request_metrics(s, req)
    assert (m["ttft_s"] > 0).all() and (m["e2e_s"] >= m["ttft_s"]).all()


def test_batching_rejects_budget_below_running():
    with pytest.raises(ValueError):
        schedule_iterations(_requests([(0, 0.0, 1, 1)]), max_batch_tokens=2, max_running=4,
                            iteration_time_fn=lambda p, d, kv: 1.0)
