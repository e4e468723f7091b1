"""`moesim sweep` (studies/sweep_config.py, studies/sweep.py, moesim/cli_sweep.py): points crossed,
zipped and excluded in a fixed order; each run once and cached by its resolved config; an
interrupted sweep resumes without rerunning its finished points; a failed point is recorded;
worker processes give the rows the in-process run gives; the Pareto front by hand."""

import json

import pandas as pd
import pytest
import yaml

from moesim.cli import main
from moesim.errors import MoesimError
from moesim.studies import sweep as sweep_mod
from moesim.studies.sweep import pareto_marked, run_sweep
from moesim.studies.sweep_config import SweepConfig, load_sweep, overrides, points

from conftest import toy_file


def _files(tmp_path, toy_config, sweep: dict) -> str:
    cfg = dict(toy_config)
    cfg["workload"] = dict(cfg["workload"], routing={"generator": "uniform"})
    cfg["outputs"] = {"trace_steps": 0}
    toy_file(tmp_path, cfg)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "scenario.yaml", **sweep}))
    return str(tmp_path / "sweep.yaml")


def test_points_cross_zip_and_exclude_in_file_order():
    cfg = SweepConfig(base="b.yaml", axes={"a.x": [1, 2], "a.y": {"range": [10, 30], "step": 10},
                                           "a.z": ["p", "q", "r"], "a.w": {"doubling": [1, 4]}},
                      zip=[["a.y", "a.z"]], exclude=[{"a.x": 2, "a.z": "q"}])
    got = points(cfg)
    want = [{"a.x": x, "a.y": y, "a.z": z, "a.w": w} for x in (1, 2) for y, z in ((10, "p"), (20, "q"), (30, "r"))
            for w in (1, 2, 4) if not (x == 2 and z == "q")]
    assert got == want
    assert overrides({"a.x": 1, "a.z": "p"}) == ["a.x=1", 'a.z="p"']


@pytest.mark.parametrize("sweep,message", [
    ({"axes": {"a": [1]}, "zip": [["a", "b"]]}, "zip names b"),
    ({"axes": {"a": [1, 2], "b": [1]}, "zip": [["a", "b"]]}, "equal lengths"),
    ({"axes": {"a": [1]}, "exclude": [{"c": 1}]}, "exclude names c"),
    ({"axes": {"a": []}}, "no values"),
    ({"axes": {"a": {"doubling": [4, 1]}}}, "start <= stop"),
])
def test_bad_sweep_files_say_what_is_wrong(sweep, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(base="b.yaml", **sweep)


def test_a_sweep_runs_each_point_once_and_reads_it_back(tmp_path, toy_config, monkeypatch):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2, 4], "workload.kv_len": [99, 499]}})
    cfg, base = load_sweep(path)
    calls = []
    real = sweep_mod.simulate_point
    monkeypatch.setattr(sweep_mod, "simulate_point", lambda b, items, *more: calls.append(items) or real(b, items, *more))
    first = run_sweep(cfg, base, tmp_path / "cache")
    assert len(calls) == 6 and (first["status"] == "ok").all()
    assert first["throughput_tokens_per_s"].notna().all() and first["key"].nunique() == 6
    again = run_sweep(cfg, base, tmp_path / "cache")
    assert len(calls) == 6  # nothing simulated the second time
    pd.testing.assert_frame_equal(first, again)
    # a point whose resolved config changed (here: a new seed in the base) is a new point
    data = yaml.safe_load((tmp_path / "scenario.yaml").read_text())
    data["seed"] = 7
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(data))
    run_sweep(cfg, base, tmp_path / "cache")
    assert len(calls) == 12


def test_an_interrupted_sweep_resumes_with_only_the_rest(tmp_path, toy_config, monkeypatch):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2, 3, 4, 5]}})
    cfg, base = load_sweep(path)
    real = sweep_mod.simulate_point
    calls = []

    def stop_at_third(b, items, *more):
        calls.append(items)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(b, items, *more)

    monkeypatch.setattr(sweep_mod, "simulate_point", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, base, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # the two finished points are kept
    monkeypatch.setattr(sweep_mod, "simulate_point", lambda b, items, *more: calls.append(items) or real(b, items, *more))
    table = run_sweep(cfg, base, tmp_path / "cache")
    assert len(calls) == 3 + 3 and (table["status"] == "ok").all()  # the third point onward, once each


def test_a_failed_point_is_recorded_and_the_rest_run(tmp_path, toy_config):
    path = _files(tmp_path, toy_config, {"axes": {"parallelism.ep": [2, 3]}})
    table = run_sweep(*load_sweep(path), tmp_path / "cache")
    assert list(table["status"]) == ["ok", "failed"]
    assert "ep" in table["error"].iloc[1] and table["error"].iloc[0] == ""


def test_a_sweep_whose_points_all_fail_is_an_error(tmp_path, toy_config):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batchsize": [1, 2]}})
    with pytest.raises(MoesimError, match="no point of the sweep resolves.*batchsize"):
        run_sweep(*load_sweep(path), tmp_path / "cache")


def test_worker_processes_give_the_in_process_rows(tmp_path, toy_config):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2, 4]}})
    cfg, base = load_sweep(path)
    here = run_sweep(cfg, base, tmp_path / "c1", workers=1)
    pooled = run_sweep(cfg, base, tmp_path / "c2", workers=2)
    pd.testing.assert_frame_equal(here, pooled)


def test_pareto_front_by_hand():
    t = pd.DataFrame({"status": ["ok"] * 4 + ["failed"], "devices": [8, 8, 16, 32, 4],
                      "tput": [10.0, 12.0, 12.0, 20.0, float("nan")]})
    assert list(pareto_marked(t, "devices", "tput")["pareto"]) == [False, True, False, True, False]


def test_the_command_writes_its_folder_and_resumes(tmp_path, toy_config, capsys):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2]}})
    out = tmp_path / "out"
    assert main(["sweep", path, "--out", str(out), "--quiet"]) == 0
    for name in ("sweep.parquet", "sweep.csv", "report.html", "report.md", "sweep_info.json", ".moesim-output"):
        assert (out / name).exists(), name
    assert json.loads((out / "sweep_info.json").read_text())["points"] == 2
    assert (tmp_path / ".moesim-sweep-cache").is_dir()
    capsys.readouterr()
    assert main(["sweep", path, "--out", str(out), "--force", "--json"]) == 0
    printed = capsys.readouterr()
    rows = json.loads(printed.out)
    assert [r["workload.batch_size"] for r in rows] == [1, 2]
    assert "2 of 2 points from the cache" in printed.err  # resumed: nothing simulated again
