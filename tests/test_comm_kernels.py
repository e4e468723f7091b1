"""Communication kernels as deployments run them (issue 26): floors per group size, separate dispatch and
combine floors, all-gather / reduce-scatter kinds, and nccl-tests fits at several rank counts that
reproduce logs generated from the engine's own collectives (simulator/collective_time.py)."""

import numpy as np
import pytest
import yaml

from moesim.hardware_profiles import build_topology, compute_routes, load_cluster
from moesim.simulator import comm_cost
from moesim.simulator.collective_time import collective_seconds
from moesim.validation.nccl_tests import cluster_with_fits, fit_collectives, parse_nccl_tests

from conftest import DATA

US = 1e-6
SIZES = [2 ** p for p in range(3, 29, 2)]


def _cluster(tmp_path, costs: dict, devices: int = 8, name: str = "toy-8.yaml", measured: dict | None = None) -> str:
    """The toy profiles in tmp_path: `devices` GPUs on one switch, Toy-Link given `costs` as its defaults."""
    for f in (DATA / "toy").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    link = yaml.safe_load((DATA / "toy" / "toy-link.yaml").read_text())
    link["collectives"] = costs
    (tmp_path / "toy-link.yaml").write_text(yaml.safe_dump(link))
    cluster = yaml.safe_load((DATA / "toy" / "toy-cluster.yaml").read_text())
    cluster["node"].update(devices_per_node=devices, intra_node={"topology": "switch", "link": "toy-link.yaml"})
    if measured:
        cluster["collectives"] = measured
    (tmp_path / name).write_text(yaml.safe_dump(cluster))
    return str(tmp_path / name)


def _routes(path: str):
    return compute_routes(build_topology(load_cluster(path)))


def _log(routes, name: str, kind: str, ranks: int) -> str:
    """An nccl-tests log whose times are the engine's own for each buffer size."""
    factor = {"all_reduce": 2 * (ranks - 1) / ranks}.get(name, (ranks - 1) / ranks)
    head = f"# Collective test starting: {name}_perf\n#\n# Using devices\n"
    head += "".join(f"#  Rank {r:2d} Group  0 Pid {100 + r} on host0 device {r} [0x1] NVIDIA H100\n" for r in range(ranks))
    lines = []
    for size in SIZES:
        t = collective_seconds(routes, kind, ranks, size)
        alg = size / t / 1e9
        one = f"  {t * 1e6:10.3f}  {alg:9.4f}  {alg * factor:9.4f}      0"
        lines.append(f"{size:12d}  {max(size // 4, 1):12d}     float     sum      -1{one}{one}")
    return head + "\n".join(lines) + "\n"


def test_floor_follows_the_group_size_between_the_sizes_given(tmp_path):
    routes = _routes(_cluster(tmp_path, {"all_to_all": {"floors": {2: "4 us", 8: "10 us"}}}))
    comm = routes.comm["all_to_all"]
    assert comm.floor_at(2)[0] == pytest.approx(4 * US)
    assert comm.floor_at(4)[0] == pytest.approx(6 * US)  # linear in the group size: 4 + (4 - 2) / 6 x 6 us
    assert comm.floor_at(8)[0] == pytest.approx(10 * US)
    assert comm.floor_at(16)[0] == pytest.approx(10 * US)  # the nearest given size outside them
    # a device's floor is its group's: groups of 2 and of 4 in one cluster
    group = np.array([0, 0, 1, 1, 1, 1, 2, 3])
    pairs = (group[:, None] == group[None, :]) & ~np.eye(8, dtype=bool)
    floors = comm_cost.device_floors(routes, "all_to_all", pairs)
    np.testing.assert_allclose(floors, [4 * US, 4 * US, 6 * US, 6 * US, 6 * US, 6 * US, 0, 0])


def test_combine_has_its_own_floor(tmp_path):
    routes = _routes(_cluster(tmp_path, {"low_latency": {"floor": "12 us", "combine_floor": "20 us"}}))
    pairs = ~np.eye(8, dtype=bool)
    assert comm_cost.device_floors(routes, "low_latency", pairs)[0] == pytest.approx(12 * US)
    assert comm_cost.device_floors(routes, "low_latency", pairs, "combine")[0] == pytest.approx(20 * US)
    # a small message: the combine's span is the dispatch's plus the 8 us the floors differ by
    d = collective_seconds(routes, "low_latency", 8, 1024)
    c = collective_seconds(routes, "low_latency", 8, 1024, role="combine")
    assert c - d == pytest.approx(8 * US, rel=1e-9)


