"""Expert offloading in the engine: a hand-calculated tiny case, equivalence with the no-offload run,
LRU inclusion, oracle prefetching, byte accounting, hybrid execution, precision and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import simpy
import yaml

from moesim.errors import ConfigError
from moesim.simulator.config import config_from_dict
from moesim.simulator.offload.copy_engine import CopyEngine
from moesim.simulator.expert_precision import expert_precision
from moesim.simulator.offload.config import PrecisionConfig
from moesim.simulator.run import simulate, write_run_dir
from moesim.simulator.scenario import resolve
from moesim.workloads import load_model

from conftest import DATA, example_config, write_config

US = 1e-6
WEIGHTS = 3 * 1024 * 1024 * 2  # one toy expert: SwiGLU, hidden 1024, width 1024, bf16
HOST_BW, HOST_LAT = 10e9, 2 * US
COPY = HOST_LAT + WEIGHTS / HOST_BW  # 631.1456 us


def _tiny_offload_files(tmp: Path, steps: list[int]) -> dict:
    """One device, one MoE layer with two experts (top-1), a host over a 10 GB/s link, and a
    trace that sends the single token of each step to `steps[s]`."""
    for name in ("toy-device.yaml",):
        (tmp / name).write_text((DATA / "toy" / name).read_text())
    model = yaml.safe_load((DATA / "toy" / "toy-model.yaml").read_text())
    model["name"] = "Toy-MoE-2"
    model["moe"]["num_experts"] = 2
    (tmp / "model.yaml").write_text(yaml.safe_dump(model))
    (tmp / "cpu.yaml").write_text(yaml.safe_dump({
        "name": "Toy-CPU", "kind": "cpu", "memory": {"capacity": "100 GB", "bandwidth": "1 TB/s"},
        "compute": {"bf16": "1 TFLOPS"}, "efficiency": {"compute": 1.0, "memory": 1.0}, "overhead": "0 us",
        "gemm_tile": 1}))
    (tmp / "host-link.yaml").write_text(yaml.safe_dump({
        "name": "Toy-Host-Link", "kind": "pcie", "bandwidth": "10 GB/s", "latency": "2 us", "efficiency": 1.0}))
    (tmp / "cluster.yaml").write_text(yaml.safe_dump({
        "name": "toy-1", "nodes": 1, "node": {
            "device": "toy-device.yaml", "devices_per_node": 1,
            "intra_node": {"topology": "none", "link": "host-link.yaml"},
            "host": {"device": "cpu.yaml", "count": 1, "link": "host-link.yaml"}}}))
    (tmp / "trace.jsonl").write_text("".join(json.dumps({"step": s, "experts": [[e]]}) + "\n"
                                             for s, e in enumerate(steps)))
    return {"name": "tiny-offload", "model": "model.yaml", "hardware": {"cluster": "cluster.yaml"},
            "parallelism": {"ep": 1, "tp": 1, "dp": 1},
            "workload": {"phase": "decode", "kv_len": 10, "steps": len(steps),
                         "routing": {"generator": "trace", "trace": "trace.jsonl"}},
            "outputs": {"trace_steps": 0}, "seed": 0}


def _run(tmp: Path, cfg: dict, name: str = "scenario.yaml"):
    return simulate(write_config(tmp, cfg, name))


def _step_latency(result) -> np.ndarray:
    raw = result.raw
    start = np.nanmin(raw.start[:, 0, :, :, 0], axis=(1, 2))
    end = np.nanmax(raw.end, axis=(1, 2, 3, 4))
    return end - start


def test_tiny_case_one_layer_two_experts_one_slot(tmp_path):
    """Warm cache holds expert 0; the token goes to 0, 1, 0, 1: one hit, then three misses, each
    costing exactly one copy (2 us + 6 MiB at 10 GB/s) of stall on top of the no-offload step."""
    cfg = _tiny_offload_files(tmp_path, [0, 1, 0, 1])
    base = _run(tmp_path, cfg, "base.yaml")
    cfg["offload"] = {"tier": "host", "cache": {"capacity": 1, "policy": "lru"}}
    off = _run(tmp_path, cfg, "off.yaml")
    o = off.summary["offload"]
    assert (o["hits"], o["misses"], o["evictions"]) == (1, 3, 3)
    assert off.summary["cache_hit_rate"] == pytest.approx(0.25)
    assert o["bytes_fetched"]["host"] == pytest.approx(3 * WEIGHTS)
    extra = _step_latency(off) - _step_latency(base)
    assert COPY == pytest.approx(631.1456 * US, rel=1e-12)
    assert extra == pytest.approx([0.0, COPY, COPY, COPY], rel=1e-9, abs=1e-15)
    stall = off.phases[off.phases.phase == "offload_stall"].sort_values("step")
    assert stall.duration_s.to_numpy() == pytest.approx([COPY] * 3, rel=1e-9)
    assert list(stall.step) == [1, 2, 3]
    # the copies crossed the host link: its class counts them (a single device: no all-to-all bytes)
    host_class = off.scenario.offload.tier.link_classes[0]
    assert off.summary["bytes_by_link_class"][host_class] == pytest.approx(3 * WEIGHTS)


def test_tiny_case_host_cpu_runs_the_cold_expert(tmp_path):
    """Fiddler mode: the missed expert runs on the 1 TFLOPS host CPU instead of being copied; the
    token's activations cross the link both ways (2 x (2 us + 2 KiB / 10 GB/s))."""
    cfg = _tiny_offload_files(tmp_path, [0, 1])
    base = _run(tmp_path, cfg, "base.yaml")
    cfg["offload"] = {"cache": {"capacity": 1}, "hybrid": {"cold_experts": "host"}}
    off = _run(tmp_path, cfg, "off.yaml")
    o = off.summary["offload"]
    assert o["host_experts_run"] == 1 and o["bytes_fetched"]["host"] == 0.0
    assert o["host_activation_bytes"] == pytest.approx(2 * 1024 * 2)
    host_class = off.scenario.offload.host.link_classes[0]
    assert off.summary["bytes_by_link_class"][host_class] == pytest.approx(2 * 1024 * 2)
    cpu = max(2 * 1024 * 1024 * 3 / 1e12, (WEIGHTS + (2 * 1024 + 3 * 1024) * 2) / 1e12)  # memory-bound on the CPU
    crossing = 2 * (HOST_LAT + 1024 * 2 / HOST_BW)
    gpu_expert = float(base.phases.query("step == 1 and phase == 'expert'").duration_s.iloc[0])
    extra = _step_latency(off) - _step_latency(base)
    assert extra[1] == pytest.approx(cpu + crossing - gpu_expert, rel=1e-9)


