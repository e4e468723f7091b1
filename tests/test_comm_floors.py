"""Communication kernel costs (simulator/comm_cost.py): a floor per kernel call and an efficiency that
saturates in message size, against hand calculations; fitted from nccl-tests into a cluster profile."""

import numpy as np
import pytest
import simpy
import yaml

from moesim.errors import ConfigError
from moesim.hardware_profiles import build_topology, compute_routes, load_cluster, load_link
from moesim.simulator import comm_cost
from moesim.simulator.network import Collective, Fabric
from moesim.simulator.run import simulate
from moesim.validation.nccl_tests import cluster_with_fits, comm_costs, fit_collectives, log_hosts, parse_nccl_tests

from conftest import DATA, toy_file

US = 1e-6
BW, LATENCY = 100e9, 1 * US  # Toy-Link: 100 GB/s per direction, efficiency 1; a path is one 1 us hop (full mesh)


def _toy_with_costs(tmp_path, costs: dict, nodes_file: str = "toy-cluster.yaml") -> str:
    """The toy profiles in tmp_path, Toy-Link given `costs` as its collectives defaults."""
    for f in (DATA / "toy").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    link = yaml.safe_load((DATA / "toy" / "toy-link.yaml").read_text())
    link["collectives"] = costs
    link["sources"] = {"collectives": "test values"}
    (tmp_path / "toy-link.yaml").write_text(yaml.safe_dump(link))
    return str(tmp_path / nodes_file)


def test_two_devices_match_floor_plus_bytes_over_saturating_bandwidth(tmp_path):
    floor, half, eff = 5 * US, 4096.0, 0.5
    cluster = _toy_with_costs(tmp_path, {"all_to_all": {"floor": floor, "half_bytes": half, "efficiency": eff}})
    routes = compute_routes(build_topology(load_cluster(cluster)))
    pairs = ~np.eye(2, dtype=bool)
    floors = comm_cost.device_floors(routes, "all_to_all", pairs)
    assert floors.tolist() == [floor, floor]
    env = simpy.Environment()
    b = 1e6
    coll = Collective(env, Fabric(routes), np.array([[0.0, b], [0.0, 0.0]]), kind="all_to_all", floor=floors.tolist())
    done = {}

    def device(d):
        coll.submit(d)
        yield from coll.inbound(d)
        done[d] = env.now

    for d in (0, 1):
        env.process(device(d))
    env.run()
    # hand calculation: 5 us + 1 us + (1e6 + 4096) B / (100 GB/s x 0.5) = 6 us + 20.08192 us
    want = floor + LATENCY + (b + half) / (BW * eff)
    assert done[1] == pytest.approx(26.08192 * US, rel=1e-12) and want == pytest.approx(26.08192 * US, rel=1e-12)
    assert float(comm_cost.transfer_time(b, BW, eff, half, floor, LATENCY)) == pytest.approx(want, rel=1e-12)
    assert done[0] == pytest.approx(floor)  # receives nothing, but its kernel still runs its floor
    # the same bytes as another kind (no costs given): today's bytes / (bandwidth x efficiency) + latency
    plain = Fabric(routes).transfer(np.array([0]), np.array([0.0]), np.array([[0.0, b], [0.0, 0.0]]), "all_reduce")
    assert plain[1] == pytest.approx(b / BW + LATENCY, rel=1e-12)


def test_time_grows_with_bytes_and_time_per_byte_falls():
    b = np.logspace(0, 10, 200)
    t = comm_cost.transfer_time(b, 450e9, 0.8, 64 * 1024, 10 * US, 2 * US)
    assert (np.diff(t) >= 0).all()
    assert (np.diff(t / b) <= 0).all()
    eff = comm_cost.efficiency(b, 0.8, 64 * 1024)
    assert (np.diff(eff) >= 0).all()
    assert eff[0] < 0.001 and comm_cost.efficiency(1024, 0.8, 64 * 1024) < 0.02  # small messages: far from bandwidth
    assert comm_cost.efficiency(1e9, 0.8, 64 * 1024) == pytest.approx(0.8, rel=1e-3)  # large ones: near eff_max
    assert comm_cost.efficiency(64 * 1024, 0.8, 64 * 1024) == pytest.approx(0.4)  # half_bytes: half of eff_max
    assert comm_cost.efficiency(0.0, 0.8, 0.0) == 0.0 and comm_cost.efficiency(10.0, 0.8, 0.0) == 0.8


