"""The scenario config schema (one YAML file per scenario) and its loading into a Scenario.

The schema is validated with pydantic on load; every error names the file, the field path
and what was expected. Cross-field checks that need the model and the cluster (ep divides the
experts, tp x dp equals the device count, the workload fits in memory) run in `resolve` and
report the same way. Relative paths inside a config resolve against the config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from moesim.errors import ConfigError
from moesim.simulator.config_choice import one_of
from moesim.simulator.offload.config import OffloadConfig, PrecisionConfig
from moesim.simulator.serving.config import ServingConfig
from moesim.simulator.training.config import TrainingConfig
from moesim.workloads.arrivals import MAX_TOKENS, WHY_TOKENS, Tokens
from moesim.workloads.synthetic_routing import RoutingModelConfig
from moesim.units import Seconds
from moesim.yaml_io import at_most, check_file, load_yaml, parse_yaml, resolve_lenient, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MAX_STEPS = 10**9  # steps of a fixed-batch run (its plans are kept: run_estimate refuses most before this)
Sequences = Annotated[int, at_most(MAX_TOKENS, "sequences", WHY_TOKENS)]


class HardwareScale(_Strict):
    """What-if multipliers on the profile numbers (2.0 = twice as fast)."""

    flops: float = Field(1.0, gt=0)
    memory_bandwidth: float = Field(1.0, gt=0)
    link_bandwidth: float = Field(1.0, gt=0)


class HardwareConfig(_Strict):
    cluster: str = Field(description="bundled cluster name or a cluster YAML path")
    nodes: int | None = Field(None, ge=1, description="use only the first N nodes of the cluster")
    comm_floors: bool = Field(True, description="false: no communication kernel floors or small-message "
                              "efficiency loss (moesim before issue 17; the cluster's comm_floors)")
    scale: HardwareScale = HardwareScale()


class ParallelismConfig(_Strict):
    ep: int | None = Field(None, ge=1, description="expert parallel group size; default devices / moe_tp")
    tp: int = Field(1, ge=1, description="tensor parallel degree of attention and dense layers")
    dp: int | None = Field(None, ge=1, description="attention data-parallel replicas; default devices / (tp x pp)")
    pp: int = Field(1, ge=1, description="pipeline-parallel stages (workload.phase: train): contiguous groups of "
                    "devices / pp devices, each holding a contiguous run of layers (1F1B schedule)")
    moe_tp: int = Field(1, ge=1, description="tensor parallel degree of every expert (its intermediate "
                        "dimension split over moe_tp devices, reduced after the MoE block); ep x moe_tp "
                        "devices form one MoE group")


def config_file(sf: "ScenarioFile", field: str, value: str, what: str) -> Path:
    """The file a config field names (relative to the config); missing or odd, the error names both."""
    path = Path(sf.resolve_path(value))
    try:
        return check_file(path, what)
    except ConfigError as err:
        raise config_error(sf, field, f"{path}: {err.detail}") from None


def _replays_trace(generator: str) -> bool:
    """Whether the routing generator replays a trace (which fixes the tokens of every step)."""
    from moesim.simulator.compose import ROUTING_GENERATORS

    return ROUTING_GENERATORS[generator].replays_trace


class PlacementConfig(_Strict):
    policy: Annotated[str, one_of("PLACEMENT_POLICIES", "placement policy")] | None = Field(
        None, description="contiguous (default): expert e on device e // (E / ep); round_robin: on e mod ep")
    file: str | None = Field(None, description="placement file (YAML) written by `moesim place` or by hand")

    @model_validator(mode="after")
    def _one_source(self) -> "PlacementConfig":
        if self.policy and self.file:
            raise ValueError("give either placement.policy or placement.file, not both")
        if not self.policy and not self.file:
            self.policy = "contiguous"
        return self


class RoutingConfig(_Strict):
    generator: Annotated[str, one_of("ROUTING_GENERATORS", "routing generator")] = Field(
        "uniform", description="uniform, zipf, fixed (counts), trace (a trace file), synthetic (a generator "
        "model), load_matrix (measured expert loads); simulator/routing_generators.py")
    alpha: float = Field(1.2, gt=0, description="Zipf exponent")
    shuffle: bool = Field(True, description="Zipf: hot experts differ per layer")
    counts: list[list[Tokens]] | None = Field(
        None, description="fixed: counts[source_device][expert], the same for every MoE layer and step"
    )
    trace: str | None = Field(None, description="trace: a routing trace file (.parquet, .npz, .jsonl, .npy, .pt)")
    source_map: Literal["auto", "identity", "modulo", "replica"] = Field(
        "auto", description="trace: how trace sources map onto devices (see workloads/trace_routing.py)")
    repeat: bool = Field(False, description="trace: start over when the simulation outlasts the trace")
    synthetic: RoutingModelConfig | str | None = Field(
        None, description="synthetic: the generator model, inline or a YAML path (e.g. from `moesim trace fit`)")
    per_token: bool = Field(False, description="uniform/zipf: draw each token's top-k expert ids (Gumbel-top-k, "
                            "the same expected loads) instead of counts only, so dedup and hierarchical dispatch "
                            "count distinct (token, device/node) pairs exactly; slower")
    max_nodes: int | None = Field(None, ge=1, description="uniform/zipf: node-limited routing (DeepSeek-V3 "
                                  "sec. 2.1.2): each token's experts lie on at most this many nodes (the "
                                  "nodes of the experts' primary copies); implies per_token")
    loads: str | list[str] | None = Field(
        None, description="load_matrix: an expert-load file (layers x experts counts or shares: .csv, .npy, "
        ".parquet, SGLang/vLLM .json or .pt) or a list of them (a history of windows, in order)")
    window: int | Literal["mean", "cycle"] = Field(
        "mean", description="load_matrix: mean (the windows' mean shares every step), cycle (replay the "
        "windows in order, steps_per_window steps each, then start over) or a window index")
    steps_per_window: int = Field(1, ge=1, description="load_matrix with window: cycle: steps each window lasts")

    @model_validator(mode="after")
    def _source_given(self) -> "RoutingConfig":
        from moesim.simulator.compose import ROUTING_GENERATORS

        gen = ROUTING_GENERATORS[self.generator]
        if gen.needs is not None and getattr(self, gen.needs) in (None, "", []):
            raise ValueError(f"routing.generator '{self.generator}' needs routing.{gen.needs} ({gen.needs_what})")
        if (self.per_token or self.max_nodes is not None) and not gen.per_token:
            able = [name for name, g in ROUTING_GENERATORS.items() if g.per_token]
            raise ValueError(f"routing.per_token and routing.max_nodes apply to the {', '.join(able)} generators, "
                             f"not '{self.generator}' (it already draws per token, or draws counts only)")
        return self


class WorkloadConfig(_Strict):
    phase: Literal["prefill", "decode", "train"] = Field(description="prefill, decode, or train (a training "
                                                        "step: the training: section, simulator/training/)")
    batch_size: Sequences | None = Field(None, ge=1, description="sequences per attention (DP) replica")
    tokens_per_device: Tokens | None = Field(None, ge=1, description="MoE tokens per device per step")
    seq_len: Tokens | None = Field(None, ge=1, description="prompt length of a prefill sequence")
    kv_len: Tokens | None = Field(None, ge=0, description="context already cached, for decode")
    steps: Annotated[int, at_most(MAX_STEPS, "steps", "simulate a few hundred: steady-state metrics need no "
                                  "more")] = Field(1, ge=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _shape(self) -> "WorkloadConfig":
        if self.phase in ("prefill", "train") and self.batch_size and self.seq_len and self.batch_size * self.seq_len > MAX_TOKENS:
            raise ValueError(f"workload.batch_size x workload.seq_len = {self.batch_size * self.seq_len:,} tokens per "
                             f"replica is more than moesim can simulate: at most {MAX_TOKENS:,} ({WHY_TOKENS})")
        both = self.batch_size is not None and self.tokens_per_device is not None
        neither = self.batch_size is None and self.tokens_per_device is None
        if both or (neither and not _replays_trace(self.routing.generator)):
            raise ValueError("give exactly one of workload.batch_size or workload.tokens_per_device "
                             "(with a trace, neither: the trace's first step sets the tokens per device)")
        if self.phase == "prefill" and self.seq_len is None:
            raise ValueError("prefill needs workload.seq_len (the prompt length)")
        if self.phase == "train" and (self.seq_len is None or self.batch_size is None):
            raise ValueError("workload.phase: train needs workload.seq_len (the sequence length) and "
                             "workload.batch_size (sequences per micro-batch on each data-parallel rank)")
        if self.phase == "decode" and self.kv_len is None:
            raise ValueError("decode needs workload.kv_len (tokens already in the KV cache)")
        return self


class DispatchConfig(_Strict):
    """How routed tokens travel to their experts and back (simulator/dispatch/)."""

    algorithm: Annotated[str, one_of("DISPATCH_ALGORITHMS", "dispatch algorithm")] = Field(
        "direct", description="direct: a row per (token, expert) (Megatron); dedup: a token once per device; "
        "hierarchical: once per node over the network, then NVLink forwarding (DeepEP normal); "
        "low_latency: per (token, expert) RDMA with a per-kernel floor (DeepEP low-latency); "
        "exflow: a token stays on its top-1 expert's device between MoE layers, one all-to-all per layer "
        "(ExFlow; needs per-token routing ids, simulator/dispatch/token_stays.py); all_gather: every token to "
        "every device of its EP group, a reduce-scatter back (Megatron-Core's allgather dispatcher); auto: "
        "hierarchical for a step with prefill work, low_latency for a decode-only one (SGLang's DeepEP auto mode)")
    kv_sync: Literal["per_layer", "none"] = Field(
        "per_layer", description="exflow only: per_layer: each token's new KV entries are all-gathered over the EP "
        "group on the next MoE layer's dispatch (context coherence); none: contexts are assumed to be where "
        "attention needs them already (an optimistic bound)")
    comm_sms: int | None = Field(None, ge=0, description="SMs the dispatch/combine kernels hold while compute "
                                 "overlaps them (two_batch, shortcut); None: the algorithm's (hierarchical: "
                                 "DeepEP's 20; low_latency: 0; NCCL all-to-all: 0)")
    kernel_latency: Seconds | None = Field(None, ge=0, description="low_latency: fixed cost of each dispatch or "
                                           "combine kernel (launch, signalling, polling); default: the cluster "
                                           "profile's low_latency floor")
    replica_choice: Literal["local", "global"] = Field(
        "local", description="local: a token uses a copy on its own device, else its own node, else any "
        "(EPLB-style serving); global: every copy by the placement's shares")


UNIT_NAME = r"^[a-z][a-z0-9_]*$"


class UnitsConfig(_Strict):
    """Which compute unit of a node runs each part of a layer (simulator/machine.py ComputeUnit).

    A value is a unit of the cluster's nodes (`accelerator`, `host`, or a name from node.units) or
    a rule (compose.UNIT_RULES, simulator/unit_rules/): `fastest`: each op goes to whichever of the
    accelerator and one other unit finishes the part first, its activations' hand-off included (so
    Duplex's Op/B rule emerges from the costs; a device's routed experts of a layer move as one
    kernel); `threshold`: ops under `threshold.op_per_byte` FLOP/B go to `threshold.unit`, the rest
    stay on the accelerator (the rule as a fixed number); `co_process`: as fastest, but a device's
    expert copies split across units that compute at once, hottest first to the unit that would
    finish each earliest (Duplex's co-processing)."""

    attention: str = Field("accelerator", pattern=UNIT_NAME, description="attention, its projections and the KV cache")
    dense_ffn: str = Field("accelerator", pattern=UNIT_NAME, description="the FFN of dense layers")
    shared_expert: str = Field("accelerator", pattern=UNIT_NAME, description="shared experts")
    expert: str = Field("accelerator", pattern=UNIT_NAME, description="routed experts (per device and layer; "
                        "per expert copy under co_process)")
    threshold: "OpPerByteRule | None" = Field(None, description="the fixed Op/B rule a part set to threshold follows")

    @model_validator(mode="after")
    def _threshold_given(self) -> "UnitsConfig":
        parts = [p for p in ("attention", "dense_ffn", "shared_expert", "expert") if getattr(self, p) == "threshold"]
        if parts and self.threshold is None:
            raise ValueError(f"{', '.join(parts)}: threshold needs policies.units.threshold "
                             "(e.g. {unit: pim, op_per_byte: 16}: ops under 16 FLOP/B go to the pim unit)")
        return self


class OpPerByteRule(_Strict):
    """Ops whose arithmetic intensity is under `op_per_byte` run on `unit`; the rest on the accelerator."""

    unit: str = Field(pattern=UNIT_NAME, description="the unit that takes the low-intensity ops")
    op_per_byte: float = Field(gt=0, description="FLOPs per byte of memory traffic below which an op goes there")


UnitsConfig.model_rebuild()


class SpeculativeConfig(_Strict):
    """Speculative decoding with multi-token prediction (DeepSeek-V3's MTP modules as the draft):
    each decode step runs `draft_tokens` draft passes, then verifies them in one pass of the model
    over draft_tokens + 1 tokens per sequence (simulator/speculative.py)."""

    method: Literal["mtp"] = Field("mtp", description="mtp: the draft is the model's own multi-token prediction "
                                   "module(s), `draft_layers` transformer blocks of the model's MoE layer shape")
    draft_tokens: int = Field(1, ge=1, le=8, description="tokens drafted per step (DeepSeek-V3 serves with 1)")
    acceptance: float | list[float] = Field(description="probability that a draft token is accepted given the ones "
                                            "before it were: one rate for every position, or one per draft token "
                                            "(DeepSeek-V3 reports 85-90% for its second token)")
    draft_layers: int = Field(1, ge=1, le=8, description="transformer blocks one draft pass runs (DeepSeek-V3: 1 "
                                                         "MTP module per predicted token)")

    @field_validator("acceptance")
    @classmethod
    def _rates(cls, v: float | list[float]) -> float | list[float]:
        rates = v if isinstance(v, list) else [v]
        if not rates or any(not (0.0 <= float(r) <= 1.0) or r != r for r in rates):
            raise ValueError("acceptance rates are probabilities in [0, 1]")
        return v

    @model_validator(mode="after")
    def _one_rate_per_draft(self) -> "SpeculativeConfig":
        if isinstance(self.acceptance, list) and len(self.acceptance) != self.draft_tokens:
            raise ValueError(f"acceptance lists {len(self.acceptance)} rates for {self.draft_tokens} draft tokens: "
                             "give one per draft token, or one number for all")
        return self

    def rates(self) -> list[float]:
        """Per draft position, its acceptance given the earlier ones were accepted."""
        return list(self.acceptance) if isinstance(self.acceptance, list) else [float(self.acceptance)] * self.draft_tokens


class PoliciesConfig(_Strict):
    dispatch: DispatchConfig = DispatchConfig()
    units: UnitsConfig = Field(UnitsConfig(), description="which compute unit runs each part of a layer")
    overlap: Annotated[str, one_of("OVERLAP_SCHEDULES", "overlap schedule")] = Field(
        "none", description="none: phases in order; two_batch: two micro-batches, one computes while the "
        "other's all-to-all is in flight (DeepSeek); shortcut: a layer's dispatch overlaps its attention "
        "and dense compute (ScMoE)")
    expert_kernel: Annotated[str, one_of("EXPERT_KERNEL_FORMS", "expert kernel form")] = Field(
        "fused", description="fused: the MoE layer as serving kernels run it (a per-layer floor, one "
        "grouped-GEMM launch, memory passes over every routed row; simulator/moe_kernel_cost.py) = "
        "triton_fused; cutlass_grouped, deepgemm_contiguous, deepgemm_masked: a kernel family the device "
        "profile describes (moe_kernels); grouped: one grouped-GEMM launch only; per_expert: one launch per expert")
    tp_allreduce: Annotated[str, one_of("ALLREDUCE_ALGORITHMS", "all-reduce algorithm")] = Field(
        "auto", description="how TP and MoE-TP groups all-reduce: auto (as vLLM's custom all-reduce picks by "
        "message size: one-shot, two-shot, NCCL above 8 MiB or across nodes), nccl (ring), one_shot, two_shot; "
        "simulator/allreduce.py")
    small_ops: bool = Field(True, description="cost norms, the embedding lookup and the LM head")
    capacity_factor: float | None = Field(None, gt=0, description="None: no capacity limit")
    overflow: Literal["keep", "drop"] = "keep"
    overlap_shared_experts: bool = Field(True, description="shared experts run while dispatch is in flight")
    dispatch_dtype: str = Field("bf16", description="activation dtype sent by dispatch (fp8 in DeepSeek-V3)")
    combine_dtype: str = Field("bf16")
    memory_reserve: float = Field(0.1, ge=0, lt=1, description="fraction of device memory kept free")
    speculative: SpeculativeConfig | None = Field(None, description="speculative decoding (multi-token "
                                                  "prediction); a fixed-batch decode workload only")


class OutputsConfig(_Strict):
    dir: str | None = Field(None, description="run directory; default runs/<name>")
    trace_steps: int = Field(2, ge=0, description="steps written to trace.json (0: none)")
    phases: Literal["full", "none"] = Field(
        "full", description="phases.parquet, one row per (step, layer, device, phase): 'full', or 'none' to skip "
        "it (a long serving run's largest table and half its write time; per-request and per-iteration tables stay)")


def _folder_name(name: str | None) -> str | None:
    """A scenario name becomes a folder (runs/<name>): it may not lead out of the output root."""
    if name is None:
        return None
    bad = [c for c in ("/", "\\", "\0") if c in name]
    if bad or name.strip() in ("", ".", "..") or name.startswith(".") or len(name) > 200:
        raise ValueError(f"'{name}' cannot be a scenario name: the name becomes the run folder runs/<name>, so it may "
                         "not contain a path separator, start with '.', be empty or exceed 200 characters; choose "
                         "where runs go with outputs.dir or --out")
    return name


class ScenarioConfig(_Strict):
    name: Annotated[str | None, AfterValidator(_folder_name)] = None
    model: str = Field(description="bundled model name, model YAML or Hugging Face config.json path")
    hardware: HardwareConfig
    parallelism: ParallelismConfig = ParallelismConfig()
    placement: PlacementConfig = PlacementConfig()
    workload: WorkloadConfig | None = Field(None, description="the fixed batch simulated for N steps (give this or "
                                            "serving)")
    serving: ServingConfig | None = Field(None, description="serving mode: requests, continuous batching, "
                                          "TTFT/ITL results")
    routing: RoutingConfig | None = Field(None, description="serving: how tokens choose experts (a fixed-batch "
                                          "workload has its own workload.routing)")
    policies: PoliciesConfig = PoliciesConfig()
    precision: PrecisionConfig = PrecisionConfig()
    offload: OffloadConfig | None = Field(None, description="expert offloading; None: every expert resident")
    training: TrainingConfig | None = Field(None, description="workload.phase: train: accumulation, recomputation, "
                                            "ZeRO and gradient buckets (simulator/training/config.py)")
    outputs: OutputsConfig = OutputsConfig()
    seed: int = Field(0, ge=0, description="random seed (the same config and seed give identical results)")

    def as_written(self, **dump) -> dict[str, Any]:
        """The config as JSON data, without the stand-in workload a serving config gets for resolution."""
        data = self.model_dump(mode="json", **dump)
        if self.serving is not None:
            data.pop("workload", None)
        return data

    @model_validator(mode="after")
    def _workload_or_serving(self) -> "ScenarioConfig":
        if (self.workload is None) == (self.serving is None):
            raise ValueError("give workload (a fixed batch for N steps) or serving (requests), not both or neither")
        train = self.workload is not None and self.workload.phase == "train"
        if train != (self.training is not None):
            raise ValueError("workload.phase: train needs a training: section (training.global_batch at least), and "
                             "a training: section needs workload.phase: train")
        if train and (self.offload is not None or self.policies.speculative):
            raise ValueError("workload.phase: train is simulated without offload and policies.speculative")
        if self.serving is not None:
            if self.routing is not None and _replays_trace(self.routing.generator):
                raise ValueError("serving routes tokens with a generator (uniform, zipf, synthetic, fixed); a trace "
                                 "fixes tokens per step, which a scheduler decides here")
            if self.offload is not None:
                raise ValueError("serving with expert offloading is not modelled yet; drop the offload section")
            if self.policies.speculative is not None:
                raise ValueError("policies.speculative is modelled for a fixed-batch decode workload, not serving yet "
                                 "(the scheduler would have to emit several tokens per request per iteration); "
                                 "simulate workload.phase: decode with it")
            # the rest of resolution sizes memory and routing from a workload: one decode token per device
            self.workload = WorkloadConfig(phase="decode", batch_size=1, kv_len=0, steps=1,
                                           routing=self.routing or RoutingConfig())
        elif self.routing is not None:
            raise ValueError("top-level routing is for serving; a fixed-batch workload uses workload.routing")
        elif self.policies.speculative is not None and self.workload.phase != "decode":
            raise ValueError("policies.speculative drafts and verifies decode tokens: it needs workload.phase: decode")
        return self


@dataclass
class ScenarioFile:
    """A validated config plus where it came from (for relative paths and error messages)."""

    config: ScenarioConfig
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # --set FIELD=VALUE applied on top of the file
    extends: list[str] = field(default_factory=list)  # the base configs merged under it (nearest first)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve_path(self, value: str) -> str:
        """A path relative to the config file; names without a path suffix are left alone."""
        p = Path(value)
        if p.is_absolute() or p.suffix not in (".yaml", ".yml", ".json", ".parquet", ".pq", ".npz", ".npy", ".pt",
                                                ".pth", ".jsonl"):
            return value
        return str(resolve_lenient(self.base_dir / p))  # a symlink loop is reported by the file's reader


ItemsRelativeTo = Literal["cwd", "config"]


def load_config(path: str | Path, overrides: list[str] | None = None,
                items_relative_to: ItemsRelativeTo = "cwd") -> ScenarioFile:
    """Read and validate a scenario config file (schema only; see `resolve` for the rest).
    `overrides` ("workload.batch_size=64", as given to --set) change the file's values first
    and are validated with them. A relative path in an override resolves against the working
    directory (`items_relative_to="cwd"`, what --set means; `anchor_set_paths`), or against the
    config's folder as if written in the file (`"config"`: a sweep file's axes)."""
    path = Path(path)
    from moesim.simulator.config_extends import resolve_extends

    data, chain = resolve_extends(load_yaml(path), path)
    overrides = list(overrides or [])
    set_fields = apply_overrides(data, overrides)
    if items_relative_to == "cwd":
        anchor_set_paths(data, overrides, set_fields, path)
    try:
        cfg = validate(ScenarioConfig, data, path)
    except ConfigError as err:
        given = [o for o, f in zip(overrides, set_fields)
                 if err.field and (_within(err.field, f) or _within(f, err.field))]
        if given:
            raise ConfigError(f"{err.detail} (value given by --set {given[-1]})", file=path, field=err.field) from None
        raise
    if cfg.name is None:
        cfg.name = path.stem
    return ScenarioFile(cfg, path, data, overrides, chain)


def _within(field: str, section: str) -> bool:
    """Whether a field path lies in a section (`a.b[2].c` in `a.b`), or is it."""
    return field == section or field.startswith((section + ".", section + "["))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> list[str]:
    """Set dotted fields of a config mapping in place from "a.b.c=value" strings (the value is
    read as YAML: 64, 2.5, true, [1, 2], fp8); returns the dotted field of each override."""
    fields = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise ConfigError(f"'{item}' is not FIELD=VALUE (e.g. workload.batch_size=64)", field="--set")
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"the value of '{item}' is not valid YAML ({str(err).splitlines()[0]})",
                              field="--set") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[:i + 1])}' is {child!r}, not a section",
                                  field="--set")
            node = child
        node[parts[-1]] = value
        fields.append(key)
    return fields


