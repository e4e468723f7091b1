"""Benchmark the Triton MoE kernels against the per-expert torch loop and the weight-read floor.

On CUDA (bf16): (a) the grouped GEMM (`grouped_gemm_device`) against the per-expert torch loop at
Mixtral 8 experts x 8192 rows and at 64..256 small experts; (b) the whole fused layer (router + device
alignment + fused gate/up + down + top-k sum) for Mixtral-8x7B and DeepSeek-V3 (all 256 experts) at
1..64 tokens (and 1024, 8192) against the time to read the touched experts' weights once at the device
copy bandwidth measured in the same run, and against the torch layer (router, permute, torch loop,
unpermute). Sync-free paths are timed as CUDA graphs of back-to-back calls; the torch layer (it reads
counts on the host) eagerly, one CUDA-event pair per call as the 2026-11-26 measurements did.

Writes OUT/results.json and OUT/results.csv and prints each ratio beside its acceptance threshold
(grouped >= 0.8x the loop at 8 experts, >= 3x at 64+ experts; layer <= 1.5x the weight read at
1..64 tokens) and, where the old H100 measurements have the same case, the old numbers.

    python benchmarks/bench_triton_moe.py --out OUT            # CUDA: ~40 s on an H100 incl. autotuning
    python benchmarks/bench_triton_moe.py --smoke --out OUT    # no GPU: tiny cases, Triton interpreter
    python benchmarks/bench_triton_moe.py --report OUT         # reprint a previous run's table

Imports only torch/numpy and this checkout's kernels/ (loaded by path, not through an installed moesim).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMPARE = ROOT.parent / "shared" / "measurements" / "h100-2026-11-26"
BUDGET_S = 135.0  # stop starting new cases after this long (the whole run must stay under ~150 s)
NOMINAL_BW = 3.0e12  # bytes/s, used when no bandwidth is measured (smoke mode)

# grouped GEMM cases: name, experts, rows, K, N, minimum speedup over the loop (None: reported only)
GROUPED = [
    ("Mixtral-8x7B up", 8, 8192, 4096, 14336, 0.8),
    ("64 experts 2048x1408", 64, 1024, 2048, 1408, 3.0),
    ("Qwen3-30B-A3B gate", 128, 1024, 2048, 768, 3.0),
    ("DeepSeek-V3 gate", 256, 2048, 7168, 2048, 3.0),
    ("DeepSeek-V3 EP8", 32, 256, 7168, 2048, None),
]
# layers: name, old-measurement model name, experts, top_k, hidden, intermediate
LAYERS = [("Mixtral-8x7B", "Mixtral-8x7B", 8, 2, 4096, 14336),
          ("DeepSeek-V3", "DeepSeek-V3-EP1", 256, 8, 7168, 2048)]
LAYER_TOKENS = (1, 4, 8, 16, 64, 1024, 8192)
DECODE_MAX_TOKENS = 64  # the <= 1.5x weight-read threshold applies up to here
LAYER_LIMIT = 1.5
SMOKE_GROUPED = [("smoke", 4, 40, 32, 48, None)]
SMOKE_LAYERS = [("smoke", "", 4, 2, 32, 48)]
SMOKE_TOKENS = (1, 5)
CHECK_TILES = dict(BLOCK_N=64, BLOCK_K=32, GROUP_M=4)  # fixed tiles: the correctness check compiles few kernels


def log(*parts) -> None:
    print(*parts, flush=True)


def load_kernels():
    """This checkout's kernels/ as a private package (an installed moesim may be older)."""
    name = "_bench_kernels"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    mods = {m: importlib.import_module(f"{name}.{m}")
            for m in ("moe_align", "triton_grouped_gemm", "triton_fused_moe", "grouped_moe")}
    return mods


# ---------------------------------------------------------------------------------------------- timing


