"""JSON as the standard defines it: NaN and infinities become null (Python's json writes bare
NaN, which other readers reject), numpy scalars and arrays become numbers and lists."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """A copy of `obj` that `json.dumps(..., allow_nan=False)` accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return finite(obj.tolist())
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON text of `obj` (non-finite numbers as null)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def write(path: str | Path, obj: Any, **kwargs) -> Path:
    path = Path(path)
    path.write_text(dumps(obj, **kwargs))
    return path
