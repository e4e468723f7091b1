"""A StepPlan's readable op rows (GenZ style): one row per op of a (layer, device) as the engine costed it.

Compute rows are the cached rows the engine's arrays were summed from; routed experts are one
row per expert copy from the plan's slot arrays (time as the engine charged it); all-to-all
rows give the bytes each device injects, with the time its injection link needs at least
(the fabric decides the real time, with contention, in the engine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from moesim.simulator import comm_cost
from moesim.simulator.ops import act_dtype

if TYPE_CHECKING:  # type hints only: the pipeline imports this module, not the reverse
    from moesim.simulator.step_plan import StepPipeline, StepPlan


OP_COLUMNS = ["layer", "device", "phase", "op", "unit", "kind", "dtype", "rows", "flops", "bytes", "time_s", "bound",
              "sol_ratio", "source"]


def plan_op_rows(pipe: "StepPipeline", plan: "StepPlan", layer: int | None, device: int | None) -> pd.DataFrame:
    L, n = plan.attention.shape
    cost_of = {u.label: u.cost for u in pipe.costs.machine.units.values()}
    layers = range(L) if layer is None else [layer]
    devices = range(n) if device is None else [device]
    rows: list[tuple] = []
    for lay in layers:
        for d in devices:
            ops = plan.layer_ops[lay][d]
            for phase, group in (("attention", ops.attention), ("dense_ffn", ops.dense_ffn),
                                 ("shared_expert", ops.shared_expert)):
                for r in group:
                    cost = cost_of[r.unit]
                    rows.append((lay, d, phase, r.op.name, r.unit, r.op.kind, r.op.dtype, r.op.rows, r.op.flops,
                                 r.op.bytes, r.cost.time, r.cost.bound,
                                 _sol_ratio(cost, r.op.flops, r.op.bytes, r.op.dtype, r.cost.time),
                                 cost.provenance(r.op.kind, r.op.dtype)))
            for phase, crossing in ops.crossings:  # activations to a unit off the accelerator and back
                if crossing.time:
                    name = "host" if crossing.unit == "host CPU" else crossing.unit
                    rows.append((lay, d, phase, f"{name}_link_crossing", f"{name} link", "comm", "", 0.0, 0.0, np.nan,
                                 crossing.time, "link", np.nan, "link profile"))
            if lay in pipe.moe_index:
                rows.extend(_moe_rows(pipe, plan, lay, d))
    return pd.DataFrame(rows, columns=OP_COLUMNS)


def _moe_rows(pipe: "StepPipeline", plan: "StepPlan", layer: int, device: int) -> list[tuple]:
    mi = pipe.moe_index[layer]
    pl = pipe.replicas.placement
    costs = pipe.costs
    shard = device // pipe.moe_tp
    g, local = divmod(shard, pipe.ep)
    slots = np.flatnonzero((pl.slot_device[mi] == local) & (plan.slot_tokens[g, mi] > 0))
    out: list[tuple] = []
    machine = costs.machine
    on = np.zeros(pl.slot_device.shape[1], dtype=np.int64) if plan.slot_unit is None else plan.slot_unit[g, mi]
    present = {0}
    if plan.slot_unit is not None and plan.unit_time is not None:  # the units that spent time on the layer
        index = {label: i for i, label in enumerate(costs.unit_labels)}
        present = {k for k, kernel in enumerate(costs.experts)
                   if plan.unit_time[3, index[kernel.unit.label], layer, device] > 0} or {0}
    for k in sorted(present):  # each unit's share of the device's layer (they run at once)
        out.extend(_expert_unit_rows(costs, costs.experts[k], pl, plan, layer, device, g, mi, slots[on[slots] == k]))
    kind = plan.traffic.kind or pipe.dispatch.comm_kind
    group = pipe.ep * pipe.moe_tp  # the kernel's group: the EP group (of MoE-TP shards)
    for name, stages in (("dispatch", plan.traffic.dispatch), ("combine", plan.traffic.combine)):
        for i, stage in enumerate(stages):
            sent = stage[mi, device].copy()
            sent[device] = 0.0
            if sent.sum() <= 0:
                continue
            floor = comm_cost.injection_time(machine.routes, kind, device, sent, plan.traffic.kernel_latency,
                                             group, name)
            pairs = np.zeros((sent.size, sent.size), dtype=bool)
            pairs[device] = sent > 0
            source = comm_cost.provenance(machine.routes, kind, pairs)
            op = name if len(stages) == 1 else f"{name}_stage{i + 1}"
            out.append((layer, device, name, op, "network", "comm", "", 0.0, 0.0, float(sent.sum()), floor, "link",
                        np.nan, f"link profiles: {source} (a lower bound: the fabric times it with contention)"))
    return out


def _expert_unit_rows(costs, kernel, pl, plan: "StepPlan", layer: int, device: int, g: int, mi: int,
                      slots: np.ndarray) -> list[tuple]:
    """Rows of the expert copies `slots` of a device's layer on one unit (`kernel`): each copy's
    GEMM, the grouped launch, the fused form's floor and token passes, the rows' hand-off."""
    out: list[tuple] = []
    cost, unit = kernel.cost, kernel.unit.label
    tokens = plan.slot_tokens[g, mi][None, :]
    flops, mem, work, overhead = kernel.terms(tokens, pl.slot_expert[mi][None, :])
    kind = kernel.moe_kernel.gemm_kind
    c, b, _ = cost.terms(kind, flops, mem, tokens, kernel.dtype)
    source = cost.provenance(kind, kernel.dtype)
    for j in slots:
        t = float(plan.slot_time[g, mi, j])
        bound = "compute" if c[0, j] >= b[0, j] else "memory"
        dtype = kernel.dtype
        if kernel.quantized is not None and bool(kernel.quantized[mi, pl.slot_expert[mi, j]]):
            dtype = act_dtype(costs.model)
        out.append((layer, device, "expert", f"expert[{int(pl.slot_expert[mi, j])}]", unit, kind, dtype,
                    float(tokens[0, j]), float(flops[0, j]), float(mem[0, j]), t, bound,
                    _sol_ratio(cost, flops[0, j], mem[0, j], dtype, t), source))
    if costs.expert_kernel.grouped and slots.size:
        out.append((layer, device, "expert", "grouped_gemm_launch", unit, "launch", "", 0.0, 0.0, 0.0,
                    float(kernel.launch(np.array([1.0]))[0]), "overhead", np.nan, source))
    rows_in = float(tokens[0, slots].sum())
    for op in kernel.moe_kernel.ops(rows_in):
        spent = cost.op_cost(op)
        out.append((layer, device, "expert", op.name, unit, op.kind, op.dtype, op.rows, 0.0, op.bytes, spent.time,
                    spent.bound, _sol_ratio(cost, op.flops, op.bytes, op.dtype, spent.time),
                    kernel.moe_kernel.provenance()))
    crossing = float(kernel.crossing(np.array([rows_in]))[0])
    if crossing:
        out.append((layer, device, "expert", f"{unit}_link_crossing", f"{unit} link", "comm", "", 0.0, 0.0, np.nan,
                    crossing, "link", np.nan, "link profile"))
    return out


def _sol_ratio(cost, flops: float, nbytes: float, dtype: str, time: float) -> float:
    """Time over the roofline bound (NaN where the op has no work: a fixed floor)."""
    sol = float(cost.speed_of_light(flops, nbytes, dtype))
    return time / sol if sol > 0 else np.nan
