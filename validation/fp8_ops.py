"""fp8 ops for `moesim calibrate --dtype float8_e4m3fn`: GEMMs through torch's scaled matmul and an
MoE layer's experts as one scaled GEMM per live expert, with per-tensor, per-channel (row-wise)
or block (1x128 activations, 128x128 weights, DeepSeek-V3's recipe) scales.

The calibration grid runs per-tensor scales (the `gemm@fp8` and `grouped_gemm@fp8` fits, which is
what `torch._scaled_mm` does by default); `quant_sweep` times the grid's GEMM shapes again under
the other two scalings and writes them in the `--from-table` schema (kind, dtype, quant, m, k, n,
time_s; the calibration drops the modes torch refused and warns), so `moesim calibrate
--from-table fp8_scalings.csv` fits each mode apart. fp8 GEMMs need tensor cores that run them (compute capability 8.9 or newer:
Ada, Hopper, Blackwell): elsewhere, and on the CPU, `fp8_refusal` says why not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

FP8 = "float8_e4m3fn"
QUANT_MODES = ("per_tensor", "per_channel", "block")
BLOCK = 128  # DeepSeek-V3 / DeepGEMM block size


def fp8_refusal(device: str) -> str | None:
    """Why fp8 cannot be calibrated on `device`, or None where it can."""
    if device == "cpu":
        return ("--dtype float8_e4m3fn measures fp8 tensor-core GEMMs and MoE layers (torch scaled matmul); a CPU "
                "has no fp8 units, so its figures would be an emulation: calibrate the CPU in float32 or bfloat16, "
                "or run fp8 on a GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)")
    import torch

    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return (f"--dtype float8_e4m3fn needs fp8 tensor cores (compute capability 8.9 or newer); this GPU "
                f"({torch.cuda.get_device_name()}) is {major}.{minor}: calibrate it in bfloat16 or float16")
    return None


def _scales(quant: str, m: int, k: int, n: int, device: str):
    """(scale_a, recipe_a, scale_b, recipe_b) for A (m, k) x B (k, n) under one scaling mode."""
    import torch
    import torch.nn.functional as F

    S = F.ScalingType
    if quant == "per_tensor":
        one = torch.ones((), device=device)
        return one, S.TensorWise, one, S.TensorWise
    if quant == "per_channel":
        return torch.ones(m, 1, device=device), S.RowWise, torch.ones(1, n, device=device), S.RowWise
    if quant == "block":
        kb, nb = -(-k // BLOCK), -(-n // BLOCK)
        # scales stored outer-dimension-major, as torch's block-wise kernels read them
        sa = torch.ones(kb, m, device=device).t()
        sb = torch.ones(nb, kb, device=device).t()
        return sa, S.BlockWise1x128, sb, S.BlockWise128x128
    raise ValueError(f"unknown fp8 scaling '{quant}'; choose one of {', '.join(QUANT_MODES)}")


def scaled_gemm(a, b, quant: str) -> Callable[[], object]:
    """A closure computing a @ b (fp8 operands, b column-major) in bf16 under a scaling mode."""
    import torch.nn.functional as F

    m, k = a.shape
    n = b.shape[1]
    sa, ra, sb, rb = _scales(quant, m, k, n, str(a.device))
    return lambda: F.scaled_mm(a, b, sa, ra, sb, rb)


def _fp8(shape, device: str, fill: float | None = None):
    import torch

    t = torch.full(shape, fill, device=device) if fill is not None else torch.randn(*shape, device=device)
    return t.to(torch.float8_e4m3fn)


def gemm_runner(m: int, k: int, n: int, device: str, copies: int, quant: str = "per_tensor") -> Callable[[], object]:
    """One fp8 GEMM of m x k by k x n; the weights cycle through `copies` copies (read cold)."""
    pad = -(-m // 16) * 16  # fp8 tensor-core GEMMs take rows in multiples of 16
    a = _fp8((pad, k), device)
    weights = [_fp8((n, k), device, 0.01).t() for _ in range(copies)]  # column-major B
    calls = itertools.cycle([scaled_gemm(a, w, quant) for w in weights])
    return lambda: next(calls)()


def grouped_runner(counts: tuple[int, ...], k: int, n: int, device: str, copies: int) -> Callable[[], object]:
    """An MoE layer's experts in fp8: one per-tensor-scaled GEMM per expert with tokens."""
    live = [c for c in counts if c > 0]
    sets = []
    for _ in range(copies):
        sets.append([scaled_gemm(_fp8((-(-c // 16) * 16, k), device), _fp8((n, k), device, 0.01).t(), "per_tensor")
                     for c in live])
    cycle = itertools.cycle(sets)
    return lambda: [call() for call in next(cycle)]


def quant_sweep(shapes: list[tuple[int, int, int]], device: str, timing: dict,
                copies: Callable[[float], int], modes: tuple[str, ...] = ("per_channel", "block")) -> pd.DataFrame:
    """Time each (m, k, n) GEMM under each scaling mode: rows in the `--from-table` schema, with the
    reason in `error` where torch refused a mode (its time is then NaN)."""
    from moesim.validation.timing import time_op

    rows = []
    for (m, k, n), quant in itertools.product(shapes, modes):
        row = {"kind": "gemm", "dtype": "fp8", "quant": quant, "m": m, "k": k, "n": n, "time_s": np.nan,
               "spread": np.nan, "error": ""}
        try:
            fn = gemm_runner(m, k, n, device, copies(float(k * n)), quant)
            t = time_op(fn, device, **timing)
            row.update(time_s=t.median, spread=t.spread)
        except (RuntimeError, ValueError, TypeError) as err:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows.append(row)
    return pd.DataFrame(rows)
