"""The config check of a named slot: a name must be a key of its table in compose.py.

The tables are the one list of choices (compose.py turns each name into its object); the check
reads them lazily, since compose imports the config modules that use it.
"""

from __future__ import annotations

from pydantic import AfterValidator


def one_of(table: str, what: str) -> AfterValidator:
    """A validator: the name is a key of `compose.<table>`."""

    def check(name: str) -> str:
        from moesim.simulator import compose

        names = getattr(compose, table)
        if name not in names:
            raise ValueError(f"unknown {what} '{name}'; choose one of {', '.join(names)}")
        return name

    check.table = table  # type: ignore[attr-defined]  (the contract tests find each slot's table)
    return AfterValidator(check)
