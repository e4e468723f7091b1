"""Where every op of a layer sits on a device's roofline, costed by the engine's own cost function.

For each op: FLOPs, bytes, arithmetic intensity (FLOP/byte), the modelled time from
`CostModel.op_cost` (so a roofline row and the engine's phase time are the same number), the
performance that time achieves, the roof at that intensity (attainable: min(peak x eff_c,
intensity x bandwidth x eff_m)), what bounds it and its share of the layer's time. All-to-all
ops are bytes over the device's links; their intensity is the layer's routed-expert FLOPs per
byte crossing the network, and their roof is intensity x link bandwidth (the expert FLOP/s the
link can feed: a network roofline; above the device's peak the layer is not link-bound).

Two entry points: `scenario_roofline` (a config's layer as the engine plans it at a step: real
token counts per expert, placement, precision, links) and `model_roofline` (a model on any
device, with uniform tokens per expert). `expert_sweep` costs one expert GEMM over a range of
tokens per expert and finds where it crosses the ridge point.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from moesim.hardware_profiles.schema import DeviceSpec
from moesim.simulator.cost_model import CostModel, base_kind
from moesim.simulator.moe_kernel_cost import FUSED, MoeKernelCost
from moesim.simulator.ops import (
    LayerContext,
    Op,
    act_dtype,
    attention_ops,
    dense_ffn_op,
    ffn_flops_bytes,
    gemm_dtype,
    router_op,
    shared_expert_op,
)
from moesim.simulator.scenario import Scenario
from moesim.simulator.step_plan import StepPipeline, StepPlan
from moesim.simulator.step_source import FixedBatch
from moesim.units import dtype_bytes
from moesim.workloads.model_spec import ModelSpec

COLUMNS = ["device", "phase", "layer", "op", "group", "unit", "kind", "tokens", "flops", "bytes", "intensity", "time_s",
           "achieved_flops_per_s", "attainable_flops_per_s", "roof_fraction", "bound", "share_of_layer"]


@dataclass(frozen=True)
class Roof:
    """A device's roof for one dtype: achievable (with the profile's efficiencies) and theoretical."""

    device: str
    dtype: str
    peak: float  # FLOP/s at the compute efficiency
    bandwidth: float  # B/s at the memory efficiency
    peak_theoretical: float
    bandwidth_theoretical: float

    @property
    def ridge(self) -> float:
        """FLOP/byte where the memory roof meets the compute roof."""
        return self.peak / self.bandwidth

    def attainable(self, intensity: np.ndarray | float) -> np.ndarray:
        return np.minimum(self.peak, np.asarray(intensity, dtype=float) * self.bandwidth)


def device_roof(cost: CostModel, dtype: str) -> Roof:
    eff = cost.efficiency
    peak = cost.peak(dtype)
    return Roof(cost.device.name, dtype, peak * float(eff.compute("gemm", np.array(1e9))),
                cost.bandwidth * float(eff.memory("gemm", np.array(1e12))), peak, cost.bandwidth)


def _group(op: Op) -> str:
    if op.name.startswith("expert["):
        return "routed expert"
    return {"router": "router", "shared_expert": "shared expert", "dense_ffn": "dense FFN",
            "moe_floor": "MoE floor", "moe_token_passes": "MoE token passes"}.get(
        op.name, "communication" if op.kind == "comm" else "attention")


def op_rows(cost: CostModel, ops: list[Op], phase: str, layer: int) -> pd.DataFrame:
    """One roofline row per compute op, costed through `cost.op_cost` (communication ops are skipped:
    the plan's own rows carry what the fabric timed)."""
    rows = []
    for op in ops:
        if op.kind == "comm":
            continue
        c = cost.op_cost(op)
        intensity = op.flops / op.bytes if op.bytes else np.inf
        roof = device_roof(cost, op.dtype)
        attainable = float(roof.attainable(intensity))
        achieved = op.flops / c.time if c.time else 0.0
        rows.append((cost.device.name, phase, layer, op.name, _group(op), "device", op.kind, op.rows, op.flops, op.bytes, intensity,
                     c.time, achieved, attainable, achieved / attainable if attainable else np.nan, c.bound))
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    total = df["time_s"].sum()
    df["share_of_layer"] = df["time_s"] / total if total > 0 else 0.0
    return df


# ---------------------------------------------------------------- a scenario's layer


class StepOutOfRange(ValueError):
    """A step past the iterations a serving run forms (a fixed batch plans any step)."""


def scenario_plan(sc: Scenario, step: int = 0, pipeline: StepPipeline | None = None) -> StepPlan:
    """The engine's plan of one step of a scenario (the whole step, not split into micro-batches).

    A fixed batch plans any step, also past `workload.steps` (the routing of step s is drawn from
    (seed, s) and a decode context has grown by s tokens), without building the steps before it;
    a serving config's iterations are formed in order, so those have to exist."""
    from moesim.simulator.compose import pipeline_for, step_source_for

    pipeline = pipeline or pipeline_for(sc)
    source = step_source_for(sc)
    if isinstance(source, FixedBatch):
        first = next(iter(replace(source, steps=1, kv_len=source.kv_len + step)))  # step 0, context after `step`
        return pipeline.plan(replace(first, step=step))
    formed = 0
    for inp in source:
        if inp.step == step:
            return pipeline.plan(inp)
        formed = inp.step + 1
    raise StepOutOfRange(f"step {step} is past the {formed} iterations the serving run forms (steps 0..{formed - 1})")


def scenario_op_rows(sc: Scenario, step: int = 0, layer: int | None = None, device: int | None = None) -> pd.DataFrame:
    """The op rows of one step of a scenario (one layer / device where given), as the engine costs them."""
    from moesim.simulator.compose import pipeline_for

    pipeline = pipeline_for(sc)
    return pipeline.op_rows(scenario_plan(sc, step, pipeline), layer, device)


def plan_roofline_rows(cost: CostModel, rows: pd.DataFrame, phase: str,
                       unit_costs: dict[str, CostModel] | None = None) -> pd.DataFrame:
    """Roofline rows from a plan's op rows: the times are the engine's, the roof is that of the unit
    that ran the op (`unit_costs` by op-row unit label; the accelerator's is `cost`). All-to-all
    rows get the network roof: the routed-expert FLOP/s their bytes can feed."""
    unit_costs = {"device": cost, **(unit_costs or {})}
    expert_flops = float(rows.loc[rows["phase"] == "expert", "flops"].sum())
    out = []
    for r in rows.itertuples(index=False):
        op = Op(r.op, r.kind, r.phase, r.flops, r.bytes, r.rows, r.dtype or "bf16")
        if r.kind == "comm" and not np.isfinite(r.bytes):  # a hand-off to a unit and back: a time, no roof
            group = {"dense_ffn": "dense FFN", "shared_expert": "shared expert", "expert": "routed expert"}.get(
                r.phase, "attention")  # the part whose hand-off it is
            out.append((cost.device.name, phase, r.layer, r.op, group, r.unit, r.kind, r.rows, 0.0, 0.0, np.nan,
                        r.time_s, 0.0, np.nan, np.nan, "link"))
            continue
        if r.kind == "comm":
            if not r.bytes:
                continue
            intensity = expert_flops / r.bytes
            bw = r.bytes / r.time_s if r.time_s else np.inf
            achieved = expert_flops / r.time_s if r.time_s else 0.0
            attainable = intensity * bw
            out.append((cost.device.name, phase, r.layer, r.op, _group(op), r.unit, r.kind, r.rows, 0.0, r.bytes,
                        intensity,
                        r.time_s, achieved, attainable, achieved / attainable if attainable else np.nan, "link"))
            continue
        if r.kind == "launch":
            continue
        unit_cost = unit_costs.get(r.unit)
        intensity = r.flops / r.bytes if r.bytes else np.inf
        attainable = float(device_roof(unit_cost, op.dtype).attainable(intensity)) if unit_cost else np.nan
        achieved = r.flops / r.time_s if r.time_s else 0.0
        out.append((cost.device.name, phase, r.layer, r.op, _group(op), r.unit, r.kind, r.rows, r.flops, r.bytes,
                    intensity, r.time_s, achieved, attainable, achieved / attainable if attainable else np.nan,
                    r.bound))
    df = pd.DataFrame(out, columns=COLUMNS[:-1])
    compute = rows[rows["kind"] == "launch"]["time_s"].sum()  # a grouped launch belongs to the routed experts
    if compute and (df["group"] == "routed expert").any():
        first = df.index[df["group"] == "routed expert"][0]
        df.loc[first, "time_s"] += compute
    total = df["time_s"].sum()
    df["share_of_layer"] = df["time_s"] / total if total > 0 else 0.0
    return df


def scenario_roofline(sc: Scenario, layer: int | None = None, step: int = 0, device: int = 0,
                      others: list[DeviceSpec] = ()) -> pd.DataFrame:
    """Roofline rows of one layer of the scenario (default: its first MoE layer) on one device, read
    from the engine's own plan (each op on the roof of the unit that ran it); then the same compute
    ops costed on every other unit of the node (each as if it ran the whole layer) and on each of
    `others`."""
    if layer is None:
        layer = sc.model.moe_layers[0] if sc.model.moe_layers else 0
    phase = sc.config.workload.phase
    rows = scenario_op_rows(sc, step, layer, device)
    frames = [plan_roofline_rows(sc.cost, rows, phase, {u.label: u.cost for u in sc.machine.units.values()})]
    compute = rows[(rows["kind"] != "comm") & (rows["kind"] != "launch")]
    ops = [Op(r.op, r.kind, r.phase, r.flops, r.bytes, r.rows, r.dtype or "bf16") for r in compute.itertuples()]
    for unit in sc.machine.units.values():  # the node's other units, already scaled
        if not unit.is_accelerator:
            frames.append(op_rows(unit.cost, _recast(ops, sc.model, unit.cost), phase, layer))
    scale = sc.machine.scale  # hardware.scale applies to every device the roofline compares
    for spec in others:
        other = CostModel(spec, flops_scale=scale.flops, memory_bandwidth_scale=scale.memory_bandwidth)
        frames.append(op_rows(other, _recast(ops, sc.model, other), phase, layer))
    return pd.concat(frames, ignore_index=True)


def _recast(ops: list[Op], model: ModelSpec, cost: CostModel) -> list[Op]:
    """The same ops in the dtype another device would run them in (its native support differs)."""
    out = []
    for op in ops:
        if op.kind == "floor":  # the other device's own fused-MoE floor
            floor = MoeKernelCost(cost, FUSED, 0.0, 0.0, 0.0, op.dtype).floor
            out.append(Op(op.name, op.kind, op.phase, 0.0, 0.0, 0.0, op.dtype, fixed=floor))
            continue
        if base_kind(op.kind) in ("gemm", "grouped_gemm") and op.name.startswith("expert["):
            dtype = gemm_dtype(model.routed_expert_dtype, cost.dtypes, act_dtype(model))
        elif op.kind == "gemm":
            dtype = gemm_dtype(model.weight_dtype, cost.dtypes, act_dtype(model))
        else:
            dtype = op.dtype
        out.append(Op(op.name, op.kind, op.phase, op.flops, op.bytes, op.rows, dtype))
    return out


# ---------------------------------------------------------------- a model on any device


def model_layer_ops(model: ModelSpec, phase: str, batch: int, seq_len: int, kv_len: int,
                    device: CostModel, layer: int | None = None) -> list[Op]:
    """One device running a whole MoE layer for `batch` sequences (no parallelism): attention,
    router, shared experts and one representative routed expert at the mean tokens per expert."""
    if layer is None:
        layer = model.moe_layers[0] if model.moe_layers else 0
    ctx = LayerContext(phase, batch, seq_len if phase == "prefill" else 1, kv_len if phase == "decode" else 0)
    dt = device.dtypes
    ops = attention_ops(model, layer, ctx, dt)
    tokens = ctx.attn_tokens
    if not model.is_moe_layer(layer):
        return ops + [dense_ffn_op(model, tokens, 1, dt)]
    ops.append(router_op(model, tokens))
    shared = shared_expert_op(model, tokens, dt)
    if shared:
        ops.append(shared)
    active = min(model.moe.num_experts, tokens * model.moe.top_k)
    per_expert = tokens * model.moe.top_k / active  # mean tokens of an expert that gets any
    wd = model.routed_expert_dtype
    flops, mem = ffn_flops_bytes(model, per_expert, model.moe.expert_intermediate_size, wd)
    # `active` experts each at the mean load: one row standing for all of them, one grouped-GEMM
    # launch, plus the fused MoE layer's floor and token passes (simulator/moe_kernel_cost.py)
    compute_dtype = model.expert_compute_dtype or gemm_dtype(wd, dt, act_dtype(model))
    ops.append(Op(f"expert[x{active}]", "grouped_gemm", "expert", float(flops) * active, float(mem) * active,
                  per_expert, compute_dtype))
    kernel = MoeKernelCost(device, FUSED, model.hidden_size, model.moe.expert_intermediate_size,
                           dtype_bytes(act_dtype(model)), act_dtype(model))
    return ops + kernel.ops(float(tokens * model.moe.top_k))


def model_roofline(model: ModelSpec, devices: list[DeviceSpec], phases: list[str], batch: int, seq_len: int,
                   kv_len: int, layer: int | None = None) -> pd.DataFrame:
    frames = []
    for spec in devices:
        cost = CostModel(spec)
        for phase in phases:
            ops = model_layer_ops(model, phase, batch, seq_len, kv_len, cost, layer)
            frames.append(op_rows(cost, ops, phase, layer if layer is not None else model.moe_layers[0]))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- expert GEMMs over tokens per expert


def expert_sweep(model: ModelSpec, devices: list[DeviceSpec], tokens: np.ndarray | None = None,
                 weight_bytes: float | None = None) -> pd.DataFrame:
    """One routed expert's GEMM at each token count, on each device: time, achieved FLOP/s, bound."""
    tokens = np.unique(np.round(np.geomspace(1, 8192, 60))) if tokens is None else np.asarray(tokens, float)
    rows = []
    for spec in devices:
        cost = CostModel(spec)
        dtype = gemm_dtype(model.routed_expert_dtype, cost.dtypes, act_dtype(model))
        flops, mem = ffn_flops_bytes(model, tokens, model.moe.expert_intermediate_size, model.routed_expert_dtype,
                                     weight_bytes)
        c, m, o = cost.terms("gemm", flops, mem, tokens, dtype)
        t = np.maximum(c, m) + o
        for n, f, b, ci, mi, ti in zip(tokens, flops, mem, c, m, t):
            rows.append((spec.name, n, f, b, f / b, ti, f / ti, "compute" if ci >= mi else "memory"))
    return pd.DataFrame(rows, columns=["device", "tokens_per_expert", "flops", "bytes", "intensity", "time_s",
                                       "achieved_flops_per_s", "bound"])


def ridge_tokens(sweep: pd.DataFrame) -> dict[str, float | None]:
    """Per device: the fewest tokens per expert at which the expert GEMM is compute-bound."""
    out: dict[str, float | None] = {}
    for dev, df in sweep.groupby("device", sort=False):
        bound = df[df["bound"] == "compute"]
        out[str(dev)] = float(bound["tokens_per_expert"].min()) if len(bound) else None
    return out

