"""Headline metrics and tables of a run, computed from the engine's timeline.

Every number here comes from the simulation (model output), never from a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moesim.simulator.engine import EngineResult
from moesim.simulator.phases import COMPUTE_PHASES, PHASES
from moesim.simulator.traffic_totals import traffic_totals
from moesim.simulator.offload.metrics import layer_offload_columns, offload_summary
from moesim.simulator.scenario import Scenario


@dataclass
class SimResult:
    scenario: Scenario
    summary: dict[str, Any]
    utilization: pd.DataFrame  # one row per device
    layers: pd.DataFrame  # one row per (step, layer): time, straggler ratio, traffic
    raw: EngineResult
    _phases: pd.DataFrame | None = None
    requests: pd.DataFrame | None = None  # serving: one row per request (TTFT, ITL, TPOT, E2E)
    iterations: pd.DataFrame | None = None  # serving: one row per (iteration, replica): batch and KV use

    @property
    def phases(self) -> pd.DataFrame:
        """One row per (step, layer, device, phase) that ran; built on first use (it is large)."""
        if self._phases is None:
            self._phases = phase_table(self.raw)
        return self._phases


def phase_table(raw: EngineResult) -> pd.DataFrame:
    """One row per phase that ran; a `microbatch` column when the step was split (two-batch overlap)."""
    s, l, d, mb, p = np.nonzero(~np.isnan(raw.start) & ~np.isnan(raw.end))
    start = raw.start[s, l, d, mb, p]
    end = raw.end[s, l, d, mb, p]
    table = pd.DataFrame({
        "step": s.astype(np.int32), "layer": l.astype(np.int32), "device": d.astype(np.int32),
        "phase": pd.Categorical.from_codes(p, PHASES[: raw.start.shape[4]]), "start_s": start, "end_s": end,
        "duration_s": end - start,
    })
    if raw.start.shape[3] > 1:
        table.insert(3, "microbatch", mb.astype(np.int32))
    return table


def critical_path_shares(raw: EngineResult) -> dict[str, float]:
    """Phase shares along the critical path: the device that finishes each step last, its own time.

    Device-averaged shares misdescribe a step when only some devices compute (the others wait);
    the last device to finish is the one whose phases set the step time."""
    dur = raw.durations  # (S, L, N, P)
    end = np.nanmax(raw.end, axis=(1, 3, 4))  # (S, N)
    last = np.nanargmax(end, axis=1)
    per = dur[np.arange(dur.shape[0]), :, last].sum(axis=(0, 1))  # (P,)
    total = float(per.sum())
    return {p: float(per[i] / total) if total else 0.0 for i, p in enumerate(PHASES[: per.size])}


def straggler_ratios(sc: Scenario, raw: EngineResult) -> np.ndarray:
    """(steps, moe_layers): max over mean modeled expert time across the devices of each EP group."""
    moe = np.array(sc.model.moe_layers, dtype=np.int64)
    if moe.size == 0:
        return np.zeros((len(raw.plans), 0))
    exp = np.stack([p.expert[moe][:, :: sc.moe_tp] for p in raw.plans])  # (S, Lm, N / moe_tp)
    groups = exp.reshape(*exp.shape[:2], -1, sc.ep)
    mean = groups.mean(axis=3)
    ratio = np.divide(groups.max(axis=3), mean, out=np.ones_like(mean), where=mean > 0)
    return ratio.max(axis=2)


def _routing_provenance(sc: Scenario) -> dict[str, Any]:
    """Where the routing came from (a generator and its parameters, or a trace file)."""
    rc = sc.config.workload.routing
    from moesim.simulator.compose import routing_generator

    out: dict[str, Any] = {"generator": rc.generator}
    out.update(routing_generator(rc.generator).describe(rc, sc.routing))
    return out


def error_bar(sc: Scenario, step_latency: float, throughput: float, raw: EngineResult | None = None) -> dict:
    """An interval on the headline metrics from the device profile's measured error: with held-out
    residuals (a calibration of this project's since issue 26), each op kind's residuals
    propagated through the first step (simulator/prediction_interval.py); else a calibrated
    profile's worst held-out MAPE; none for a datasheet profile, whose error was never measured
    (communication is costed from link profiles either way)."""
    from moesim.simulator.cost_model import held_out_mape

    cal = sc.device.calibration
    if cal is not None and cal.residuals and raw is not None and raw.plans and raw.plans[0].layer_ops is not None:
        from moesim.simulator.compose import pipeline_for
        from moesim.simulator.prediction_interval import busiest_compute, prediction_interval

        rows = pipeline_for(sc).op_rows(raw.plans[0])
        return prediction_interval(cal.residuals, step_latency, throughput, busiest_compute(rows), sc.seed,
                                   sc.device.name)
    mape = held_out_mape(cal.validation) if cal is not None else None
    if mape is None:
        return {"relative": None, "source": "datasheet profile: its error was never measured (calibrate the device "
                "for an interval)"}
    return {"relative": mape, "source": f"calibrated profile {sc.device.name}: worst held-out MAPE of its op fits",
            "step_latency_s": [step_latency * (1 - mape), step_latency * (1 + mape)],
            "throughput_tokens_per_s": [throughput / (1 + mape), throughput / max(1 - mape, 1e-9)]}


def summarize(sc: Scenario, raw: EngineResult) -> SimResult:
    n = sc.num_devices
    steps = len(raw.plans)
    dur = raw.durations
    step_start = np.nanmin(raw.start[:, 0, :, :, 0], axis=(1, 2))
    step_end = np.nanmax(raw.end, axis=(1, 2, 3, 4))
    step_latency = step_end - step_start
    makespan = float(np.nanmax(raw.end))
    phase_total = dur.sum(axis=(0, 1, 2))  # (P,)
    device_time = n * makespan
    shares = {p: float(phase_total[i] / device_time) for i, p in enumerate(PHASES[: phase_total.size])}
    shares["idle"] = max(0.0, 1.0 - sum(shares.values()))

    wl = sc.config.workload
    if sc.config.training is not None:  # a training step: the global batch's tokens
        tokens_per_step = int(sc.config.training.global_batch * wl.seq_len)
    else:
        tokens_per_step = int(sc.batch_per_replica * sc.dp * (wl.seq_len if wl.phase == "prefill" else 1))
    ratios = straggler_ratios(sc, raw)
    routed = int(sum(p.rows_routed.sum() for p in raw.plans))
    dropped = int(sum(p.rows_dropped.sum() for p in raw.plans))
    computed = float(sum(p.rows_computed.sum() for p in raw.plans))

    routes = sc.routes
    by_class: dict[str, float] = {}
    for cls, b in zip(routes.link_class, raw.fabric.link_bytes):
        by_class[cls] = by_class.get(cls, 0.0) + float(b)
    inter = routes.pair_inter_node
    payload = {"dispatch": 0.0, "combine": 0.0, "dispatch_inter_node": 0.0, "combine_inter_node": 0.0}
    totals = [traffic_totals(p, inter) for p in raw.plans]
    for t in totals:
        payload["dispatch"] += t.off_device["dispatch"]
        payload["combine"] += t.off_device["combine"]
        payload["dispatch_inter_node"] += t.inter_node["dispatch"]
        payload["combine_inter_node"] += t.inter_node["combine"]

    compute_idx = [PHASES.index(p) for p in COMPUTE_PHASES if PHASES.index(p) < dur.shape[-1]]
    busy = dur[..., compute_idx].sum(axis=(0, 1, 3))
    per_phase_dev = dur.sum(axis=(0, 1))  # (N, P)
    util = pd.DataFrame({"device": np.arange(n), "compute_busy_s": busy, "utilization": busy / makespan})
    for i, p in enumerate(PHASES[: per_phase_dev.shape[1]]):
        util[f"{p}_s"] = per_phase_dev[:, i]
    util["memory_bytes"] = np.tile(np.repeat(sc.memory.per_device, sc.moe_tp), n // (sc.ep * sc.moe_tp))

    moe = sc.model.moe_layers
    n_steps, n_moe = len(raw.plans), len(moe)
    if n_moe:  # one row per (step, MoE layer), reduced over devices with the arrays stacked
        moe_idx = np.asarray(moe, dtype=np.int64)
        expert = np.stack([p.expert[moe_idx] for p in raw.plans])  # (S, Lm, N)
        dispatch_bytes = np.stack([t.layer_bytes["dispatch"] for t in totals])  # (S, Lm)
        layers = pd.DataFrame({
            "step": np.repeat(np.arange(n_steps), n_moe), "layer": np.tile(moe_idx, n_steps),
            "expert_time_max_s": expert.max(axis=2).ravel(), "expert_time_mean_s": expert.mean(axis=2).ravel(),
            "straggler_ratio": np.asarray(ratios, dtype=float).ravel(), "dispatch_bytes": dispatch_bytes.ravel(),
            "dropped_rows": np.stack([p.rows_dropped for p in raw.plans]).astype(np.int64).ravel(),
            "active_experts_per_device": np.stack([p.experts_active.mean(axis=1) for p in raw.plans]).ravel()})
    else:
        layers = pd.DataFrame(columns=["step", "layer", "expert_time_max_s", "expert_time_mean_s", "straggler_ratio",
                                       "dispatch_bytes", "dropped_rows", "active_experts_per_device"])
    offload = offload_summary(sc, raw)
    if offload is not None:
        layers = layers.merge(layer_offload_columns(sc, raw), on=["step", "layer"], how="left")
        # expert copies (and host-run experts' activations) cross the offload tier's links too
        setup = sc.offload
        for cls in setup.tier.link_classes:
            by_class[cls] = by_class.get(cls, 0.0) + float(sum(offload["bytes_fetched"].values()))
        if setup.host is not None and offload["host_activation_bytes"]:
            for cls in setup.host.link_classes:
                by_class[cls] = by_class.get(cls, 0.0) + float(offload["host_activation_bytes"])
    summary: dict[str, Any] = {
        "makespan_s": makespan,
        "steps": steps,
        "routing": _routing_provenance(sc),
        "step_latency_s": {"mean": float(step_latency.mean()), "p50": float(np.median(step_latency)),
                           "p99": float(np.percentile(step_latency, 99)), "max": float(step_latency.max())},
        "tokens_per_step": tokens_per_step,
        "throughput_tokens_per_s": tokens_per_step * steps / makespan,
        "time_per_output_token_s": float(step_latency.mean()) if wl.phase == "decode" else None,
        "time_share": shares,
        "time_share_critical_path": critical_path_shares(raw),
        "policies": {"dispatch": sc.config.policies.dispatch.algorithm, "overlap": sc.config.policies.overlap,
                     "expert_kernel": sc.config.policies.expert_kernel, "moe_tp": sc.moe_tp},
        "straggler_ratio": {"mean": float(ratios.mean()) if ratios.size else 1.0,
                            "max": float(ratios.max()) if ratios.size else 1.0},
        "error_bar": error_bar(sc, float(step_latency.mean()), tokens_per_step * steps / makespan, raw),
        "bytes_by_link_class": by_class,
        "all_to_all_payload_bytes": payload,
        "tokens": {"routed_assignments": routed, "computed_assignments": computed,
                   "dropped_assignments": dropped},
        # on-time hits / demands: a prefetch still in flight when the layer asked is a late hit
        # (offload["late_hit_rate"]), not a hit
        "cache_hit_rate": offload["hit_rate"] if offload else None,
        "offload": offload,
        "memory_per_device_bytes": {"max": sc.memory.total, "weights": sc.memory.weights,
                                    "kv_cache": sc.memory.kv_cache, "activations": sc.memory.activations,
                                    "capacity": sc.device.memory.capacity,
                                    # bytes of one accelerator's share kept on units of their own memory
                                    **({"on_units": dict(sc.memory.on_units)} if sc.memory.on_units else {})},
        "source": "model (simulated); costs from the datasheet profile with default efficiencies",
    }
    if sc.config.training is not None:
        from moesim.simulator.training.summary import training_summary

        summary["training"] = training_summary(sc, step_latency, phase_total, sc.machine.cost.peak("bf16"))
    return SimResult(sc, summary, util, layers, raw)
