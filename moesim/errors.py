"""User-facing errors: one paragraph naming the file and field, printed without a traceback."""

from __future__ import annotations

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


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> str:
    """Message for an unknown name that lists the valid ones (and the closest match)."""
    import difflib

    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
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
