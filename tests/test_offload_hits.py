"""Hit accounting of expert offloading: a prefetched expert whose copy is still in flight when its
layer asks is a late hit, not a hit. `hit_rate` counts on-time hits only; hit_rate +
late_hit_rate + miss_rate == 1 over the demands; the simulated times do not depend on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moesim.reports.terminal import print_offload
from moesim.simulator.run import simulate

from conftest import DATA, example_config, write_config


def _tiny_two_layer(tmp: Path, prefetch: str) -> dict:
    """One device, two MoE layers of two experts (top-1), an empty cache with room for all four,
    a 10 GB/s host link (one 6 MiB copy: ~631 us, far longer than a toy layer), and one token
    routed to expert 0 at layer 0 and expert 1 at layer 1 in both steps."""
    (tmp / "toy-device.yaml").write_text((DATA / "toy" / "toy-device.yaml").read_text())
    model = yaml.safe_load((DATA / "toy" / "toy-model.yaml").read_text())
    model.update(name="Toy-MoE-2x2", num_layers=2)
    model["moe"]["num_experts"] = 2
    (tmp / "model.yaml").write_text(yaml.safe_dump(model))
    (tmp / "host-link.yaml").write_text(yaml.safe_dump({
        "name": "Toy-Host-Link", "kind": "pcie", "bandwidth": "10 GB/s", "latency": "2 us", "efficiency": 1.0}))
    (tmp / "cpu.yaml").write_text(yaml.safe_dump({
        "name": "Toy-CPU", "kind": "cpu", "memory": {"capacity": "100 GB", "bandwidth": "1 TB/s"},
        "compute": {"bf16": "1 TFLOPS"}, "efficiency": {"compute": 1.0, "memory": 1.0}, "overhead": "0 us",
        "gemm_tile": 1}))
    (tmp / "cluster.yaml").write_text(yaml.safe_dump({
        "name": "toy-1", "nodes": 1, "node": {
            "device": "toy-device.yaml", "devices_per_node": 1,
            "intra_node": {"topology": "none", "link": "host-link.yaml"},
            "host": {"device": "cpu.yaml", "count": 1, "link": "host-link.yaml"}}}))
    (tmp / "trace.jsonl").write_text("".join(json.dumps({"step": s, "experts": [[0], [1]]}) + "\n"
                                             for s in range(2)))
    return {"name": f"tiny-hits-{prefetch}", "model": "model.yaml", "hardware": {"cluster": "cluster.yaml"},
            "parallelism": {"ep": 1, "tp": 1, "dp": 1},
            "workload": {"phase": "decode", "kv_len": 10, "steps": 2,
                         "routing": {"generator": "trace", "trace": "trace.jsonl"}},
            "offload": {"tier": "host", "cache": {"capacity": 4, "policy": "lru", "warm": False},
                        "prefetch": {"policy": prefetch, "lookahead": 1}},
            "outputs": {"trace_steps": 0}, "seed": 0}


def _mixtral(prefetch: str, steps: int = 4, link: float = 1.0, **extra) -> dict:
    cfg = example_config("offload-mixtral-4090-lru.yaml")
    cfg["workload"]["steps"] = steps
    cfg["offload"]["prefetch"] = {"policy": prefetch, **extra}
    cfg["outputs"] = {"trace_steps": 0}
    if link != 1.0:
        cfg["hardware"]["scale"] = {"link_bandwidth": link}
    return cfg


def _run(tmp: Path, cfg: dict, name: str):
    return simulate(write_config(tmp, cfg, name))


def _check_partition(res) -> dict:
    """The three shares partition the demands, and on-time + late hits are exactly the hits the
    caches counted (the old, inflated figure); misses are the caches' misses."""
    o = res.summary["offload"]
    assert o["hits"] + o["late_hits"] + o["misses"] == o["demands"] > 0
    assert o["misses"] == o["misses_fetched"] + o["misses_on_host"]
    assert o["hit_rate"] + o["late_hit_rate"] + o["miss_rate"] == pytest.approx(1.0, abs=1e-12)
    assert res.summary["cache_hit_rate"] == o["hit_rate"] == o["hits"] / o["demands"]
    caches = res.raw.offload.caches
    resident_hits = sum(c.stats.hits for c in caches)
    assert o["hits"] + o["late_hits"] == resident_hits
    assert o["misses"] == sum(c.stats.misses for c in caches)
    assert o["hits"] <= resident_hits  # on-time hits never exceed the old count
    assert o["hit_rate"] <= resident_hits / o["demands"]
    assert o["late_hits"] == o["late_prefetches"] <= o["prefetches_used"]
    return o


