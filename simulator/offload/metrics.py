"""Offloading results of a run: hit rate, bytes per tier, stalls per layer, peak device memory.

All numbers come from the simulation (model output) of the offload manager and the timeline.
Each expert a layer asks for (a demand) is an on-time hit (resident, its copy landed), a late hit
(a prefetch's copy still in flight when the router chose: the layer waits for it) or a miss (no
copy in flight: fetched on demand or run on the host CPU). `hit_rate` is on-time hits / demands;
`hit_rate + late_hit_rate + miss_rate == 1`. The caches' own counters count late hits as hits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from moesim.simulator.engine import EngineResult
from moesim.simulator.phases import PHASE_INDEX
from moesim.simulator.scenario import Scenario


def offload_summary(sc: Scenario, raw: EngineResult) -> dict[str, Any] | None:
    off = raw.offload
    if off is None:
        return None
    setup, cfg = off.setup, off.cfg
    counts = off.counts
    demands = counts.total
    prefetches = sum(c.stats.prefetches for c in off.caches)
    useful = sum(c.stats.prefetch_hits for c in off.caches)
    copies = off.copies_table()
    moved = copies[~copies["cancelled"].astype(bool) & copies["end_s"].notna()]
    by_kind = {k: float(moved.loc[moved["kind"] == k, "bytes"].sum()) if len(moved) else 0.0
               for k in ("demand", "prefetch")}
    stall = _durations(raw, "offload_stall")
    makespan = float(np.nanmax(raw.end))
    cache_peak = max(c.peak_used for c in off.caches)
    cache_peak_bytes = cache_peak if setup.by_bytes else cache_peak * float(setup.expert_bytes.max())
    other = float((setup.memory.per_device - setup.memory.expert_weights).max())
    busy = [e.busy_s for e in off.engines]
    host = off.host_table()
    return {
        "tier": setup.tier.name,
        "tier_bandwidth_bytes_per_s": setup.tier.bandwidth,
        "policy": cfg.cache.policy,
        "prefetch": cfg.prefetch.model_dump(),
        "hybrid": cfg.hybrid.model_dump(),
        "cache_capacity": setup.capacity_text(),
        "cache_holds_all_experts": setup.holds_all,
        "demands": demands,
        "hits": counts.on_time, "late_hits": counts.late, "misses": counts.misses,
        "misses_fetched": counts.fetched, "misses_on_host": counts.host,
        "hit_rate": counts.on_time / demands if demands else 1.0,  # on time only
        "late_hit_rate": counts.late / demands if demands else 0.0,
        "miss_rate": counts.misses / demands if demands else 0.0,
        "evictions": sum(c.stats.evictions for c in off.caches),
        "prefetches": prefetches, "prefetches_used": useful, "prefetches_wasted": prefetches - useful,
        "late_prefetches": off.late_prefetches,  # prefetch copies a layer waited on: the late hits
        "prefetch_accuracy": useful / prefetches if prefetches else None,
        "copies_cancelled": int(copies["cancelled"].sum()) if len(copies) else 0,
        "bytes_fetched": {setup.tier.name: by_kind["demand"] + by_kind["prefetch"]},
        "bytes_fetched_by_kind": by_kind,
        "host_activation_bytes": off.activation_bytes,
        "host_experts_run": len(host),
        "host_cost_source": _host_cost_source(sc),
        "stall_s": {"total_device_s": float(stall.sum()),
                    "worst_device_per_step_mean_s": float(stall.sum(axis=1).max(axis=1).mean()) if stall.size else 0.0,
                    "share_of_device_time": float(stall.sum() / (sc.num_devices * makespan))},
        "copy_engine_utilization": float(np.mean(busy) / makespan) if busy else 0.0,
        "peak_device_memory_bytes": other + cache_peak_bytes,
        "statistics": {"steps_sampled": off.stats.steps, "first_step": off.stats.first_step,
                       "in_sample": off.stats.in_sample,
                       "pairs_measured": off.stats.measured_pairs},
    }


def _durations(raw: EngineResult, phase: str) -> np.ndarray:
    """(steps, layers, devices) duration of one phase; 0 where it did not run."""
    return raw.durations[..., PHASE_INDEX[phase]]


def layer_offload_columns(sc: Scenario, raw: EngineResult) -> pd.DataFrame:
    """Per (step, MoE layer): worst and mean device stall, bytes copied in, host-run experts."""
    stall = _durations(raw, "offload_stall")
    moe = np.array(sc.model.moe_layers, dtype=np.int64)
    steps = np.repeat(np.arange(len(raw.plans)), len(moe))
    layers = np.tile(moe, len(raw.plans))
    out = pd.DataFrame({"step": steps, "layer": layers,
                        "offload_stall_max_s": stall[:, moe].max(axis=2).ravel(),
                        "offload_stall_mean_s": stall[:, moe].mean(axis=2).ravel()})
    copies = raw.offload.copies_table()
    copies = copies[~copies["cancelled"].astype(bool)]
    out["fetched_bytes"] = 0.0
    out["host_experts"] = 0
    if len(copies):
        moved = copies.groupby(["step", "layer"])["bytes"].sum().rename("moved")
        out["fetched_bytes"] = out.join(moved, on=["step", "layer"])["moved"].fillna(0.0).to_numpy()
    host = raw.offload.host_table()
    if len(host):
        runs = host.groupby(["step", "layer"]).size().rename("runs")
        out["host_experts"] = out.join(runs, on=["step", "layer"])["runs"].fillna(0).astype(int).to_numpy()
    return out


def _host_cost_source(sc) -> str | None:
    """Where the host unit's expert GEMMs get their efficiency: a calibration of the host CPU
    (`moesim calibrate --device cpu`, fed into its profile) or the profile's datasheet constants."""
    host = sc.machine.host
    if host is None:
        return None
    cost = host.cost
    source = cost.provenance("gemm", "bf16")
    if source == "datasheet":
        eff = host.device.efficiency
        gemv = f", single-row GEMMs {eff.gemv_memory:g} of memory peak (cited default)" if eff.gemv_memory else ""
        source = (f"datasheet constants (compute {eff.compute:g}, memory {eff.memory:g} of peak{gemv}; measure them "
                  "with `moesim calibrate --device cpu` and name that profile as the host)")
    return f"{host.device.name}: {source}"

