"""Where Triton kernels can run: a CUDA device, or the Triton interpreter on CPU (TRITON_INTERPRET=1).

Shared by the grouped-GEMM and fused-MoE launchers so both give the same one-line reason when they cannot
run. triton itself is never imported here: the kernels import it lazily on their first launch."""

from __future__ import annotations

import importlib.util
import os

import torch


def interpret_requested() -> bool:
    """TRITON_INTERPRET set to a true value (same spellings triton accepts)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """One line saying why a kernel cannot run here (on tensors on `device`), or None if it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if interpret_requested():
        return None
    if device is not None and device.type != "cuda":
        return (f"tensors are on {device.type} and TRITON_INTERPRET is not set: move them to a CUDA device, "
                "or set TRITON_INTERPRET=1 before triton is imported to run on CPU")
    if not torch.cuda.is_available():
        return "no CUDA device and TRITON_INTERPRET is not set (set TRITON_INTERPRET=1 to run on CPU)"
    return None


def triton_available() -> bool:
    """True when a kernel can run: triton installed and (a CUDA device or TRITON_INTERPRET=1)."""
    return unavailable_reason() is None


def require_triton(what: str, device: torch.device) -> None:
    """Raise a one-line RuntimeError naming `what` when Triton cannot run on `device`."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"{what} cannot run: {reason}")
