"""Read YAML and validate it with pydantic, turning every failure into a one-paragraph error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moesim.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; a missing file, a syntax error or a non-mapping names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read file ({err.strerror})", file=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"malformed YAML{where}: {problem}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, found {type(data).__name__}", file=path)
    return data


def format_validation_error(err: ValidationError) -> tuple[str, str]:
    """(field path, message) of the first error pydantic reports, in the user's terms."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field (not part of the schema; check its spelling and indentation)"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
        msg = f"{msg} (got {first['input']!r})"
    msg = msg.removeprefix("Value error, ")
    more = len(err.errors()) - 1
    if more:
        msg += f" ({more} more problem{'s' if more > 1 else ''} after this one)"
    return loc, msg


def validate(model: type[M], data: dict[str, Any], path: str | Path | None = None) -> M:
    """Validate a mapping against a schema; errors name the file and the field path."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        field, msg = format_validation_error(err)
        raise ConfigError(msg, file=path, field=field or None) from None
