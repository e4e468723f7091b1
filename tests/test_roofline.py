"""Roofline: a GEMM on H100 against a hand calculation, the ridge crossing, agreement with the engine's
planned phase times op by op, and the `moesim roofline` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.cli import main
from moesim.hardware_profiles import load_device
from moesim.simulator.config import config_from_dict
from moesim.simulator.cost_model import CostModel
from moesim.simulator.ops import Op
from moesim.simulator.roofline import (device_roof, expert_sweep, op_rows, ridge_tokens, scenario_op_rows,
                                      scenario_plan, scenario_roofline)
from moesim.simulator.scenario import resolve
from moesim.workloads import load_model

from conftest import DATA, EXAMPLES, example_config, in_background

H100_PEAK, H100_BW = 989.4e12 * 0.7, 3.35e12 * 0.8  # bf16 dense peak and HBM3 at the profile's efficiencies


def _expert_bytes(n: float) -> float:
    """Mixtral expert (SwiGLU, 4096 x 14336, bf16): weights once, input/output and intermediates per token."""
    return 3 * 4096 * 14336 * 2 + n * (2 * 4096 + 3 * 14336) * 2


def test_expert_gemm_on_h100_matches_hand_calculation():
    n = 64.0
    flops = 2 * n * 4096 * 14336 * 3
    nbytes = _expert_bytes(n)
    rows = op_rows(CostModel(load_device("H100-SXM")), [Op("expert[0]", "gemm", "expert", flops, nbytes, n, "bf16")],
                   "decode", 0)
    r = rows.iloc[0]
    intensity = flops / nbytes
    assert r["intensity"] == pytest.approx(intensity, rel=1e-12)
    assert intensity == pytest.approx(62.83, abs=0.01)
    assert r["time_s"] == pytest.approx(max(flops / H100_PEAK, nbytes / H100_BW) + 5e-6, rel=1e-12)
    assert r["attainable_flops_per_s"] == pytest.approx(min(H100_PEAK, intensity * H100_BW), rel=1e-12)
    assert r["bound"] == "memory" and r["share_of_layer"] == 1.0
    assert r["achieved_flops_per_s"] == pytest.approx(flops / r["time_s"], rel=1e-12)
    roof = device_roof(CostModel(load_device("H100-SXM")), "bf16")
    assert roof.ridge == pytest.approx(H100_PEAK / H100_BW, rel=1e-12)  # 258.4 FLOP/B


def test_ridge_crossing_in_tokens_per_expert_matches_hand_calculation():
    """Compute time (token rows padded to the 64-row tile) first reaches memory time at this many tokens."""
    tokens = np.arange(1, 1025, dtype=float)
    sweep = expert_sweep(load_model("Mixtral-8x7B"), [load_device("H100-SXM")], tokens)
    padded = np.ceil(tokens / 64) * 64
    compute = 2 * padded * 4096 * 14336 * 3 / H100_PEAK
    memory = _expert_bytes(tokens) / H100_BW
    want = float(tokens[np.argmax(compute >= memory)])
    assert ridge_tokens(sweep)["H100-SXM"] == want
    assert 250 < want < 300


@pytest.mark.parametrize("example,workload", [
    pytest.param(name, workload, id=name) for name, workload in [
        ("mixtral-decode-8xh100.yaml", {}), ("deepseek-v3-decode-4x8-h800.yaml", {}),
        ("offload-mixtral-4090-lru.yaml", {}),
        ("deepseek-v3-prefill-4x8-h800.yaml", {"seq_len": 1024})]])  # 4k-token prompts take seconds to sample
def test_roofline_ops_agree_with_the_engine_plan(tmp_path, example, workload):
    """The roofline's op times add up, phase by phase, to the times the engine replays (same cost function)."""
    cfg = example_config(example)
    cfg["workload"].update(steps=1, **workload)
    sc = resolve(config_from_dict(cfg, EXAMPLES))
    plan = scenario_plan(sc, 0)
    layer = sc.model.moe_layers[-1]
    for device in (0, sc.num_devices - 1):
        rows = scenario_roofline(sc, layer, step=0, device=device)
        units = [u.device.name for u in sc.machine.units.values()]
        assert list(rows["device"].unique()) == units  # the scenario's own rows, then the node's other units
        rows = rows[rows["device"] == sc.device.name]
        by_group = rows.groupby("group")["time_s"].sum()
        assert by_group["attention"] + by_group["router"] == pytest.approx(plan.attention[layer, device],
                                                                                     rel=1e-12)
        moe = sum(by_group.get(g, 0.0) for g in ("routed expert", "MoE floor", "MoE token passes"))
        assert moe == pytest.approx(plan.expert[layer, device], rel=1e-12)
        assert by_group.get("shared expert", 0.0) == pytest.approx(plan.shared_expert[layer, device], rel=1e-12)
        assert rows["share_of_layer"].sum() == pytest.approx(1.0)