def test_fabric_charges_half_bytes_per_message_and_link():
    """Eight devices behind a switch, everyone to device 0: its ingress link drains 7 messages of
    (b + half_bytes) at bandwidth x eff_max (the FIFO fabric, with the per-message overhead)."""
    routes = compute_routes(build_topology(load_cluster("dgx-h100")))
    f = Fabric(routes)
    n, b = routes.num_devices, 1e5
    m = np.zeros((n, n))
    m[1:, 0] = b
    arrival = f.transfer(np.arange(n), np.zeros(n), m, "all_to_all")
    nvlink = load_link("NVLink4")
    c = nvlink.collectives["all_to_all"]
    want = 7 * (b + c.half_bytes) / (nvlink.bandwidth * nvlink.efficiency) + routes.pair_latency[1, 0]
    assert arrival[0] == pytest.approx(want, rel=1e-12)


def test_bundled_defaults_cite_sources_and_show_in_provenance():
    routes = compute_routes(build_topology(load_cluster("h800-4x8")))
    assert comm_cost.has_floors(routes, "low_latency")
    floors = comm_cost.device_floors(routes, "low_latency", ~np.eye(32, dtype=bool))
    assert floors == pytest.approx(np.full(32, 26 * US))
    assert comm_cost.device_floors(routes, "low_latency", ~np.eye(32, dtype=bool), "combine") == pytest.approx(
        np.full(32, 23 * US))  # DeepEP publishes the two kernels separately
    within = np.zeros((32, 32), dtype=bool)
    within[0, 1:8] = True
    assert comm_cost.device_floors(routes, "all_to_all", within)[0] == pytest.approx(10 * US)  # NVLink only
    assert comm_cost.device_floors(routes, "all_to_all", ~np.eye(32, dtype=bool))[0] == pytest.approx(20 * US)  # + IB
    assert comm_cost.provenance(routes, "all_to_all", within) == "datasheet default (NVLink4-H800 collectives.all_to_all)"
    assert "InfiniBand-NDR" in comm_cost.provenance(routes, "low_latency")
    for name in ("NVLink4", "NVLink4-H800", "NVLink5", "InfiniBand-NDR"):
        link = load_link(name)
        for kind, cost in link.collectives.items():
            for field in cost.model_fields_set:
                assert f"collectives.{kind}.{field}" in link.sources


def _nccl_log(name: str, latency: float, bus_bw: float, ranks: int, hosts: int = 1) -> str:
    factor = 2 * (ranks - 1) / ranks if name == "all_reduce" else (ranks - 1) / ranks
    head = f"# Collective test starting: {name}_perf\n#\n# Using devices\n"
    head += "".join(f"#  Rank {r:2d} Group  0 Pid {100 + r} on host{r * hosts // ranks} device {r} [0x1] NVIDIA H100\n"
                    for r in range(ranks))
    lines = []
    for p in range(10, 31):
        size = 2 ** p
        t = latency + size * factor / bus_bw
        alg = size / t / 1e9
        one = f"  {t * 1e6:10.2f}  {alg:7.2f}  {alg * factor:7.2f}      0"
        lines.append(f"{size:12d}  {size // 4:12d}     float     none      -1{one}{one}")
    return head + "\n".join(lines) + "\n"