def test_tiny_prefetch_still_in_flight_is_a_late_hit(tmp_path):
    """Step 0: layer 0 misses expert 0 and the oracle prefetches layer 1's expert 1 behind that copy;
    layer 1 asks ~1 copy before the prefetch lands: a late hit (the old count called it a hit).
    Step 1: both resident, on time. Without prefetch, layer 1's expert is a plain miss."""
    pre = _check_partition(_run(tmp_path, _tiny_two_layer(tmp_path, "oracle"), "oracle.yaml"))
    assert (pre["demands"], pre["hits"], pre["late_hits"], pre["misses"]) == (4, 2, 1, 1)
    assert (pre["hit_rate"], pre["late_hit_rate"], pre["miss_rate"]) == (0.5, 0.25, 0.25)
    assert pre["prefetches"] == 1 and pre["late_prefetches"] == 1
    none = _check_partition(_run(tmp_path, _tiny_two_layer(tmp_path, "none"), "none.yaml"))
    assert (none["demands"], none["hits"], none["late_hits"], none["misses"]) == (4, 2, 0, 2)
    assert none["late_hit_rate"] == 0.0


@pytest.mark.parametrize("prefetch,extra", [("oracle", {}), ("predictor", {"accuracy": 0.8}), ("affinity", {})])
def test_prefetch_over_a_slow_link_lands_late(tmp_path, prefetch, extra):
    """A host link at 5% of its bandwidth: prefetches cannot land one layer ahead."""
    res = _run(tmp_path, _mixtral(prefetch, link=0.05, **extra), f"{prefetch}.yaml")
    o = _check_partition(res)
    assert o["prefetches_used"] > 0 and o["late_hits"] > 0
    assert o["hit_rate"] < sum(c.stats.hits for c in res.raw.offload.caches) / o["demands"]


def test_without_prefetch_there_are_no_late_hits(tmp_path):
    o = _check_partition(_run(tmp_path, _mixtral("none"), "none.yaml"))
    assert o["prefetches"] == 0 and o["late_hits"] == 0 and o["late_hit_rate"] == 0.0
    assert o["misses_fetched"] == o["misses"] > 0


def test_accounting_does_not_change_simulated_time(tmp_path):
    """The split is bookkeeping: the same run with and without its late hits read gives one timeline,
    and an oracle's late prefetches still never make it slower than no prefetch."""
    none = _run(tmp_path, _mixtral("none"), "none.yaml")
    oracle = _run(tmp_path, _mixtral("oracle"), "oracle.yaml")
    again = _run(tmp_path, _mixtral("oracle"), "again.yaml")
    assert oracle.summary["makespan_s"] == again.summary["makespan_s"]
    assert oracle.summary["makespan_s"] <= none.summary["makespan_s"] * (1 + 1e-12)
    _check_partition(oracle)


def test_terminal_shows_late_hits_within_80_columns(tmp_path):
    from io import StringIO

    from rich.console import Console

    res = _run(tmp_path, _mixtral("oracle", link=0.05), "oracle.yaml")
    o = res.summary["offload"]
    out = StringIO()
    print_offload(o, Console(file=out, width=80, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "late hits" in text and f"{o['late_hits']:,}" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_run_with_host_experts_says_where_their_cost_comes_from():
    """Fiddler-style host experts are costed from the host CPU profile's constants unless that CPU
    was calibrated: the summary says which (issue 26)."""
    from moesim.simulator.config import config_from_dict

    from conftest import EXAMPLES

    cfg = example_config("offload-mixtral-4090-lru.yaml")
    cfg["workload"]["steps"] = 1
    cfg["offload"]["hybrid"] = {"cold_experts": "host"}
    source = simulate(config_from_dict(cfg, EXAMPLES)).summary["offload"]["host_cost_source"]
    assert source.startswith("Ryzen-9-7950X: datasheet constants (compute 0.5, memory 0.7")
    assert "moesim calibrate --device cpu" in source
