"""Prediction intervals from a calibration's held-out residuals (issue 26): the propagation holds
its stated coverage on a synthetic residual set, the residuals come from held-out rows only, and
a calibrated run's summary carries the interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.simulator.prediction_interval import step_interval
from moesim.validation.residuals import held_out_residuals


def test_an_interval_from_synthetic_residuals_holds_its_coverage():
    """All of a 10 ms step is gemm compute whose log error is N(0, 0.1): the 80% interval is
    10 ms x exp(+-1.2816 x 0.1) (within 3%), and fresh errors from the same law fall inside it
    80% of the time (within 3 points); half the step on a kind with no error of its own halves
    the width."""
    rng = np.random.default_rng(1)
    residuals = {"gemm": list(rng.normal(0.0, 0.1, 3000))}
    low, high = step_interval(0.010, {"gemm": 0.010}, residuals, level=0.8, seed=3)
    assert low == pytest.approx(0.010 * np.exp(-1.2816 * 0.1), rel=0.03)
    assert high == pytest.approx(0.010 * np.exp(1.2816 * 0.1), rel=0.03)
    truth = 0.010 * np.exp(rng.normal(0.0, 0.1, 20000))
    assert np.mean((truth >= low) & (truth <= high)) == pytest.approx(0.8, abs=0.03)
    half = step_interval(0.010, {"gemm": 0.005}, residuals, level=0.8, seed=3)
    assert (half[1] - half[0]) == pytest.approx((high - low) / 2, rel=0.08)
    assert step_interval(0.010, {"gemm": 0.010}, residuals, seed=3) == (low, high)  # deterministic


def test_residuals_come_from_held_out_rows_by_op_kind():
    table = pd.DataFrame({"kind": ["gemm", "gemm", "fused_moe", "moe_layer", "attention"],
                          "split": ["fit", "holdout_random", "holdout_slice", "e2e", "holdout_random"],
                          "measured_s": [1.0, 2.0, 1.1, 3.0, 1.0], "sim_after_s": [1.0, 1.0, 1.0, 3.0, np.nan]})
    got = held_out_residuals(table)
    assert got == {"gemm": [round(float(np.log(2.0)), 5)], "grouped_gemm": [round(float(np.log(1.1)), 5)],
                   "e2e": [0.0]}  # the fit row and the row the model could not predict are left out


def test_a_calibrated_run_carries_an_interval_from_its_residuals():
    from moesim.simulator.config import config_from_dict
    from moesim.simulator.run import simulate

    from conftest import EXAMPLES, example_config

    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["hardware"] = {"cluster": "dgx-h100-calibrated"}
    cfg["workload"]["steps"] = 2
    res = simulate(config_from_dict(cfg, EXAMPLES))
    bar = res.summary["error_bar"]
    step = res.summary["step_latency_s"]["mean"]
    low, high = bar["step_latency_s"]
    assert bar["level"] == 0.8 and low < step < high and "held-out residuals" in bar["source"]
    assert bar["relative"][0] < 0 < bar["relative"][1] and bar["relative"][0] != -bar["relative"][1]
