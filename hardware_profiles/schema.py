"""Pydantic schema of device, link and cluster profiles (the YAML files beside this module).

Profiles are pure data: a device says how fast it computes and moves memory, a link how fast
it moves bytes between two endpoints, a cluster how devices, links, NICs and hosts connect.
Every measured or published number carries its public source in the profile's `sources` map,
keyed by the field path ("memory.bandwidth", "compute.bf16").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moesim.units import DTYPE_BITS, Bandwidth, Bytes, FlopRate, Seconds


class _Strict(BaseModel):
    # allow_inf_nan=False: every number in a profile is finite (`.nan` or `1e999 TFLOPS` is an error)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PeakRate = Annotated[FlopRate, Field(gt=0)]


class MemorySpec(_Strict):
    capacity: Bytes = Field(gt=0, description="device memory capacity in bytes")
    bandwidth: Bandwidth = Field(gt=0, description="peak memory bandwidth in B/s")


class EfficiencySpec(_Strict):
    """Default achievable fractions of peak, used until a calibration table replaces them."""

    compute: float = Field(0.7, gt=0, le=1)
    memory: float = Field(0.8, gt=0, le=1)
    gemv_memory: float | None = Field(None, gt=0, le=1, description="memory efficiency of a single-row GEMM "
                                      "(GEMV: a batch-1 decode's weight read) where it differs from `memory`; a "
                                      "calibration that fits GEMMs replaces it")


class KindEfficiency(_Strict):
    """A fitted efficiency model for one op kind (see validation/fit.py for the form and why).

    compute efficiency = compute_max x rows / (rows + rows_half)   (saturating in GEMM rows)
    memory efficiency  = memory_max x bytes / (bytes + bytes_half) (saturating in bytes moved)
    time = max(FLOPs_padded / (peak x compute eff), bytes / (bandwidth x memory eff)) + overhead
    """

    compute_max: float = Field(gt=0, le=20, description="relative to the profile's peak (> 1: the datasheet "
                               "number underestimates what this machine reaches)")
    rows_half: float = Field(ge=0)
    memory_max: float = Field(gt=0, le=20, description="relative to the profile's bandwidth (caches can beat it)")
    bytes_half: float = Field(ge=0)
    overhead: Seconds = Field(ge=0)


class MoeKernelSpec(_Strict):
    """How a device runs an MoE layer as fused kernels (simulator/moe_kernel_cost.py): a fixed
    per-layer floor, a grouped GEMM, and memory passes over every routed row outside the GEMMs."""

    layer_floor: Seconds = Field(20e-6, ge=0, description="fixed cost of one MoE layer's kernels on a device "
                                 "(routing top-k, expert alignment, launches), paid once per layer")
    hidden_passes: float = Field(2.0, ge=0, description="hidden-size reads+writes per routed row outside the "
                                 "GEMMs (the gather into expert order, the weighted top-k reduce)")
    intermediate_passes: float = Field(3.0, ge=0, description="intermediate-size reads+writes per routed row "
                                       "outside the GEMMs (the SiLU-and-multiply of gate and up)")
    compute: dict[str, float] = Field(default_factory=dict, description="grouped-GEMM compute efficiency per "
                                      "dtype where it differs from the device's GEMM efficiency (e.g. fp8: 0.3)")

    @field_validator("compute")
    @classmethod
    def _fractions(cls, compute: dict[str, float]) -> dict[str, float]:
        for dtype, eff in compute.items():
            if dtype not in DTYPE_BITS:
                raise ValueError(f"unknown dtype '{dtype}'; valid dtypes: {', '.join(DTYPE_BITS)}")
            if not 0 < eff <= 1:
                raise ValueError(f"compute.{dtype} must be a fraction of peak in (0, 1], got {eff}")
        return compute


class CalibrationSpec(_Strict):
    """Where a calibrated profile came from: the fitted models, the machine and library versions."""

    kinds: dict[str, KindEfficiency] = Field(description="per op kind (gemm, attention, copy, ...), or per "
                                             "kind and dtype as KIND@DTYPE (gemm@fp8), which wins over KIND")
    links: dict[str, dict[str, float]] = Field(default_factory=dict,
                                               description="fitted host<->device copies: latency, bandwidth")
    machine: dict[str, str] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict, description="torch, triton, CUDA, driver, ...")
    measurements: str | None = Field(None, description="raw measurements file, relative to the profile")
    date: str = ""
    model_form: str = ""
    validation: dict[str, float] = Field(default_factory=dict, description="held-out error summary (MAPE, ...)")
    residuals: dict[str, list[float]] = Field(default_factory=dict, description="log(measured / predicted) of the "
                                              "held-out rows after the fit, by op kind: the prediction intervals "
                                              "(simulator/prediction_interval.py) draw from them")
    moe_kernel: MoeKernelSpec | None = Field(None, description="fitted fused-MoE floor and per-row passes; "
                                             "replace the profile's moe_kernel")
    verdict: str = Field("", description="whether the fit beat the datasheet on held-out data")
    warnings: list[str] = Field(default_factory=list, description="why this profile may not be trustworthy "
                                "(worse held-out error, a busy machine, noisy or floor-bound timings)")

    @field_validator("links")
    @classmethod
    def _links_physical(cls, links: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, fit in links.items():
            if "bandwidth" in fit and not fit["bandwidth"] > 0:
                raise ValueError(f"links.{name}.bandwidth must be > 0 B/s, got {fit['bandwidth']}")
            if "latency" in fit and not fit["latency"] >= 0:
                raise ValueError(f"links.{name}.latency must be >= 0 s, got {fit['latency']}")
        return links


class DeviceSpec(_Strict):
    name: str
    kind: Literal["gpu", "npu", "cpu", "pim"]
    vendor: str = ""
    memory: MemorySpec
    compute: dict[str, PeakRate] = Field(description="dense peak FLOP/s per dtype (no sparsity), each > 0")
    efficiency: EfficiencySpec = EfficiencySpec()
    overhead: Seconds = Field(5e-6, ge=0, description="fixed cost per op (kernel launch)")
    sms: int | None = Field(None, ge=1, description="streaming multiprocessors (or compute units): a "
                            "communication kernel holding some of them slows the compute it overlaps")
    gemm_tile: int = Field(64, ge=1, description="token-dimension tile a GEMM pads to")
    moe_kernel: MoeKernelSpec = Field(MoeKernelSpec(), description="the fused MoE layer's floor and "
                                      "per-row passes (simulator/moe_kernel_cost.py; the triton_fused family)")
    moe_kernels: dict[str, MoeKernelSpec] = Field(default_factory=dict, description="other MoE kernel families "
                                                  "this device runs (cutlass_grouped, deepgemm_contiguous, "
                                                  "deepgemm_masked): each its own floor, passes and compute "
                                                  "efficiency per dtype (policies.expert_kernel names one)")
    sources: dict[str, str] = Field(default_factory=dict)
    notes: str = ""
    calibration: CalibrationSpec | None = Field(None, description="fitted efficiencies from `moesim calibrate`")

    @field_validator("compute")
    @classmethod
    def _known_dtypes(cls, compute: dict[str, float]) -> dict[str, float]:
        from moesim.errors import closest_names

        for dtype in compute:
            if dtype not in DTYPE_BITS:
                close = closest_names(dtype, DTYPE_BITS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown dtype '{dtype}'{hint} Valid dtypes: {', '.join(DTYPE_BITS)}")
        if not any(d in compute for d in ("bf16", "fp16", "fp32")):
            raise ValueError("compute needs a rate for at least one of bf16, fp16 or fp32 (narrower types fall "
                             f"back to these); got {', '.join(compute) or 'none'}")
        return compute

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype, falling back to the nearest wider type the device has."""
        for candidate in _DTYPE_FALLBACK.get(dtype, (dtype,)):
            if candidate in self.compute:
                return self.compute[candidate]
        raise KeyError(f"device {self.name} lists no compute rate for dtype {dtype!r}")


