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


def test_last_pair_arrival_holds_each_pair_of_the_last_wave():
    f = _toy_fabric()
    m = np.array([[0.0, 1e6], [2e6, 0.0]])
    arrival = f.transfer(np.array([0, 1]), np.array([0.0, 0.0]), m)
    pairs = f.last_pair_arrival
    assert pairs.shape == (2, 2)
    assert pairs[0, 1] == pytest.approx(1e-5 + 1e-6) and pairs[1, 0] == pytest.approx(2e-5 + 1e-6)
    assert pairs[0, 0] == pairs[1, 1] == -np.inf  # bytes to itself stay local
    np.testing.assert_array_equal(pairs.max(axis=0), arrival)
    f.transfer(np.array([0]), np.array([5e-6]), np.array([[0.0, 1e6], [0.0, 0.0]]))  # a sparse wave
    assert f.last_pair_arrival[1, 0] == -np.inf  # only this wave's pairs
    assert f.last_pair_arrival[0, 1] == pytest.approx(1e-5 + 1e-5 + 1e-6)
    f.transfer(np.array([0]), np.array([1.0]), np.zeros((2, 2)))  # nothing sent
    assert (f.last_pair_arrival == -np.inf).all()


@pytest.mark.parametrize("cluster", ["h800-4x8", "dgx-h100"])
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_static_fast_path_is_bit_identical_to_the_general_path(cluster, prune, sparse, monkeypatch):
    """Waves where every device sends take a precomputed layout of their sending pairs (all of
    them, or a pattern that recurs, as staged dispatch's); it must give exactly the general
    computation, whatever the sources' FIFO order (ties in start time, submission order),
    the link state and the pattern. (A small fabric's other sparse waves take the dense layout
    with holes, equal to rounding: the next test; here they take the general path.)"""
    monkeypatch.setattr("moesim.simulator.network.SMALL_DENSE_ENTRIES", 0)
    routes = compute_routes(build_topology(load_cluster(cluster)))
    fast, general = Fabric(routes, prune_links=prune), Fabric(routes, prune_links=prune)
    n = routes.num_devices
    rng = np.random.default_rng(7)
    patterns = [rng.random((n, n)) < 0.3 for _ in range(3)]
    t = 0.0
    for i in range(40):
        m = rng.random((n, n)) * 1e7 + 1.0
        if sparse:  # recurring patterns, and now and then a fresh one (too sparse for the dense layout)
            m *= patterns[i % 3] if i % 5 else rng.random((n, n)) < 0.3
        src = rng.permutation(n) if i % 2 else np.arange(n)
        start = t + (np.round(rng.random(n) * 4) * 1e-5 if i % 3 else rng.random(n) * 1e-4)
        a = fast.transfer(src, start, m)
        b = general._general_transfer(src, start, m)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fast.last_pair_arrival, general.last_pair_arrival)
        np.testing.assert_array_equal(fast.free_at, general.free_at)
        t += 3e-5
    np.testing.assert_array_equal(fast.link_bytes, general.link_bytes)


def _two_fabrics(cluster: str, prune: bool) -> tuple[Fabric, Fabric, int]:
    """Two fresh fabrics of a bundled cluster (one for the path under test, one for the general path)."""
    routes = compute_routes(build_topology(load_cluster(cluster)))
    return Fabric(routes, prune_links=prune), Fabric(routes, prune_links=prune), routes.num_devices


