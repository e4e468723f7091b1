"""Host CPU GEMMs at batch 1 (issue 26): a single-row GEMM streams its weights at the profile's GEMV
memory efficiency (a cited default) until a calibration of that CPU replaces it, and a run says which."""

import copy

import pytest
import yaml

from moesim.hardware_profiles import load_device
from moesim.hardware_profiles.loader import profile_path
from moesim.simulator.config import config_from_dict
from moesim.simulator.cost_model import CostModel
from moesim.simulator.run import simulate

from conftest import EXAMPLES, example_config

WEIGHTS = 2 * 4096 * 14336.0  # one bf16 expert matrix


def test_a_single_row_gemm_reads_its_weights_at_the_gemv_efficiency():
    cpu = load_device("Ryzen-9-7950X")
    assert cpu.efficiency.gemv_memory == 0.5
    model = CostModel(cpu)
    flops = 2 * 4096 * 14336.0
    _, one, _ = model.terms("gemm", flops, WEIGHTS, rows=1)
    _, two, _ = model.terms("gemm", 2 * flops, WEIGHTS, rows=2)
    assert float(one) == pytest.approx(WEIGHTS / (83.2e9 * 0.5))  # hand calculation: bytes / (bandwidth x 0.5)
    assert float(two) == pytest.approx(WEIGHTS / (83.2e9 * 0.7))  # two rows: a GEMM at the memory efficiency
    # a GPU profile without the field is unchanged
    gpu = CostModel(load_device("H100-SXM"))
    _, g, _ = gpu.terms("gemm", flops, WEIGHTS, rows=1)
    assert float(g) == pytest.approx(WEIGHTS / (3.35e12 * 0.8))


def _calibrated_ryzen(tmp_path):
    data = yaml.safe_load(profile_path("devices", "Ryzen-9-7950X").read_text())
    data["name"] = "Ryzen-9-7950X-calibrated"
    data["calibration"] = {"kinds": {"gemm": {"compute_max": 1.0, "rows_half": 0.0, "memory_max": 0.9,
                                              "bytes_half": 0.0, "overhead": 2e-6}},
                           "validation": {"holdout_random_mape_after": 0.08}}
    path = tmp_path / "ryzen-calibrated.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_calibration_of_the_cpu_replaces_the_default(tmp_path):
    model = CostModel(load_device(_calibrated_ryzen(tmp_path)))
    _, one, _ = model.terms("gemm", 2 * 4096 * 14336.0, WEIGHTS, rows=1)
    assert float(one) == pytest.approx(WEIGHTS / (83.2e9 * 0.9))  # the fitted memory ceiling, not 0.5


def test_a_fiddler_run_on_a_calibrated_host_says_so(tmp_path):
    host = _calibrated_ryzen(tmp_path)
    cluster = yaml.safe_load(profile_path("clusters", "rtx4090-workstation").read_text())
    for unit in cluster["node"]["units"]:
        if unit["name"] == "host":
            unit["device"] = str(host)
    (tmp_path / "ws.yaml").write_text(yaml.safe_dump(cluster))
    base = example_config("offload-mixtral-4090-lru.yaml")
    base["workload"]["steps"] = 1
    base["offload"]["hybrid"] = {"cold_experts": "host"}
    base["outputs"] = {"trace_steps": 0}
    cal = copy.deepcopy(base)
    cal["hardware"]["cluster"] = str(tmp_path / "ws.yaml")
    default, fitted = (simulate(config_from_dict(c, EXAMPLES)) for c in (base, cal))
    assert "cited default" in default.summary["offload"]["host_cost_source"]
    assert fitted.summary["offload"]["host_cost_source"].startswith(
        "Ryzen-9-7950X-calibrated: calibrated fit (gemm, held-out MAPE 8.0%)")
    # the fitted 0.9 memory ceiling streams host experts faster than the 0.5 GEMV default
    assert fitted.summary["step_latency_s"]["mean"] < default.summary["step_latency_s"]["mean"]