# A device without native support for a narrow type computes it in the next wider one.
_DTYPE_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp4": ("fp4", "fp8", "bf16", "fp16", "fp32"),
    "mxfp4": ("mxfp4", "fp4", "fp8", "bf16", "fp16", "fp32"),
    "nvfp4": ("nvfp4", "fp4", "fp8", "bf16", "fp16", "fp32"),
    "int4": ("int4", "int8", "fp8", "bf16", "fp16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),  # int8 units cannot run fp8 GEMMs
    "int8": ("int8", "bf16", "fp16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32", "tf32", "bf16"),
}


# The communication kernels: a plain all-to-all (direct and dedup dispatch and combine), DeepEP
# normal (hierarchical), DeepEP low-latency, the ring all-reduce (TP, MoE-TP), and NCCL's all-gather
# and reduce-scatter (gradient and sharded-weight traffic; fitted from nccl-tests like the others).
CommKind = Literal["all_to_all", "hierarchical", "low_latency", "all_reduce", "all_gather", "reduce_scatter"]


class CommCost(_Strict):
    """How one kind of communication kernel uses a link (simulator/comm_cost.py has the form):
    a fixed floor per kernel call per device, and an efficiency that saturates in the bytes of
    each peer message, eff(b) = efficiency x b / (b + half_bytes), so small messages stay far
    from the link's bandwidth."""

    floor: Seconds = Field(0.0, ge=0, description="fixed cost of each kernel call, once per device (launch, "
                           "synchronisation, signalling), whatever it carries")
    efficiency: float | None = Field(None, gt=0, le=1, description="achievable fraction of bandwidth for large "
                                     "messages (eff_max); default: the link's efficiency")
    half_bytes: Bytes = Field(0.0, ge=0, description="bytes of one peer message at which the link reaches half "
                              "of eff_max (0: every message size reaches it)")
    floors: dict[int, Seconds] = Field(default_factory=dict, description="the floor at given group sizes (GPU "
                                       "count of the kernel's group, e.g. {2: 6 us, 8: 11 us} from nccl-tests at "
                                       "-g 2 and -g 8): linear in the group size between them, the nearest one "
                                       "outside; replaces `floor` where given")
    combine_floor: Seconds | None = Field(None, ge=0, description="the floor of the combine kernel of a dispatch/"
                                          "combine pair where it differs from the dispatch's (DeepEP publishes "
                                          "them separately); default: the dispatch floor")

    @field_validator("floors")
    @classmethod
    def _floor_sizes(cls, v: dict[int, float]) -> dict[int, float]:
        bad = [n for n in v if n < 2]
        if bad:
            raise ValueError(f"floors are keyed by a group size of at least 2 GPUs, got {bad[0]}")
        if any(t < 0 for t in v.values()):
            raise ValueError("a floor is a time of at least 0")
        return dict(sorted(v.items()))


