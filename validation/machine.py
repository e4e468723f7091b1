"""What machine and which libraries a calibration ran on (kernel speed shifts 2-3x across versions),
and the uncalibrated "datasheet" profile of a CPU that has no bundled profile."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from moesim.errors import MoesimError
from moesim.hardware_profiles.schema import DeviceSpec


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                info.setdefault(k, v)
    return info


def describe_machine(device: str) -> tuple[dict[str, str], dict[str, str]]:
    """(machine, versions) as strings: CPU or GPU model, core count, memory; torch/triton/CUDA/numpy."""
    import numpy
    import torch

    cpu = _cpuinfo()
    machine = {"platform": platform.platform(), "cpu": cpu.get("model name", platform.processor() or "unknown"),
               "cpu_cores": str(os.cpu_count() or 0), "torch_threads": str(torch.get_num_threads()),
               "device": device, "load_average_at_start": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg")
               else "n/a"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine.update(gpu=props.name, gpu_memory_bytes=str(props.total_memory),
                       gpu_sms=str(props.multi_processor_count))
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda":
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return machine, versions


def _mem_total() -> float:
    path = Path("/proc/meminfo")
    if path.exists():
        m = re.search(r"MemTotal:\s+(\d+) kB", path.read_text())
        if m:
            return float(m.group(1)) * 1024
    return 16e9


def cpu_datasheet_profile(ghz: float = 2.5, channels_bandwidth: float = 25.6e9) -> DeviceSpec:
    """A datasheet-style profile of this machine's CPU from /proc/cpuinfo: cores x clock x FLOP per
    cycle of its widest FMA units; memory bandwidth is an assumption (one DDR4-3200 channel) since
    nothing on the machine states it. This is the 'before calibration' baseline."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = os.cpu_count() or 1
    mhz = float(info.get("cpu MHz", 0) or 0)
    clock = mhz / 1e3 if mhz > 500 else ghz
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8  # fp32 FLOP/cycle/core
    fp32 = cores * clock * 1e9 * per_cycle
    name = "cpu-" + re.sub(r"[^A-Za-z0-9]+", "-", info.get("model name", "unknown")).strip("-")
    return DeviceSpec(
        name=name, kind="cpu", memory={"capacity": _mem_total(), "bandwidth": channels_bandwidth},
        compute={"fp32": fp32, "bf16": fp32 if "avx512_bf16" not in flags else 2 * fp32},
        efficiency={"compute": 0.7, "memory": 0.8}, overhead=10e-6, gemm_tile=8,
        sources={"compute.fp32": f"derived: {cores} cores x {clock:g} GHz ({'cpuinfo' if mhz > 500 else 'assumed'}) "
                                 f"x {per_cycle} FP32 FLOP/cycle from the FMA width in /proc/cpuinfo flags",
                 "memory.bandwidth": "assumption: one DDR4-3200 channel (25.6 GB/s); the machine does not state it"},
        notes="uncalibrated baseline built by moesim calibrate from /proc/cpuinfo")


def cuda_datasheet_profile() -> DeviceSpec:
    """The bundled profile whose name matches the GPU torch sees (e.g. H100 -> H100-SXM)."""
    import torch

    from moesim.hardware_profiles import list_profiles, load_device

    if not torch.cuda.is_available():
        raise MoesimError("--device cuda: torch sees no CUDA device (torch "
                          f"{torch.__version__}, built with CUDA {torch.version.cuda}); run on a GPU machine or use "
                          "--device cpu")
    gpu = torch.cuda.get_device_name(0)
    for name in list_profiles("devices"):
        stem = name.split("-")[0].lower()
        if stem and stem in gpu.lower():
            return load_device(name)
    raise MoesimError(f"no bundled profile matches the GPU '{gpu}'; pass --profile NAME_OR_YAML with its datasheet "
                      "numbers")


def busy_warning(load_average: float | None, cores: int) -> str | None:
    """A warning when the machine was busy at the start (load average above half its cores), else None."""
    if load_average is None or cores <= 0 or load_average <= 0.5 * cores:
        return None
    return (f"busy machine: load average {load_average:.2f} at start on {cores} cores (> 0.5 x cores); "
            "other work inflates and scatters the timings")
