"""The network fabric against hand calculations: link queues, sharing, latency, pruning."""

import numpy as np
import pytest

from moesim.hardware_profiles import build_topology, compute_routes, load_cluster
from moesim.simulator.network import Fabric

from conftest import DATA


def _toy_fabric():
    return Fabric(compute_routes(build_topology(load_cluster(DATA / "toy" / "toy-cluster.yaml"))))


def test_single_flow_takes_bytes_over_bandwidth_plus_latency():
    f = _toy_fabric()  # 100 GB/s per direction, 1 us latency
    m = np.array([[0.0, 1e6], [0.0, 0.0]])
    arrival = f.transfer(np.array([0]), np.array([0.0]), m)
    assert arrival[1] == pytest.approx(1e6 / 100e9 + 1e-6)
    assert arrival[0] == -np.inf  # device 0 receives nothing


def test_flows_on_one_link_queue_and_opposite_directions_do_not_interfere():
    f = _toy_fabric()
    m = np.array([[0.0, 1e6], [2e6, 0.0]])
    arrival = f.transfer(np.array([0, 1]), np.array([0.0, 0.0]), m)
    assert arrival[1] == pytest.approx(1e-5 + 1e-6)
    assert arrival[0] == pytest.approx(2e-5 + 1e-6)
    # a later flow on the busy 0->1 link waits for the queued bytes (work-conserving FIFO)
    later = f.transfer(np.array([0]), np.array([5e-6]), np.array([[0.0, 1e6], [0.0, 0.0]]))
    assert later[1] == pytest.approx(1e-5 + 1e-5 + 1e-6)


def test_shared_ingress_link_drains_all_inbound_bytes():
    routes = compute_routes(build_topology(load_cluster("dgx-h100")))
    f = Fabric(routes)
    n = routes.num_devices
    m = np.zeros((n, n))
    m[1:, 0] = 1e8  # everyone sends 100 MB to device 0
    arrival = f.transfer(np.arange(n), np.zeros(n), m)
    ingress = routes.link_bandwidth[routes.pair_links[routes.pair_ptr[1 * n + 0] + 1]]
    assert arrival[0] == pytest.approx(7 * 1e8 / ingress + routes.pair_latency[1, 0])


def test_pruned_links_do_not_change_arrivals():
    """Links that carry identical pairs are pruned; arrivals equal the full computation."""
    routes = compute_routes(build_topology(load_cluster("h800-4x8")))
    pruned = Fabric(routes)
    full = Fabric(routes, prune_links=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        m = rng.integers(0 if _ else 1, 3, (32, 32)) * 1e6  # first wave dense, later sparse
        start = rng.random(32) * 1e-4
        np.testing.assert_allclose(pruned.transfer(np.arange(32), start, m), full.transfer(np.arange(32), start, m))
    assert pruned._entry_pair.size < full._entry_pair.size
