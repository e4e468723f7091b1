"""Hardware profiles: devices, links and clusters as validated data, and the topology graph."""

from moesim.hardware_profiles.loader import (
    list_profiles,
    load_cluster,
    load_device,
    load_link,
    profile_path,
)
from moesim.hardware_profiles.schema import ClusterSpec, DeviceSpec, LinkSpec

__all__ = [
    "ClusterSpec", "DeviceSpec", "LinkSpec",
    "list_profiles", "load_cluster", "load_device", "load_link", "profile_path",
]

from moesim.hardware_profiles.topology import Routes, build_topology, compute_routes  # noqa: E402

__all__ += ["Routes", "build_topology", "compute_routes"]