# --- paths given by --set -------------------------------------------------------------------
# A relative path written in a config resolves against the config's folder (ScenarioFile.resolve_path);
# one given on the command line (--set, or load_scenario's items) against the working directory.
# anchor_set_paths makes each such path absolute before validation, so the rest of loading is the
# same for both. Which values are paths:
#   - fields that only ever hold a path (SET_FILE_FIELDS, SET_FOLDER_FIELDS): every relative value;
#   - fields that hold a bundled profile name or a path (SET_NAMED_FIELDS: model, hardware.cluster): a
#     value that contains a path separator or ends in a file suffix (PATH_SUFFIXES, `looks_like_path`);
#     anything else (h800-4x8, DeepSeek-V3) stays a name and is looked up as one.
# A file the value names must exist relative to the working directory, else a ConfigError names the
# field, that path, the bundled names (named fields) and the config's folder (which is not searched).
# Absolute paths are left alone (their readers report a missing file).

SET_NAMED_FIELDS = {"model": "model", "hardware.cluster": "cluster"}  # field -> what its bundled names name
SET_FILE_FIELDS = ("placement.file", "workload.routing.trace", "workload.routing.synthetic", "workload.routing.loads",
                   "routing.trace", "routing.synthetic", "routing.loads", "serving.arrivals.path",
                   "serving.prompt_tokens.path", "serving.output_tokens.path")
