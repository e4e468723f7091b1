"""SIGINT and SIGTERM stop every command within a second, whatever it is doing.

One handler serves both signals. The first signal raises `Interrupted` (a KeyboardInterrupt, so
every `except BaseException` cleanup runs) and is remembered: code that may swallow an exception
(a SimPy process turns one into a failed event; a solver library may catch it) calls `check()`
at its safe points, so a swallowed signal still stops the command there. Inside `deferred()`
(the rename that commits an output, the engine's event loop) a signal is only remembered and
`check()` raises it at the end of the block, so nothing is left between two renames. A signal
that arrives while the first is being handled is remembered, not raised, so cleanup finishes;
a third forces the exit. The CLI exits 130 (SIGINT) or 143 (SIGTERM) and names what it kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCE_AFTER = 3  # the third signal ends the process at once (cleanup did not finish in time)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; `exit_code` is 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(int(signum))  # the only argument: SimPy re-creates a failure as type(err)(*err.args)
        self.signum = int(signum)

    def __str__(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_seen: list[int] = []
_defer_depth = 0
_kept: list[str] = []


def _handler(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
    _seen.append(signum)
    if len(_seen) >= FORCE_AFTER:
        os._exit(128 + _seen[0])
    if len(_seen) == 1 and _defer_depth == 0:
        raise Interrupted(signum)


@contextmanager
def handling_signals() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM (main thread only) and forget earlier signals."""
    _seen.clear()
    _kept.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _seen.clear()  # handled: library calls after this command must not see it


def pending() -> int | None:
    """The first signal received, or None."""
    return _seen[0] if _seen else None


def check() -> None:
    """Raise `Interrupted` if a signal was received (it may have been swallowed where it landed)."""
    if _seen:
        raise Interrupted(_seen[0])


@contextmanager
def deferred() -> Iterator[None]:
    """Run a block a signal must not cut in two: a signal there is raised when the block ends."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if _defer_depth == 0:
        check()


def keep(description: str) -> None:
    """Note an output that was completed before the interrupt (the CLI names it when it exits)."""
    _kept.append(description)


def kept() -> list[str]:
    """What `keep` noted since the handler was installed."""
    return list(_kept)


def ignore_in_child() -> None:
    """In a forked helper process: leave SIGINT to the parent (which stops the child itself), and
    end quietly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def message(err: Interrupted | KeyboardInterrupt) -> str:
    """What the CLI prints on an interrupt: the signal and exactly what was kept."""
    name = signal.Signals(getattr(err, "signum", signal.SIGINT)).name
    if not _kept:
        return f"interrupted ({name}): nothing was written (outputs appear only when complete)"
    return f"interrupted ({name}): kept " + "; ".join(_kept) + "; nothing else was written"


def exit_code(err: BaseException) -> int:
    """130 for SIGINT (or a plain KeyboardInterrupt), 143 for SIGTERM."""
    return getattr(err, "exit_code", 130)


if sys.platform == "win32":  # pragma: no cover - SIGTERM cannot be caught there
    SIGNALS = (signal.SIGINT,)
