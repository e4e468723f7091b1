"""The phases a device's time is split into (the rows of phases.parquet and the trace's spans)."""

PHASES = ("attention", "tp_allreduce", "dense_ffn", "shared_expert", "dispatch", "offload_stall", "expert",
          "straggler_wait", "combine", "moe_allreduce")
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
COMPUTE_PHASES = ("attention", "dense_ffn", "shared_expert", "expert")
ATT, TP, DENSE, SHARED, DISP, STALL, EXP, STRAG, COMB, MOE_AR = range(len(PHASES))