def test_engine_charges_the_combine_floor_to_combine(tmp_path, toy_config):
    """The toy step with a combine floor 4 us above the dispatch floor: every combine span is 4 us
    longer than with equal floors, every dispatch span the same."""
    from conftest import toy_file

    from moesim.simulator.run import simulate

    spans = []
    for sub, combine in (("same", None), ("own", "9 us")):
        cfg = dict(toy_config)
        (tmp_path / sub / "c").mkdir(parents=True)
        (tmp_path / sub / "run").mkdir()
        cost = {"floor": "5 us", **({"combine_floor": combine} if combine else {})}
        cfg["hardware"] = {"cluster": _cluster(tmp_path / sub / "c", {"all_to_all": cost}, devices=2,
                                               name="toy-2.yaml")}
        ph = simulate(toy_file(tmp_path / sub / "run", cfg)).phases.set_index(["step", "layer", "device", "phase"])
        spans.append(ph.duration_s)
    diff = (spans[1] - spans[0]).unstack("phase")
    np.testing.assert_allclose(diff["dispatch"], 0.0, atol=1e-12)
    np.testing.assert_allclose(diff["combine"], 4 * US, rtol=1e-6)


@pytest.mark.parametrize("name,kind", [("alltoall", "all_to_all"), ("all_reduce", "all_reduce"),
                                       ("all_gather", "all_gather"), ("reduce_scatter", "reduce_scatter")])
def test_logs_at_several_rank_counts_fit_a_profile_that_reproduces_them(tmp_path, name, kind):
    """Logs made from a planted profile at 2, 4 and 8 ranks fit into a cluster variant whose collectives
    reproduce every log within 5%. The all-to-all's planted floor is one number and its per-message
    overhead (half_bytes) is recovered from how the constant grows with the n - 1 messages a rank
    sends over its uplink; the rings' floors grow with their steps and are recovered per group size
    (a floor per size and a per-message overhead cannot both be told from such logs)."""
    if kind == "all_to_all":
        planted = {kind: {"floor": "10 us", "efficiency": 0.7, "half_bytes": 8192}}
    else:
        planted = {kind: {"floors": {2: "6 us", 4: "9 us", 8: "15 us"}, "efficiency": 0.7}}
    (tmp_path / "p").mkdir()
    truth = _routes(_cluster(tmp_path / "p", {}, measured={kind: {"Toy-Link": planted[kind]}}))
    log = "".join(_log(truth, name, kind, n) for n in (2, 4, 8))
    fits = fit_collectives(parse_nccl_tests(log))
    assert sorted(fits[name]["by_ranks"]) == [2, 4, 8]
    (tmp_path / "f").mkdir()
    base = _cluster(tmp_path / "f", {})
    data, warnings = cluster_with_fits(base, fits, ["x.log"], multi_node=False)
    assert not warnings
    cost = data["collectives"][kind]["Toy-Link"]
    assert cost["efficiency"] == pytest.approx(0.7, rel=0.02)
    if kind == "all_to_all":  # the size-efficiency curve is fitted: the constant grows with n - 1 messages
        assert cost["half_bytes"] == pytest.approx(8192, rel=0.05)
        assert cost["floors"][8] == pytest.approx(10 * US, rel=0.05)
    else:
        assert cost["floors"] == pytest.approx({2: 6 * US, 4: 9 * US, 8: 15 * US}, rel=0.05)
    variant = tmp_path / "f" / "fitted.yaml"
    variant.write_text(yaml.safe_dump(data))
    fitted = _routes(str(variant))
    for n in (2, 4, 8):
        want = np.array([collective_seconds(truth, kind, n, s) for s in SIZES])
        got = np.array([collective_seconds(fitted, kind, n, s) for s in SIZES])
        np.testing.assert_allclose(got, want, rtol=0.05)


def test_one_rank_count_keeps_the_datasheet_curve(tmp_path):
    """One all-to-all log cannot tell the floor from the per-message overhead: half_bytes stays the
    link's datasheet value and the floor takes the rest, so the log is still reproduced."""
    (tmp_path / "p").mkdir()
    truth = _routes(_cluster(tmp_path / "p", {"all_to_all": {"floor": "10 us", "half_bytes": 65536}}))
    fits = fit_collectives(parse_nccl_tests(_log(truth, "alltoall", "all_to_all", 8)))
    (tmp_path / "f").mkdir()
    data, _ = cluster_with_fits(_cluster(tmp_path / "f", {"all_to_all": {"floor": "1 us", "half_bytes": 65536}}),
                                fits, ["x.log"], multi_node=False)
    cost = data["collectives"]["all_to_all"]["Toy-Link"]
    assert cost["half_bytes"] == 65536 and cost["floor"] == pytest.approx(10 * US, rel=0.05)
    assert "kept from the link's datasheet" in data["sources"]["collectives.all_to_all.Toy-Link"]
