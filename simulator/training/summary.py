"""The training section of a run's summary: step time, tokens/s, MFU and HFU with their FLOPs
count stated, and the step's exposed time by kind (simulator/training/flops.py counts FLOPs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.simulator.phases import PHASES
from moesim.simulator.training.flops import model_flops_per_token, step_flops, mfu, hfu

# the device time of each kind of work (spans the device spent waiting or computing in it)
EXPOSED = {
    "forward_compute": ("attention", "dense_ffn", "shared_expert", "expert"),
    "backward_compute": ("attention_bwd", "dense_ffn_bwd", "shared_expert_bwd", "expert_bwd"),
    "recompute": ("recompute",),
    "ep_all_to_all_forward": ("dispatch", "combine"),
    "ep_all_to_all_backward": ("dispatch_bwd", "combine_bwd"),
    "straggler_wait": ("straggler_wait", "straggler_wait_bwd", "peer_wait_bwd"),
    "tp_all_reduce": ("tp_allreduce", "tp_allreduce_bwd", "moe_allreduce"),
    "gradient_sync": ("grad_sync", "grad_sync_expert"),
    "optimizer": ("optimizer",),
    "parameter_gather": ("param_gather", "param_gather_bwd"),
    "pipeline_wait": ("pp_recv",),
}


def training_summary(sc, step_latency: np.ndarray, phase_total: np.ndarray, peak_flops: float) -> dict[str, Any]:
    """`phase_total` (P,): device-seconds in each phase over the run; `peak_flops`: one device's dense peak."""
    cfg, wl = sc.config.training, sc.config.workload
    tokens = cfg.global_batch * wl.seq_len
    step = float(step_latency.mean())
    per_token = model_flops_per_token(sc.model, wl.seq_len)
    flops = step_flops(sc.model, tokens, wl.seq_len, cfg.recompute)
    n = sc.num_devices
    device_time = float(phase_total.sum()) or 1.0
    names = PHASES[: phase_total.size]
    exposed = {kind: float(sum(phase_total[names.index(p)] for p in phases if p in names)) / device_time
               for kind, phases in EXPOSED.items()}
    return {
        "step_time_s": step,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step,
        "microbatches": int(cfg.global_batch // (wl.batch_size * (n // (sc.tp * sc.pp)))),
        "pipeline_stages": sc.pp,
        "mfu": mfu(flops.model_flops, step, n, peak_flops),
        "hfu": hfu(flops.hardware_flops, step, n, peak_flops),
        "flops_count": {
            "convention": "model FLOPs = tokens x (6 x active matmul parameters + attention core forward and "
                          "backward); hardware FLOPs add the recomputed forward (simulator/training/flops.py)",
            "per_token_dense_matmul": per_token.dense_matmul, "per_token_attention": per_token.attention,
            "model_flops_per_step": flops.model_flops, "hardware_flops_per_step": flops.hardware_flops,
            "peak_flops_per_device": peak_flops, "devices": n,
        },
        "time_share_by_kind": exposed,
        "source": "model (simulated)",
    }
