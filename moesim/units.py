"""The one parser for human units in YAML ("900 GB/s", "80 GiB", "989 TFLOPS", "2 us").

Internally everything is SI: seconds, bytes, FLOP/s, bytes/s. Plain numbers are taken as SI.
Bit rates ("400 Gb/s") are converted to bytes/s. Data types map to bits per element here too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BIN_PREFIX = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

_NUMBER = r"(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-zµ/]*)\s*$")

#: bits per element of the data types a model or device may name
DTYPE_BITS: dict[str, float] = {
    "fp64": 64, "fp32": 32, "tf32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8,
    "fp6": 6, "int4": 4, "fp4": 4, "nvfp4": 4.5, "mxfp4": 4.25,
}


def _split(text: str, what: str) -> tuple[float, str]:
    m = _RE.match(text)
    if not m:
        raise ValueError(f"cannot read {what} from {text!r}; expected a number with an optional unit")
    return float(m.group("num")), m.group("unit")


def _scale(prefix: str, what: str, text: str) -> float:
    if prefix in _BIN_PREFIX:
        return _BIN_PREFIX[prefix]
    if prefix in _PREFIX:
        return _PREFIX[prefix]
    raise ValueError(f"unknown unit prefix {prefix!r} in {what} {text!r}")


def parse_bytes(value: Any) -> float:
    """'80 GiB' -> 85899345920.0; '1.5 TB' -> 1.5e12; 96 -> 96.0. B = byte, b = bit."""
    if isinstance(value, (int, float)):
        return float(value)
    num, unit = _split(str(value), "a size")
    if unit == "":
        return num
    if unit.endswith("B"):
        return num * _scale(unit[:-1], "size", value)
    if unit.endswith("b"):
        return num * _scale(unit[:-1], "size", value) / 8.0
    raise ValueError(f"cannot read a size from {value!r}; use B/KB/MB/GB/TB or KiB/MiB/GiB/TiB")


def parse_bandwidth(value: Any) -> float:
    """'900 GB/s' -> 9e11 B/s; '400 Gb/s' (bits) -> 5e10 B/s; '3.35 TB/s' -> 3.35e12."""
    if isinstance(value, (int, float)):
        return float(value)
    num, unit = _split(str(value), "a bandwidth")
    if unit == "":
        return num
    if unit.endswith("ps"):
        unit = unit[:-2] + "/s"
    if not unit.endswith("/s"):
        raise ValueError(f"cannot read a bandwidth from {value!r}; expected e.g. '900 GB/s' or '400 Gb/s'")
    return parse_bytes(f"{num} {unit[:-2]}")


def parse_flops(value: Any) -> float:
    """'989 TFLOPS' -> 9.89e14 FLOP/s; '1979 TOPS' -> 1.979e15 op/s; plain numbers are FLOP/s."""
    if isinstance(value, (int, float)):
        return float(value)
    num, unit = _split(str(value), "a compute rate")
    if unit == "":
        return num
    for suffix in ("FLOP/s", "FLOPs", "FLOPS", "OPS", "OP/s", "flops"):
        if unit.endswith(suffix):
            return num * _scale(unit[: -len(suffix)], "compute rate", value)
    raise ValueError(f"cannot read a compute rate from {value!r}; expected e.g. '989 TFLOPS'")


def parse_time(value: Any) -> float:
    """'2 us' -> 2e-6 s; '1.5 ms' -> 1.5e-3; plain numbers are seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    num, unit = _split(str(value), "a time")
    if unit == "":
        return num
    if unit not in _TIME:
        raise ValueError(f"cannot read a time from {value!r}; use s, ms, us or ns")
    return num * _TIME[unit]


def dtype_bytes(name: str) -> float:
    """Bytes per element of a named data type ('bf16' -> 2.0, 'mxfp4' -> 0.53125)."""
    try:
        return DTYPE_BITS[name] / 8.0
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_BITS)}") from None


def _wrap(parser):
    def validate(value: Any) -> float:
        if value is None:
            return value
        return parser(value)

    return BeforeValidator(validate)


#: pydantic field types that accept human units and store SI floats
Bytes = Annotated[float, _wrap(parse_bytes)]
Bandwidth = Annotated[float, _wrap(parse_bandwidth)]
FlopRate = Annotated[float, _wrap(parse_flops)]
Seconds = Annotated[float, _wrap(parse_time)]


def fmt_time(seconds: float) -> str:
    """Human-readable time for terminal tables."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} B"
