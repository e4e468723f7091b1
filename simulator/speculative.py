"""Speculative decoding with multi-token prediction (`policies.speculative`, DeepSeek-V3's MTP).

A decode step drafts k tokens per sequence and verifies them in one pass of the model:

- verification: the engine simulates the step over k + 1 query tokens per sequence (the verified
  token and the k drafts): every MoE layer routes and dispatches (k + 1) x batch tokens, so more
  distinct experts are touched and more bytes move; attention reads each sequence's KV cache once
  for all k + 1 queries (`ops.decode_keys`);
- drafts: k passes, one after another, each through `draft_layers` transformer blocks of the
  model's MoE layer shape at one token per sequence (DeepSeek-V3's MTP module: one block whose
  FFN is MoE, sharing the embedding and output head). A pass's time is measured, not assumed: the
  mean span of one MoE layer (every phase, the slowest device) in one plain decode step of the same
  scenario simulated by the engine, times `draft_layers`. The projection and shared head are left
  out (a small GEMM next to the block);
- accepted tokens: with p_i the probability that draft i is accepted given drafts 1..i-1 were,
  a step emits E = 1 + sum_i prod_{j <= i} p_j tokens per sequence (the verified one always; the
  standard count of Leviathan et al. 2023 with per-position rates). KV grows by E a step.

Throughput and time per output token compose the two: step = verification + k x draft pass, and
output tokens per step = sequences x E. `speedup_vs_plain` sets that against the plain decode
step's E = 1 token per sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moesim.simulator.config import SpeculativeConfig
    from moesim.simulator.metrics import SimResult
    from moesim.simulator.scenario import Scenario


def queries_per_sequence(spec: "SpeculativeConfig | None") -> int:
    """Tokens a decode step runs per sequence: 1, or 1 + the draft tokens it verifies."""
    return 1 if spec is None else 1 + spec.draft_tokens


def expected_accepted(rates: list[float]) -> float:
    """Tokens a step emits per sequence: 1 + sum over draft positions of P(all drafts up to it accepted)."""
    return float(1.0 + np.cumprod(np.asarray(rates, dtype=float)).sum()) if rates else 1.0


def kv_growth(spec: "SpeculativeConfig | None") -> float:
    """Tokens each sequence's KV cache gains per decode step (its accepted tokens)."""
    return 1.0 if spec is None else expected_accepted(spec.rates())


def moe_layer_span(result: "SimResult") -> float:
    """Mean over MoE layers of one layer's span (first phase start to last phase end, slowest device)
    in the first step of a run."""
    raw = result.raw
    layers = result.scenario.model.moe_layers
    start = np.nanmin(raw.start[0, layers, :, 0, :], axis=-1)  # (Lm, N)
    end = np.nanmax(raw.end[0, layers, :, 0, :], axis=-1)
    return float(np.nanmean(np.nanmax(end - start, axis=1)))


def plain_scenario(sc: "Scenario") -> "Scenario":
    """The same scenario without speculation, one step: the decode the drafts are costed from."""
    from moesim.simulator.config import ScenarioConfig, ScenarioFile
    from moesim.simulator.scenario import resolve
    from moesim.yaml_io import validate

    data = sc.config.as_written(exclude_none=True)
    data["policies"].pop("speculative")
    data["workload"]["steps"] = 1
    data.setdefault("outputs", {})["trace_steps"] = 0
    source = sc.source
    return resolve(ScenarioFile(validate(ScenarioConfig, data, source.path), source.path, data, source.overrides))


def speculative_summary(sc: "Scenario", result: "SimResult", plain: "SimResult") -> dict[str, Any]:
    """The `speculative` section of summary.json, and the headline figures it replaces."""
    spec = sc.config.policies.speculative
    summary = result.summary
    accepted = expected_accepted(spec.rates())
    verify = float(summary["step_latency_s"]["mean"])
    draft_pass = moe_layer_span(plain) * spec.draft_layers
    step = verify + spec.draft_tokens * draft_pass
    sequences = sc.batch_per_replica * sc.dp
    plain_step = float(plain.summary["step_latency_s"]["mean"])
    return {
        "method": spec.method, "draft_tokens": spec.draft_tokens, "acceptance": spec.rates(),
        "accepted_tokens_per_step": accepted, "verify_tokens_per_sequence": spec.draft_tokens + 1,
        "verify_step_s": verify, "draft_pass_s": draft_pass, "step_s": step,
        "output_tokens_per_s": sequences * accepted / step, "time_per_output_token_s": step / accepted,
        "plain_step_s": plain_step, "plain_output_tokens_per_s": sequences / plain_step,
        "speedup_vs_plain": plain_step * accepted / step,
        "source": "model: verification simulated over 1 + draft tokens per sequence; each draft pass = the mean MoE "
                  "layer span of a simulated plain decode step x draft_layers; accepted tokens from the acceptance "
                  "rates (simulator/speculative.py)",
    }


def apply(sc: "Scenario", result: "SimResult") -> None:
    """Add the speculative section to a decode run's summary and make its headline output-token
    figures the speculative ones (the step latency stays the engine's verification step)."""
    from moesim.simulator.run import simulate

    plain = simulate(plain_scenario(sc))
    section = speculative_summary(sc, result, plain)
    summary = result.summary
    summary["speculative"] = section
    summary["tokens_per_step"] = sc.batch_per_replica * sc.dp * section["accepted_tokens_per_step"]
    summary["throughput_tokens_per_s"] = section["output_tokens_per_s"]
    summary["time_per_output_token_s"] = section["time_per_output_token_s"]
