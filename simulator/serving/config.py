"""The `serving:` section of a scenario config: traffic, scheduler, SLOs (validated on load).

Open loop: requests arrive by a process (Poisson, gamma with a CV, or a timestamped file, as in
`workloads/arrivals.py`). Closed loop: `users` concurrent users, each sending its next request
when the last one finishes, after `think_time`. Lengths come from distributions (or the file).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from moesim.simulator.config_choice import one_of
from moesim.units import Seconds
from moesim.workloads.closed_loop import ThinkDist
from moesim.workloads.arrivals import Arrivals, LengthDist, RequestCount, Span, Tokens, span_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SchedulerConfig(_Strict):
    """Iteration-level continuous batching of one attention replica (vLLM / SGLang style)."""

    max_batch_tokens: Tokens = Field(8192, ge=1, description="tokens per iteration: prefill chunks + one per decode")
    max_running: RequestCount = Field(256, ge=1, description="sequences running at once per replica")
    order: Annotated[str, one_of("SERVING_ORDERS", "scheduler order")] = Field(
        "mixed", description="mixed: decodes and prefill chunks share an iteration; prefill_first: an iteration "
        "with prefill work runs only prefill")
    chunked_prefill: bool = Field(True, description="split long prompts over iterations")
    kv_policy: Annotated[str, one_of("KV_POLICIES", "KV policy")] = Field(
        "reserve", description="reserve: admit a request only when its whole KV (prompt + output) fits; "
        "preempt: admit when the prompt fits, preempt (recompute) the newest requests when decodes run out")

    @model_validator(mode="after")
    def _fits(self) -> "SchedulerConfig":
        if self.max_running > self.max_batch_tokens:
            raise ValueError(f"max_running ({self.max_running}) must not exceed max_batch_tokens "
                             f"({self.max_batch_tokens}): every running decode needs a token of the iteration")
        return self


class SloConfig(_Strict):
    ttft: Seconds | None = Field(None, gt=0, description="time to first token limit")
    tpot: Seconds | None = Field(None, gt=0, description="time per output token limit")


class PoolConfig(_Strict):
    """One side of a prefill/decode split: how many nodes, and its own parallelism."""

    nodes: int = Field(ge=1, description="nodes of the cluster in this pool")
    ep: int | None = Field(None, ge=1)
    tp: int = Field(1, ge=1)
    dp: int | None = Field(None, ge=1)
    moe_tp: int = Field(1, ge=1)


class DisaggregationConfig(_Strict):
    """Prefill and decode on separate pools (DistServe, Mooncake, DeepSeek's deployment): the
    prefill pool emits each request's first token, its KV cache crosses the network to the
    decode pool, which generates the rest. Open loop only."""

    prefill: PoolConfig
    decode: PoolConfig


def _think_kind(value: Any) -> str:
    """Which form a think time takes: a mapping is a distribution, anything else seconds."""
    return "dist" if isinstance(value, (dict, BaseModel)) else "seconds"


#: seconds (a number with an optional unit), or a distribution of them
ThinkTime = Annotated[Annotated[Annotated[Span, Field(ge=0)], Tag("seconds")] | Annotated[ThinkDist, Tag("dist")],
                      Discriminator(_think_kind)]


class PrefixCacheConfig(_Strict):
    """Prefix (KV) caching, as vLLM's automatic prefix caching and SGLang's radix cache run it: a
    share of every prompt is found cached, its KV reused and its prefill skipped (the rest of the
    prompt still attends to it). DeepSeek's published prefill throughput counts 56% hits."""

    hit_rate: float = Field(ge=0, lt=1, description="share of each prompt's tokens found in the prefix cache "
                            "(at most prompt - 1 tokens: the last one is always computed)")


class ServingConfig(_Strict):
    arrivals: Arrivals | None = Field(None, description="open loop: the arrival process")
    users: RequestCount | None = Field(None, ge=1, description="closed loop: concurrent users")
    think_time: ThinkTime = Field(0.0, description="closed loop: pause between a reply and the user's next "
                                        "request: seconds, or {dist: exponential, mean} / uniform / lognormal")
    ramp_up: Span = Field(0.0, ge=0, description="closed loop: the users' first requests spread over this many "
                          "seconds (0: all at t = 0, which with fixed lengths runs in lockstep)")
    ramp: Literal["even", "random"] = Field("even", description="closed loop: users start evenly over ramp_up, or "
                                            "each at a random phase in it")
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    num_requests: RequestCount | None = Field(None, ge=1)
    duration: Span | None = Field(None, gt=0, description="open loop: only requests arriving before this")
    horizon: Seconds | None = Field(None, gt=0, description="stop simulating here; unfinished requests are reported")
    warmup: float = Field(0.1, ge=0, lt=1, description="share of requests (earliest first) left out of statistics")
    scheduler: SchedulerConfig = SchedulerConfig()
    slo: SloConfig = SloConfig()
    disaggregation: DisaggregationConfig | None = Field(None, description="separate prefill and decode pools")
    prefix_cache: PrefixCacheConfig | None = Field(None, description="prefix caching: the share of prompt tokens "
                                                   "whose KV is reused and prefill skipped")
    iteration_cache: bool = Field(True, description="replay an iteration whose batch shape was simulated before "
                                  "(one routing draw stands for all; error in benchmarks/bench_serving.py)")

    @model_validator(mode="after")
    def _one_loop(self) -> "ServingConfig":
        if (self.arrivals is None) == (self.users is None):
            raise ValueError("give serving.arrivals (open loop) or serving.users (closed loop), not both or neither")
        if self.users is not None:
            if self.num_requests is None:
                raise ValueError("a closed loop needs serving.num_requests (requests in all, over every user)")
            if self.duration is not None:
                raise ValueError("serving.duration bounds open-loop arrivals; a closed loop uses num_requests")
        elif self.ramp_up or self.think_time != 0.0 or self.ramp != "even":
            raise ValueError("serving.think_time, serving.ramp_up and serving.ramp shape a closed loop "
                             "(serving.users); an open loop's timing is its arrival process")
        if self.disaggregation is not None and self.users is not None:
            raise ValueError("prefill/decode disaggregation runs an open loop (serving.arrivals): a closed loop's "
                             "next request would couple the two pools' simulations")
        file_lengths = self.arrivals is not None and self.arrivals.process == "file"
        for name in ("prompt_tokens", "output_tokens"):
            if getattr(self, name) is None and not file_lengths:
                raise ValueError(f"serving.{name} is required (a length distribution)")
        if self.arrivals is not None and self.arrivals.process != "file" \
                and self.num_requests is None and self.duration is None:
            raise ValueError("open-loop arrivals need serving.num_requests or serving.duration")
        span = span_problem(self.arrivals, self.num_requests, self.duration, "serving")
        if span:
            raise ValueError(span)
        return self