@pytest.mark.parametrize("cluster", ["h800-4x8", "dgx-h100"])
@pytest.mark.parametrize("prune", [True, False])
def test_a_few_silent_pairs_in_the_dense_layout_queue_as_the_general_path(cluster, prune):
    """An all-source wave where some pairs send nothing (up to half of them; any share on a small
    fabric) runs on the dense layout with those entries masked (no work, starting at -inf): the
    same queueing as leaving them out, so arrivals, pair arrivals and link free times equal the
    general path's to rounding, and a silent pair receives nothing, exactly."""
    fast, general, n = _two_fabrics(cluster, prune)
    rng = np.random.default_rng(11)
    t = 0.0
    for i in range(30):
        m = (rng.random((n, n)) * 1e7 + 1.0) * (rng.random((n, n)) < rng.uniform(0.05, 0.99))
        if i == 7:
            m[:, 3] = 0.0  # a device nobody sends to: its inbound links stay as they were
        src = rng.permutation(n) if i % 2 else np.arange(n)
        start = t + (np.round(rng.random(n) * 4) * 1e-5 if i % 3 else rng.random(n) * 1e-4)
        a = fast.transfer(src, start, m)
        b = general._general_transfer(src, start, m)
        for x, y in ((a, b), (fast.last_pair_arrival, general.last_pair_arrival), (fast.free_at, general.free_at)):
            np.testing.assert_array_equal(np.isinf(x), np.isinf(y))
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)  # the scan offsets link g by g x (>= 1 s): ulp(links)
        t += 3e-5
    np.testing.assert_array_equal(fast.link_bytes, general.link_bytes)


def test_collective_waves_and_waits_match_a_hand_calculation():
    import simpy
    from moesim.simulator.network import Collective

    env = simpy.Environment()
    f = _toy_fabric()  # 100 GB/s per direction, 1 us latency
    coll = Collective(env, f, np.array([[0.0, 1e6], [0.0, 0.0]]), extra_latency=1e-6)
    assert not coll.dense and coll.ready.tolist() == [True, False]
    woke = {}

    def device(d, delay):
        yield env.timeout(delay)
        coll.submit(d)
        yield from coll.inbound(d, not_before=env.now + 5e-6, then=1e-6)
        woke[d] = (env.now, coll.received_at(d, 0.0))

    env.process(device(0, 2e-6))
    env.process(device(1, 0.0))
    env.run()
    arrive = 2e-6 + 1e-5 + 1e-6 + 1e-6
    assert woke[1] == (pytest.approx(arrive + 1e-6), pytest.approx(arrive))
    assert woke[0] == (pytest.approx(2e-6 + 5e-6 + 1e-6), 0.0)  # receives nothing: no wait for bytes
    assert coll.ready.all() and coll.arrival[1] == pytest.approx(arrive)


def test_collective_ignores_bytes_to_itself_even_for_a_transposed_matrix():
    """Combine matrices are transposed views; a device's own bytes never make it wait."""
    import simpy
    from moesim.simulator.network import Collective

    m = np.array([[5e6, 0.0], [1e6, 5e6]]).T  # a non-contiguous view with a full diagonal
    coll = Collective(simpy.Environment(), _toy_fabric(), m)
    assert coll.need.tolist() == [[False, True], [False, False]]
    assert coll.ready.tolist() == [True, False] and not coll.dense


@pytest.mark.parametrize("cluster", ["h800-4x8", "dgx-h100"])
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("kind", [None, "all_to_all"])
def test_small_wave_path_is_bit_identical_to_the_general_path(cluster, prune, kind):
    """Waves of a few sources (a sparse all-to-all's late waves) are costed in plain Python; every
    float operation is the vectorised path's, so arrivals, per-pair arrivals, link free times and
    link bytes must agree to the bit, whatever the FIFO ties, the link state and the kernel kind."""
    small, general, n = _two_fabrics(cluster, prune)
    rng = np.random.default_rng(11)
    t = 0.0
    for i in range(120):
        m = (rng.random((n, n)) * 1e6 + 1.0) * (rng.random((n, n)) < (0.25 if i % 2 else 0.9))
        k = 1 + i % 4
        src = rng.choice(n, size=k, replace=False)
        start = t + (np.round(rng.random(k) * 3) * 1e-6 if i % 3 else rng.random(k) * 1e-5)
        a = small._small_transfer(src, start, m, kind)
        b = general._general_transfer(src, start, m, kind)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(small.last_pair_arrival, general.last_pair_arrival)
        np.testing.assert_array_equal(small.free_at, general.free_at)
        t += 2e-6 * (i % 5)
    np.testing.assert_array_equal(small.link_bytes, general.link_bytes)
    nothing = small._small_transfer(np.array([0]), np.array([t]), np.zeros((n, n)), kind)
    assert (nothing == -np.inf).all() and (small.last_pair_arrival == -np.inf).all()