SET_FOLDER_FIELDS = ("outputs.dir",)  # written, not read: not checked for existence
PATH_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".parquet", ".pq", ".npz", ".npy", ".pt", ".pth", ".csv")


def looks_like_path(value: str) -> bool:
    """Whether a name-or-path value is a path: absolute, holding a path separator, or ending in a
    file suffix moesim reads (a bundled name has none of these)."""
    import os

    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return Path(value).is_absolute() or any(s in value for s in seps) or Path(value).suffix.lower() in PATH_SUFFIXES


def _bundled_names(kind: str) -> list[str]:
    if kind == "model":
        from moesim.workloads.models import _bundled

        return sorted(_bundled())
    from moesim.hardware_profiles.loader import list_profiles

    return list_profiles("clusters")


def _set_path_missing(text: str, where: Path, cwd: Path, config_dir: Path | None, kind: str | None) -> str:
    """The message for a relative --set path that names nothing in the working directory."""
    from moesim.errors import closest_names

    msg = f"no file {text} in the working directory ({where})"
    if kind is not None:
        close = closest_names(text, _bundled_names(kind))
        msg += f", and '{text}' is not the name of a bundled {kind}" + (
            f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
    if config_dir is None or resolve_lenient(config_dir) == resolve_lenient(cwd):  # one place only
        return msg
    config_dir = resolve_lenient(config_dir)
    msg += (f"; a relative path given by --set resolves against the working directory, not the config's folder "
            f"({config_dir})")
    beside = config_dir / text
    if beside.exists():
        msg += f", which has {beside}: give that path"
    return msg


def anchor_set_paths(data: dict[str, Any], overrides: list[str], fields: list[str], config_path: Path | None,
                     cwd: Path | None = None) -> None:
    """Make every relative path the overrides set absolute against `cwd` (default the working
    directory), in place; a file value that names nothing there is a ConfigError naming the field,
    the path looked at, the bundled names (model, cluster) and the config's folder. `fields` are
    the overrides' dotted fields (from apply_overrides); every value under one came from them."""
    import os

    cwd = Path(cwd) if cwd is not None else Path.cwd()
    config_dir = Path(config_path).parent if config_path is not None else None

    def item_for(field: str) -> str:
        given = [o for o, f in zip(overrides, fields) if _within(field, f)]
        return given[-1] if given else ""

    def anchor(field: str, holder: Any, key: Any, kind: str | None, check: bool) -> None:
        text = holder[key]
        if not isinstance(text, str) or not text.strip() or Path(text).expanduser().is_absolute():
            return
        if kind is not None and not looks_like_path(text):
            return  # a bundled name
        where = Path(os.path.abspath(cwd / Path(text).expanduser()))
        if check and not os.path.lexists(where):  # a broken symlink or a loop: its reader says which
            raise ConfigError(f"{_set_path_missing(text, where, cwd, config_dir, kind)} (given by --set "
                              f"{item_for(field)})", file=config_path or "<config>", field=field)
        holder[key] = str(where)

    def walk(field: str, holder: Any, key: Any) -> None:
        value = holder[key]
        if isinstance(value, dict):
            for k in list(value):
                walk(f"{field}.{k}", value, k)
            return
        if field in SET_NAMED_FIELDS:
            anchor(field, holder, key, SET_NAMED_FIELDS[field], check=True)
        elif field in SET_FILE_FIELDS or field in SET_FOLDER_FIELDS:
            check = field in SET_FILE_FIELDS
            if isinstance(value, list):  # routing.loads: a history of files
                for i in range(len(value)):
                    anchor(f"{field}[{i}]", value, i, None, check)
            else:
                anchor(field, holder, key, None, check)

    for field in dict.fromkeys(fields):  # each once, in order
        *parents, last = field.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            walk(field, node, last)


def config_from_dict(data: dict[str, Any], base_dir: str | Path | None = None) -> ScenarioFile:
    """Validate a config given as a mapping (notebooks, tests)."""
    cfg = validate(ScenarioConfig, data, None)
    if cfg.name is None:
        cfg.name = "scenario"
    path = Path(base_dir) / "scenario.yaml" if base_dir else None
    return ScenarioFile(cfg, path, data)


def config_error(sf: ScenarioFile, field: str, message: str) -> ConfigError:
    return ConfigError(message, file=sf.path if sf.path else "<config>", field=field)
