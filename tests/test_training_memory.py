"""Training memory per rank (weights, gradients, ZeRO-sharded optimizer states, activations), by hand."""

from __future__ import annotations

import pytest

from moesim.errors import ConfigError
from moesim.simulator.training.flops import active_params, total_params
from moesim.simulator.training.memory import (TrainParallel, check_fits, param_counts, stage_layers,
                                              training_memory)
from moesim.units import fmt_bytes
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.models import load_model


def _toy(**over) -> ModelSpec:
    """h 8, 2 heads of 4; layer 0 dense (FFN 16), layer 1 MoE: 4 experts of 8 (top 2) + 1 shared of 4."""
    spec = dict(name="toy", num_layers=2, hidden_size=8, vocab_size=16, dense_intermediate_size=16,
                attention={"type": "gqa", "num_heads": 2, "num_kv_heads": 2, "head_dim": 4},
                moe={"num_experts": 4, "top_k": 2, "expert_intermediate_size": 8, "num_shared_experts": 1,
                     "shared_intermediate_size": 4, "first_dense_layers": 1})
    spec.update(over)
    return ModelSpec(**spec)


# parameters of the toy, by hand
ATTN = 8 * (2 + 2 * 2) * 4 + 2 * 4 * 8  # qkv + o = 256 a layer
NORMS = 2 * 8 * 2 + 8  # two a layer + the final one = 40
DENSE_FFN, SHARED, ROUTER = 3 * 8 * 16, 3 * 8 * 4, 8 * 4  # 384, 96, 32
EMBED = HEAD = 16 * 8  # 128 each
SPLIT = 2 * ATTN + DENSE_FFN + SHARED + EMBED + HEAD  # over tp: 1248
REPLICATED = NORMS + ROUTER  # on every tp rank: 72
EXPERTS = 4 * 3 * 8 * 8  # 768

# activations of the toy at micro_batch 1, seq_len 4 (sbh = 32), tp 1, bytes
CORE = 5 * 2 * 4 * 4  # 5as^2b = 160
LAYER0 = 11 * 32 + CORE + 4 * 32 + 4 * (3 * 8 + 2 * 3 * 16)  # attention + norms + swiglu FFN: 1120
LAYER1 = 11 * 32 + CORE + 4 * 32 + 4 * (3 * 8 + 2 * 3 * 4) + 4 * 2 * (4 * 8 + 2 * 3 * 8)  # shared + routed: 1472
LOGITS = 4 * 4 * 16  # fp32 4sbv = 256


def test_toy_param_counts():
    p = param_counts(_toy())
    assert (SPLIT, REPLICATED, EXPERTS) == (1248, 72, 768)
    assert p.dense == SPLIT + REPLICATED == 1320
    assert p.expert == EXPERTS
    assert p.active == 1320 + EXPERTS * 2 / 4 == 1704
    assert p.total == total_params(_toy()) and p.active == active_params(_toy())  # the FLOPs count agrees


def test_deepseek_v3_matches_published_counts():
    """arXiv 2412.19437: 671B total, 37B activated per token (main model, MTP module excluded)."""
    p = param_counts(load_model("DeepSeek-V3"))
    assert p.total == pytest.approx(671e9, rel=0.02)
    assert p.active == pytest.approx(37e9, rel=0.05)


@pytest.mark.parametrize("zero,weights,grads,states", [
    # dp 4, ep 2 -> expert_dp 2; a rank holds dense 1320 and experts 768 / 2 = 384; sharded: 1320/4 + 384/2 = 522
    (0, 1704 * 2, 1704 * 4, 1704 * 12),
    (1, 1704 * 2, 1704 * 4, 522 * 12),
    (2, 1704 * 2, 522 * 4, 522 * 12),
    (3, 522 * 2, 522 * 4, 522 * 12),
])
def test_zero_stages_by_hand(zero, weights, grads, states):
    """bf16 weights 2 B, fp32 gradients 4 B, fp32 master 4 B + Adam's two fp32 moments 8 B a parameter."""
    par = TrainParallel(tp=1, pp=1, dp=4, ep=2)
    assert par.world == 4 and par.expert_dp == 2
    mem = training_memory(_toy(), par, micro_batch=1, seq_len=4, zero_stage=zero, comm_buffer_bytes=100.0)
    assert (mem.weights, mem.gradients, mem.optimizer_states) == (weights, grads, states)
    assert mem.activations == LAYER0 + LAYER1 + LOGITS == 2848
    assert mem.comm_buffers == 100.0
    assert mem.total == weights + grads + states + 2848 + 100
    assert mem.rows()[-1] == ("total", mem.total)


def test_zero1_dp2_and_optimizers():
    """dp 2, ep 2: expert_dp 1, so only the dense states shard: 1320 / 2 + 384 = 1044 parameters' states."""
    par = TrainParallel(dp=2, ep=2)
    assert par.expert_dp == 1
    mem = training_memory(_toy(), par, micro_batch=1, seq_len=4, zero_stage=1)
    assert mem.optimizer_states == 1044 * 12 and mem.weights == 1704 * 2
    sgd = training_memory(_toy(), par, micro_batch=1, seq_len=4, zero_stage=1, optimizer="sgd-momentum",
                          grad_dtype="bf16", master_dtype=None)
    assert sgd.optimizer_states == 1044 * 4 and sgd.gradients == 1704 * 2


