"""Nothing a user owns is lost: --force replaces only moesim's own outputs, no command writes over
its inputs, scenario names stay inside the output root, every multi-file output appears whole or
not at all, and an interrupted multi-point command keeps exactly what it says (issue 24)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from moesim import cli, interrupts
from moesim.outputs import MARKER

from conftest import DATA, toy_file
from test_serving import serving_config

SIM = ["simulate", "scenario.yaml", "--quiet"]


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy scenario in a fresh folder that is also the working directory."""
    toy_file(tmp_path, yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    """Hidden partial or old folders/files an interrupted or failed write would leave behind."""
    return sorted(p.name for p in folder.rglob(".*") if ".partial-" in p.name or ".old-" in p.name)


def test_force_refuses_a_folder_moesim_did_not_write_and_deletes_nothing(toy, capsys):
    precious = toy / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("three years")
    rc, err = run(SIM + ["--out", precious, "--force"], capsys)
    assert rc == 2 and "did not write" in err and MARKER in err
    assert (precious / "thesis.tex").read_text() == "three years" and len(list(precious.iterdir())) == 1


def test_force_on_the_configs_own_folder_keeps_the_config(toy, capsys):
    before = sorted(p.name for p in toy.iterdir())
    rc, err = run(SIM + ["--out", toy, "--force"], capsys)
    assert rc == 2 and "--out" in err
    assert sorted(p.name for p in toy.iterdir()) == before


def test_force_refuses_a_moesim_folder_that_holds_an_input(toy, capsys):
    assert run(SIM + ["--out", "run"], capsys)[0] == 0
    cfg = yaml.safe_load((toy / "scenario.yaml").read_text())
    cfg["model"], cfg["hardware"]["cluster"] = str(toy / cfg["model"]), str(toy / cfg["hardware"]["cluster"])
    (toy / "run" / "scenario.yaml").write_text(yaml.safe_dump(cfg))
    rc, err = run(["simulate", toy / "run" / "scenario.yaml", "--quiet", "--out", "run", "--force"], capsys)
    assert rc == 2 and "which this command reads" in err
    assert (toy / "run" / "scenario.yaml").exists() and (toy / "run" / "summary.json").exists()


def test_force_replaces_moesim_outputs_old_and_new_and_leaves_no_stale_file(toy, capsys):
    assert run(SIM + ["--out", "run"], capsys)[0] == 0
    assert (toy / "run" / MARKER).exists()
    (toy / "run" / MARKER).unlink()  # a run directory from before the marker: its summary.json says moesim
    (toy / "run" / "stale.csv").write_text("x")
    assert run(SIM + ["--out", "run", "--force"], capsys)[0] == 0
    assert not (toy / "run" / "stale.csv").exists() and (toy / "run" / MARKER).exists()
    assert leftovers(toy) == []


@pytest.mark.parametrize("name", ["../../x", "/tmp/moesim-abs", "a/b", ".hidden", "..", "a\\b", ""])
def test_a_scenario_name_cannot_leave_the_output_root(toy, capsys, name):
    rc, err = run(SIM + ["--set", f"name={json.dumps(name)}"], capsys)
    assert rc == 2 and "scenario name" in err and "'name'" in err
    assert not (toy / "runs").exists() and not Path("/tmp/moesim-abs").exists()
    assert not (toy.parent.parent / "x").exists()


def trace_file(folder: Path) -> Path:
    gen = folder / "g.yaml"
    gen.write_text("popularity: {kind: zipf, alpha: 1.0}\naffinity: 0.5\n")
    out = folder / "t.parquet"
    assert cli.main(["trace", "synth", str(gen), "--model", str(folder / "toy-moe8.yaml"), "--out", str(out),
                     "--steps", "2", "--tokens", "4", "--sources", "2"]) == 0
    return out


def test_trace_convert_never_writes_over_its_input(toy, capsys):
    trace = trace_file(toy)
    rows = pq.read_table(trace).num_rows
    for extra in ([], ["--force"], ["--sort", "--force"]):
        rc, err = run(["trace", "convert", trace, trace] + extra, capsys)
        assert rc == 2 and "input" in err
    link = toy / "alias.parquet"
    link.symlink_to(trace)
    assert run(["trace", "convert", trace, link, "--force"], capsys)[0] == 2  # the same file by another name
    assert pq.read_table(trace).num_rows == rows > 0


def test_an_existing_output_file_needs_force_and_gets_the_default_mode(toy, capsys):
    trace = trace_file(toy)
    out = toy / "c.parquet"
    out.write_text("mine")
    rc, err = run(["trace", "convert", trace, out], capsys)
    assert rc == 2 and "--force" in err and out.read_text() == "mine"
    old = os.umask(0o022)
    try:
        assert run(["trace", "convert", trace, out, "--force"], capsys)[0] == 0
    finally:
        os.umask(old)
    assert pq.read_table(out).num_rows == pq.read_table(trace).num_rows
    assert out.stat().st_mode & 0o777 == 0o644 and leftovers(toy) == []


def fail_after_first_file(monkeypatch, module, name: str, error: BaseException, file: str = "half.csv"):
    """Make `module.name` (a writer given an output folder) write one file, then fail."""
    real = getattr(module, name)

    def broken(*args, **kwargs):
        folder = next(Path(a) for a in list(args) + list(kwargs.values()) if isinstance(a, (str, Path))
                      and Path(a).name.startswith("."))
        (folder / file).write_text("half")
        raise error
    monkeypatch.setattr(module, name, broken)
    return real


def test_every_multi_file_output_appears_whole_or_not_at_all(toy, capsys, monkeypatch):
    """A writer that fails (a full disk) half-way leaves no output folder and no hidden folder."""
    import moesim.reports.roofline_plots as roofline_plots
    import moesim.reports.run_report as run_report
    import moesim.reports.trace_plots as trace_plots
    import moesim.studies.placement_study as placement_study

    full = OSError(28, "No space left on device")
    trace = trace_file(toy)
    cases = [
        (run_report, "write_run_report", SIM + ["--out", "r1", "--report"], "r1/report"),
        (placement_study, "write_study", ["place", "scenario.yaml", "--methods", "eplb", "--out", "p"], "p"),
        (roofline_plots, "write_roofline", ["roofline", "scenario.yaml", "--out", "roof"], "roof"),
        (trace_plots, "write_stats_dir", ["trace", "stats", trace, "--out", "stats"], "stats"),
    ]
    for module, name, argv, target in cases:
        with monkeypatch.context() as m:
            fail_after_first_file(m, module, name, full)
            rc, err = run(argv, capsys)
        assert rc == 2 and "No space left" in err, (name, err)
        assert not (toy / target).exists(), target
        assert leftovers(toy) == [], (name, leftovers(toy))
    assert (toy / "r1" / "summary.json").exists()  # the run itself was complete before its report failed


def test_calibrate_from_table_on_a_full_disk_leaves_no_profile(toy, capsys, monkeypatch):
    pytest.importorskip("torch")
    import moesim.validation.from_table as from_table

    (toy / "ops.csv").write_text("kind,m,k,n,time_s\ngemm,16,1024,1024,1e-5\n")
    fail_after_first_file(monkeypatch, from_table, "calibrate_from_table", OSError(28, "No space left on device"),
                          "H100-SXM-calibrated.yaml")
    rc, err = run(["calibrate", "--from-table", "ops.csv", "--profile", "H100-SXM", "--out", "cal"], capsys)
    assert rc == 2 and "No space left" in err, err
    assert not (toy / "cal").exists() and not list(toy.rglob("*-calibrated.yaml")) and leftovers(toy) == []


def test_an_interrupted_report_keeps_the_run_and_says_so(toy, capsys, monkeypatch):
    import moesim.reports.run_report as run_report

    fail_after_first_file(monkeypatch, run_report, "write_run_report", interrupts.Interrupted(2))
    rc, err = run(SIM + ["--out", "r", "--report"], capsys)
    assert rc == 130 and "kept the run directory" in err and str(Path("r")) in err, err
    assert (toy / "r" / "summary.json").exists() and not (toy / "r" / "report").exists()
    assert leftovers(toy) == []


def sweep_config(folder: Path) -> Path:
    return toy_file(folder, serving_config(num_requests=6))


def test_an_interrupted_sweep_keeps_its_finished_points_and_names_them(tmp_path, capsys, monkeypatch):
    """An interrupted --load sweep writes no folder (an earlier one there stays whole); its finished
    points stay in the sweep cache, with their run directories, and the same command resumes with
    only the rest; a complete sweep replaces an earlier one whole."""
    from moesim.studies import sweep as sweep_mod

    path = sweep_config(tmp_path)
    real = sweep_mod.simulate_point
    calls = []

    def stop_at_third(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise interrupts.Interrupted(15)
        return real(*args)
    monkeypatch.setattr(sweep_mod, "simulate_point", stop_at_third)
    out = tmp_path / "sweep"
    rc, err = run(["simulate", path, "--load", "2,4,8,16", "--out", out, "--progress", "none"], capsys)
    assert rc == 143 and "SIGTERM" in err and "sweep cache" in err and "resume" in err, err
    assert not out.exists() and leftovers(tmp_path) == []
    cache = tmp_path / ".moesim-sweep-cache"
    assert len(list(cache.glob("*.json"))) == 2 and len(list((cache / "runs").iterdir())) == 2

    calls.clear()  # the same command: only the two points not yet run
    assert run(["simulate", path, "--load", "2,4,8,16", "--out", out, "--progress", "none"], capsys)[0] == 0
    assert len(calls) == 2 and json.loads((out / "sweep.json").read_text())["status"] == "complete"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == \
        ["rate=16-per-s", "rate=2-per-s", "rate=4-per-s", "rate=8-per-s"]

    # a second interrupted sweep over it leaves the first untouched ...
    calls.clear()
    rc, err = run(["simulate", path, "--load", "1,3,5,7", "--out", out, "--force", "--progress", "none"], capsys)
    assert rc == 143 and (out / "rate=2-per-s").exists() and not (out / "rate=1-per-s").exists()
    # ... and a complete one replaces it whole: no old point beside the new ones
    monkeypatch.setattr(sweep_mod, "simulate_point", real)
    assert run(["simulate", path, "--load", "1,3", "--out", out, "--force", "--progress", "none"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        ["rate=1-per-s", "rate=3-per-s"]
    assert (out / "report.html").exists() and leftovers(tmp_path) == []


def test_the_sweep_report_names_where_its_points_are(tmp_path, capsys):
    path = sweep_config(tmp_path)
    out = tmp_path / "sweep"
    assert run(["simulate", path, "--load", "2", "--out", out, "--progress", "none"], capsys)[0] == 0
    text = (out / "sweep.csv").read_text()
    assert str(out / "rate=2-per-s") in text and ".partial-" not in text


def test_a_report_folder_from_before_the_marker_is_rewritten_but_a_foreign_one_is_not(toy, capsys):
    assert run(SIM + ["--out", "r", "--report"], capsys)[0] == 0
    (toy / "r" / "report" / MARKER).unlink()  # written by an older moesim
    assert run(["report", "r"], capsys)[0] == 0 and (toy / "r" / "report" / MARKER).exists()
    for f in (toy / "r" / "report").iterdir():
        f.unlink()
    (toy / "r" / "report" / "notes.txt").write_text("mine")
    rc, err = run(["report", "r"], capsys)
    assert rc == 2 and "did not write" in err and (toy / "r" / "report" / "notes.txt").read_text() == "mine"
