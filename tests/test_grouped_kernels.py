"""Grouped MoE kernels: permute / grouped GEMM / unpermute against the dense and loop-based references.

The Triton kernel is checked under the Triton interpreter on CPU. TRITON_INTERPRET must be set before
triton is first imported, so those checks run in a fresh interpreter (one for all snippets, started beside
the tests as soon as collection ends: see conftest.in_background) and stay small."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import interpreted  # noqa: E402
from moesim.kernels.grouped_moe import (  # noqa: E402
    GroupedMoE,
    grouped_gemm,
    grouped_gemm_torch,
    permute,
    unpermute,
)
from moesim.kernels.moe_layer import MoELayer  # noqa: E402
from moesim.kernels.moe_align import align_counts  # noqa: E402
from moesim.kernels.triton_grouped_gemm import (  # noqa: E402
    TILE_M,
    grouped_gemm_triton,
    triton_available,
)

H, I, E, K = 32, 48, 6, 2


def rowwise_reference(x_sorted, counts, w):
    """Independent oracle: each row times its own expert's matrix (expert per row from counts)."""
    expert_of_row = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
    return torch.bmm(x_sorted.unsqueeze(1), w[expert_of_row]).squeeze(1)


# ---------------------------------------------------------------------------------------------- (a)


def test_permute_round_trip_conserves_tokens():
    torch.manual_seed(0)
    tokens, k, experts = 37, 3, 8
    x = torch.randn(tokens, H)
    ids = torch.stack([torch.randperm(experts)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k)
    x_sorted, order, counts = permute(x, ids, experts)

    assert counts.dtype == torch.int64 and counts.shape == (experts,)
    assert int(counts.sum()) == tokens * k
    assert torch.equal(counts, torch.bincount(ids.reshape(-1), minlength=experts))
    assert torch.equal(torch.sort(order).values, torch.arange(tokens * k))  # a permutation
    sorted_ids = ids.reshape(-1)[order]
    assert torch.all(sorted_ids[1:] >= sorted_ids[:-1])  # grouped by expert
    for e in range(experts):  # stable: token order kept within an expert
        rows = order[sorted_ids == e]
        assert torch.all(rows[1:] > rows[:-1])
    assert torch.equal(x_sorted, x[order // k])

    # identity experts: unpermute mixes the k copies of each token by its gate weights
    out = unpermute(x_sorted, order, weights, tokens)
    torch.testing.assert_close(out, x * weights.sum(dim=1, keepdim=True), atol=1e-6, rtol=1e-6)
    # and with per-slot outputs, recovers the weighted sum in (token, slot) order
    y_flat = torch.randn(tokens * k, H)
    out = unpermute(y_flat[order], order, weights, tokens)
    expected = (y_flat.reshape(tokens, k, H) * weights.unsqueeze(-1)).sum(dim=1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_permute_trailing_empty_experts_and_bad_ids():
    x = torch.randn(4, H)
    ids = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    _, _, counts = permute(x, ids, num_experts=5)
    assert counts.tolist() == [4, 4, 0, 0, 0]
    with pytest.raises(ValueError, match="ids must lie in"):
        permute(x, ids, num_experts=1)
    with pytest.raises(ValueError, match="tokens=4"):
        permute(x, ids[:3], num_experts=5)


# ---------------------------------------------------------------------------------------------- (b)


@pytest.fixture
def layers():
    torch.manual_seed(1)
    loop = MoELayer(H, I, E, K)
    return loop, GroupedMoE.from_moe_layer(loop)


def test_grouped_moe_matches_dense_reference_and_loop_layer(layers):
    loop, grouped = layers
    x = torch.randn(3, 17, H)  # leading batch dims are flattened and restored
    with torch.no_grad():
        out = grouped(x)
        dense = grouped.dense_reference(x)
        ref = loop(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(grouped.last_routing.ids, loop.last_routing.ids)
    torch.testing.assert_close(grouped.aux_loss(), loop.aux_loss())


def test_grouped_moe_bfloat16(layers):
    loop, _ = layers
    loop = loop.to(torch.bfloat16)
    grouped = GroupedMoE.from_moe_layer(loop)
    assert grouped.w_gate.dtype == torch.bfloat16
    x = torch.randn(40, H, dtype=torch.bfloat16)
    with torch.no_grad():
        out = grouped(x)
        dense = grouped.dense_reference(x)
        ref = loop(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), dense.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_grouped_moe_backward_torch_backend(layers):
    loop, grouped = layers
    x = torch.randn(20, H)
    grouped(x).square().sum().backward()
    loop(x).square().sum().backward()
    w_grad = torch.stack([ex.gate.weight.grad.t() for ex in loop.experts])
    torch.testing.assert_close(grouped.w_gate.grad, w_grad, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- (c)


def test_grouped_gemm_skewed_counts():
    torch.manual_seed(2)
    counts = [0, 1, 0, 37, 0, 2, 0]
    x = torch.randn(sum(counts), 24)
    w = torch.randn(len(counts), 24, 40)
    y = grouped_gemm_torch(x, torch.tensor(counts), w)
    torch.testing.assert_close(y, rowwise_reference(x, counts, w), atol=1e-5, rtol=1e-5)
    assert grouped_gemm_torch(x[:0], [0] * 7, w).shape == (0, 40)  # no rows at all


def test_grouped_moe_skewed_routing_with_empty_and_single_row_experts():
    """A router forced to send all tokens to experts 0/1, token 0 alone to expert 3, none to 2 and 4."""
    torch.manual_seed(3)
    tokens, experts = 20, 5
    loop = MoELayer(H, I, experts, K)
    with torch.no_grad():
        g = loop.router.gate.weight  # (E, H): logits = x @ g.T
        g.zero_()
        g[0] = 1.0  # large for positive x: always chosen
        g[1] = 0.0  # logit 0: second choice unless expert 3 wins
        g[2] = -1.0  # never
        g[3] = -0.01
        g[3, 0] = 5.0  # only the token with a big feature 0
        g[4] = -2.0  # never
    x = torch.rand(tokens, H) * 0.1
    x[:, 0] = 0.0
    x[0, 0] = 10.0
    grouped = GroupedMoE.from_moe_layer(loop)
    with torch.no_grad():
        out = grouped(x)
        counts = torch.bincount(grouped.last_routing.ids.reshape(-1), minlength=experts)
        assert counts.tolist() == [tokens, tokens - 1, 0, 1, 0]
        torch.testing.assert_close(out, grouped.dense_reference(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, loop(x), atol=1e-5, rtol=1e-5)


def test_count_alignment_pads_only_each_groups_last_block():
    assert TILE_M >= 16
    align = align_counts(torch.tensor([0, 5, 70, 1]), block_m=64, rows=76)
    assert align.max_blocks == 5  # static bound: (76 + 4 * 63) // 64
    assert align.expert_ids.tolist() == [1, 2, 2, 3, -1] and align.num_valid_blocks.tolist() == [4]
    blocks = align.sorted_ids.view(-1, 64).tolist()
    pad = 76  # the padding sentinel is the row count
    assert blocks[0] == list(range(5)) + [pad] * 59
    assert blocks[1] == list(range(5, 69)) and blocks[2] == list(range(69, 75)) + [pad] * 58
    assert blocks[3] == [75] + [pad] * 63 and blocks[4] == [pad] * 64
    empty = align_counts(torch.tensor([0, 0]), block_m=64, rows=0)
    assert empty.max_blocks == 0 and empty.num_valid_blocks.tolist() == [0]


# ---------------------------------------------------------------------------------------------- (f)


@pytest.mark.parametrize("gemm", [grouped_gemm_torch, grouped_gemm_triton], ids=["torch", "triton"])
def test_bad_grouped_gemm_arguments(gemm):
    x = torch.randn(10, 8)
    w = torch.randn(3, 8, 4)
    counts = torch.tensor([2, 3, 5])
    with pytest.raises(ValueError, match=r"w has K=7 .* x_sorted has K=8"):
        gemm(x, counts, torch.randn(3, 7, 4))
    with pytest.raises(ValueError, match=r"w must be 3-D"):
        gemm(x, counts, torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"counts has 2 groups but w has E=3"):
        gemm(x, torch.tensor([5, 5]), w)
    with pytest.raises(ValueError, match=r"counts sum to 9 but x_sorted has 10 rows"):
        gemm(x, torch.tensor([2, 3, 4]), w)
    with pytest.raises(ValueError, match=r"non-negative"):
        gemm(x, torch.tensor([-1, 6, 5]), w)
    with pytest.raises(ValueError, match=r"bfloat16"):
        gemm(x, counts, w.bfloat16())


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown grouped GEMM backend 'cutlass'"):
        GroupedMoE(H, I, E, K, backend="cutlass")
    with pytest.raises(ValueError, match="unknown grouped GEMM backend"):
        grouped_gemm(torch.randn(2, 4), [2], torch.randn(1, 4, 4), backend="cutlass")


def test_triton_unavailable_is_a_one_line_runtime_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: CPU-only unavailability cannot be observed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available()
    with pytest.raises(RuntimeError, match=r"cannot run: .*TRITON_INTERPRET") as info:
        grouped_gemm_triton(torch.randn(3, 16), [1, 2], torch.randn(2, 16, 16))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- (d), (e)


KERNEL_VS_TORCH = interpreted("test_triton_kernel_matches_torch_under_interpreter", """
        import torch
        from moesim.kernels.grouped_moe import grouped_gemm_torch
        from moesim.kernels.triton_grouped_gemm import grouped_gemm_triton, triton_available
        assert triton_available()
        torch.manual_seed(0)
        counts = torch.tensor([0, 5, 70, 1])  # empty group, 2-tile group, single-row group
        x = torch.randn(76, 32)
        w = torch.randn(4, 32, 48)
        ref = grouped_gemm_torch(x, counts, w)
        y = grouped_gemm_triton(x, counts, w)
        assert y.dtype == torch.float32 and y.shape == (76, 48)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
        # K not a multiple of BLOCK_K, N not a multiple of BLOCK_N, non-contiguous w
        x2 = torch.randn(21, 40)
        w2 = torch.randn(3, 70, 40).transpose(1, 2)
        counts2 = [20, 0, 1]
        torch.testing.assert_close(grouped_gemm_triton(x2, counts2, w2),
                                   grouped_gemm_torch(x2, counts2, w2), atol=1e-4, rtol=1e-5)
        # small tiles: several tiles per group; large BLOCK_M: one padded tile per group
        torch.testing.assert_close(grouped_gemm_triton(x, counts, w, block_m=16, block_n=16, block_k=16),
                                   ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(grouped_gemm_triton(x, counts, w, block_m=128), ref, atol=1e-4, rtol=1e-5)
        # bfloat16 in, bfloat16 out (fp32 accumulation)
        yb = grouped_gemm_triton(x.bfloat16(), counts, w.bfloat16())
        assert yb.dtype == torch.bfloat16
        refb = grouped_gemm_torch(x.bfloat16(), counts, w.bfloat16())
        torch.testing.assert_close(yb.float(), refb.float(), atol=0.15, rtol=1e-2)
        # no rows at all
        assert grouped_gemm_triton(x[:0], [0, 0, 0, 0], w).shape == (0, 48)
        print("ok")
    """)


def test_triton_kernel_matches_torch_under_interpreter(background):
    assert background.snippet(KERNEL_VS_TORCH).strip().endswith("ok")


TRITON_BACKEND = interpreted("test_grouped_moe_triton_backend_end_to_end_under_interpreter", """
        import torch
        from moesim.kernels.grouped_moe import GroupedMoE
        from moesim.kernels.moe_layer import MoELayer
        torch.manual_seed(0)
        loop = MoELayer(32, 48, 4, 2)
        moe = GroupedMoE.from_moe_layer(loop, backend="triton")
        x = torch.randn(24, 32)
        with torch.no_grad():
            out = moe(x)
            torch.testing.assert_close(out, moe.dense_reference(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out, loop(x), atol=1e-5, rtol=1e-5)
        print("ok")
    """)


def test_grouped_moe_triton_backend_end_to_end_under_interpreter(background):
    assert background.snippet(TRITON_BACKEND).strip().endswith("ok")
