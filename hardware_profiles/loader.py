"""Find and load device, link and cluster profiles: bundled by name, or any YAML by path."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from moesim.errors import ConfigError, unknown_name
from moesim.hardware_profiles.schema import ClusterSpec, DeviceSpec, LinkSpec
from moesim.yaml_io import check_file, load_yaml, resolve_lenient, validate

PROFILE_DIR = Path(__file__).resolve().parent
MAX_DEVICES = 8192  # route tables are devices x devices: 8192**2 x 8 bytes is 512 MiB each
_KINDS: dict[str, type[BaseModel]] = {"devices": DeviceSpec, "links": LinkSpec, "clusters": ClusterSpec}

M = TypeVar("M", bound=BaseModel)


@lru_cache(maxsize=None)
def _bundled(kind: str) -> dict[str, Path]:
    """name (as written in the file) -> path, for every bundled profile of a kind."""
    out: dict[str, Path] = {}
    for path in sorted((PROFILE_DIR / kind).glob("*.yaml")):
        name = load_yaml(path).get("name", path.stem)
        out[str(name)] = path
    return out


def list_profiles(kind: str) -> list[str]:
    """Names of the bundled profiles of a kind ('devices', 'links' or 'clusters')."""
    return sorted(_bundled(kind))


def _resolve(kind: str, name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")):
        try:
            return check_file(path, "YAML file")
        except ConfigError as err:  # a symlink loop, a folder, ...: named here, anchored by the caller
            raise ConfigError(f"{kind[:-1]} profile file {text}: {err.detail}") from None
    table = _bundled(kind)
    lookup = {k.lower(): v for k, v in table.items()}
    if text.lower() in lookup:
        return lookup[text.lower()]
    raise ConfigError(unknown_name(kind[:-1], text, table))


@lru_cache(maxsize=None)
def _load(kind: str, path: Path) -> BaseModel:
    return validate(_KINDS[kind], load_yaml(path), path)


def load_device(name_or_path: str | Path) -> DeviceSpec:
    """A device profile by bundled name (case-insensitive) or YAML path; a calibrated profile's
    measurements file is made absolute (it is written relative to the profile)."""
    path = _resolve("devices", name_or_path)
    spec: DeviceSpec = _load("devices", path)  # type: ignore[assignment]
    cal = spec.calibration
    if cal is not None and cal.measurements and not Path(cal.measurements).is_absolute():
        absolute = str(resolve_lenient(path.parent / cal.measurements))
        spec = spec.model_copy(update={"calibration": cal.model_copy(update={"measurements": absolute})})
    return spec


def load_link(name_or_path: str | Path) -> LinkSpec:
    return _load("links", _resolve("links", name_or_path))  # type: ignore[return-value]


def load_cluster(name_or_path: str | Path) -> ClusterSpec:
    """A cluster profile; its device, link, host and storage names must resolve too, and its size
    must be one the simulator can hold (MAX_DEVICES)."""
    path = _resolve("clusters", name_or_path)
    cluster: ClusterSpec = _absolute_paths(_load("clusters", path), path.parent)  # type: ignore[arg-type]
    node = cluster.node
    if cluster.num_devices > MAX_DEVICES:
        raise ConfigError(f"{cluster.nodes:,} nodes x {node.devices_per_node:,} devices = {cluster.num_devices:,} "
                          f"devices is more than moesim can simulate: at most {MAX_DEVICES:,} (it keeps "
                          "device-to-device route tables, devices x devices)", file=path,
                          field="nodes" if cluster.nodes > 1 else "node.devices_per_node")
    checks = [("node.device", "devices", node.device), ("node.intra_node.link", "links", node.intra_node.link)]
    if node.nic:
        checks += [("node.nic.link", "links", node.nic.link), ("node.nic.attach", "links", node.nic.attach)]
    if node.host:
        checks += [("node.host.device", "devices", node.host.device), ("node.host.link", "links", node.host.link)]
    for i, unit in enumerate(node.units):
        checks += [(f"node.units[{i}].device", "devices", unit.device), (f"node.units[{i}].link", "links", unit.link)]
    if node.storage:
        checks.append(("node.storage.link", "links", node.storage.link))
    for field, kind, name in checks:
        try:
            _resolve(kind, name)
        except ConfigError as err:
            raise ConfigError(err.detail, file=path, field=field) from None
    return cluster


def _absolute_paths(cluster: ClusterSpec, base: Path) -> ClusterSpec:
    """Make device/link names that are YAML paths relative to the cluster file absolute."""

    def fix(name: str) -> str:
        return str(resolve_lenient(base / name)) if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute() \
            else name

    node = cluster.node
    update = {"device": fix(node.device),
              "intra_node": node.intra_node.model_copy(update={"link": fix(node.intra_node.link)})}
    if node.nic:
        update["nic"] = node.nic.model_copy(update={"link": fix(node.nic.link), "attach": fix(node.nic.attach)})
    if node.host:
        update["host"] = node.host.model_copy(update={"device": fix(node.host.device), "link": fix(node.host.link)})
    if node.units:
        update["units"] = [u.model_copy(update={"device": fix(u.device), "link": fix(u.link)}) for u in node.units]
    if node.storage:
        update["storage"] = node.storage.model_copy(update={"link": fix(node.storage.link)})
    return cluster.model_copy(update={"node": node.model_copy(update=update)})


def profile_path(kind: str, name: str) -> Path:
    return _resolve(kind, name)
