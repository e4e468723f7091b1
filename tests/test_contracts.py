"""Contract tests that guard the seams: one source for the phase list (reports included), SimPy's
delayed-success mechanism the network relies on, and `hardware.scale` reaching every device the
roofline compares."""

from __future__ import annotations

import pytest
import simpy

from moesim.hardware_profiles import load_device
from moesim.reports import compare_report, run_report
from moesim.simulator.config import config_from_dict
from moesim.simulator.network import Arrival
from moesim.simulator.phases import PHASES
from moesim.simulator.roofline import scenario_roofline
from moesim.simulator.scenario import resolve

from conftest import EXAMPLES, example_config


def test_reports_order_and_colour_every_phase_the_engine_records():
    assert run_report.PHASE_ORDER == list(PHASES)
    assert compare_report.PHASE_ORDER is run_report.PHASE_ORDER
    missing = [p for p in PHASES if p not in run_report.PHASE_COLORS]
    assert not missing, f"phases without a colour: {missing}"
    colours = [run_report.PHASE_COLORS[p] for p in PHASES]
    assert len(set(colours)) == len(colours), "two phases share a colour"


def test_an_arrival_fires_after_its_delay_with_no_value():
    env = simpy.Environment()
    seen = []

    def waiter(ev):
        value = yield ev
        seen.append((env.now, value))

    ev = Arrival(env)
    env.process(waiter(ev))
    env.run(until=0.5)
    ev.fire_after(1.5)
    env.run()
    assert seen == [(2.0, None)]
    late = Arrival(env)
    env.process(waiter(late))
    late.fire_after(-1.0)  # a time already past fires now, never in the past
    env.run()
    assert seen[-1] == (2.0, None)


def test_hardware_scale_reaches_the_other_devices_of_the_roofline():
    cfg = example_config("mixtral-decode-8xh100.yaml")
    base = resolve(config_from_dict(cfg, EXAMPLES))
    cfg["hardware"]["scale"] = {"memory_bandwidth": 2.0, "flops": 2.0}
    fast = resolve(config_from_dict(cfg, EXAMPLES))
    other = [load_device("MI300X")]
    t0 = scenario_roofline(base, others=other)
    t1 = scenario_roofline(fast, others=other)
    slow_mi, fast_mi = (t[t["device"] == "MI300X"]["time_s"].sum() for t in (t0, t1))
    slow_h, fast_h = (t[t["device"] == base.device.name]["time_s"].sum() for t in (t0, t1))
    assert fast_mi < 0.7 * slow_mi  # twice the roofs (less the fixed overheads); unscaled it was equal
    assert fast_mi / slow_mi == pytest.approx(fast_h / slow_h, rel=0.15)  # the same what-if on both devices
