"""Bit width and bytes of every routed expert (EdgeMoE / D2MoE-style mixed-precision experts).

Bytes stored and moved per expert follow from its bit width: params x bits / 8, plus one 16-bit
scale per quantization group when the width is below the model's own. Quantized weights are
weight-only: the GEMM dequantizes and computes in the activation dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.offload.config import PrecisionConfig
from moesim.units import dtype_bytes
from moesim.workloads.model_spec import ModelSpec


@dataclass(frozen=True)
class ExpertPrecision:
    bits: np.ndarray  # (moe_layers, experts) weight bit width of each routed expert
    native_bits: float  # the model's routed-expert dtype width
    params: float  # weights of one routed expert
    group_size: int

    @property
    def uniform_native(self) -> bool:
        return bool((self.bits == self.native_bits).all())

    @property
    def quantized(self) -> np.ndarray:
        """(moe_layers, experts) True where the expert is stored below the model's width."""
        return self.bits < self.native_bits

    def expert_bytes(self) -> np.ndarray:
        """(moe_layers, experts) bytes of each expert's weights, with group scales when quantized."""
        scales = np.where(self.quantized, self.params / self.group_size * 2.0, 0.0)
        return self.params * self.bits / 8.0 + scales


def routed_expert_params(model: ModelSpec) -> float:
    return float(model.ffn_matrices * model.hidden_size * model.moe.expert_intermediate_size)


def expert_precision(model: ModelSpec, cfg: PrecisionConfig | None) -> ExpertPrecision:
    """Per-expert bit widths from the config (global width, then per-expert overrides in order).

    Raises ValueError naming the entry when a layer or expert index is out of range."""
    native = dtype_bytes(model.routed_expert_dtype) * 8.0
    L, E = len(model.moe_layers), model.moe.num_experts
    bits = np.full((L, E), native)
    cfg = cfg or PrecisionConfig()
    if cfg.bits is not None:
        bits[:] = cfg.bits
    for i, entry in enumerate(cfg.per_expert):
        layers = entry.layers if entry.layers is not None else list(range(L))
        experts = entry.experts if entry.experts is not None else list(range(E))
        bad_l = [x for x in layers if not 0 <= x < L]
        bad_e = [x for x in experts if not 0 <= x < E]
        if bad_l or bad_e:
            what = f"layers {bad_l} (the model has MoE layers 0..{L - 1})" if bad_l else \
                f"experts {bad_e} (the model has experts 0..{E - 1})"
            raise ValueError(f"precision.per_expert[{i}] names {what}")
        bits[np.ix_(layers, experts)] = entry.bits
    return ExpertPrecision(bits, native, routed_expert_params(model), cfg.group_size)
