"""The fused Triton MoE path: device-side routing alignment, fused gate+up / down kernels, no host sync.

Alignment is plain torch and is checked in-process against hand calculations. The kernels run under the
Triton interpreter on CPU; TRITON_INTERPRET must be set before triton is first imported, so those checks
run with small shapes in a fresh interpreter (one for all snippets, started beside the tests as soon as
collection ends, as is the benchmark's smoke run: see conftest.in_background)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import in_background, interpreted  # noqa: E402
from moesim.kernels.moe_align import align_counts, align_topk_ids, choose_block_m, max_blocks  # noqa: E402
from moesim.kernels.triton_fused_moe import check_fused_args, fused_moe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_triton_moe.py"


# ---------------------------------------------------------------------------------------------- alignment


def test_align_topk_hand_case():
    """ids [[2,0],[1,2],[2,3]] (flat slots 0..5), 5 experts, block 4: one padded block per live expert."""
    align = align_topk_ids(torch.tensor([[2, 0], [1, 2], [2, 3]]), num_experts=5, block_m=4)
    pad = 6
    assert align.counts.tolist() == [1, 1, 3, 1, 0]
    assert align.max_blocks == 5  # (6 + min(5, 6) * 3) // 4
    assert align.sorted_ids.tolist() == [1, pad, pad, pad,  # expert 0: slot 1 (token 0)
                                         2, pad, pad, pad,  # expert 1: token 1 slot 0
                                         0, 3, 4, pad,  # expert 2: tokens 0, 1, 2 in token order
                                         5, pad, pad, pad,  # expert 3
                                         pad, pad, pad, pad]  # beyond the valid blocks
    assert align.expert_ids.tolist() == [0, 1, 2, 3, -1]
    assert align.num_valid_blocks.tolist() == [4]
    assert align.sorted_ids.dtype == align.expert_ids.dtype == align.num_valid_blocks.dtype == torch.int32


@pytest.mark.parametrize("tokens,k,experts,block_m,skew", [
    (1, 1, 4, 16, False), (1, 2, 8, 16, False), (37, 3, 8, 16, False), (64, 8, 64, 16, False),
    (50, 2, 8, 32, True), (200, 2, 4, 64, True), (9, 4, 256, 128, False)])
def test_align_conserves_rows_and_maps_blocks(tokens, k, experts, block_m, skew):
    gen = torch.Generator().manual_seed(tokens * 31 + experts)
    if skew:  # every token picks expert 0 plus one of the first two others: most experts stay empty
        ids = torch.stack([torch.zeros(tokens, dtype=torch.int64),
                           torch.randint(1, 3, (tokens,), generator=gen)], dim=1)[:, :k]
    else:
        ids = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(tokens)])
    align = align_topk_ids(ids, experts, block_m)
    rows = tokens * k
    flat = ids.reshape(-1)
    assert int(align.counts.sum()) == rows
    assert torch.equal(align.counts, torch.bincount(flat, minlength=experts))
    assert align.max_blocks <= -(-rows // block_m) + experts  # the documented static bound
    valid = int(align.num_valid_blocks)
    padded = (-(-align.counts // block_m) * block_m)
    assert valid * block_m == int(padded.sum()) and valid <= align.max_blocks
    real = align.sorted_ids[align.sorted_ids < rows].long()
    assert torch.equal(torch.sort(real).values, torch.arange(rows))  # every row exactly once
    assert torch.all(align.sorted_ids[valid * block_m:] == rows)  # nothing past the valid blocks
    assert torch.all(align.expert_ids[valid:] == -1)
    for b in range(valid):
        block = align.sorted_ids[b * block_m:(b + 1) * block_m].long()
        members = block[block < rows]
        assert members.numel() > 0  # no all-padding block before the end
        assert torch.all(flat[members] == align.expert_ids[b])  # block -> expert map
        assert torch.all(members[1:] > members[:-1])  # stable: token order within an expert
        assert torch.all(block[:members.numel()] == members)  # padding only at a run's end


def test_align_counts_matches_topk_alignment_with_k1():
    counts = torch.tensor([3, 0, 17, 1, 0])
    by_counts = align_counts(counts, block_m=16, rows=21)
    by_ids = align_topk_ids(torch.repeat_interleave(torch.arange(5), counts)[:, None], 5, 16)
    for name in ("sorted_ids", "expert_ids", "num_valid_blocks", "counts"):
        assert torch.equal(getattr(by_counts, name), getattr(by_ids, name)), name


def test_block_m_choice_and_bound():
    assert choose_block_m(2, 8) == 16  # Mixtral decode: 1 token x top-2
    assert choose_block_m(64 * 8, 256) == 16  # DeepSeek-V3, 64 tokens
    assert choose_block_m(1024 * 8, 256) == 32
    assert choose_block_m(1024, 16) == 64
    assert choose_block_m(8192 * 2, 8) == 128  # Mixtral prefill
    assert max_blocks(2, 8, 16) == 2 and max_blocks(0, 8, 16) == 0
    assert max_blocks(76, 4, 64) == 5 and max_blocks(1000, 1, 128) == 8


def test_fused_moe_argument_errors():
    x, ids, wt = torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.int64), torch.ones(3, 2)
    wg, wd = torch.randn(4, 8, 16), torch.randn(4, 16, 8)
    with pytest.raises(ValueError, match="ids and weights"):
        check_fused_args(x, ids[:2], wt, wg, wg, wd)
    with pytest.raises(ValueError, match="w_down"):
        check_fused_args(x, ids, wt, wg, wg, wg)
    with pytest.raises(ValueError, match="dtype"):
        check_fused_args(x, ids, wt, wg, wg.bfloat16(), wd)


def test_fused_moe_unavailable_is_one_line(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: CPU-only unavailability cannot be observed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"fused_moe cannot run: .*TRITON_INTERPRET") as info:
        fused_moe(torch.randn(3, 16), torch.zeros(3, 1, dtype=torch.int64), torch.ones(3, 1),
                  torch.randn(2, 16, 16), torch.randn(2, 16, 16), torch.randn(2, 16, 16))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- kernels


FUSED_VS_LOOP = interpreted("test_fused_moe_matches_loop_reference_under_interpreter", """
        import torch
        import torch.nn.functional as F
        from moesim.kernels.triton_fused_moe import fused_moe

        def reference(x, ids, wt, wg, wu, wd):
            out = torch.zeros(x.shape, dtype=torch.float32)
            for t in range(x.shape[0]):
                for s in range(ids.shape[1]):
                    e = int(ids[t, s])
                    h = F.silu(x[t].float() @ wg[e].float()) * (x[t].float() @ wu[e].float())
                    out[t] += wt[t, s].float() * (h @ wd[e].float())
            return out

        def case(tokens, k, experts, hidden, inter, dtype=torch.float32, skew=False, seed=0, **kw):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(tokens, hidden, generator=g).to(dtype)
            if skew:  # all tokens on expert 0 (+ expert 3 for slot 1): others empty
                ids = torch.tensor([[0, 3][:k]] * tokens)
            else:
                ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
            wt = torch.rand(tokens, k, generator=g).to(dtype)
            wg = (torch.randn(experts, hidden, inter, generator=g) / hidden ** 0.5).to(dtype)
            wu = (torch.randn(experts, hidden, inter, generator=g) / hidden ** 0.5).to(dtype)
            wd = (torch.randn(experts, inter, hidden, generator=g) / inter ** 0.5).to(dtype)
            out = fused_moe(x, ids, wt, wg, wu, wd, **kw)
            assert out.dtype == dtype and out.shape == (tokens, hidden)
            tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
            torch.testing.assert_close(out.float(), reference(x, ids, wt, wg, wu, wd), **tol)

        case(9, 2, 6, 32, 48)  # random routing, N and K not multiples of the 32 tile
        case(1, 2, 8, 32, 32)  # one token (decode)
        case(5, 1, 4, 16, 32)  # k = 1
        case(7, 3, 16, 40, 24)  # k = 3, most experts empty
        case(20, 2, 5, 32, 32, skew=True)  # skewed: two experts take everything, three empty
        case(20, 2, 5, 32, 32, skew=True, block_m=32)  # a larger BLOCK_M: several N tiles per group
        case(12, 2, 4, 32, 48, dtype=torch.bfloat16, seed=1)
        z = fused_moe(torch.randn(0, 16), torch.zeros(0, 2, dtype=torch.int64), torch.ones(0, 2),
                      torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 8, 16))
        assert z.shape == (0, 16)
        print("ok")
    """)


def test_fused_moe_matches_loop_reference_under_interpreter(background):
    assert background.snippet(FUSED_VS_LOOP).strip().endswith("ok")


FUSED_BACKEND = interpreted("test_grouped_moe_triton_fused_backend_matches_dense_reference", """
        import torch
        from moesim.kernels.grouped_moe import GroupedMoE
        from moesim.kernels.moe_layer import MoELayer
        torch.manual_seed(0)
        loop = MoELayer(32, 48, 6, 2)
        moe = GroupedMoE.from_moe_layer(loop, backend="triton_fused")
        x = torch.randn(2, 11, 32)
        with torch.no_grad():
            out = moe(x)
            assert out.shape == x.shape
            torch.testing.assert_close(out, moe.dense_reference(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out, loop(x), atol=1e-5, rtol=1e-5)
            bf = GroupedMoE.from_moe_layer(loop.to(torch.bfloat16), backend="triton_fused")
            xb = torch.randn(10, 32).bfloat16()
            torch.testing.assert_close(bf(xb).float(), bf.dense_reference(xb).float(), atol=3e-2, rtol=3e-2)
        print("ok")
    """)


def test_grouped_moe_triton_fused_backend_matches_dense_reference(background):
    assert background.snippet(FUSED_BACKEND).strip().endswith("ok")


SYNC_GUARD = """
    import sys
    import torch

    class HostSync(AssertionError):
        pass

    def from_triton():
        f = sys._getframe(2)
        while f is not None:  # the interpreter itself reads tensors on the host; that is not the forward's doing
            if f.f_globals.get("__name__", "").startswith("triton"):
                return True
            f = f.f_back
        return False

    def guard(owner, name):
        original = getattr(owner, name)
        def guarded(*a, **kw):
            if not from_triton():
                raise HostSync(f"host sync: {name}")
            return original(*a, **kw)
        setattr(owner, name, guarded)
        return lambda: setattr(owner, name, original)

    def no_host_sync(fn):
        names = [(torch.Tensor, n) for n in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__",
                                            "cpu", "numpy", "nonzero", "unique")]
        names += [(torch, n) for n in ("bincount", "nonzero", "unique", "masked_select")]
        undo = [guard(owner, n) for owner, n in names]
        try:
            return fn()
        finally:
            for u in undo:
                u()
