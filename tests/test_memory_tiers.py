"""Memory tiers of a device: hand-checked bandwidths, sharing, and the storage-needs-a-host rule."""

from __future__ import annotations

import pytest

from moesim.hardware_profiles import load_cluster
from moesim.hardware_profiles.memory_tiers import memory_tiers
from moesim.hardware_profiles.schema import ClusterSpec


def test_single_gpu_host_and_storage_by_hand():
    tiers = {t.name: t for t in memory_tiers(load_cluster("gpu-host-pcie"))}
    assert list(tiers) == ["device", "host", "storage"]
    assert tiers["host"].bandwidth == pytest.approx(63e9 * 0.8)  # PCIe5 x16 at 80%, below DDR5
    assert tiers["storage"].bandwidth == pytest.approx(7.45e9 * 0.9)  # the SSD, not PCIe, bounds reads
    assert tiers["storage"].latency == pytest.approx(60e-6 + 1e-6)
    assert tiers["device"].bandwidth > tiers["host"].bandwidth > tiers["storage"].bandwidth


def test_dgx_host_memory_is_shared_per_socket():
    tiers = {t.name: t for t in memory_tiers(load_cluster("dgx-h100"))}
    assert "storage" not in tiers
    assert tiers["host"].shared_by == 4  # 8 GPUs over 2 sockets


def test_storage_without_host_reads_into_unified_memory():
    """A unified-memory SoC has no host tier: storage reads go straight to device memory."""
    spec = load_cluster("gpu-host-pcie").model_dump()
    spec["node"]["units"] = []  # its host CPU is a unit named host
    tiers = {t.name: t for t in memory_tiers(ClusterSpec.model_validate(spec))}
    assert set(tiers) == {"device", "storage"}
    assert tiers["storage"].bandwidth == pytest.approx(7.45e9 * 0.9)
    assert tiers["storage"].latency == pytest.approx(60e-6)


def test_gh200_reaches_host_memory_over_nvlink_c2c():
    """Grace Hopper: host memory over NVLink-C2C (450 GB/s per direction at 80%), not PCIe."""
    tiers = {t.name: t for t in memory_tiers(load_cluster("gh200"))}
    assert tiers["host"].path[-1] == "NVLink-C2C"
    assert tiers["host"].bandwidth == pytest.approx(min(450e9 * 0.8, 512e9 * 0.85))
    pcie = {t.name: t for t in memory_tiers(load_cluster("gpu-host-pcie"))}
    assert tiers["host"].bandwidth > 5 * pcie["host"].bandwidth
