"""The toy scenario (2 devices, 4 experts, fixed routing, round numbers): every phase time
equals a hand calculation.

Toy-GPU: 100 TFLOPS bf16, 1 TB/s, efficiency 1, no overhead, tile 1. Toy-Link: 100 GB/s per
direction, 1 us latency, full mesh. Model: hidden 1024, 8 heads x 128 (MHA), 4 experts of
width 1024 (SwiGLU), top-1, bf16. Decode, 4 sequences per device, 99 cached tokens.
Routing: device 0 sends [3, 0, 1, 0] tokens to experts 0..3, device 1 sends [1, 0, 1, 2];
contiguous placement puts experts 0, 1 on device 0 and 2, 3 on device 1.
"""

import pytest

from moesim.simulator.run import simulate

from conftest import toy_file

US = 1e-6
# attention (all memory-bound at 1 TB/s, bytes / 1e12):
QKV = (1024 * 3072 * 2 + 4 * (1024 + 3072) * 2) / 1e12  # 6.324224 us
CORE = (4 * 100 * 2 * 8 * 128 * 2 + 4 * (8 * 128 * 2 + 2 * 8 * 128) * 2) / 1e12  # 1.671168 us
OPROJ = (1024 * 1024 * 2 + 4 * 2048 * 2) / 1e12  # 2.113536 us
ROUTER = (1024 * 4 * 2 + 4 * (1024 + 4) * 2) / 1e12  # 0.016416 us
NORM = (2 * 4 * 1024 * 2 + 1024 * 2) / 1e12  # RMSNorm: read + write 4 tokens, read its weights: 18.432 ns
EMBEDDING = 4 * 1024 * (2 + 2) / 1e12  # gather 4 rows, write them: 16.384 ns
LM_HEAD = (1024 * 1000 * 2 + 4 * (1024 + 1000) * 2) / 1e12  # vocab 1000: 2.064192 us (memory-bound)
# the only layer is first and last: two norms, the embedding, the final norm and the LM head
SMALL_OPS = 2 * NORM + EMBEDDING + NORM + LM_HEAD  # 2.135872 us
ATTENTION = QKV + CORE + OPROJ + ROUTER + SMALL_OPS
WEIGHTS = 3 * 1024 * 1024 * 2  # one expert's bytes
ROW = (2 * 1024 + 3 * 1024) * 2  # activation bytes per token through an expert
EXPERT_DEV0 = (WEIGHTS + 4 * ROW) / 1e12  # expert 0 has 4 tokens, expert 1 none (costs nothing)
EXPERT_DEV1 = (2 * WEIGHTS + 4 * ROW) / 1e12  # experts 2 and 3 have 2 tokens each
TRANSFER = 1024 * 2 / 100e9 + 1 * US  # one token row each way: 20.48 ns + 1 us latency


@pytest.fixture
def toy_result(tmp_path, toy_config):
    return simulate(toy_file(tmp_path, toy_config))


def _phase(result, device, phase):
    df = result.phases
    row = df[(df.device == device) & (df.phase == phase)]
    assert len(row) == 1
    return float(row.duration_s.iloc[0]), float(row.start_s.iloc[0])


def test_attention_matches_hand_calculation(toy_result):
    assert ATTENTION == pytest.approx((10.125344 + 2.135872) * US, rel=1e-9)
    for d in (0, 1):
        assert _phase(toy_result, d, "attention")[0] == pytest.approx(ATTENTION, rel=1e-9)


def test_dispatch_expert_and_combine_match_hand_calculation(toy_result):
    for d in (0, 1):
        assert _phase(toy_result, d, "dispatch")[0] == pytest.approx(TRANSFER, rel=1e-9)
    assert _phase(toy_result, 0, "expert")[0] == pytest.approx(EXPERT_DEV0, rel=1e-9)
    assert _phase(toy_result, 1, "expert")[0] == pytest.approx(EXPERT_DEV1, rel=1e-9)
    # device 0 finishes first and waits for device 1's experts (straggler), then the transfer
    assert _phase(toy_result, 0, "straggler_wait")[0] == pytest.approx(EXPERT_DEV1 - EXPERT_DEV0, rel=1e-9)
    assert _phase(toy_result, 0, "combine")[0] == pytest.approx(TRANSFER, rel=1e-9)
    # device 1's returning token left device 0 long ago: no wait at all
    assert _phase(toy_result, 1, "combine")[0] == pytest.approx(0.0, abs=1e-15)


def test_step_latency_matches_hand_calculation(toy_result):
    step = ATTENTION + TRANSFER + EXPERT_DEV1 + TRANSFER
    assert toy_result.summary["step_latency_s"]["mean"] == pytest.approx(step, rel=1e-9)
    assert toy_result.summary["straggler_ratio"]["mean"] == pytest.approx(
        EXPERT_DEV1 / ((EXPERT_DEV0 + EXPERT_DEV1) / 2), rel=1e-9)
    assert toy_result.summary["all_to_all_payload_bytes"]["dispatch"] == 2 * 2048