"""


NO_HOST_SYNC = interpreted("test_fused_forward_does_no_host_sync", SYNC_GUARD + """
    from moesim.kernels.grouped_moe import GroupedMoE
    torch.manual_seed(0)
    x = torch.randn(13, 32)
    with torch.no_grad():
        fused = GroupedMoE(32, 48, 8, 2, backend="triton_fused")
        out = no_host_sync(lambda: fused(x))
        torch.testing.assert_close(out, fused.dense_reference(x), atol=1e-5, rtol=1e-5)
        fused.backend = "triton"
        try:
            no_host_sync(lambda: fused(x))
        except HostSync as e:
            print("control caught:", e)
        else:
            raise SystemExit("the guard missed the host sync of the 'triton' backend")
    print("ok")
    """)


def test_fused_forward_does_no_host_sync(background):
    """Every host read a CUDA forward could hit is made to raise; the fused forward must not touch one.

    The old "triton" backend (counts read on the host) is the control: the same guard must catch it."""
    out = background.snippet(NO_HOST_SYNC)
    assert "control caught" in out and out.strip().endswith("ok")


# ---------------------------------------------------------------------------------------------- benchmark


BENCH_SMOKE = in_background("test_benchmark_smoke_and_report", BENCH, "--smoke", "--out", "{out}",
                            "--compare", "{out}/none", env={"TRITON_INTERPRET": "1"}, needs=("triton",))


def test_benchmark_smoke_and_report(background):
    """`bench_triton_moe.py --smoke` runs tiny cases under the interpreter; --report reprints its table."""
    rc, out, err, folder = background.run(BENCH_SMOKE)
    assert rc == 0, f"interpreter run failed:\n{out}\n{err}"
    assert "grouped" in out and "layer" in out
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert {r["kind"] for r in rows} == {"grouped", "layer"}
    assert all(r["max_rel_err"] < 1e-3 for r in rows)
    report = subprocess.run([sys.executable, str(BENCH), "--report", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "ratio" in report.stdout