def test_cache_holding_every_expert_equals_the_no_offload_run(tmp_path, monkeypatch):
    # to the bit on the event loop, which every offloading run uses (the event-free path costs
    # this run's sparse all-to-alls in one pass each: equal to rounding, tests/test_lockstep.py)
    monkeypatch.setenv("MOESIM_ENGINE", "events")
    cfg = example_config("mixtral-decode-8xh100.yaml")
    cfg["workload"]["steps"] = 3
    base = _run(tmp_path, cfg, "base.yaml")
    cfg["offload"] = {"tier": "host", "cache": {"policy": "lru"}, "prefetch": {"policy": "oracle"}}
    off = _run(tmp_path, cfg, "off.yaml")
    assert off.summary["offload"]["cache_holds_all_experts"]
    assert off.summary["offload"]["misses"] == 0 and off.summary["offload"]["bytes_fetched"]["host"] == 0
    np.testing.assert_array_equal(base.raw.start, off.raw.start)
    np.testing.assert_array_equal(base.raw.end, off.raw.end)


def _mixtral_4090(capacity=None, prefetch="none", steps=6, scope="device", **extra) -> dict:
    cfg = example_config("offload-mixtral-4090-lru.yaml")
    cfg["workload"]["steps"] = steps
    cfg["offload"]["cache"] = {"policy": "lru", "scope": scope, **({"capacity": capacity} if capacity else {})}
    cfg["offload"]["prefetch"] = {"policy": prefetch, **extra}
    cfg["outputs"] = {"trace_steps": 0}
    return cfg


def test_larger_lru_cache_never_lowers_the_hit_rate(tmp_path):
    rates = []
    for cap in (16, 48, 96, 144, 192):
        res = _run(tmp_path, _mixtral_4090(capacity=cap), f"c{cap}.yaml")
        rates.append(res.summary["cache_hit_rate"])
    assert all(b >= a for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] > rates[0]


