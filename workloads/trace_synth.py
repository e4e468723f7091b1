"""Write a trace drawn from the synthetic routing model (examples, tests, `moesim trace synth`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.errors import ConfigError
from moesim.workloads.synthetic_routing import RoutingModelConfig, SyntheticRouting
from moesim.workloads.trace_format import StepRows, TraceMeta, TraceWriter


def synthesize_trace(path: str | Path, cfg: RoutingModelConfig, num_layers: int, num_experts: int, top_k: int,
                     tokens_per_source: np.ndarray | list[int], steps: int, seed: int = 0,
                     model_name: str | None = None, source_kind: str = "device") -> Path:
    """Draw `steps` steps of per-token routing and write them as a Parquet trace.

    Token ids are numbered within each step in source order; `source` is the source index.
    """
    tokens = np.asarray(tokens_per_source, dtype=np.int64)
    if steps < 1:
        raise ConfigError(f"a trace needs at least 1 step, got {steps}", field="--steps")
    if tokens.size == 0:
        raise ConfigError("a trace needs at least 1 token source, got 0", field="--sources")
    if (tokens < 1).any():
        raise ConfigError(f"every source needs at least 1 token per step, got {int(tokens.min())}",
                          field="--tokens")
    try:
        gen = SyntheticRouting(cfg, num_experts, top_k, num_layers, seed, per_token=True)
    except ValueError as err:  # e.g. explicit popularity weights that do not fit the model
        raise ConfigError(str(err), file=cfg.source, field="popularity") from None
    try:
        return _write(path, cfg, gen, num_layers, num_experts, top_k, tokens, steps, seed, model_name, source_kind)
    except OSError as err:
        raise ConfigError(f"cannot write the trace to {path} ({err.strerror or err})", field="--out") from None


def _write(path, cfg, gen, num_layers, num_experts, top_k, tokens, steps, seed, model_name, source_kind) -> Path:
    meta = TraceMeta(num_moe_layers=num_layers, num_experts=num_experts, top_k=top_k, num_sources=tokens.size,
                     source_kind=source_kind, model=model_name,  # type: ignore[arg-type]
                     note=f"synthetic: {cfg.model_dump_json(exclude={'popularity': {'weights'}})}, seed={seed}")
    with TraceWriter(path, meta) as writer:
        for s in range(steps):
            routed = gen.step(s, tokens, num_layers)
            T = routed.token_source.size
            writer.write_step(StepRows(
                step=s, token=np.tile(np.arange(T), num_layers), source=np.tile(routed.token_source, num_layers),
                layer=np.repeat(np.arange(num_layers), T), experts=np.concatenate(routed.token_experts)))
    return Path(path)
