"""A closed loop's users as traffic: when each user starts, and how long it thinks between a reply
and its next request.

Users that all start at t = 0 with fixed lengths march in lockstep (every user prefills, decodes
and finishes together): no prefill interference, TTFT without queueing, ITL p50 = p99. A ramp
spreads the users' first requests over `ramp_up` seconds (evenly, or each at a random phase),
and think times may be drawn from a distribution, so the loop behaves like traffic.

Every request gets one delay up front, deterministically under the seed (its own stream, so the
lengths stay as they were): a user's first request is sent its start offset after t = 0, each
later one its think time after the reply before it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.units import Seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExponentialThink(_Strict):
    """Memoryless think times with the given mean (a user population sending independently)."""

    dist: Literal["exponential"]
    mean: Seconds = Field(gt=0)


class UniformThink(_Strict):
    """Think times uniform on [low, high] seconds."""

    dist: Literal["uniform"]
    low: Seconds = Field(ge=0)
    high: Seconds = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "UniformThink":
        if self.low > self.high:
            raise ValueError(f"uniform think time needs low <= high (got low={self.low}, high={self.high})")
        return self


class LognormalThink(_Strict):
    """Lognormal think times given by their own mean and std (seconds)."""

    dist: Literal["lognormal"]
    mean: Seconds = Field(gt=0)
    std: Seconds = Field(ge=0)


ThinkDist = Annotated[ExponentialThink | UniformThink | LognormalThink, Field(discriminator="dist")]


def draw_think(think: float | ExponentialThink | UniformThink | LognormalThink, rng: np.random.Generator,
               n: int) -> np.ndarray:
    """n think times (seconds) from a fixed value or a distribution."""
    if isinstance(think, ExponentialThink):
        return rng.exponential(think.mean, n)
    if isinstance(think, UniformThink):
        return rng.uniform(think.low, think.high, n)
    if isinstance(think, LognormalThink):
        sigma2 = np.log1p((think.std / think.mean) ** 2)
        return rng.lognormal(np.log(think.mean) - sigma2 / 2, np.sqrt(sigma2), n)
    return np.full(n, float(think))


def start_offsets(users: int, ramp_up: float, ramp: Literal["even", "random"], rng: np.random.Generator) -> np.ndarray:
    """Seconds after t = 0 each user sends its first request: user i at i x ramp_up / users
    (even), or each uniformly in [0, ramp_up) (random phase)."""
    if ramp == "random":
        return rng.uniform(0.0, ramp_up, users) if ramp_up > 0 else np.zeros(users)
    return np.arange(users) * (ramp_up / users)


def request_delays(n: int, users: int, think, ramp_up: float, ramp: Literal["even", "random"],
                   seed_sequence: np.random.SeedSequence) -> np.ndarray:
    """Per request (in the order users send them), the seconds between its user's previous reply
    (t = 0 for a user's first request) and sending it: the first `users` requests are the start
    offsets, the rest think times."""
    ramp_ss, think_ss = seed_sequence.spawn(2)
    first = min(users, n)
    out = np.empty(n)
    out[:first] = start_offsets(users, ramp_up, ramp, np.random.default_rng(ramp_ss))[:first]
    out[first:] = draw_think(think, np.random.default_rng(think_ss), n - first)
    return out