@pytest.mark.parametrize("scope,capacity", [("layer", None), ("device", 120)])
def test_oracle_prefetch_is_never_slower_than_none(tmp_path, scope, capacity):
    none = _run(tmp_path, _mixtral_4090(capacity, "none", scope=scope), "none.yaml")
    oracle = _run(tmp_path, _mixtral_4090(capacity, "oracle", scope=scope), "oracle.yaml")
    assert oracle.summary["makespan_s"] <= none.summary["makespan_s"] * (1 + 1e-12)
    assert (_step_latency(oracle) <= _step_latency(none) * (1 + 1e-12)).all()
    assert oracle.summary["offload"]["hit_rate"] >= none.summary["offload"]["hit_rate"]
    assert oracle.summary["offload"]["prefetches_wasted"] == 0


def test_bytes_fetched_equal_misses_times_expert_bytes(tmp_path):
    res = _run(tmp_path, _mixtral_4090(capacity=64), "a.yaml")
    o = res.summary["offload"]
    one = float(res.scenario.offload.expert_bytes[0, 0])
    assert one == pytest.approx(3 * 4096 * 14336 * (4 / 8 + 2 / 64))  # 4-bit, a 16-bit scale per 64 weights
    assert o["misses"] > 0
    assert o["bytes_fetched"]["host"] == pytest.approx(o["misses"] * one)
    copies = res.raw.offload.copies_table()
    assert len(copies) == o["misses"] and (copies.kind == "demand").all()


def test_per_expert_precision_changes_bytes_moved(tmp_path):
    cfg = _mixtral_4090(capacity="4 GB")
    cfg["precision"] = {"bits": 4, "group_size": 64, "per_expert": [{"bits": 8, "layers": [0, 1]}]}
    res = _run(tmp_path, cfg)
    sizes = res.scenario.offload.expert_bytes
    assert sizes[0, 0] == pytest.approx(2 * sizes[5, 0] - 3 * 4096 * 14336 * 2 / 64, rel=1e-12)
    copies = res.raw.offload.copies_table()
    assert copies.bytes.sum() == pytest.approx(res.summary["offload"]["bytes_fetched"]["host"])
    want = sizes[copies.moe_layer.to_numpy(), copies.expert.to_numpy()]
    np.testing.assert_allclose(copies.bytes.to_numpy(), want)


def test_predictor_is_deterministic_and_accuracy_helps(tmp_path):
    runs = [_run(tmp_path, _mixtral_4090(None, "predictor", scope="layer", accuracy=a), f"p{i}.yaml")
            for i, a in enumerate((0.3, 0.3, 1.0))]
    assert runs[0].summary["makespan_s"] == runs[1].summary["makespan_s"]
    assert runs[2].summary["offload"]["prefetches_wasted"] == 0
    assert runs[2].summary["offload"]["hit_rate"] > runs[0].summary["offload"]["hit_rate"]


def test_storage_tier_and_outputs(tmp_path):
    cfg = example_config("offload-dsv2lite-jetson-storage.yaml")
    cfg["workload"]["steps"] = 2
    res = _run(tmp_path, cfg)
    o = res.summary["offload"]
    assert o["tier"] == "storage" and o["misses"] > 0
    assert o["peak_device_memory_bytes"] <= res.scenario.device.memory.capacity
    assert o["statistics"]["in_sample"] is False
    run = write_run_dir(res, tmp_path / "run")
    assert {"copies.csv", "host_experts.csv", "trace.json"} <= {p.name for p in run.iterdir()}
    events = json.loads((run / "trace.json").read_text())["traceEvents"]
    assert any(e.get("cat") == "copy" and e["tid"] == 2 for e in events)
    layers = res.layers
    assert {"offload_stall_max_s", "fetched_bytes"} <= set(layers.columns)
    assert layers.fetched_bytes.sum() == pytest.approx(sum(o["bytes_fetched"].values()) + 0.0, rel=1e-9) or \
        o["copies_cancelled"] > 0


