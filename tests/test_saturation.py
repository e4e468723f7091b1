"""A load sweep says where the deployment saturates: offered against achieved requests per second
on a queue whose answer is known, and a sweep verdict that never calls a saturated point calm."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.reports.sweep_report import knee_sentence, saturated_rows
from moesim.simulator.serving.results import offered_and_achieved


def single_server(rate: float, service: float, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Poisson arrivals at `rate` served one at a time for `service` seconds each (a D/M/1-like queue
    by hand): the request table offered_and_achieved reads."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    finish = np.empty(n)
    free = 0.0
    for i, a in enumerate(arrival):
        free = max(free, a) + service
        finish[i] = free
    return pd.DataFrame({"arrival_s": arrival, "finish_s": finish, "e2e_s": finish - arrival,
                         "finished": np.ones(n, dtype=bool)})


def test_a_queue_that_keeps_up_achieves_what_is_offered():
    t = single_server(rate=5.0, service=0.1)  # 50% busy
    load = offered_and_achieved(t, t)
    assert abs(load["offered_requests_per_s"] - 5.0) < 1.0
    assert 0.9 < load["achieved_share"] < 1.1 and load["saturated"] is False


def test_an_overloaded_queue_achieves_its_service_rate_and_is_saturated():
    t = single_server(rate=20.0, service=0.1)  # offered 20/s, served at most 10/s
    load = offered_and_achieved(t, t)
    assert abs(load["achieved_requests_per_s"] - 10.0) < 0.5
    assert load["achieved_share"] < 0.6 and load["saturated"] is True


def test_unfinished_requests_mean_saturated_and_too_few_are_not_judged():
    t = single_server(rate=5.0, service=0.1)
    t.loc[t.index[-3:], "finished"] = False
    t.loc[t.index[-3:], "finish_s"] = np.nan
    assert offered_and_achieved(t, t)["saturated"] is True
    few = single_server(rate=5.0, service=0.1, n=5)
    assert offered_and_achieved(few, few)["saturated"] is None


def test_the_sweep_verdict_names_a_saturated_point_instead_of_calling_latency_flat():
    t = pd.DataFrame({"load": ["rate=32/s", "rate=128/s"], "tpot_p99_s": [0.010, 0.012],
                      "output_tokens_per_s_per_gpu": [1.0, 2.0], "offered_requests_per_s": [32.0, 128.0],
                      "achieved_requests_per_s": [31.5, 72.0], "saturated": [0.0, 1.0]})
    assert saturated_rows(t) == [1]
    sentence = knee_sentence(t)
    assert "does not turn up" not in sentence
    assert "Saturated at rate=128/s (achieved 72 of 128 req/s offered)" in sentence
