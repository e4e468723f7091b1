"""Read YAML and validate it with pydantic, turning every failure into a one-paragraph error.

Every door into the simulator (scenario configs, profiles, models, generators, requests,
placement files) goes through here, so the checks every input gets live here too:
- a key given twice in one mapping is an error naming the key and both lines (PyYAML would
  silently keep the last one);
- a number that is not finite (`.nan`, `.inf`), or whose literal overflows to infinity
  (`1e400`, however it is spelt) or underflows to zero (`1e-400`), is an error naming its
  field, whatever the schema says, before anything reaches numpy; the validated model is
  checked as well (pydantic reads the string "inf" as a float);
- an unknown key is reported before the required key it probably misspells, with the
  closest valid key of that level ("did you mean 'hardware'?");
- a document over MAX_DOCUMENT_BYTES, or whose aliases would expand past MAX_YAML_NODES nodes
  (a "billion laughs"), is refused before it is built; a symlink loop, a folder, a device or
  a binary file in place of a config names the file (`check_file`, `read_text_file`).
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError

from moesim.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_DOCUMENT_BYTES = 16 * 2**20  # a config-like document (YAML, JSON) larger than this is refused unread
MAX_YAML_NODES = 1_000_000  # nodes a YAML document may hold once its aliases are expanded


# --- files: every config-like input is read through here ---------------------------------------

def resolve_lenient(path: str | Path) -> Path:
    """`path` made absolute with symlinks resolved, or lexically where resolving fails (a symlink
    loop makes Path.resolve raise RuntimeError): the reader then reports the loop naming the file."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def check_file(path: str | Path, what: str = "file") -> Path:
    """The path if it is a regular file that exists; else a ConfigError naming it and saying what
    it is instead (missing, a broken symlink, a symlink loop, a folder, a device or pipe)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        broken = path.is_symlink()
        raise ConfigError(f"{what} not found" + (f" (a symlink to {os.readlink(path)}, which does not exist)"
                                                 if broken else ""), file=path) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{what} is a symlink loop (too many levels of symbolic links); point it at a real "
                              "file", file=path) from None
        raise ConfigError(f"cannot read {what} ({err.strerror})", file=path) from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"is a directory, not a {what}", file=path)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"is not a regular file (a device, socket or pipe); expected a {what}", file=path)
    return path


def read_bytes_file(path: str | Path, what: str = "file", max_bytes: int | None = MAX_DOCUMENT_BYTES) -> bytes:
    """A regular file's bytes (`check_file`), refused unread when larger than `max_bytes`."""
    path = check_file(path, what)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{what} is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit for a "
                          "config-like document (is it the right file?)", file=path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {what} ({err.strerror})", file=path) from None


def read_text_file(path: str | Path, what: str = "file", max_bytes: int | None = MAX_DOCUMENT_BYTES) -> str:
    """A text file's contents (`read_bytes_file`); binary data (a NUL byte, or bytes that are not
    UTF-8) is an error naming the file rather than a UnicodeDecodeError."""
    raw = read_bytes_file(path, what, max_bytes)
    try:
        if b"\x00" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), raw.index(b"\x00") + 1, "NUL byte")
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not a text file (binary data at byte {err.start}: cannot decode it as UTF-8); "
                          f"expected a {what}", file=path) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key '{key}' at line {line} (first given at line {first}); "
                         "a key may appear once per mapping")
        self.key, self.line = key, line


class _TooLarge(yaml.YAMLError):
    """A document whose aliases expand past MAX_YAML_NODES nodes."""


class Underflow(float):
    """A number literal that is not zero but reads as 0.0 (`1.0e-400`): kept as 0.0 with its text,
    so that the checks in `validate` can name its field."""

    text: str

    def __new__(cls, text: str) -> "Underflow":
        obj = super().__new__(cls, 0.0)
        obj.text = text
        return obj


# a number in exponent form (the only way to spell one that over- or underflows), with an optional unit
_EXP_NUMBER = re.compile(r"^\s*(?P<num>[-+]?(?P<mant>\d[\d_]*\.?[\d_]*|\.\d[\d_]*)[eE][-+]?\d+)\s*[A-Za-zµ/]*\s*$")