class LinkSpec(_Strict):
    name: str
    kind: Literal["nvlink", "pcie", "infiniband", "roce", "hccs", "ub", "ethernet", "c2c", "storage", "pim"]
    bandwidth: Bandwidth = Field(gt=0, description="per direction, per endpoint, in B/s")
    latency: Seconds = Field(ge=0, description="one-way latency per message")
    efficiency: float = Field(0.8, gt=0, le=1, description="achievable fraction of bandwidth")
    collectives: dict[CommKind, CommCost] = Field(default_factory=dict, description="datasheet defaults of each "
                                                  "communication kernel on this link (floor, eff_max, half_bytes)")
    sources: dict[str, str] = Field(default_factory=dict)
    notes: str = ""


class IntraNodeSpec(_Strict):
    topology: Literal["switch", "full_mesh", "none"]
    link: str


class NicSpec(_Strict):
    link: str = Field(description="the network link a NIC drives (e.g. InfiniBand-NDR)")
    devices_per_nic: int = Field(1, ge=1)
    attach: str = Field(description="link between a device and its NIC (e.g. PCIe5-x16)")


class HostSpec(_Strict):
    device: str = Field(description="CPU device profile of the host")
    count: int = Field(1, ge=1, description="CPU sockets per node; devices split evenly")
    link: str = Field(description="link between a device and its host (e.g. PCIe5-x16)")


ACCELERATOR = "accelerator"  # the unit name of a node's `device` (the accelerators themselves)
HOST = "host"  # the unit name of the host CPU (offloading's host tier and host-run ops)