# `moesim roofline` twice in fresh Pythons, beside the other tests (conftest.in_background): its charts
# take seconds. The measured point: one H100 GEMM of 1e12 FLOP and 1e9 bytes in 3 ms.
ROOFLINE = in_background("test_roofline_command_writes_charts_and_tables#1", "-m", "moesim.cli", "roofline",
                         EXAMPLES / "mixtral-decode-8xh100.yaml", "--device", "Logic-PIM", "--device", "Xeon-8480",
                         "--measured", DATA / "roofline-measured.csv", "--out", "{out}/roof")
ROOFLINE_MODEL = in_background("test_roofline_command_writes_charts_and_tables#2", "-m", "moesim.cli",
                               "roofline", "--model", "Qwen3-30B-A3B", "--device", "H100-SXM", "--device", "B200",
                               "--out", "{out}/roof2")


def test_roofline_command_writes_charts_and_tables(background):
    rc, _, err, folder = background.run(ROOFLINE)
    assert rc == 0, err
    out = folder / "roof"
    for name in ("roofline.png", "expert-sweep.png", "time-share.png", "roofline.csv", "expert-sweep.csv",
                 "ridge.csv", "roofline.html", "roofline.md"):
        assert (out / name).stat().st_size > 0, name
    rows = pd.read_csv(out / "roofline.csv")
    assert set(rows["device"]) == {"H100-SXM", "Logic-PIM", "Xeon-8480"}
    assert {"compute", "memory", "link"} & set(rows["bound"]) >= {"memory", "link"}
    ridge = pd.read_csv(out / "ridge.csv").set_index("device")
    assert ridge.loc["Logic-PIM", "compute_bound_from_tokens_per_expert"] < ridge.loc[
        "H100-SXM", "compute_bound_from_tokens_per_expert"]  # PIM's low ridge: Duplex's Op/B argument
    rc, _, err, folder = background.run(ROOFLINE_MODEL)
    assert rc == 0, err
    phases = set(pd.read_csv(folder / "roof2" / "roofline.csv")["phase"])
    assert phases == {"prefill", "decode"}


def test_roofline_bad_input_exits_with_a_message(tmp_path, capsys):
    assert main(["roofline", "--model", "Mixtral-8x7B", "--device", "H900", "--out", str(tmp_path)]) == 2
    assert "H100-SXM" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("op,flops\ngemm,1\n")
    assert main(["roofline", "--model", "Mixtral-8x7B", "--measured", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "time_s" in capsys.readouterr().err
    assert main(["roofline", "--model", "Mixtral-8x7B", "--out", str(tmp_path), "--force"]) == 2  # not moesim's
    assert "did not write" in capsys.readouterr().err and bad.exists()
    assert main(["roofline", "--out", str(tmp_path)]) == 2


def test_op_rows_say_where_each_cost_came_from_and_its_speed_of_light_ratio(tmp_path):
    """Datasheet profile: every compute op says so, and no op beats its roofline bound (time /
    speed of light >= 1). A calibrated fit names itself and its held-out error, and the run's
    headline metrics get that error as an interval."""
    from moesim.hardware_profiles.schema import CalibrationSpec, KindEfficiency
    from moesim.simulator.metrics import error_bar

    sc = load_scenario_example("mixtral-decode-8xh100.yaml")
    rows = scenario_op_rows(sc, 0, 1, 0)
    compute = rows[rows["kind"].isin(["gemm", "attention"])]
    assert (compute["source"] == "datasheet").all()
    assert (compute["sol_ratio"] >= 1.0 - 1e-12).all()
    assert rows.loc[rows["kind"] == "comm", "source"].str.startswith("link profiles").all()
    assert error_bar(sc, 0.01, 1000.0)["relative"] is None

    fit = KindEfficiency(compute_max=0.8, rows_half=16, memory_max=0.9, bytes_half=1e6, overhead=4e-6)
    cal = CalibrationSpec(kinds={"gemm": fit}, validation={"holdout_random_mape_after": 0.05,
                                                          "holdout_slice_mape_after": 0.08, "fit_mape_after": 0.01})
    cost = CostModel(load_device("H100-SXM").model_copy(update={"calibration": cal}))
    assert cost.provenance("gemm") == "calibrated fit (gemm, held-out MAPE 8.0%)"
    assert cost.provenance("attention") == "calibrated fit (gemm, held-out MAPE 8.0%)"  # falls back to the gemm fit


def load_scenario_example(name: str):
    from moesim.simulator.scenario import load_scenario
    from conftest import EXAMPLES

    return load_scenario(EXAMPLES / name)