def number_text_problem(text: str) -> str | None:
    """Why a number literal (with an optional unit, "1e-400 us") cannot be a float64: it overflows
    to infinity or underflows to zero though not written as zero; None when it is fine."""
    m = _EXP_NUMBER.match(text)
    if not m:
        return None
    literal, value = text.strip(), float(m.group("num").replace("_", ""))
    if math.isinf(value):
        return f"must be a finite number: {literal!r} overflows a float64 (the largest is about 1.8e308)"
    if value == 0.0 and any(c in "123456789" for c in m.group("mant")):
        return (f"{literal!r} underflows to 0 (the smallest float64 is about 5e-324), so the number would be "
                "lost; write 0 if zero is meant")
    return None


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """Nodes the document holds with every alias expanded, counted on the composed graph with
    memoisation (linear in the composed size); raises _TooLarge past `limit`."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if not children_done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(k), 0) for k in kids)
        if total > limit:
            raise _TooLarge(f"the document's aliases expand to more than {limit:,} nodes (an alias bomb?); "
                            "refused before building it")
        sizes[id(node)] = total
    return sizes[id(root)]


class _Checks:
    """Constructor overrides of the loaders below: refuse a key given twice in one mapping (merge
    keys `<<` may be overridden) and keep a number literal that underflows to 0.0 recognisable
    (`Underflow`)."""

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:  # type: ignore[override]
        value = super().construct_yaml_float(node)
        if value == 0.0 and number_text_problem(str(node.value)):
            return Underflow(str(node.value))
        return value

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


class _UniqueKeyLoader(_Checks, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with the checks: it words every error."""


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _UniqueKeyLoader.construct_yaml_float)
# libyaml's parser (PyYAML's C extension) with the same constructor: several times faster on the
# bundled models and profiles; any document it does not load is loaded again by the Python
# loader, so results and error texts are the Python loader's
def _c_loader() -> type | None:
    if not getattr(yaml, "__with_libyaml__", False):
        return None

    class FastLoader(_Checks, yaml.CSafeLoader):
        """The C parser with the checks."""

    FastLoader.add_constructor("tag:yaml.org,2002:float", FastLoader.construct_yaml_float)
    return FastLoader


_FastLoader = _c_loader()


def parse_yaml(text: str, max_nodes: int = MAX_YAML_NODES) -> Any:
    """yaml.safe_load that also refuses duplicate keys and documents whose aliases expand past
    `max_nodes` nodes (raises yaml.YAMLError); the expansion is sized before anything is built."""
    if _FastLoader is not None:
        try:
            return _load_with(_FastLoader, text, max_nodes)
        except Exception:  # the Python loader gives the result or the error, in its own words
            pass
    return _load_with(_UniqueKeyLoader, text, max_nodes)


def _load_with(loader_class, text: str, max_nodes: int) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node, max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; a missing or odd file (`read_text_file`), a syntax error, a duplicate
    key, an alias bomb or a non-mapping names the file."""
    path = Path(path)
    text = read_text_file(path, "YAML file")
    try:
        data = parse_yaml(text)
    except _TooLarge as err:
        raise ConfigError(str(err), file=path) from None
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


def at_most(limit: int | float, unit: str, why: str) -> AfterValidator:
    """A pydantic validator bounding a count or a span: past `limit` the error says what the
    simulator cannot do with it (`why`), rather than numpy failing to allocate later."""
    def check(value: Any) -> Any:
        if value is not None and value > limit:
            shown, most = (f"{value:,}", f"{limit:,}") if isinstance(value, int) else (f"{value:g}", f"{limit:g}")
            raise ValueError(f"{shown} {unit} is more than moesim can simulate: at most {most} ({why})")
        return value
    return AfterValidator(check)


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


def _member_names(tp: Any) -> set[str]:
    """Names pydantic gives a union member in an error location: a model's class name or
    discriminator tag, else the type as it prints it (`str`, `int`, `list[str]`)."""
    if _is_model(tp):
        return _tag_of(tp)
    text = str(tp).replace("typing.", "")
    return {n for n in (getattr(tp, "__name__", None), text, text.lower(), text.lower().replace(" ", "")) if n}


def _step(current: list[Any], part: Any) -> tuple[list[Any], bool] | None:
    """The types one location part leads to from `current`, and whether the part was a union
    member's tag rather than a field or an index (None: the path leaves the schema)."""
    fields = [a for m in current if _is_model(m) and str(part) in m.model_fields
              for a in _members(m.model_fields[str(part)].annotation)]
    if fields:
        return fields, False
    if len(current) > 1:  # a union member named in the path (discriminator tag, class or type name)
        chosen = [t for t in current if str(part) in _member_names(t)]
        if chosen:
            return chosen, True
    nxt = []  # containers: dict values / list items
    for tp in current:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (dict, typing.Mapping) and len(args) == 2:
            nxt.extend(_members(args[1]))
        elif origin in (list, tuple, set, typing.Sequence) and args:
            nxt.extend(_members(args[0]))
    return (nxt, False) if nxt else None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> list[tuple[list[Any], bool]] | None:
    """For each part of `loc`, the types it leads to and whether it was a union tag (None: off the schema)."""
    current: list[Any] = [model]
    out = []
    for part in loc:
        step = _step(current, part)
        if step is None:
            return None
        current = step[0]
        out.append(step)
    return out


def valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model found at `loc` inside `model` (None if the path is not a model)."""
    steps = _walk(model, loc)
    if steps is None:
        return None
    current = steps[-1][0] if steps else [model]
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


def _loc_text(loc: tuple[Any, ...], model: type[BaseModel] | None = None) -> str:
    """A pydantic error location as the user writes the field: `workload.routing.counts[1][3]`,
    without the union-member tags pydantic inserts (`synthetic.RoutingModelConfig.affinity`)."""
    loc = tuple(p for p in loc if not str(p).startswith("function-"))
    steps = (_walk(model, loc) if model is not None else None) or []
    # a class or type name goes; a discriminator value stays (`arrivals.gamma.cv`: the gamma process's cv)
    tags = {i for i, (types, tag) in enumerate(steps)
            if tag and any(not _is_model(t) or str(loc[i]) == t.__name__ for t in types)}
    out = ""
    for i, part in enumerate(loc):
        if i not in tags:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> tuple[str, str]:
    """(field path, message) of the most useful error pydantic reports, in the user's terms.

    An unknown key is reported first (a misspelt required key otherwise shows up as the
    required key 'missing'), with the closest valid key of its level when `model` is given."""
    errors = err.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    first = extra[0] if extra else errors[0]
    loc = _loc_text(first["loc"], model)
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


def _bad_number(data: Any, loc: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(field path, problem) of the first number in parsed YAML/JSON data, or in a validated
    model, that is NaN or infinite, or whose literal overflows or underflows a float64."""
    problem = None
    if isinstance(data, Underflow):
        problem = number_text_problem(data.text)
    elif isinstance(data, float) and not math.isfinite(data):
        problem = f"must be a finite number (got {data!r})"
    elif isinstance(data, str):
        problem = number_text_problem(data)
    if problem:
        return ".".join(loc), problem
    if isinstance(data, BaseModel):
        items: Any = ((name, getattr(data, name)) for name in type(data).model_fields)
    elif isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        key = str(key)
        if key.startswith("[") and loc:
            where = loc[:-1] + (loc[-1] + key,)
        else:
            where = loc + (key,)
        hit = _bad_number(value, where)
        if hit:
            return hit
    return None


def _number_error(hit: tuple[str, str], path: str | Path | None) -> ConfigError:
    """The ConfigError of a `_bad_number` finding (field path, problem)."""
    field, problem = hit
    return ConfigError(problem, file=path, field=field or None)


def validate(model: type[M], data: dict[str, Any], path: str | Path | None = None) -> M:
    """Validate a mapping against a schema; errors name the file and the field path.

    No number in the input may be NaN or infinite, or written so that it overflows or underflows
    a float64 (no physical quantity, count or probability here is), whatever the schema's own
    constraints; the validated model is checked too, since pydantic reads "1e400" as inf."""
    bad = _bad_number(data)
    if bad:
        raise _number_error(bad, path)
    try:
        out = model.model_validate(data)
    except ValidationError as err:
        field, msg = format_validation_error(err, model)
        raise ConfigError(msg, file=path, field=field or None) from None
    bad = _bad_number(out)
    if bad:
        raise _number_error(bad, path)
    return out