def test_fit_recovers_floor_and_bandwidth_and_drives_a_simulation(tmp_path):
    log = _nccl_log("alltoall", 30 * US, 80e9, 2)
    assert log_hosts(log) == 1
    fit = fit_collectives(parse_nccl_tests(log))["alltoall"]
    assert fit["latency"] == pytest.approx(30 * US, rel=0.02)
    assert fit["bus_bandwidth"] == pytest.approx(80e9, rel=0.02) and fit["ranks"] == 2
    costs, warnings = comm_costs({"alltoall": fit}, link_bandwidth=BW, path_latency=LATENCY)
    assert not warnings
    assert costs["all_to_all"]["floor"] == pytest.approx(29 * US, rel=0.03)  # the engine adds the 1 us path itself
    assert costs["all_to_all"]["efficiency"] == pytest.approx(0.8, rel=0.02)
    # a range restricts the sizes fitted
    part = fit_collectives(parse_nccl_tests(log), min_bytes=2 ** 20, max_bytes=2 ** 24)["alltoall"]
    assert (part["n"], part["min_bytes"], part["max_bytes"]) == (5, 2 ** 20, 2 ** 24)

    # into a cluster profile variant, then a simulation: the toy step's dispatch and combine get slower
    cluster = _toy_with_costs(tmp_path, {})
    data, _ = cluster_with_fits(cluster, {"alltoall": fit}, ["a2a.log"], multi_node=False)
    assert data["collectives"]["all_to_all"]["Toy-Link"]["floor"] == pytest.approx(29 * US, rel=0.03)
    assert data["sources"]["collectives.all_to_all.Toy-Link"].startswith("fitted from nccl-tests a2a.log")
    variant = tmp_path / "toy-nccl.yaml"
    variant.write_text(yaml.safe_dump(data))
    spec = load_cluster(variant)
    routes = compute_routes(build_topology(spec))
    assert comm_cost.provenance(routes, "all_to_all").startswith("fitted from nccl-tests a2a.log")

    cfg = yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    base = simulate(toy_file(tmp_path / "a", cfg)).phases
    cfg["hardware"]["cluster"] = str(variant)
    fitted = simulate(toy_file(tmp_path / "b", cfg)).phases

    def phase(df, d, p):
        return float(df[(df.device == d) & (df.phase == p)].duration_s.iloc[0])

    floor, eff = costs["all_to_all"]["floor"], costs["all_to_all"]["efficiency"]
    row = 1024 * 2  # one bf16 token row each way
    assert phase(base, 0, "dispatch") == pytest.approx(row / BW + LATENCY, rel=1e-9)
    assert phase(fitted, 0, "dispatch") == pytest.approx(floor + row / (BW * eff) + LATENCY, rel=1e-9)
    assert phase(fitted, 1, "combine") == pytest.approx(floor, rel=1e-9)  # nothing to wait for but its own floor


def test_multi_host_logs_fit_the_network_link(tmp_path):
    log = _nccl_log("alltoall", 40 * US, 40e9, 16, hosts=2)
    assert log_hosts(log) == 2
    fit = fit_collectives(parse_nccl_tests(log))
    data, warnings = cluster_with_fits(str(DATA / "toy" / "toy-cluster-2x2.yaml"), fit, ["ib.log"], multi_node=True)
    assert list(data["collectives"]["all_to_all"]) == ["Toy-NIC"]
    # 40 GB/s measured over a 25 GB/s Toy-NIC cannot be: efficiency capped at 1, with a warning
    assert data["collectives"]["all_to_all"]["Toy-NIC"]["efficiency"] == 1.0
    assert any("above the link" in w for w in warnings)


@pytest.mark.parametrize("field,value,message", [
    ("floor", "-1 us", "greater than or equal to 0"),
    ("efficiency", 1.5, "less than or equal to 1"),
    ("half_bytes", -4, "greater than or equal to 0"),
])
def test_bad_values_name_the_field(tmp_path, field, value, message):
    cluster = _toy_with_costs(tmp_path, {"all_to_all": {field: value}})
    with pytest.raises(ConfigError) as err:
        build_topology(load_cluster(cluster))
    assert f"collectives.all_to_all.{field}" in str(err.value) and message in str(err.value)


def test_measured_costs_must_name_a_link_of_the_cluster(tmp_path):
    data = yaml.safe_load((DATA / "toy" / "toy-cluster.yaml").read_text())
    data["collectives"] = {"all_to_all": {"NVLinkX": {"floor": "3 us"}}}
    for f in (DATA / "toy").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="collectives.all_to_all.NVLinkX"):
        build_topology(load_cluster(tmp_path / "c.yaml"))


def test_comm_floors_off_restores_todays_timeline(tmp_path):
    """hardware.comm_floors: false gives exactly the timeline of links at bandwidth x efficiency."""
    cluster = _toy_with_costs(tmp_path, {"all_to_all": {"floor": "7 us", "half_bytes": "1 MiB", "efficiency": 0.3}})
    cfg = yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())
    cfg["hardware"] = {"cluster": cluster, "comm_floors": False}
    for sub in ("off", "plain"):
        (tmp_path / sub).mkdir()
    off = simulate(toy_file(tmp_path / "off", cfg)).phases
    plain = simulate(toy_file(tmp_path / "plain", yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())))
    assert off[["device", "phase", "duration_s"]].equals(plain.phases[["device", "phase", "duration_s"]])
