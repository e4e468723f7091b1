"""Expert placement: which device(s) of an expert-parallel group hold each (layer, expert).

A placement is a list of slots per MoE layer: slot j holds expert `slot_expert[l, j]` on
group-local device `slot_device[l, j]` and takes `slot_share[l, j]` of that expert's tokens
(replicas split the load; shares of one expert sum to 1). Layers may differ. Built-in
policies (contiguous, round_robin) and placement files produce the same structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import ConfigError
from moesim.yaml_io import load_yaml, suggestion


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

    def share_matrix(self, layer: int) -> np.ndarray:
        """(experts, devices) share of each expert's tokens each device serves (rows sum to 1)."""
        out = np.zeros((self.num_experts, self.num_devices))
        np.add.at(out, (self.slot_expert[layer], self.slot_device[layer]), self.slot_share[layer])
        return out

    def shares(self) -> np.ndarray:
        """(layers, experts, devices) share matrices of every MoE layer."""
        return np.stack([self.share_matrix(layer) for layer in range(self.num_layers)])

    def expert_shares(self, layer: int) -> list[list[float]]:
        """Share of each replica, in the order of `expert_devices(layer)`."""
        out: list[list[float]] = [[] for _ in range(self.num_experts)]
        for e, share in zip(self.slot_expert[layer], self.slot_share[layer]):
            if share > 0:
                out[int(e)].append(float(share))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The placement-file form; `shares` only where some replica split is uneven."""
        out: dict[str, Any] = {
            "num_experts": self.num_experts,
            "num_devices": self.num_devices,
            "layers": [self.expert_devices(layer) for layer in range(self.num_layers)],
        }
        shares = [self.expert_shares(layer) for layer in range(self.num_layers)]
        if any(not np.allclose(s, 1.0 / len(s)) for layer in shares for s in layer):
            out["shares"] = [[[round(x, 6) for x in s] for s in layer] for layer in shares]
        return out


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
    """Experts [i*E/ep, (i+1)*E/ep) on device i, as Megatron and DeepSpeed lay them out
    (chunks differ by at most one expert when ep does not divide E)."""
    assign = np.arange(num_experts) * num_devices // num_experts
    return _from_assignment(np.broadcast_to(assign, (num_layers, num_experts)), num_devices)


def round_robin(num_experts: int, num_devices: int, num_layers: int) -> Placement:
    """Expert e on device e mod ep."""
    assign = np.arange(num_experts) % num_devices
    return _from_assignment(np.broadcast_to(assign, (num_layers, num_experts)), num_devices)


def with_redundant_slots(base: Placement) -> Placement:
    """A placement whose devices hold equal numbers of slots, as DeepSeek serves EP144 and EP320
    (256 experts + 32 or 64 redundant copies, 2 or 1 per GPU): where the group's devices do not
    divide the experts, the devices with one slot fewer each take a copy of another expert (the
    busiest by position is not known without loads: copies go to experts in order, each to a
    device that lacks it), and every copy of an expert serves an equal share of its tokens. A
    placement whose devices already hold equal slots is returned as it is."""
    ep = base.num_devices
    per = -(-base.num_experts // ep)
    layers = []
    for layer in range(base.num_layers):
        devices = base.expert_devices(layer)
        held = np.bincount(base.slot_device[layer][base.slot_share[layer] > 0], minlength=ep)
        short = [d for d in range(ep) for _ in range(per - int(held[d]))]
        e = 0
        for d in short:  # the next expert not yet on d (round the experts in order)
            while d in devices[e % base.num_experts]:
                e += 1
            devices[e % base.num_experts].append(d)
            e += 1
        layers.append(devices)
    if not any(len(d) > 1 for layer in layers for d in layer):
        return base
    return from_expert_devices(layers, ep)


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


def from_share_matrices(shares: np.ndarray, tol: float = 1e-9) -> Placement:
    """Build from (layers, experts, devices) token shares; entries below `tol` hold no copy."""
    shares = np.where(shares > tol, shares, 0.0)
    devices_of, weights = [], []
    for layer in shares:
        devs = [[int(d) for d in np.flatnonzero(row)] for row in layer]
        if any(not d for d in devs):
            raise ValueError(f"expert {next(i for i, d in enumerate(devs) if not d)} has no device")
        devices_of.append(devs)
        weights.append([list(row[d] / row[d].sum()) for row, d in zip(layer, devs)])
    return from_expert_devices(devices_of, shares.shape[2], weights)


#: keys a placement file may have (`notes` is free text for the reader)
PLACEMENT_KEYS = ("num_experts", "num_devices", "layers", "experts", "shares", "notes")


def load_placement_file(path: str | Path, num_experts: int, num_devices: int, num_layers: int) -> Placement:
    """Read a placement file: `layers:` (one list per MoE layer) or `experts:` (all layers).

    Each expert's entry is a device index or a list of device indices (replicas). Errors name
    the file, the layer and the expert.
    """
    path = Path(path)
    data = load_yaml(path)
    unknown = [k for k in data if k not in PLACEMENT_KEYS]
    if unknown:
        key = str(unknown[0])
        raise ConfigError(f"unknown key '{key}'{suggestion(key, list(PLACEMENT_KEYS)) or '.'} Valid keys: "
                          f"{', '.join(PLACEMENT_KEYS)}.", file=path, field=key)
    for key, want in (("num_experts", num_experts), ("num_devices", num_devices)):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"expected an integer, got {value!r}", file=path, field=key)
            if value != want:
                what = f"ep={want}" if key == "num_devices" else f"the model's {want} experts"
                raise ConfigError(f"file is for {value} {key[4:]} but the scenario has {what}", file=path, field=key)
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
    layers: list[list[list[int]]] = []
    for l, raw in enumerate(raw_layers):
        where = f"{field}[{l}]" if field == "layers" else field
        if not isinstance(raw, list) or len(raw) != num_experts:
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise ConfigError(f"expected one entry per expert ({num_experts}), got {got}", file=path, field=where)
        layer: list[list[int]] = []
        for e, entry in enumerate(raw):
            devs = entry if isinstance(entry, list) else [entry]
            if not devs or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < num_devices
                                   for d in devs):
                raise ConfigError(
                    f"expert {e} must map to device indices in [0, {num_devices}), got {entry!r}",
                    file=path, field=f"{where}[{e}]",
                )
            if len(set(devs)) != len(devs):
                raise ConfigError(f"expert {e} lists a device twice: {devs}", file=path, field=f"{where}[{e}]")
            layer.append(devs)
        layers.append(layer)
    shares = _read_shares(data, layers, path) if "shares" in data else None
    return from_expert_devices(layers, num_devices, shares)


def _read_shares(data: dict, layers: list[list[list[int]]], path: Path) -> list[list[list[float]]]:
    """Optional `shares:` with the shape of `layers` (or of `experts`): each replica's token share."""
    raw = data["shares"]
    raw_layers = raw if "layers" in data else [raw] * len(layers)
    if not isinstance(raw_layers, list) or len(raw_layers) != len(layers):
        raise ConfigError("'shares' must have one entry per layer, like 'layers'", file=path, field="shares")
    out: list[list[list[float]]] = []
    for l, (row, devs) in enumerate(zip(raw_layers, layers)):
        if not isinstance(row, list) or len(row) != len(devs):
            raise ConfigError(f"expected one share list per expert ({len(devs)})", file=path, field=f"shares[{l}]")
        layer = []
        for e, (s, d) in enumerate(zip(row, devs)):
            s = s if isinstance(s, list) else [s]
            where = f"shares[{l}][{e}]"
            if any(isinstance(x, float) and not math.isfinite(x) for x in s):
                raise ConfigError(f"expert {e}'s shares must be finite numbers, got {s!r}", file=path, field=where)
            if len(s) != len(d) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
                                           for x in s):
                raise ConfigError(f"expert {e} has {len(d)} device(s) {d}; give as many non-negative shares, "
                                  f"got {s!r}", file=path, field=where)
            if abs(sum(s) - 1.0) > 1e-3:
                raise ConfigError(f"shares of expert {e} sum to {sum(s):.4g}, not 1", file=path, field=where)
            layer.append([float(x) / sum(s) for x in s])
        out.append(layer)
    return out


def save_placement_file(placement: Placement, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(placement.to_dict(), default_flow_style=None, sort_keys=False))