class UnitSpec(_Strict):
    """A compute unit of a node beside its accelerators (a Logic-PIM, the host CPU, an NPU): its
    own device profile, the link an accelerator reaches it by, and whose memory it computes on."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="what policies.units calls it (e.g. pim, host)")
    device: str = Field(description="its device profile (e.g. Logic-PIM, Grace-CPU)")
    link: str = Field(description="link between an accelerator and this unit (e.g. PIM-internal, NVLink-C2C)")
    count: int | None = Field(None, ge=1, description="units of this kind per node, the accelerators split evenly "
                              "over them; default one beside each accelerator (the host: one per node)")
    memory: Literal["own", "accelerator"] = Field(
        "own", description="own: it computes on its own memory (a host CPU's DRAM: weights it runs live there); "
        "accelerator: on the accelerator's memory (a PIM on the logic dies of its HBM)")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == ACCELERATOR:
            raise ValueError(f"'{ACCELERATOR}' names the node's device itself; give this unit another name")
        return name


class StorageSpec(_Strict):
    link: str = Field(description="storage device's read link (e.g. NVMe-Gen4-x4), one per node")
    capacity: Bytes = Field(gt=0, description="bytes of storage for offloaded weights")


class NodeSpec(_Strict):
    device: str
    devices_per_node: int = Field(ge=1)
    intra_node: IntraNodeSpec
    nic: NicSpec | None = None
    host: HostSpec | None = Field(None, description="the host CPU (shorthand for a unit named host)")
    units: list[UnitSpec] = Field(default_factory=list, description="compute units beside the accelerators "
                                  "(Logic-PIM, the host CPU as `name: host`, an NPU), each with its own profile and link")
    storage: StorageSpec | None = Field(None, description="storage tier for expert offloading (read via the host)")

    @model_validator(mode="after")
    def _devices_connected(self) -> "NodeSpec":
        if self.intra_node.topology == "none" and self.devices_per_node > 1:
            raise ValueError(f"intra_node.topology 'none' leaves the {self.devices_per_node} devices of a node "
                             "unconnected; use 'switch' or 'full_mesh' (none suits one device per node)")
        return self

    @model_validator(mode="after")
    def _units_are_distinct(self) -> "NodeSpec":
        names = [u.name for u in self.units]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"units {twice} are named twice; each unit of a node needs its own name")
        for u in self.units:
            if u.name == HOST and self.host is not None:
                raise ValueError("the host CPU is given twice, as node.host and as a unit named host; keep one")
            if u.name == HOST and u.memory != "own":
                raise ValueError("the host unit computes on its own DRAM (memory: own)")
            if u.count is not None and self.devices_per_node % u.count:
                raise ValueError(f"unit {u.name}: count {u.count} must divide the {self.devices_per_node} devices of "
                                 "a node (each unit serves an equal share of them)")
        return self

    @property
    def host_cpu(self) -> HostSpec | None:
        """The host CPU, however the profile gives it (node.host, or a unit named host)."""
        if self.host is not None:
            return self.host
        unit = next((u for u in self.units if u.name == HOST), None)
        if unit is None:
            return None
        return HostSpec(device=unit.device, count=unit.count or 1, link=unit.link)

    @property
    def compute_units(self) -> list[UnitSpec]:
        """Every unit beside the accelerators, the host CPU among them however it was given."""
        if self.host is None:
            return list(self.units)
        host = UnitSpec(name=HOST, device=self.host.device, link=self.host.link, count=self.host.count)
        return [host, *self.units]

    def unit_count(self, unit: UnitSpec) -> int:
        """Units of this kind per node (the accelerators split evenly over them)."""
        if unit.count is not None:
            return unit.count
        return 1 if unit.name == HOST else self.devices_per_node


class ClusterSpec(_Strict):
    name: str
    description: str = ""
    nodes: int = Field(1, ge=1)
    node: NodeSpec
    network: Literal["switch"] = Field("switch", description="non-blocking fabric between NICs")
    collectives: dict[CommKind, dict[str, CommCost]] = Field(
        default_factory=dict, description="measured communication kernel costs (e.g. fitted from nccl-tests by "
        "`moesim calibrate --from-nccl-tests`), per kind and link name; they replace the link's defaults")
    comm_floors: bool = Field(True, description="false: links move every message at bandwidth x efficiency with "
                              "no kernel floor (moesim before issue 17)")
    sources: dict[str, str] = Field(default_factory=dict)
    notes: str = ""

    @model_validator(mode="after")
    def _multi_node_needs_nic(self) -> "ClusterSpec":
        if self.nodes > 1 and self.node.nic is None:
            raise ValueError(f"{self.nodes} nodes need node.nic to connect them")
        return self

    @property
    def num_devices(self) -> int:
        return self.nodes * self.node.devices_per_node