def test_attention_on_host_frees_the_kv_cache(tmp_path):
    cfg = _mixtral_4090()
    dev = resolve(config_from_dict(cfg, tmp_path))
    cfg["offload"]["hybrid"] = {"attention": "host"}
    host = resolve(config_from_dict(cfg, tmp_path))
    assert host.memory.kv_cache == 0.0 and dev.memory.kv_cache > 0
    assert host.offload.cache_bytes == pytest.approx(dev.offload.cache_bytes + dev.memory.kv_cache)
    # attention on the host does not send cold experts there: they are still fetched
    res = _run(tmp_path, cfg, "host-attention.yaml")
    assert res.summary["offload"]["host_experts_run"] == 0 and res.summary["offload"]["misses"] > 0
    base = _run(tmp_path, _mixtral_4090(), "device-attention.yaml")
    att = res.phases[res.phases.phase == "attention"].duration_s.mean()
    assert att > base.phases[base.phases.phase == "attention"].duration_s.mean()  # the CPU is slower


def test_copy_engine_serves_demand_before_queued_prefetches():
    env = simpy.Environment()
    eng = CopyEngine(env, "test", bandwidth=1e9, latency=0.0)
    a = eng.request("a", 0, 1e6, "prefetch")  # starts at once, 1 ms
    env.run(until=1e-4)
    b = eng.request("b", 0, 1e6, "prefetch")
    c = eng.request("c", 0, 1e6, "demand")  # jumps ahead of b
    env.run()
    assert (a.end, c.end, b.end) == pytest.approx((1e-3, 2e-3, 3e-3))
    env = simpy.Environment()
    eng = CopyEngine(env, "test", bandwidth=1e9, latency=1e-3, lanes=2)  # setups overlap, bytes do not
    x, y = eng.request("x", 0, 1e6, "demand"), eng.request("y", 0, 1e6, "demand")
    env.run()
    assert (x.end, y.end) == pytest.approx((2e-3, 3e-3))


def test_precision_overrides_and_errors():
    model = load_model("Mixtral-8x7B")
    p = expert_precision(model, PrecisionConfig(bits=4, per_expert=[{"bits": 2, "layers": [3], "experts": [1]}]))
    assert p.bits[3, 1] == 2 and p.bits[3, 0] == 4 and p.quantized.all()
    assert expert_precision(model, None).uniform_native
    with pytest.raises(ValueError, match=r"per_expert\[0\] names experts \[9\]"):
        expert_precision(model, PrecisionConfig(per_expert=[{"bits": 4, "experts": [9]}]))


@pytest.mark.parametrize("change,field,text", [
    (lambda c: c.update(hardware={"cluster": "dgx-h100"}, parallelism={"ep": 8}) or c["offload"].update(tier="storage"),
     "offload.tier", "no storage tier"),
    (lambda c: c["offload"]["cache"].update(capacity="10 MB"), "offload.cache.capacity", "less than one expert"),
    (lambda c: c["offload"]["cache"].update(capacity="40 GB"), "offload.cache.capacity", "does not fit"),
    (lambda c: c.update(precision={"per_expert": [{"bits": 4, "layers": [40]}]}), "precision.per_expert",
     "MoE layers 0..31"),
])
def test_bad_offload_configs_name_the_field(tmp_path, change, field, text):
    cfg = _mixtral_4090()
    change(cfg)
    with pytest.raises(ConfigError, match=text) as err:
        resolve(config_from_dict(cfg, tmp_path))
    assert err.value.field == field


def test_hybrid_without_a_host_and_a_cache_too_small_for_one_layer(tmp_path):
    cfg = example_config("offload-dsv2lite-jetson-storage.yaml")
    cfg["offload"]["hybrid"] = {"cold_experts": "auto"}
    with pytest.raises(ConfigError, match="no host CPU") as err:
        resolve(config_from_dict(cfg, tmp_path))
    assert err.value.field == "offload.hybrid.cold_experts"
    small = _mixtral_4090(capacity=1)
    with pytest.raises(ConfigError, match="needs 2 experts at once") as err:
        _run(tmp_path, small)
    assert err.value.field == "offload.cache.capacity"
    per_layer = _mixtral_4090(capacity=20, scope="layer")  # under one expert per layer
    with pytest.raises(ConfigError, match="32 MoE layers share it") as err:
        _run(tmp_path, per_layer)
    assert err.value.field == "offload.cache.capacity"
