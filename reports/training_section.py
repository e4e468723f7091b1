"""The run report's training section: a training step's headline figures, its FLOPs count and
where the device time went by kind (from the summary's `training` metrics, simulator/training/)."""

from __future__ import annotations

from typing import Any

from moesim.reports.html_page import Table
from moesim.units import fmt_time

KINDS = {
    "forward_compute": "forward compute", "backward_compute": "backward compute (data and weight gradients)",
    "recompute": "recomputed forward", "ep_all_to_all_forward": "EP all-to-all, forward",
    "ep_all_to_all_backward": "EP all-to-all, backward", "straggler_wait": "waiting for slower peers (routing imbalance)",
    "tp_all_reduce": "TP all-reduce", "gradient_sync": "gradient sync (exposed)", "optimizer": "optimizer step",
    "parameter_gather": "parameter all-gather (ZeRO)", "pipeline_wait": "pipeline bubble and hand-offs",
}


def training_tables(training: dict[str, Any]) -> tuple[Table, Table]:
    """(headline, time by kind) tables of a training run (every number simulated)."""
    flops = training.get("flops_count", {})
    head = [
        ["step time", fmt_time(training["step_time_s"])],
        ["tokens per step", f"{training['tokens_per_step']:,}"],
        ["tokens/s", f"{training['tokens_per_s']:,.0f}"],
        ["micro-batches per step", str(training.get("microbatches"))],
        ["pipeline stages", str(training.get("pipeline_stages", 1))],
        ["MFU (model FLOPs)", f"{training['mfu']:.1%}"],
        ["HFU (with recomputation)", f"{training['hfu']:.1%}"],
        ["model FLOPs per step", f"{flops.get('model_flops_per_step', 0):.3g}"],
        ["peak FLOP/s per device", f"{flops.get('peak_flops_per_device', 0):.3g}"],
    ]
    shares = training.get("time_share_by_kind", {})
    rows = [[KINDS.get(k, k), f"{v:.1%}"] for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0]
    return Table(["training (simulated)", "value"], head), Table(["kind of work", "share of device time"], rows)