class Timer:
    """Median seconds per call: CUDA graphs of back-to-back calls (eager fallback), or perf_counter on CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def graph(self, fn, inner: int, outer: int = 5) -> tuple[float, str]:
        """Capture `inner` calls in one CUDA graph, replay `outer` times; falls back to eager if capture fails."""
        torch = self.torch
        if not self.cuda:
            return self.eager(fn, max(1, outer // 2)), "cpu"
        fn()
        fn()  # autotune and compile outside the capture
        self.sync()
        try:
            g = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                with torch.cuda.graph(g, stream=stream):
                    for _ in range(inner):
                        fn()
            torch.cuda.current_stream().wait_stream(stream)
            g.replay()
            self.sync()
        except Exception as e:  # noqa: BLE001 - report and fall back
            log(f"    graph capture failed ({type(e).__name__}: {str(e)[:120]}); timing eagerly")
            return self.back_to_back(fn, inner, outer), "eager-back-to-back"
        samples = []
        for _ in range(outer):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) / 1e3 / inner)
        del g
        return sorted(samples)[len(samples) // 2], "cuda-graph"

    def back_to_back(self, fn, inner: int, outer: int) -> float:
        torch = self.torch
        samples = []
        for _ in range(outer):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) / 1e3 / inner)
        return sorted(samples)[len(samples) // 2]

    def eager(self, fn, reps: int = 5) -> float:
        """One call per sample (CUDA events on the GPU), median: the old measurements' method."""
        torch = self.torch
        fn()
        self.sync()
        samples = []
        for _ in range(reps):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                samples.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return sorted(samples)[len(samples) // 2]


def hbm_bandwidth(torch, timer: Timer) -> tuple[float, float]:
    """(copy, read) bandwidth in bytes/s on 1 GiB buffers: a device copy (bytes read + written) and a sum."""
    n = 1 << 29  # bf16 elements: 1 GiB
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    t_copy, _ = timer.graph(lambda: dst.copy_(src), inner=5)
    t_read, _ = timer.graph(lambda: src.sum(dtype=torch.float32), inner=5)
    return 2 * (n * 2) / t_copy, n * 2 / t_read


# ---------------------------------------------------------------------------------------------- old numbers


def load_old(compare: Path | None) -> tuple[dict, dict]:
    """(grouped: (E, rows, K, N) -> row, layers: (model, tokens) -> {piece: seconds}) from the old measurements."""
    grouped, layers = {}, {}
    if compare is None or not compare.is_dir():
        return grouped, layers
    js = compare / "triton-grouped-gemm.json"
    if js.exists():
        for r in json.loads(js.read_text()):
            grouped[(r["experts"], r["tokens"], r["k"], r["n"])] = r
    csv_path = compare / "moe-layers" / "moe_layers.csv"
    if csv_path.exists():
        with csv_path.open() as f:
            for r in csv.DictReader(f):
                if r["dist"] == "uniform" and r.get("median_s"):
                    layers.setdefault((r["model"], int(r["tokens"])), {})[r["piece"]] = float(r["median_s"])
    return grouped, layers


def attach_old(rows: list[dict], compare: Path | None) -> None:
    """Add the old measurements of the same cases (old_* fields; None where the case was not measured)."""
    grouped, layers = load_old(compare)
    pieces = ("router", "permute", "experts_triton", "unpermute")
    for r in rows:
        if r["kind"] == "grouped":
            o = grouped.get((r["experts"], r["rows"], r["K"], r["N"]), {})
            r.update(old_triton_s=o.get("triton_s"), old_torch_loop_s=o.get("torch_loop_s"))
        else:
            o = layers.get((r.get("old_name"), r["tokens"]), {})
            r.update(old_layer_torch_s=o.get("layer_torch"), old_experts_triton_s=o.get("experts_triton"),
                     old_experts_torch_s=o.get("experts_torch"),
                     old_triton_layer_s=sum(o[p] for p in pieces) if all(p in o for p in pieces) else None)


# ---------------------------------------------------------------------------------------------- cases


def rel_err(torch, y, ref) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def run_grouped(torch, k, timer: Timer, dev, dt, cases, bw: float) -> list[dict]:
    """Grouped GEMM: Triton (device path, graph-timed) vs the per-expert torch loop (host counts), the loop
    timed both as a CUDA graph (no launch cost: the strict baseline) and eagerly back to back."""
    gg, loop = k["triton_grouped_gemm"].grouped_gemm_device, k["grouped_moe"].grouped_gemm_torch
    rows_out = []
    for name, experts, rows, kk, n, limit in cases:
        gen = torch.Generator().manual_seed(experts * 7 + rows)
        counts_host = torch.multinomial(torch.ones(experts), rows, replacement=True, generator=gen)
        counts_host = torch.bincount(counts_host, minlength=experts)
        counts_list = counts_host.tolist()
        counts = counts_host.to(dev)
        x = torch.randn(rows, kk, device=dev, dtype=dt)
        w = torch.randn(experts, kk, n, device=dev, dtype=dt) / kk ** 0.5
        err = rel_err(torch, gg(x, counts, w), loop(x, counts_list, w))
        inner = 3 if rows * kk * n > 2e11 else 10
        t_tri, how = timer.graph(lambda: gg(x, counts, w), inner)
        t_loop, _ = timer.graph(lambda: loop(x, counts_list, w), inner)
        t_loop_eager = timer.back_to_back(lambda: loop(x, counts_list, w), inner, 3) if timer.cuda else t_loop
        read_s = experts * kk * n * torch.finfo(dt).bits / 8 / bw
        r = dict(kind="grouped", case=name, experts=experts, rows=rows, K=kk, N=n, triton_s=t_tri,
                 torch_loop_s=t_loop, ratio=t_loop / t_tri, limit=limit, ratio_is="speedup", method=how,
                 tflops=2 * rows * kk * n / t_tri / 1e12, max_rel_err=err, torch_loop_eager_s=t_loop_eager,
                 ratio_eager=t_loop_eager / t_tri, weight_read_s=read_s, x_read=t_tri / read_s)
        rows_out.append(r)
        log(f"  grouped {name}: triton {t_tri * 1e6:.1f} us, loop {t_loop * 1e6:.1f} us, "
            f"x{r['ratio']:.2f}, eager loop {t_loop_eager * 1e6:.1f} us (x{r['ratio_eager']:.2f}), "
            f"{r['tflops']:.0f} TFLOP/s, {r['x_read']:.2f}x weight read, err {err:.1e}")
    return rows_out


def run_layers(torch, k, timer: Timer, dev, dt, cases, tokens_list, bw, deadline) -> list[dict]:
    """Whole layer: fused Triton (graph-timed) vs weight-read time and the torch layer (eager)."""
    import numpy as np

    fused = k["triton_fused_moe"].fused_moe
    align, choose = k["moe_align"].align_topk_ids, k["moe_align"].choose_block_m
    gm = k["grouped_moe"]
    rows_out = []
    weights_of = {}
    for name, _, experts, top_k, hidden, inter in cases:
        w_gate = torch.empty(experts, hidden, inter, device=dev, dtype=dt).uniform_(-0.02, 0.02)
        w_up = torch.empty_like(w_gate).uniform_(-0.02, 0.02)
        w_down = torch.empty(experts, inter, hidden, device=dev, dtype=dt).uniform_(-0.02, 0.02)
        w_router = torch.empty(hidden, experts, device=dev, dtype=dt).uniform_(-0.02, 0.02)
        weights_of[name] = (w_gate, w_up, w_down, w_router)
    rng = np.random.default_rng(0)
    small = [t for t in tokens_list if t <= DECODE_MAX_TOKENS]
    order = [(c, t) for phase in (small, [t for t in tokens_list if t > DECODE_MAX_TOKENS])
             for c in cases for t in phase]  # every model's decode cases before any large one
    for (name, old_name, experts, top_k, hidden, inter), tokens in order:
        if time.time() > deadline:
            log(f"  layer {name} {tokens}: skipped (time budget)")
            continue
        w_gate, w_up, w_down, w_router = weights_of[name]
        x = torch.randn(tokens, hidden, device=dev, dtype=dt)
        ids_np = np.stack([rng.choice(experts, size=top_k, replace=False) for _ in range(tokens)])
        ids = torch.as_tensor(ids_np, device=dev)
        weights = torch.full((tokens, top_k), 1.0 / top_k, device=dev, dtype=dt)
        live = int((np.bincount(ids_np.ravel(), minlength=experts) > 0).sum())

        def router():
            return torch.topk(torch.softmax((x @ w_router).float(), dim=-1), top_k, dim=-1)

        def layer_fused():
            router()
            return fused(x, ids, weights, w_gate, w_up, w_down)

        def layer_torch():
            router()
            xs, perm, counts = gm.permute(x, ids, experts)
            g = gm.grouped_gemm_torch(xs, counts, w_gate)
            u = gm.grouped_gemm_torch(xs, counts, w_up)
            y = gm.grouped_gemm_torch(torch.nn.functional.silu(g) * u, counts, w_down)
            return gm.unpermute(y, perm, weights, tokens)

        err = rel_err(torch, layer_fused(), layer_torch())
        t_align, _ = timer.graph(lambda: align(ids, experts, choose(tokens * top_k, experts)), inner=20)
        t_fused, how = timer.graph(layer_fused, inner=20 if tokens <= DECODE_MAX_TOKENS else 3)
        t_torch = timer.eager(layer_torch)
        read_s = live * 3 * hidden * inter * torch.finfo(dt).bits / 8 / bw
        r = dict(kind="layer", case=name, old_name=old_name, experts=experts, top_k=top_k, hidden=hidden, inter=inter,
                 tokens=tokens, live_experts=live, fused_s=t_fused, torch_layer_s=t_torch,
                 weight_read_s=read_s, ratio=t_fused / read_s, ratio_is="x weight read",
                 limit=LAYER_LIMIT if tokens <= DECODE_MAX_TOKENS else None, method=how, max_rel_err=err,
                 speedup_vs_torch=t_torch / t_fused, align_s=t_align)
        rows_out.append(r)
        log(f"  layer {name} {tokens} tok ({live} experts): fused {t_fused * 1e6:.1f} us, "
            f"weight read {read_s * 1e6:.1f} us (x{r['ratio']:.2f}), torch {t_torch * 1e6:.1f} us, "
            f"alignment alone {t_align * 1e6:.1f} us, "
            f"err {err:.1e}")
    weights_of.clear()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return rows_out


def check_no_sync(torch, k, dev, dt) -> str:
    """One fused forward under torch.cuda.set_sync_debug_mode('error'): 'ok' or the error."""
    x = torch.randn(4, 256, device=dev, dtype=dt)
    ids = torch.randint(0, 8, (4, 2), device=dev)
    wt = torch.full((4, 2), 0.5, device=dev, dtype=dt)
    wg, wd = torch.randn(8, 256, 512, device=dev, dtype=dt), torch.randn(8, 512, 256, device=dev, dtype=dt)
    k["triton_fused_moe"].fused_moe(x, ids, wt, wg, wg, wd)  # compile / tune first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        k["triton_fused_moe"].fused_moe(x, ids, wt, wg, wg, wd)
        return "ok"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:160]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_correctness(torch, k, dev) -> str:
    """Odd shapes on the device (N, K not tile multiples; skewed, empty experts; T=1; fp32 and bf16): worst error."""
    fused, gg, loop = (k["triton_fused_moe"].fused_moe, k["triton_grouped_gemm"].grouped_gemm_triton,
                       k["grouped_moe"].grouped_gemm_torch)
    worst = {}
    gen = torch.Generator().manual_seed(0)
    for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        for tokens, top_k, experts, hidden, inter, skew in ((1, 2, 8, 100, 200, False), (37, 3, 16, 136, 72, False),
                                                            (300, 2, 6, 72, 168, True)):
            x = torch.randn(tokens, hidden, generator=gen).to(dev, dt)
            ids = (torch.tensor([[0, 3][:top_k]] * tokens) if skew else
                   torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])).to(dev)
            wt = torch.rand(tokens, top_k, generator=gen).to(dev, dt)
            wg, wu = (torch.randn(experts, hidden, inter, generator=gen).to(dev, dt) / hidden ** 0.5 for _ in "gu")
            wd = torch.randn(experts, inter, hidden, generator=gen).to(dev, dt) / inter ** 0.5
            sel = lambda w: w.float()[ids.reshape(-1)]  # noqa: E731 - (T*k, in, out) per-slot weights
            xr = x.float().repeat_interleave(top_k, 0)[:, None, :]
            h = torch.nn.functional.silu(xr @ sel(wg)) * (xr @ sel(wu))
            ref = ((h @ sel(wd))[:, 0] * wt.float().reshape(-1, 1)).reshape(tokens, top_k, hidden).sum(1)
            err = rel_err(torch, fused(x, ids, wt, wg, wu, wd, block_m=32, tiles=CHECK_TILES), ref)
            counts = torch.bincount(ids.reshape(-1).cpu(), minlength=experts)
            xs = x.repeat_interleave(top_k, 0)[:int(counts.sum())]
            err_g = rel_err(torch, gg(xs, counts, wg, block_m=32, block_n=64, block_k=32),
                            loop(xs, counts.tolist(), wg))
            key = str(dt).replace("torch.", "")
            worst[key] = max(worst.get(key, 0.0), err, err_g)
            if max(err, err_g) > tol:
                return f"FAIL {key} T={tokens} k={top_k} E={experts} {hidden}x{inter}: fused {err:.1e} grouped {err_g:.1e}"
    return "ok, worst relative error " + ", ".join(f"{d} {e:.1e}" for d, e in worst.items())


