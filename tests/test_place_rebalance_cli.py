"""`moesim place --rebalance-from`: each method's placement renamed to keep copies in place and the
rebalance rule's verdict against the placement in force; clear errors on a file that does not fit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from moesim.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mixtral-decode-8xh100.yaml"
FAST = ["--steps", "2", "--time-limit", "0.3"]


def test_rebalance_from_itself_moves_nothing_and_a_reshuffle_is_renamed_back(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["place", str(EXAMPLE), "--methods", "eplb", "--redundant", "8", "--slots", "2", *FAST,
                 "--out", str(first)]) == 0
    # the same placement with devices renamed: a fresh plan that only differs by names moves nothing
    data = yaml.safe_load((first / "placement-eplb.yaml").read_text())
    perm = [3, 2, 1, 0, 7, 6, 5, 4]
    data["layers"] = [[[perm[d] for d in devs] for devs in layer] for layer in data["layers"]]
    shuffled = tmp_path / "shuffled.yaml"
    shuffled.write_text(yaml.safe_dump(data))
    second = tmp_path / "second"
    capsys.readouterr()
    assert main(["place", str(EXAMPLE), "--methods", "eplb,round_robin", "--redundant", "8", "--slots", "2", *FAST,
                 "--rebalance-from", str(shuffled), "--horizon-steps", "50", "--out", str(second)]) == 0
    table = pd.read_csv(second / "rebalance.csv").set_index("method")
    assert table.loc["eplb", "copies_moved"] == 0 and table.loc["eplb", "verdict"] == "stay"
    assert table.loc["eplb", "gain_us_per_step"] == 0
    assert table.loc["round_robin", "copies_moved"] > 0  # round robin drops the replicas: other copies
    assert (table["horizon_steps"] == 50).all()
    # the repair row starts from the placement in force: it only moves what pays
    assert "repair" in table.index and (second / "placement-repair.yaml").exists()
    assert table.loc["repair", "copies_moved"] <= table.loc["round_robin", "copies_moved"]
    assert table.loc["repair", "gain_us_per_step"] >= 0
    written = yaml.safe_load((second / "placement-eplb.yaml").read_text())
    as_sets = [[sorted(devs) for devs in layer] for layer in written["layers"]]
    assert as_sets == [[sorted(devs) for devs in layer] for layer in data["layers"]]  # renamed to the one in force
    assert "rebalance from" in capsys.readouterr().out


def test_rebalance_from_a_placement_that_does_not_fit_names_the_file(tmp_path, capsys):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"experts": [0, 1, 2, 3]}))  # Mixtral has 8 experts
    assert main(["place", str(EXAMPLE), "--methods", "eplb", *FAST, "--rebalance-from", str(wrong),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(wrong) in err and "--rebalance-from" in err


def test_rebalance_needs_the_time_objective(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["place", str(EXAMPLE), "--methods", "round_robin", *FAST, "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["place", str(EXAMPLE), "--methods", "eplb", *FAST, "--objective", "tokens",
                 "--rebalance-from", str(first / "placement-round_robin.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "--objective time" in capsys.readouterr().err
