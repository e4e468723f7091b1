"""Config inheritance: `extends: base.yaml` at the top of a scenario config.

The file's mapping is merged onto its base's (mappings key by key, recursively; any other value,
a list included, replaces the base's), the base's own `extends` first, so a chain of files reads
as one config, which is then validated as usual. The base's path is relative to the file that
names it. Relative paths *inside* a base (a model or cluster file) resolve against the folder of
the config being run, as every path in a config does: keep bases beside the configs that extend
them, or name bundled profiles by name. A chain that comes back to a file it has read, a base
that is missing, or an `extends` that is not a file name is a ConfigError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moesim.errors import ConfigError
from moesim.yaml_io import load_yaml

MAX_DEPTH = 16


def merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merged key by key, everything else replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def resolve_extends(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """The config with its `extends` chain merged in, and the chain's files (nearest base first)."""
    chain: list[str] = []
    seen = {path.resolve()}
    current, where = data, path
    result = {k: v for k, v in data.items() if k != "extends"}
    while "extends" in current:
        name = current["extends"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"extends takes the path of a base config, got {name!r}", file=where, field="extends")
        base_path = (where.parent / name)
        if not base_path.is_file():
            raise ConfigError(f"extends names {name}, which is not a file (paths are relative to {where.name})",
                              file=where, field="extends")
        if base_path.resolve() in seen or len(chain) >= MAX_DEPTH:
            raise ConfigError(f"extends {name} comes back to a file the chain has read ({' -> '.join(chain + [name])})",
                              file=where, field="extends")
        seen.add(base_path.resolve())
        chain.append(str(base_path))
        base = load_yaml(base_path)
        result = merged({k: v for k, v in base.items() if k != "extends"}, result)
        current, where = base, base_path
    return result, chain
