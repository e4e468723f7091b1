"""Before a serving run: each rank's memory breakdown, the KV-cache capacity left for requests,
and the step source that drives the engine.

Per rank: weights (dense parts split over tp, the rank's expert copies), activations of one
layer at the scheduler's token budget, communication buffers (dispatch receive and combine
send rows for that budget), the runtime reserve (`policies.memory_reserve` of capacity) and the
KV cache, which gets the rest. KV bytes per token follow the attention: MLA caches the latent
(kv_lora_rank + rope dims, replicated over tp); GQA/MHA cache K and V of the rank's KV heads;
both in the model's cache dtype. A deployment that cannot hold its weights plus the largest
request's KV is refused with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import ConfigError
from moesim.simulator.memory import estimate_memory, kv_bytes_per_token
from moesim.hardware_profiles.schema import ACCELERATOR
from moesim.simulator.memory_ledger import on_units, reserve_bytes, usable_bytes
from moesim.simulator.ops import act_dtype
from moesim.simulator.scenario import Scenario
from moesim.simulator.serving.source import ServingSource, request_table
from moesim.units import dtype_bytes, fmt_bytes
from moesim.workloads.batching import SchedulerPolicy


@dataclass(frozen=True)
class RankMemory:
    """One rank's memory, in bytes, as the serving run budgets it."""

    capacity: float
    weights: float
    activations: float
    comm_buffers: float
    runtime_reserve: float
    kv_cache: float  # what is left for the KV cache
    kv_bytes_per_token: float  # over every layer on this rank

    @property
    def kv_tokens(self) -> int:
        return int(self.kv_cache // self.kv_bytes_per_token) if self.kv_bytes_per_token > 0 else 0

    def as_dict(self) -> dict[str, float]:
        return {"capacity": self.capacity, "weights": self.weights, "activations": self.activations,
                "comm_buffers": self.comm_buffers, "runtime_reserve": self.runtime_reserve,
                "kv_cache": self.kv_cache, "kv_bytes_per_token": self.kv_bytes_per_token,
                "kv_tokens": self.kv_tokens}


def rank_memory(sc: Scenario) -> RankMemory:
    """The most loaded rank's memory breakdown at the scheduler's token budget."""
    model, cfg = sc.model, sc.config.serving
    budget_tokens = cfg.scheduler.max_batch_tokens
    per_rank_tokens = -(-budget_tokens // sc.tp)
    est = estimate_memory(model, sc.placement, sc.tp, 1, 0, budget_tokens, per_rank_tokens,
                          sc.precision.expert_bytes() / sc.moe_tp)
    units = sc.config.policies.units
    est = on_units(est, sc.machine, units.expert, ACCELERATOR)  # experts a unit of its own memory keeps
    ab = dtype_bytes(act_dtype(model))
    comm = 2.0 * per_rank_tokens * model.moe.top_k * model.hidden_size * ab  # dispatch recv + combine send rows
    activations = max(est.activations - comm, 0.0)  # estimate_memory counts those buffers with activations
    capacity = sc.device.memory.capacity
    reserve = reserve_bytes(capacity, sc.config.policies.memory_reserve)
    kv = capacity - reserve - est.weights - activations - comm
    kv_unit = sc.machine.units.get(units.attention)
    if kv_unit is not None and kv_unit.memory_capacity is not None:  # attention keeps its KV cache there
        kv = usable_bytes(kv_unit.memory_capacity, sc.config.policies.memory_reserve)
    per_token = sum(kv_bytes_per_token(model, layer, sc.tp) for layer in range(model.num_layers))
    return RankMemory(capacity, est.weights, activations, comm, reserve, max(kv, 0.0), per_token)


def serving_source(sc: Scenario, policy: SchedulerPolicy) -> ServingSource:
    """The serving step source of a scenario under its scheduler `policy` (compose.scheduler_policy)."""
    cfg = sc.config.serving
    mem = rank_memory(sc)
    requests = sc.serving_requests if sc.serving_requests is not None else request_table(cfg, sc.seed,
                                                                                          sc.source.base_dir)
    if len(requests) == 0:
        raise ConfigError("the traffic produced no requests (check serving.duration and the arrival rate)",
                          file=sc.source.path, field="serving")
    need = policy.kv_policy.tokens_held(requests["prompt_tokens"], requests["output_tokens"])
    largest = int(need.max())
    if mem.kv_tokens < largest:
        raise ConfigError(
            f"each {sc.device.name} rank cannot hold its weights plus one request's KV cache: of "
            f"{fmt_bytes(mem.capacity)}, weights take {fmt_bytes(mem.weights)}, activations "
            f"{fmt_bytes(mem.activations)}, communication buffers {fmt_bytes(mem.comm_buffers)} and the runtime "
            f"reserve {fmt_bytes(mem.runtime_reserve)}, leaving {fmt_bytes(mem.kv_cache)} = {mem.kv_tokens:,} tokens "
            f"of KV cache ({fmt_bytes(mem.kv_bytes_per_token)} a token), but the largest request needs {largest:,} "
            "tokens; raise ep/tp, quantize the experts, shorten requests or lower scheduler.max_batch_tokens",
            file=sc.source.path, field="serving")
    replicas = sc.num_devices // sc.tp
    return ServingSource(cfg, requests, replicas, sc.tp, float(mem.kv_tokens), policy,
                         config_file=str(sc.source.path) if sc.source.path else None)
