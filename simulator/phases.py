"""The phases a device's time is split into (the rows of phases.parquet and the trace's spans).

Inference programs record the first `INFERENCE_PHASES`; a training step also records its
backward, recomputation, gradient synchronisation and optimizer phases, appended after them
(an engine's timeline holds as many phases as its program records: `Program.phases`)."""

INFERENCE_PHASES = ("attention", "tp_allreduce", "dense_ffn", "shared_expert", "dispatch", "offload_stall", "expert",
                    "straggler_wait", "combine", "moe_allreduce")
TRAINING_PHASES = ("recompute", "attention_bwd", "tp_allreduce_bwd", "dense_ffn_bwd", "shared_expert_bwd",
                   "dispatch_bwd", "expert_bwd", "combine_bwd", "grad_sync", "grad_sync_expert", "optimizer",
                   "param_gather", "pp_recv", "param_gather_bwd", "straggler_wait_bwd",
                   "peer_wait_bwd")
PHASES = INFERENCE_PHASES + TRAINING_PHASES
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
COMPUTE_PHASES = ("attention", "dense_ffn", "shared_expert", "expert", "recompute", "attention_bwd", "dense_ffn_bwd",
                  "shared_expert_bwd", "expert_bwd", "optimizer")
ATT, TP, DENSE, SHARED, DISP, STALL, EXP, STRAG, COMB, MOE_AR = range(len(INFERENCE_PHASES))
