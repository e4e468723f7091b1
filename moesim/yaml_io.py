"""Read YAML and validate it with pydantic, turning every failure into a one-paragraph error.

Every door into the simulator (scenario configs, profiles, models, generators, requests,
placement files) goes through here, so the checks every input gets live here too:
- a key given twice in one mapping is an error naming the key and both lines (PyYAML would
  silently keep the last one);
- a number that is not finite (`.nan`, `.inf`, `1e999`) is an error naming its field,
  whatever the schema says, before anything reaches numpy;
- an unknown key is reported before the required key it probably misspells, with the
  closest valid key of that level ("did you mean 'hardware'?").
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moesim.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key '{key}' at line {line} (first given at line {first}); "
                         "a key may appear once per mapping")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may be overridden)."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load that also refuses duplicate keys (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; a missing file, a syntax error, a duplicate key or a non-mapping names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file (cannot decode it as UTF-8); expected YAML", file=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read file ({err.strerror})", file=path) from None
    try:
        data = parse_yaml(text)
    except _DuplicateKey as err:
        raise ConfigError(str(err), file=path, field=str(err.key)) from None
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


# --- what the schema allows at a field path (for "did you mean") ---------------------------------

def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union / Optional / Annotated annotation (itself otherwise)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag_of(model: type[BaseModel]) -> set[str]:
    """Literal values of a model's fields (a discriminated union names the member by them)."""
    out = {model.__name__}
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is typing.Literal:
            out.update(str(v) for v in typing.get_args(f.annotation))
    return out


def valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model found at `loc` inside `model` (None if the path is not a model)."""
    current: list[Any] = [model]
    for part in loc:
        models = [m for m in current if _is_model(m)]
        if models:
            chosen = [m for m in models if str(part) in _tag_of(m)] if len(models) > 1 else []
            if chosen:  # a union member named in the path (discriminator tag or class name)
                current = chosen
                continue
            nxt: list[Any] = []
            for m in models:
                f = m.model_fields.get(str(part))
                if f is not None:
                    nxt.extend(_members(f.annotation))
            if not nxt:
                return None
            current = nxt
            continue
        nxt = []  # containers: dict values / list items
        for tp in current:
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin in (dict, typing.Mapping) and len(args) == 2:
                nxt.extend(_members(args[1]))
            elif origin in (list, tuple, set, typing.Sequence) and args:
                nxt.extend(_members(args[0]))
        if not nxt:
            return None
        current = nxt
    keys = sorted({k for m in current if _is_model(m) for k in m.model_fields})
    return keys or None


def did_you_mean(word: str, choices: list[str]) -> list[str]:
    """The choices a person would guess `word` meant (the closest, and a runner-up as close)."""
    low = {c.lower(): c for c in choices}
    if word.lower() in low:
        return [low[word.lower()]]
    scored = sorted(((difflib.SequenceMatcher(None, word.lower(), c).ratio(), c) for c in low), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [low[c] for r, c in scored[:2] if r >= 0.6 and r >= best - 0.1]


def suggestion(word: str, choices: list[str]) -> str:
    """" did you mean 'x'?" (or 'x' or 'y'), or "" when nothing is close."""
    close = did_you_mean(word, choices)
    return ("; did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else ""


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> tuple[str, str]:
    """(field path, message) of the most useful error pydantic reports, in the user's terms.

    An unknown key is reported first (a misspelt required key otherwise shows up as the
    required key 'missing'), with the closest valid key of its level when `model` is given."""
    errors = err.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    first = extra[0] if extra else errors[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    explained: list[dict] = []  # a required key reported missing because it is the misspelt one
    if first["type"] == "extra_forbidden":
        key = str(first["loc"][-1]) if first["loc"] else ""
        keys = valid_keys(model, tuple(first["loc"][:-1])) if model is not None else None
        hint = suggestion(key, keys) if keys else ""
        close = did_you_mean(key, keys) if keys else []
        explained = [e for e in errors if e["type"] == "missing" and tuple(e["loc"][:-1]) == tuple(first["loc"][:-1])
                     and str(e["loc"][-1]) in close]
        msg = f"unknown key '{key}'"
        if hint:
            msg += hint
        else:
            msg += " (not part of the schema; check its spelling and indentation)"
        if keys:
            msg += f" Valid keys here: {', '.join(keys)}."
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "finite_number":
        msg = f"must be a finite number (got {first.get('input')!r})"
    elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
        shown = repr(first["input"])
        msg = f"{msg} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    msg = msg.removeprefix("Value error, ")
    more = len(errors) - 1 - len(explained)
    if more:
        msg += f" ({more} more problem{'s' if more > 1 else ''} after this one)"
    return loc, msg


def _non_finite(data: Any, loc: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The field path of the first NaN or infinite number in parsed YAML/JSON data."""
    if isinstance(data, float) and not math.isfinite(data):
        return ".".join(loc), data
    if isinstance(data, dict):
        for k, v in data.items():
            hit = _non_finite(v, loc + (str(k),))
            if hit:
                return hit
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            hit = _non_finite(v, loc + (f"[{i}]",) if not loc else loc[:-1] + (f"{loc[-1]}[{i}]",))
            if hit:
                return hit
    return None


def validate(model: type[M], data: dict[str, Any], path: str | Path | None = None) -> M:
    """Validate a mapping against a schema; errors name the file and the field path.

    No number in the input may be NaN or infinite (no physical quantity, count or
    probability here is), whatever the schema's own constraints."""
    bad = _non_finite(data)
    if bad:
        field, value = bad
        raise ConfigError(f"must be a finite number (got {value!r})", file=path, field=field or None)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        field, msg = format_validation_error(err, model)
        raise ConfigError(msg, file=path, field=field or None) from None
