"""Every bundled profile loads, cites its numbers, and builds a connected topology."""

import networkx as nx
import pytest
import yaml

from moesim.hardware_profiles import (
    build_topology, compute_routes, list_profiles, load_cluster, load_device, load_link, profile_path,
)

REQUIRED_DEVICES = {"H100-SXM", "H800", "H200", "A100-80GB", "B200", "MI300X", "Ascend-910B", "Logic-PIM", "Xeon-8480"}
REQUIRED_LINKS = {"NVLink4", "NVLink5", "PCIe4-x16", "PCIe5-x16", "InfiniBand-NDR", "HCCS", "RoCE"}
REQUIRED_CLUSTERS = {"dgx-h100", "h800-4x8", "gpu-host-pcie", "ascend-910b-8"}


def test_required_profiles_are_bundled():
    assert REQUIRED_DEVICES <= set(list_profiles("devices"))
    assert REQUIRED_LINKS <= set(list_profiles("links"))
    assert REQUIRED_CLUSTERS <= set(list_profiles("clusters"))


def _numeric_fields(data, prefix=""):
    for key, value in data.items():
        if key in ("sources", "notes", "name", "kind", "vendor", "description"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_fields(value, path + ".")
        elif isinstance(value, (int, float)) or (isinstance(value, str) and value[:1].isdigit()):
            yield path


@pytest.mark.parametrize("kind", ["devices", "links"])
def test_every_number_cites_a_source(kind):
    for name in list_profiles(kind):
        data = yaml.safe_load(profile_path(kind, name).read_text())
        sources = data.get("sources", {})
        # a table keyed by number (floors by group size) may cite one source for all its entries
        missing = [f for f in _numeric_fields(data) if f not in sources
                   and not (f.rsplit(".", 1)[-1].isdigit() and f.rsplit(".", 1)[0] in sources)]
        assert not missing, f"{name}: no source for {missing}"


def test_devices_and_links_load_with_si_values():
    h100 = load_device("h100-sxm")  # case-insensitive
    assert h100.memory.capacity == pytest.approx(80e9, rel=0.08)
    assert h100.memory.bandwidth == pytest.approx(3.35e12, rel=0.01)
    assert h100.peak_flops("bf16") == pytest.approx(989e12, rel=0.01)
    assert h100.peak_flops("fp8") > h100.peak_flops("bf16")
    pim = load_device("Logic-PIM")
    assert pim.kind == "pim" and pim.memory.bandwidth > h100.memory.bandwidth
    assert load_link("InfiniBand-NDR").bandwidth == pytest.approx(50e9)
    for name in list_profiles("links"):
        assert load_link(name).bandwidth > 0


@pytest.mark.parametrize("name", sorted(REQUIRED_CLUSTERS))
def test_clusters_build_connected_topologies(name):
    cluster = load_cluster(name)
    g = build_topology(cluster)
    devices = [n for n, a in g.nodes(data=True) if a["kind"] == "device"]
    assert len(devices) == cluster.num_devices
    assert nx.is_strongly_connected(g)
    routes = compute_routes(g)
    assert routes.pair_hops.shape == (cluster.num_devices,) * 2


def test_h800_cluster_routes_inter_node_through_nics():
    routes = compute_routes(build_topology(load_cluster("h800-4x8")))
    assert routes.num_devices == 32
    assert routes.pair_hops[0, 1] == 2  # GPU -> NVSwitch -> GPU
    assert routes.pair_hops[0, 8] == 4  # GPU -> NIC -> network -> NIC -> GPU
    assert routes.pair_inter_node[0, 8] and not routes.pair_inter_node[0, 7]
    classes = {routes.link_class[i] for i in routes.pair_links[routes.pair_ptr[8]:routes.pair_ptr[9]]}
    assert "infiniband" in classes


def test_narrow_dtypes_fall_back_to_a_type_the_device_computes():
    a100 = load_device("A100-80GB")  # no fp8 tensor cores: fp8 GEMMs run at the bf16 rate
    assert a100.peak_flops("fp8") == a100.peak_flops("bf16")
    h100 = load_device("H100-SXM")
    assert h100.peak_flops("mxfp4") == h100.peak_flops("fp8")


def test_physics_is_checked_in_the_schema():
    from pydantic import ValidationError

    from moesim.hardware_profiles import ClusterSpec, DeviceSpec

    dev = {"name": "d", "kind": "gpu", "memory": {"capacity": "1 GB", "bandwidth": "1 TB/s"}, "compute": {"bf16": 1e12}}
    DeviceSpec.model_validate(dev)
    for compute in ({"bf16": "-5 TFLOPS"}, {"bf16": float("nan")}, {"bf16": float("inf")}, {"bf61": 1e12}, {}):
        with pytest.raises(ValidationError):
            DeviceSpec.model_validate({**dev, "compute": compute})
    node = {"device": "H100-SXM", "devices_per_node": 1, "intra_node": {"topology": "none", "link": "NVLink4"}}
    ClusterSpec.model_validate({"name": "c", "node": node})  # one device needs no intra-node link
    with pytest.raises(ValidationError, match="unconnected"):
        ClusterSpec.model_validate({"name": "c", "node": {**node, "devices_per_node": 2}})
