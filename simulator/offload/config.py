"""Config schema of expert precision and expert offloading (the `precision:` and `offload:` sections).

Offloading keeps a per-device cache of experts in device memory and the rest on a slower tier
(host memory or storage); prefetchers guess upcoming experts; hybrid execution runs attention or
cold experts on the host CPU instead of moving weights. Precision sets the bit width of routed
expert weights, globally or per expert, and applies with or without offloading.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from moesim.simulator.config_choice import one_of
from moesim.units import Bytes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExpertBits(_Strict):
    """A bit width for some experts of some MoE layers (later entries override earlier ones)."""

    bits: float = Field(gt=0, le=32)
    layers: list[int] | None = Field(None, description="MoE layer indices (0 = first MoE layer); None: all")
    experts: list[int] | None = Field(None, description="expert ids; None: all")


class PrecisionConfig(_Strict):
    bits: float | None = Field(None, gt=0, le=32,
                               description="bit width of every routed expert's weights; None: the model's dtype")
    group_size: int = Field(128, ge=1, description="weights per quantization group; each group stores a 16-bit "
                            "scale, so 4-bit weights with group 128 take 4.125 bits")
    per_expert: list[ExpertBits] = Field(default_factory=list, description="overrides for chosen layers/experts")


class CacheConfig(_Strict):
    capacity: int | Bytes | None = Field(
        None, description="per device: experts (an integer) or bytes ('12 GB'); None: what device memory "
                          "leaves after weights, KV cache and activations")
    policy: Annotated[str, one_of("CACHE_POLICIES", "cache policy")] = Field(
        "lru", description="lru, lfu (frequency over the run, LRU among ties) or pinned (the hottest experts "
        "never leave; LRU for the rest); simulator/offload/expert_cache.py")
    scope: Literal["device", "layer"] = Field("device", description="device: one cache for all layers; layer: "
                                             "each MoE layer its own equal share (as Mixtral-offloading does)")
    pinned_fraction: float = Field(0.5, ge=0, le=1, description="pinned: share of the cache held by the "
                                   "hottest experts (routing statistics); the rest is LRU")
    warm: bool = Field(True, description="start the run with the cache filled, hottest experts first")


class PrefetchConfig(_Strict):
    policy: Annotated[str, one_of("PREFETCH_POLICIES", "prefetch policy")] = Field(
        "none", description="none, oracle (the experts the layer will use), affinity (layer-to-layer "
        "transitions) or predictor (a gate predictor of given accuracy); simulator/offload/prefetch.py")
    lookahead: int = Field(1, ge=1, description="prefetch for the MoE layer this many layers ahead")
    accuracy: float = Field(0.8, ge=0, le=1, description="predictor: share of the true experts it names")
    experts: int | None = Field(None, ge=1, description="affinity: experts prefetched per layer and device; "
                                "None: as many as the device used on average in the statistics")


class HybridConfig(_Strict):
    attention: Literal["device", "host"] = Field("device", description="host: attention and the KV cache on the "
                                                 "host CPU (MoE-Lens); activations cross the link each layer")
    cold_experts: Literal["fetch", "host", "auto"] = Field(
        "fetch", description="a missed expert: fetch its weights; run it on the host CPU (Fiddler); or auto: "
                             "whichever the cost model says finishes first")


class OffloadConfig(_Strict):
    tier: Literal["host", "storage"] = Field("host", description="where experts live when not cached")
    copy_engines: int = Field(1, ge=1, description="concurrent copies into each device; they share the path's "
                              "bandwidth")
    stats_steps: int = Field(16, ge=1, description="routing steps sampled for hot-expert and affinity statistics")
    cache: CacheConfig = CacheConfig()
    prefetch: PrefetchConfig = PrefetchConfig()
    hybrid: HybridConfig = HybridConfig()
