"""Capacity search and `moesim recommend` (studies/capacity.py, studies/recommend.py): bisection
finds a planted capacity within its tolerance; the SLO judge; a search over candidates whose
capacities are known by construction (the simulation replaced by a planted latency curve) ranks
them right, prunes what does not resolve, and reuses cached probes."""

import pandas as pd
import pytest
import yaml

from moesim.errors import ConfigError
from moesim.studies.capacity import bisect_capacity, serving_meets
from moesim.studies.recommend import RATE, USERS, load_recommend, replay_command, run_recommend

from conftest import EXAMPLES


@pytest.mark.parametrize("capacity", [1.3, 7.3, 40.0])
def test_bisection_finds_a_planted_capacity_within_its_tolerance(capacity):
    found = bisect_capacity(lambda r: r <= capacity, 1.0, 64.0, rel_tol=0.05)
    assert found.load is not None and capacity / 1.05 <= found.load <= capacity
    assert not found.at_top and len(found.probes) <= 2 + 8  # log2(ln 64 / ln 1.05) ~ 6.4 halvings


def test_bisection_at_the_ends_of_the_range():
    assert bisect_capacity(lambda r: False, 1.0, 8.0).load is None  # not even the lowest load
    top = bisect_capacity(lambda r: True, 1.0, 8.0)
    assert top.load == 8.0 and top.at_top  # it may carry more: said so
    with pytest.raises(ValueError):
        bisect_capacity(lambda r: True, 4.0, 2.0)


def test_the_slo_judge():
    slo = {"ttft_p99": 2.0, "tpot_p99": 0.1}
    good = {"status": "ok", "saturated": 0.0, "ttft_p99_s": 1.0, "tpot_p99_s": 0.05}
    assert serving_meets(good, slo) == (True, "")
    assert not serving_meets({**good, "saturated": 1.0}, slo)[0]
    ok, why = serving_meets({**good, "tpot_p99_s": 0.2}, slo)
    assert not ok and why.startswith("tpot_p99_s")
    assert not serving_meets({"status": "failed", "error": "x"}, slo)[0]


def _file(tmp_path, **extra) -> str:
    data = {"base": str(EXAMPLES / "serving-mixtral-8xh100.yaml"),
            "axes": {"policies.overlap": ["none", "two_batch"], "parallelism.tp": [8, 3]},
            "slo": {"tpot_p99": 0.1}, "load": {"min": 1, "max": 64, "tolerance": 0.05}, **extra}
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump(data))
    return str(tmp_path / "rec.yaml")


def test_recommend_ranks_candidates_by_their_planted_capacity(tmp_path):
    planted = {"none": 10.0, "two_batch": 20.0}  # requests/s at which TPOT p99 crosses 0.1 s
    calls = []

    def evaluate(base, items):
        calls.append(items)
        got = dict(i.split("=", 1) for i in items)
        rate, cap = float(got[RATE]), planted[yaml.safe_load(got["policies.overlap"])]
        return {"status": "ok", "saturated": 0.0, "ttft_p99_s": 0.5, "tpot_p99_s": 0.1 * rate / cap}

    cfg, base = load_recommend(_file(tmp_path))
    table = run_recommend(cfg, base, tmp_path / "cache", evaluate)
    ok = table[table["status"] == "ok"]
    assert list(ok["policies.overlap"]) == ["two_batch", "none"]  # best first
    for _, r in ok.iterrows():
        cap = planted[r["policies.overlap"]]
        assert cap / 1.05 <= r["capacity_requests_per_s"] <= cap and r["capacity"] == r["capacity_requests_per_s"]
        assert r["capacity_per_device"] == pytest.approx(r["capacity_requests_per_s"] / 8)
        assert r["limited_by"].startswith("tpot_p99_s")
    pruned = table[table["status"] == "pruned"]
    assert len(pruned) == 2 and pruned["reason"].str.contains("tp").all()  # tp=3 never simulated
    n = len(calls)
    run_recommend(cfg, base, tmp_path / "cache", evaluate)
    assert len(calls) == n  # every probe read back from the cache
    assert "--set 'serving.arrivals.rate=20'" in replay_command(base, {"policies.overlap": "x"}, 20.0)


