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

import atexit
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
_raised = False  # the first signal has been raised as Interrupted
_redelivering = 0  # signals this module sends itself (not the user's: they do not count)


def _where_exceptions_are_ignored(frame) -> bool:
    """A frame whose exception Python would print and drop ("Exception ignored in ..."): a weakref
    callback (of the import system, or of weakref.py's containers, which the garbage collector runs
    anywhere), or a finaliser."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_filename.startswith("<frozen importlib") and code.co_name == "cb"):
            return True
        if code.co_filename.endswith(("weakref.py", "_weakrefset.py")) and code.co_name in ("remove", "_remove"):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    """Run the handler again in the main thread shortly, where raising is not lost."""
    import _thread

    global _redelivering
    _redelivering += 1
    _thread.interrupt_main(signum)


def _handler(signum: int, frame) -> None:
    global _raised, _redelivering
    if _redelivering:
        _redelivering -= 1
    else:
        _seen.append(signum)
    if len(_seen) >= FORCE_AFTER:
        os._exit(128 + _seen[0])
    if _raised or _defer_depth:
        return
    if _where_exceptions_are_ignored(frame):
        threading.Timer(0.01, _redeliver, args=(_seen[0],)).start()
        return
    _raised = True
    raise Interrupted(_seen[0])


def _after_the_command(signum: int, frame) -> None:  # noqa: ARG001
    """A signal once the command has returned (the interpreter is shutting down): every output is
    complete; say what was kept and leave at once with the signal's status."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _seen.append(signum)
    try:
        sys.stderr.write(message(Interrupted(_seen[0])) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(128 + _seen[0])


def _ignore_at_exit() -> None:
    """Last of the exit handlers: Python is about to put the default action back on signals that
    have a Python handler while it tears down, and a signal then would kill a command that has
    finished. An ignored signal is left ignored (and ignoring is process-wide, unlike blocking,
    which would leave the BLAS and solver threads open to it)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def handling_signals(keep_after: bool = False) -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM (main thread only) and forget earlier signals.
    With `keep_after` (the `moesim` process itself), a signal after the block still ends the
    process cleanly instead of with Python's default (a traceback during shutdown)."""
    global _raised
    _seen.clear()
    _kept.clear()
    _raised = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    if keep_after:
        atexit.register(_ignore_at_exit)  # registered first, so it runs last
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, _after_the_command if keep_after else h)
        if not keep_after:
            _seen.clear()  # handled: library calls after this command must not see it
            _raised = False


def pending() -> int | None:
    """The first signal received, or None."""
    return _seen[0] if _seen else None


def check() -> None:
    """Raise `Interrupted` if a signal was received (it may have been swallowed where it landed, or
    be waiting for its redelivery): from here on it is being handled, so a signal that comes after
    (that redelivery included) is remembered, not raised into the cleanup."""
    global _raised
    if _seen:
        _raised = True
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
