"""Model specs load (bundled and Hugging Face), and op FLOPs/bytes match hand calculations."""

import numpy as np
import pytest

from moesim.placement import contiguous
from moesim.simulator.memory import estimate_memory
from moesim.simulator.ops import LayerContext, attention_ops, expert_op, ffn_flops_bytes, shared_expert_op
from moesim.workloads import list_models, load_model

from conftest import DATA

BUNDLED = ["Mixtral-8x7B", "Mixtral-8x22B", "DeepSeek-V2-Lite", "DeepSeek-V3", "Qwen3-30B-A3B",
           "Qwen3-235B-A22B", "OLMoE-1B-7B", "Switch-Base-128", "GPT-OSS-120B"]


def test_all_required_models_are_bundled():
    assert set(BUNDLED) <= set(list_models())


@pytest.mark.parametrize("name, bytes_per_param, published", [
    ("DeepSeek-V3", 1, 671e9), ("Mixtral-8x7B", 2, 46.7e9), ("Mixtral-8x22B", 2, 141e9),
    ("Qwen3-235B-A22B", 2, 235e9), ("Qwen3-30B-A3B", 2, 30.5e9), ("OLMoE-1B-7B", 2, 6.9e9),
    ("DeepSeek-V2-Lite", 2, 15.7e9),
])
def test_parameter_count_matches_published_total(name, bytes_per_param, published):
    """The shapes in each spec add up to the model's published parameter count (within 1%)."""
    m = load_model(name)
    placement = contiguous(m.moe.num_experts, 1, len(m.moe_layers))
    mem = estimate_memory(m, placement, tp=1, batch=1, kv_len=0, attn_tokens=1, moe_tokens=1)
    assert mem.weights / bytes_per_param == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("fixture, bundled", [
    ("mixtral-8x7b.json", "Mixtral-8x7B"), ("deepseek-v3.json", "DeepSeek-V3"),
    ("qwen3-30b-a3b.json", "Qwen3-30B-A3B"), ("olmoe-1b-7b.json", "OLMoE-1B-7B"),
    ("gpt-oss-120b.json", "GPT-OSS-120B"),
])
def test_hugging_face_config_matches_bundled_spec(fixture, bundled):
    hf, spec = load_model(DATA / "hf_configs" / fixture), load_model(bundled)
    for field in ("num_layers", "hidden_size", "vocab_size"):
        assert getattr(hf, field) == getattr(spec, field)
    assert hf.moe.model_dump() == spec.moe.model_dump()
    assert hf.attention.model_dump() == spec.attention.model_dump()
    assert hf.moe_layers == spec.moe_layers


def test_switch_layer_pattern_and_deepseek_dense_layers():
    assert load_model("Switch-Base-128").moe_layers == list(range(1, 24, 2))
    dsv3 = load_model("DeepSeek-V3")
    assert dsv3.moe_layers == list(range(3, 61))


def _by_name(ops):
    return {op.name: op for op in ops}


def test_mixtral_decode_ops_hand_calculation():
    m = load_model("Mixtral-8x7B")
    B, L = 16, 1000  # 16 sequences with 1000 cached tokens
    ops = _by_name(attention_ops(m, 0, LayerContext("decode", B, 1, L)))
    T = B
    assert ops["qkv_proj"].flops == 2 * T * 4096 * 6144
    assert ops["qkv_proj"].bytes == 4096 * 6144 * 2 + T * (4096 + 6144) * 2
    pairs = B * (L + 1)
    assert ops["attn_core"].flops == pairs * 2 * 32 * 256
    assert ops["attn_core"].bytes == pairs * 2 * 8 * 128 * 2 + T * (32 * 128 * 2 + 2 * 8 * 128) * 2
    assert ops["o_proj"].flops == 2 * T * 4096 * 4096
    e = expert_op(m, 0, 5)
    assert e.flops == 2 * 5 * 4096 * 14336 * 3
    assert e.bytes == 3 * 4096 * 14336 * 2 + 5 * (2 * 4096 + 3 * 14336) * 2


def test_mixtral_prefill_is_causal():
    m = load_model("Mixtral-8x7B")
    S = 512
    core = _by_name(attention_ops(m, 0, LayerContext("prefill", 2, S, 0)))["attn_core"]
    assert core.flops == 2 * (S * (S + 1) / 2) * 2 * 32 * 256


def test_deepseek_v3_mla_decode_and_experts_hand_calculation():
    m = load_model("DeepSeek-V3")
    B, L = 8, 4095
    T = B
    ops = _by_name(attention_ops(m, 10, LayerContext("decode", B, 1, L)))
    assert ops["q_down"].flops == 2 * T * 7168 * 1536
    assert ops["q_up"].flops == 2 * T * 1536 * 128 * 192
    assert ops["kv_down"].flops == 2 * T * 7168 * 576
    assert ops["attn_absorb"].flops == 2 * T * 128 * 512 * (128 + 128)
    pairs = B * (L + 1)
    assert ops["attn_core"].flops == pairs * 2 * 128 * (576 + 512)
    assert ops["attn_core"].bytes == pairs * 576 * 2 + T * 128 * (576 + 512) * 2  # bf16 latent cache
    assert ops["o_proj"].flops == 2 * T * 128 * 128 * 7168
    assert ops["o_proj"].bytes == 128 * 128 * 7168 * 1 + T * (128 * 128 + 7168) * 2  # fp8 weights
    e = expert_op(m, 3, 7)
    assert e.flops == 2 * 7 * 7168 * 2048 * 3
    assert e.bytes == 3 * 7168 * 2048 * 1 + 7 * (2 * 7168 + 3 * 2048) * 2
    shared = shared_expert_op(m, 7)
    assert shared.flops == e.flops


def test_deepseek_v3_prefill_uses_uncompressed_kv():
    m = load_model("DeepSeek-V3")
    S = 1024
    ops = _by_name(attention_ops(m, 10, LayerContext("prefill", 1, S, 0)))
    assert ops["kv_up"].flops == 2 * S * 512 * 128 * (128 + 128)
    assert ops["attn_core"].flops == (S * (S + 1) / 2) * 2 * 128 * (192 + 128)


def test_expert_with_no_tokens_costs_nothing_and_weights_are_read_once():
    m = load_model("Mixtral-8x7B")
    flops, nbytes = ffn_flops_bytes(m, np.array([3.0, 0.0, 5.0]), m.moe.expert_intermediate_size, m.routed_expert_dtype)
    assert flops[1] == 0 and nbytes[1] == 0
    experts = [expert_op(m, 0, 3.0), expert_op(m, 2, 5.0)]
    weights = 3 * 4096 * 14336 * 2
    assert experts[0].bytes - weights == pytest.approx(3 / 5 * (experts[1].bytes - weights))


@pytest.mark.parametrize("field, value, words", [
    ("num_local_experts", "eight", "whole number"), ("num_local_experts", 0, ">= 1"),
    ("num_attention_heads", 0, ">= 1"), ("hidden_size", True, "whole number"),
    ("num_experts_per_tok", 99, "exceeds"), ("num_key_value_heads", 3, "must divide"),
])
def test_hugging_face_config_errors_name_the_hf_key(tmp_path, field, value, words):
    import json

    from moesim.errors import ConfigError
    from moesim.workloads import load_model

    cfg = json.loads((DATA / "hf_configs" / "mixtral-8x7b.json").read_text())
    cfg[field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as info:
        load_model(path)
    assert info.value.field == field and words in str(info.value) and str(path) in str(info.value)
