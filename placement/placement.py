"""Expert placement: which device(s) of an expert-parallel group hold each (layer, expert).

A placement is a list of slots per MoE layer: slot j holds expert `slot_expert[l, j]` on
group-local device `slot_device[l, j]` and takes `slot_share[l, j]` of that expert's tokens
(replicas split the load; shares of one expert sum to 1). Layers may differ. Built-in
policies (contiguous, round_robin) and placement files produce the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import ConfigError
from moesim.yaml_io import load_yaml


@dataclass(frozen=True)
class Placement:
    num_experts: int
    num_devices: int  # devices in one expert-parallel group (ep)
    slot_expert: np.ndarray  # (layers, slots) int
    slot_device: np.ndarray  # (layers, slots) int, group-local
    slot_share: np.ndarray  # (layers, slots) float

    @property
    def num_layers(self) -> int:
        return self.slot_expert.shape[0]

    def expert_devices(self, layer: int) -> list[list[int]]:
        """Devices of each expert at one layer (first = primary)."""
        out: list[list[int]] = [[] for _ in range(self.num_experts)]
        for e, d, share in zip(self.slot_expert[layer], self.slot_device[layer], self.slot_share[layer]):
            if share > 0:
                out[int(e)].append(int(d))
        return out

    def experts_per_device(self) -> np.ndarray:
        """(layers, devices) number of expert copies each device holds."""
        out = np.zeros((self.num_layers, self.num_devices), dtype=np.int64)
        for layer in range(self.num_layers):
            live = self.slot_share[layer] > 0  # padding slots carry no share
            np.add.at(out[layer], self.slot_device[layer][live], 1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_experts": self.num_experts,
            "num_devices": self.num_devices,
            "layers": [self.expert_devices(layer) for layer in range(self.num_layers)],
        }


def _from_assignment(assign: np.ndarray, num_devices: int) -> Placement:
    layers, experts = assign.shape
    return Placement(
        num_experts=experts,
        num_devices=num_devices,
        slot_expert=np.broadcast_to(np.arange(experts), (layers, experts)).copy(),
        slot_device=assign.astype(np.int64),
        slot_share=np.ones((layers, experts)),
    )


def contiguous(num_experts: int, num_devices: int, num_layers: int) -> Placement:
    """Experts [i*E/ep, (i+1)*E/ep) on device i, as Megatron and DeepSpeed lay them out."""
    per = num_experts // num_devices
    assign = np.arange(num_experts) // per
    return _from_assignment(np.broadcast_to(assign, (num_layers, num_experts)), num_devices)


def round_robin(num_experts: int, num_devices: int, num_layers: int) -> Placement:
    """Expert e on device e mod ep."""
    assign = np.arange(num_experts) % num_devices
    return _from_assignment(np.broadcast_to(assign, (num_layers, num_experts)), num_devices)


def from_expert_devices(layers: list[list[list[int]]], num_devices: int,
                        shares: list[list[list[float]]] | None = None) -> Placement:
    """Build from per-layer lists of each expert's devices (replicas split evenly by default)."""
    num_experts = len(layers[0])
    width = max(sum(len(d) for d in layer) for layer in layers)
    L = len(layers)
    se = np.zeros((L, width), dtype=np.int64)
    sd = np.zeros((L, width), dtype=np.int64)
    ss = np.zeros((L, width))
    for l, layer in enumerate(layers):
        j = 0
        for e, devs in enumerate(layer):
            for r, d in enumerate(devs):
                se[l, j], sd[l, j] = e, d
                ss[l, j] = shares[l][e][r] if shares else 1.0 / len(devs)
                j += 1
        # padding slots: expert 0 on device 0 with no share (carry no tokens)
    return Placement(num_experts, num_devices, se, sd, ss)


def load_placement_file(path: str | Path, num_experts: int, num_devices: int, num_layers: int) -> Placement:
    """Read a placement file: `layers:` (one list per MoE layer) or `experts:` (all layers).

    Each expert's entry is a device index or a list of device indices (replicas). Errors name
    the file, the layer and the expert.
    """
    path = Path(path)
    data = load_yaml(path)
    if "layers" in data:
        raw_layers = data["layers"]
        field = "layers"
        if not isinstance(raw_layers, list) or len(raw_layers) != num_layers:
            got = len(raw_layers) if isinstance(raw_layers, list) else type(raw_layers).__name__
            raise ConfigError(f"expected a list of {num_layers} MoE layers, got {got}", file=path, field=field)
    elif "experts" in data:
        raw_layers = [data["experts"]] * num_layers
        field = "experts"
    else:
        raise ConfigError("a placement file needs 'layers' (per MoE layer) or 'experts' (all layers)", file=path)
    if "num_devices" in data and int(data["num_devices"]) != num_devices:
        raise ConfigError(f"file is for {data['num_devices']} devices but ep={num_devices}", file=path, field="num_devices")
    layers: list[list[list[int]]] = []
    for l, raw in enumerate(raw_layers):
        where = f"{field}[{l}]" if field == "layers" else field
        if not isinstance(raw, list) or len(raw) != num_experts:
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise ConfigError(f"expected one entry per expert ({num_experts}), got {got}", file=path, field=where)
        layer: list[list[int]] = []
        for e, entry in enumerate(raw):
            devs = entry if isinstance(entry, list) else [entry]
            if not devs or not all(isinstance(d, int) and 0 <= d < num_devices for d in devs):
                raise ConfigError(
                    f"expert {e} must map to device indices in [0, {num_devices}), got {entry!r}",
                    file=path, field=f"{where}[{e}]",
                )
            if len(set(devs)) != len(devs):
                raise ConfigError(f"expert {e} lists a device twice: {devs}", file=path, field=f"{where}[{e}]")
            layer.append(devs)
        layers.append(layer)
    return from_expert_devices(layers, num_devices)


def save_placement_file(placement: Placement, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(placement.to_dict(), default_flow_style=None, sort_keys=False))