@pytest.mark.parametrize("change,message", [
    ({"slo": {}}, "at least one of slo"),
    ({"load": {"min": 8, "max": 2}}, "below load.min"),
    ({"axes": {RATE: [1, 2]}}, "what recommend searches"),
    ({"base": "nowhere.yaml"}, "not found"),
])
def test_bad_recommend_files(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_recommend(_file(tmp_path, **change))


def test_a_closed_loop_is_searched_in_whole_users(tmp_path):
    """A closed-loop base has its users bisected (whole numbers): the capacity is the most users
    meeting the SLOs, within the tolerance of a planted crossing, and the replay sets the users."""
    planted = {"none": 23, "two_batch": 41}  # users at which TPOT p99 crosses 0.1 s
    calls = []

    def evaluate(base, items):
        got = dict(i.split("=", 1) for i in items)
        calls.append(got[USERS])
        users, cap = int(got[USERS]), planted[yaml.safe_load(got["policies.overlap"])]
        return {"status": "ok", "saturated": 0.0, "ttft_p99_s": 0.5, "tpot_p99_s": 0.1 * users / (cap + 0.5)}

    path = _file(tmp_path, base=str(EXAMPLES / "serving-deepseek-v3-dp16-ep16.yaml"),
                 axes={"policies.overlap": ["none", "two_batch"]}, load={"min": 1, "max": 128, "tolerance": 0.02})
    cfg, base = load_recommend(path)
    table = run_recommend(cfg, base, tmp_path / "cache", evaluate)
    assert list(table["policies.overlap"]) == ["two_batch", "none"] and (table["capacity_unit"] == "users").all()
    for _, r in table.iterrows():
        cap = planted[r["policies.overlap"]]
        assert r["capacity"] == int(r["capacity"]) and cap / 1.02 - 1 <= r["capacity"] <= cap
        assert r["capacity_requests_per_s"] is None or r["capacity_requests_per_s"] != r["capacity_requests_per_s"]
    assert all(c == str(int(c)) for c in calls)  # every probe a whole number of users
    assert f"--set '{USERS}=41'" in replay_command(base, {"policies.overlap": "two_batch"}, 41.0)
    with pytest.raises(ConfigError, match="what recommend searches"):
        load_recommend(_file(tmp_path, base=str(EXAMPLES / "serving-deepseek-v3-dp16-ep16.yaml"),
                             axes={USERS: [1, 2]}))


def test_the_command_writes_its_ranking_and_replay_commands(tmp_path):
    """On the served toy (real simulations, 8 requests): the folder holds the ranking, best.yaml with
    a replay command per candidate, and the report."""
    from test_bad_inputs import SERVE, TOY

    from moesim.cli import main

    for name, text in TOY.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(SERVE))
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump({
        "base": "serve.yaml", "axes": {"serving.scheduler.max_running": [4, 16]}, "slo": {"ttft_p99": 5.0},
        "load": {"min": 1, "max": 1000, "tolerance": 0.5}, "top": 2}))
    out = tmp_path / "out"
    assert main(["recommend", str(tmp_path / "rec.yaml"), "--out", str(out), "--quiet"]) == 0
    for name in ("recommend.csv", "recommend.parquet", "best.yaml", "report.html", ".moesim-output"):
        assert (out / name).exists(), name
    best = yaml.safe_load((out / "best.yaml").read_text())["best"]
    assert [b["rank"] for b in best] == list(range(1, len(best) + 1)) and best
    assert all(b["replay"].startswith("moesim simulate ") and RATE in b["replay"] for b in best)


def test_worker_processes_give_the_in_process_ranking(tmp_path):
    """Candidates searched in two worker processes rank exactly as searched in this one (each
    search is its own sequence of cached probes; the cache is shared, written atomically)."""
    from test_bad_inputs import SERVE, TOY

    from moesim.cli import main

    for name, text in TOY.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(SERVE))
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump({
        "base": "serve.yaml", "axes": {"serving.scheduler.max_running": [2, 4, 16]}, "slo": {"ttft_p99": 5.0},
        "load": {"min": 1, "max": 1000, "tolerance": 0.5}, "top": 3}))
    for out, cache, workers in (("one", "c1", "1"), ("two", "c2", "2")):
        assert main(["recommend", str(tmp_path / "rec.yaml"), "--out", str(tmp_path / out), "--cache",
                     str(tmp_path / cache), "--workers", workers, "--quiet"]) == 0
    one, two = (pd.read_parquet(tmp_path / d / "recommend.parquet") for d in ("one", "two"))
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    assert len(one) == 3
