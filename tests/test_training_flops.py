"""Training FLOPs (the 6 N_active + attention convention), MFU and HFU, checked by hand."""

from __future__ import annotations

import pytest

from moesim.simulator.ops import LayerContext, attention_ops
from moesim.simulator.training.flops import (active_params, hfu, mfu, model_flops_per_token, step_flops,
                                             total_params)
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.models import load_model


def _toy() -> ModelSpec:
    """2 layers: layer 0 dense (windowed attention), layer 1 MoE (full attention)."""
    return ModelSpec(
        name="toy", num_layers=2, hidden_size=32, vocab_size=100, dense_intermediate_size=64,
        attention={"type": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
                   "sliding_window": 4, "sliding_window_every": 2},
        moe={"num_experts": 4, "top_k": 2, "expert_intermediate_size": 16, "num_shared_experts": 1,
             "shared_intermediate_size": 24, "first_dense_layers": 1})


def test_toy_by_hand():
    m = _toy()
    attn = 32 * (4 + 2 * 2) * 8 + 4 * 8 * 32  # qkv + o = 3072 per layer
    dense_ffn = 3 * 32 * 64  # layer 0
    shared, router, expert = 3 * 32 * 24, 32 * 4, 3 * 32 * 16  # layer 1
    head = 100 * 32
    matmul = 2 * attn + dense_ffn + shared + router + 2 * expert + head  # 20992
    assert matmul == 20992
    embed_norms = 100 * 32 + (2 * 2 + 1) * 32
    assert active_params(m) == matmul + embed_norms
    assert total_params(m) == matmul - 2 * expert + 4 * expert + embed_norms
    # S = 8: layer 0 windowed (4): 10 + 4 * 4 = 26 pairs; layer 1 causal: 36 pairs
    fwd = (26 + 36) / 8 * 2 * 4 * (8 + 8)  # 992 per token
    per = model_flops_per_token(m, 8)
    assert per.dense_matmul == 6 * matmul
    assert per.attention == pytest.approx(3 * fwd)
    assert per.total == pytest.approx(6 * 20992 + 2976)


@pytest.mark.parametrize("name,seq_len", [("toy", 8), ("toy", 3), ("DeepSeek-V3", 4096), ("Mixtral-8x7B", 512)])
def test_attention_agrees_with_forward_ops(name, seq_len):
    m = _toy() if name == "toy" else load_model(name)
    ctx = LayerContext(phase="prefill", batch=1, seq_len=seq_len, kv_len=0)
    core = sum(op.flops for layer in range(m.num_layers) for op in attention_ops(m, layer, ctx)
               if op.name == "attn_core")
    assert model_flops_per_token(m, seq_len).attention == pytest.approx(3 * core / seq_len, rel=1e-12)


def test_deepseek_v3_matches_published_37b_active():
    """arXiv 2412.19437: 671B total, 37B activated. Our 37B-comparable count includes the embedding
    (and norms); the 6N term excludes the embedding (a lookup, not a matmul) and is ~1% below 6 x 37e9."""
    m = load_model("DeepSeek-V3")
    assert active_params(m) == pytest.approx(37e9, rel=0.05)
    assert total_params(m) == pytest.approx(671e9, rel=0.05)
    per = model_flops_per_token(m, 4096)
    assert per.dense_matmul == pytest.approx(6 * 37e9, rel=0.03)
    assert per.total == pytest.approx(6 * 37e9 + per.attention, rel=0.03)
    assert 0.05 * per.total < per.attention < 0.2 * per.total  # ~12% at 4k context


def test_recompute():
    m, tokens = _toy(), 1000.0
    per = model_flops_per_token(m, 8)
    none, sel, full = (step_flops(m, tokens, 8, r) for r in ("none", "selective", "full"))
    assert none.model_flops == sel.model_flops == full.model_flops == tokens * per.total
    assert none.hardware_flops == none.model_flops
    assert sel.hardware_flops - sel.model_flops == pytest.approx(tokens * per.attention / 3)
    assert full.hardware_flops - full.model_flops == pytest.approx(tokens * (per.dense_matmul + per.attention) / 3)
    assert full.hardware_flops > sel.hardware_flops > none.hardware_flops


def test_mfu_hfu_by_hand():
    # 4e15 FLOPs in 2 s on 4 devices of 1e15 FLOP/s peak: 4e15 / 8e15 = 0.5
    assert mfu(4e15, 2.0, 4, 1e15) == pytest.approx(0.5)
    assert hfu(6e15, 2.0, 4, 1e15) == pytest.approx(0.75)


@pytest.mark.parametrize("args", [(1e15, 0.0, 4, 1e15), (1e15, -1.0, 4, 1e15), (1e15, 1.0, 0, 1e15),
                                  (1e15, 1.0, 4, 0.0)])
def test_bad_utilization_inputs(args):
    with pytest.raises(ValueError):
        mfu(*args)
    with pytest.raises(ValueError):
        hfu(*args)


def test_bad_step_inputs():
    m = _toy()
    with pytest.raises(ValueError, match="recompute"):
        step_flops(m, 10, 8, "partial")
    with pytest.raises(ValueError, match="tokens"):
        step_flops(m, -1, 8, "none")
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(m, 0)
