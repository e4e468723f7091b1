"""User-facing errors: one paragraph naming the file and field, printed without a traceback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable


class MoesimError(Exception):
    """A mistake in the user's input (config, profile, trace); the CLI prints it and exits 2."""


class ConfigError(MoesimError):
    """A config or profile file failed to load or validate."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.detail = message
        where = []
        if self.file:
            where.append(f"in {self.file}")
        if field:
            where.append(f"at field '{field}'")
        prefix = (" ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)

    def given_by(self, option: str) -> "ConfigError":
        """The same error, also naming the command-line option that pointed at the file; unlike
        re-raising `detail` alone, the file and field stay in the message."""
        if self.file is None:
            return ConfigError(self.detail, field=f"{option}: {self.field}" if self.field else option)
        return ConfigError(f"{self.detail} (given by {option})", file=self.file, field=self.field)


def closest_names(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Valid names ranked the way a person would guess: the query as a whole word of a name
    (`h100` -> `dgx-h100`, `H100-SXM`), then as a part of one, then by spelling similarity."""
    import difflib

    query = name.strip().lower()
    if not query:
        return []
    scored = []
    for cand in valid:
        low = cand.lower()
        ratio = difflib.SequenceMatcher(None, query, low).ratio()
        tokens = [t for t in re.split(r"[-_ ./]+", low) if t]
        if query == low:
            rank = 0
        elif query in tokens:
            rank = 1
        elif len(query) >= 2 and query in low:
            rank = 2
        elif low in query and len(low) >= 3:
            rank = 3
        elif ratio >= 0.6:
            rank = 4
        else:
            continue
        scored.append((rank, -ratio, cand))
    if any(rank < 4 for rank, _, _ in scored):  # a name that contains the query beats a near-spelling
        scored = [s for s in scored if s[0] < 4]
    return [c for _, _, c in sorted(scored)[:n]]


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> str:
    """Message for an unknown name that lists the valid ones (and the closest matches)."""
    valid = sorted(valid)
    close = closest_names(name, valid)
    hint = ""
    if close:
        hint = " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return f"unknown {kind} '{name}'.{hint} Valid names: {', '.join(valid)}."


class TraceError(MoesimError):
    """A routing trace is corrupt or does not match the model: names the file and where (layer, row)."""

    def __init__(self, message: str, *, file: str | Path | None = None, where: str | None = None):
        self.file = str(file) if file is not None else None
        self.where = where
        self.detail = message
        prefix = f"trace {self.file}" if self.file else "trace"
        if where:
            prefix += f" ({where})"
        super().__init__(f"{prefix}: {message}")