# ---------------------------------------------------------------------------------------------- report


def fmt_us(s) -> str:
    return "-" if s is None else f"{s * 1e6:.1f}"


def verdict(r: dict, smoke: bool = False) -> str:
    if r.get("limit") is None:
        return ""
    if smoke:
        return "(smoke run: no verdict)"
    ok = r["ratio"] >= r["limit"] if r["ratio_is"] == "speedup" else r["ratio"] <= r["limit"]
    op = ">=" if r["ratio_is"] == "speedup" else "<="
    return f"{op}{r['limit']:g}x {'PASS' if ok else 'FAIL'}"


def print_table(results: dict) -> None:
    meta = results["meta"]
    log(f"\n{meta.get('device', '?')}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
        f"weight-read bandwidth {meta.get('bandwidth_Bps', 0) / 1e12:.2f} TB/s ({meta.get('bandwidth_source')}), "
        f"no-host-sync check: {meta.get('sync_check')}, correctness: {meta.get('correctness', 'not run')}")
    rows, smoke = results["rows"], meta.get("smoke", False)
    log("\n(a) grouped GEMM: Triton vs per-expert torch loop (ratio = loop / triton; loop as a CUDA graph, "
        "'eager' = launched back to back)")
    log(f"{'case':24} {'E':>4} {'rows':>6} {'KxN':>12} {'triton us':>10} {'loop us':>10} {'ratio':>6} "
        f"{'eager':>6} {'xread':>6} {'TFLOP/s':>8} {'old tri us':>10} {'old loop us':>11}  verdict (graph loop)")
    for r in rows:
        if r["kind"] == "grouped":
            log(f"{r['case']:24} {r['experts']:>4} {r['rows']:>6} {str(r['K']) + 'x' + str(r['N']):>12} "
                f"{fmt_us(r['triton_s']):>10} {fmt_us(r['torch_loop_s']):>10} {r['ratio']:>6.2f} "
                f"{r.get('ratio_eager', float('nan')):>6.2f} {r.get('x_read', float('nan')):>6.2f} {r['tflops']:>8.0f} {fmt_us(r['old_triton_s']):>10} {fmt_us(r['old_torch_loop_s']):>11}  "
                f"{verdict(r, smoke)}")
    log("\n(b) whole layer: fused Triton vs weight-read time (ratio = fused / weight read) and the torch layer")
    log(f"{'case':14} {'tok':>5} {'live':>4} {'fused us':>9} {'read us':>9} {'ratio':>6} {'torch us':>9} "
        f"{'old torch':>9} {'old tri':>9}  verdict")
    for r in rows:
        if r["kind"] == "layer":
            log(f"{r['case']:14} {r['tokens']:>5} {r['live_experts']:>4} {fmt_us(r['fused_s']):>9} "
                f"{fmt_us(r['weight_read_s']):>9} {r['ratio']:>6.2f} {fmt_us(r['torch_layer_s']):>9} "
                f"{fmt_us(r['old_layer_torch_s']):>9} {fmt_us(r['old_triton_layer_s']):>9}  {verdict(r, smoke)}")
    judged = [r for r in rows if r.get("limit") is not None]
    passed = sum(verdict(r, smoke).endswith("PASS") for r in judged)
    log(f"\nthresholds: grouped >= 0.8x loop at 8 experts, >= 3x at 64+ experts; layer <= 1.5x weight read "
        f"at 1..{DECODE_MAX_TOKENS} tokens. {passed}/{len(judged)} pass. "
        f"('old' = {meta.get('compare') or 'no old measurements found'})")


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    keys = sorted({key for r in results["rows"] for key in r})
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(results["rows"])


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-triton-moe"), help="results directory")
    ap.add_argument("--compare", type=Path, default=None,
                    help=f"old measurements directory (default {DEFAULT_COMPARE} when it exists)")
    ap.add_argument("--smoke", action="store_true", help="tiny cases; under the Triton interpreter without CUDA")
    ap.add_argument("--report", type=Path, default=None, help="reprint the table of a previous --out directory")
    args = ap.parse_args(argv)
    compare = args.compare if args.compare is not None else (DEFAULT_COMPARE if DEFAULT_COMPARE.is_dir() else None)
    if args.report is not None:
        results = json.loads((args.report / "results.json").read_text())
        if compare is not None and compare.is_dir():
            attach_old(results["rows"], compare)
            results["meta"]["compare"] = str(compare)
        print_table(results)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    if not cuda:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            log("triton was imported before TRITON_INTERPRET could be set; rerun with TRITON_INTERPRET=1")
            return 1
        os.environ["TRITON_INTERPRET"] = "1"
        log("no CUDA device: smoke run of tiny cases under the Triton interpreter (timings meaningless)")
    start = time.time()
    k = load_kernels()
    import triton

    dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    timer = Timer(torch, cuda)
    meta = dict(device=torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
                torch=torch.__version__, triton=triton.__version__, dtype=str(dt), smoke=smoke,
                compare=str(compare) if compare and compare.is_dir() else None)
    if cuda:
        meta["correctness"] = check_correctness(torch, k, dev)
        log(f"correctness on odd shapes: {meta['correctness']}")
        meta["sync_check"] = check_no_sync(torch, k, dev, dt)
        log(f"no-host-sync check (torch.cuda.set_sync_debug_mode('error')): {meta['sync_check']}")
        copy_bw, read_bw = hbm_bandwidth(torch, timer)
        meta.update(copy_Bps=copy_bw, read_Bps=read_bw, bandwidth_Bps=max(copy_bw, read_bw),
                    bandwidth_source="the larger of a 1 GiB device copy and a 1 GiB sum")
        log(f"device copy {copy_bw / 1e12:.2f} TB/s, read (sum) {read_bw / 1e12:.2f} TB/s")
    else:
        meta["sync_check"] = "not run (CPU)"
        meta["bandwidth_Bps"], meta["bandwidth_source"] = NOMINAL_BW, "nominal"
    grouped = SMOKE_GROUPED if smoke else GROUPED
    layers, tokens = (SMOKE_LAYERS, SMOKE_TOKENS) if smoke else (LAYERS, LAYER_TOKENS)
    log("(a) grouped GEMM")
    rows = run_grouped(torch, k, timer, dev, dt, grouped, meta["bandwidth_Bps"])
    log("(b) whole layer")
    rows += run_layers(torch, k, timer, dev, dt, layers, tokens, meta["bandwidth_Bps"], deadline=start + BUDGET_S)
    attach_old(rows, compare)
    meta["elapsed_s"] = time.time() - start
    results = dict(meta=meta, rows=rows)
    write(args.out, results)
    print_table(results)
    log(f"\nwrote {args.out / 'results.json'} and results.csv in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