def test_tensor_parallel_splits_all_but_norms_and_router():
    par = TrainParallel(tp=2, dp=2, ep=2)  # 4 ranks; expert_dp = 4 // 2 = 2
    mem = training_memory(_toy(), par, micro_batch=1, seq_len=4)
    assert mem.weights == (SPLIT / 2 + REPLICATED + EXPERTS / 2) * 2
    assert mem.activations == 2848 / 2  # sequence parallel: every term / tp


@pytest.mark.parametrize("recompute,expected", [
    ("none", LAYER0 + LAYER1 + LOGITS),
    ("selective", LAYER0 + LAYER1 - 2 * CORE + CORE + LOGITS),  # one core rerun at a time: 2688
    ("full", 2 * 32 * (2 - 1) + LAYER1 + LOGITS),  # other layer's input + the largest layer rerun: 1792
])
def test_activations_by_hand(recompute, expected):
    mem = training_memory(_toy(), TrainParallel(), micro_batch=1, seq_len=4, recompute=recompute)
    assert mem.activations == expected


def test_korthikanti_standard_layer():
    """A GeLU layer with a 4h FFN keeps sbh (34 + 5as/h) / tp (Korthikanti et al. 2022, eq. 2 with SP)."""
    h, a, s, b, v = 64, 4, 32, 2, 100
    m = ModelSpec(name="std", num_layers=1, hidden_size=h, vocab_size=v, dense_intermediate_size=4 * h,
                  activation="gelu", attention={"type": "gqa", "num_heads": a, "num_kv_heads": a, "head_dim": 16},
                  moe={"num_experts": 2, "top_k": 1, "expert_intermediate_size": 8, "first_dense_layers": 1})
    mem = training_memory(m, TrainParallel(tp=2), micro_batch=b, seq_len=s)
    assert mem.activations == (s * b * h * (34 + 5 * a * s / h) + 4 * s * b * v) / 2


def test_pipeline_stages_and_in_flight():
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_layers(61, 16)[0] == range(0, 4) and len(stage_layers(61, 16)[-1]) == 3
    m = _toy(num_layers=4, moe={"num_experts": 4, "top_k": 2, "expert_intermediate_size": 8,
                                "first_dense_layers": 4})  # four dense layers of LAYER0's size
    mem = training_memory(m, TrainParallel(pp=2), micro_batch=1, seq_len=4)
    assert mem.stage == 0 and mem.activations == 2 * 2 * LAYER0  # 1F1B: pp - 0 = 2 micro-batches in flight
    last = training_memory(m, TrainParallel(pp=2), micro_batch=1, seq_len=4, in_flight=1)
    assert last.activations == 2 * LAYER0 + LOGITS and last.stage == 1  # the LM head's stage now holds most


@pytest.mark.parametrize("model", [_toy(), load_model("DeepSeek-V3")], ids=["toy", "deepseek-v3"])
def test_monotone(model):
    par = TrainParallel(tp=1, pp=4, dp=8, ep=8) if model.num_layers > 2 else TrainParallel(dp=4, ep=2)
    kw = dict(micro_batch=1, seq_len=512)
    totals = [training_memory(model, par, zero_stage=z, **kw).total for z in range(4)]
    assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1]
    acts = [training_memory(model, par, recompute=r, **kw).activations for r in ("full", "selective", "none")]
    assert acts == sorted(acts) and acts[0] < acts[-1]
    flight = [training_memory(model, par, in_flight=n, **kw).activations for n in (1, 2, 4)]
    assert flight[0] < flight[1] < flight[2]


@pytest.mark.parametrize("par,kw,field,words", [
    (TrainParallel(dp=3, ep=3), {}, "parallelism.ep", "routed experts"),
    (TrainParallel(dp=2, ep=4), {}, "parallelism.ep", "must divide the 2 ranks"),
    (TrainParallel(dp=4, ep=2, expert_tp=4), {}, "parallelism.ep", "ep x expert_tp"),
    (TrainParallel(tp=4), {}, "parallelism.tp", "attention heads"),
    (TrainParallel(pp=3), {}, "parallelism.pp", "exceeds the 2 layers"),
    (TrainParallel(dp=0), {}, "parallelism.dp", "at least 1"),
    (TrainParallel(), {"zero_stage": 4}, "training.zero_stage", "0, 1, 2, 3"),
    (TrainParallel(), {"recompute": "partial"}, "training.recompute", "none, selective, full"),
    (TrainParallel(), {"optimizer": "lion"}, "training.optimizer", "adam"),
    (TrainParallel(), {"grad_dtype": "fp12"}, "training.grad_dtype", "unknown dtype"),
])
def test_bad_inputs_name_the_field(par, kw, field, words):
    with pytest.raises(ConfigError) as err:
        training_memory(_toy(), par, micro_batch=1, seq_len=4, **kw)
    assert err.value.field == field and words in str(err.value) and field in str(err.value)


def test_check_fits_refuses_with_the_breakdown():
    mem = training_memory(_toy(), TrainParallel(dp=4, ep=2), micro_batch=1, seq_len=4)
    check_fits(mem, mem.total, "toy GPU")  # exactly full fits
    with pytest.raises(ConfigError) as err:
        check_fits(mem, 1000.0, "toy GPU")
    text = str(err.value)
    assert "toy GPU" in text and mem.describe() in text and fmt_bytes(1000.0) in text
    assert "optimizer states" in text and "zero_stage" in text and "recompute" in text
    assert text.index("zero_stage") < text.index("recompute")  # the largest part (optimizer states) first
