"""Where and how moesim writes its outputs, so that nothing a user owns is ever lost.

- Every output folder is built in a hidden sibling and renamed into place when complete
  (`atomic_dir`), with a marker file (`.moesim-output`) saying moesim wrote it; a single output
  file is written beside its target and renamed (`atomic_file`). An interrupt or an error
  leaves nothing, and a signal never lands between the two renames of a replacement.
- An existing folder is replaced only with --force, and only if it is empty or moesim wrote it
  (the marker, or the summary.json of a run directory from before the marker); anything else is
  refused and nothing is deleted. An existing file is replaced only with --force.
- No command writes over its own inputs: every file the process opens for reading is noted
  (a Python audit hook on `open`, plus `note_input` for readers that bypass it, like Arrow), and
  an output that is, or would replace a folder holding, one of them is refused.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from moesim import interrupts
from moesim.errors import ConfigError

MARKER = ".moesim-output"
_inputs: set[str] = set()
_hooked = False
_active = False  # inside a command (tracking_inputs)
_quiet = 0  # > 0 while moesim reads its own outputs (the marker check): those are not inputs


def _absolute(path: str | os.PathLike) -> str | None:
    try:
        return os.path.realpath(os.fspath(path))
    except (OSError, RuntimeError, ValueError, TypeError):  # a symlink loop, an odd name
        return None


def note_input(path: str | os.PathLike) -> None:
    """Remember a file this command reads (readers that do not go through Python's `open`)."""
    p = _absolute(path)
    if p is not None:
        _inputs.add(p)


def _audit(event: str, args: tuple) -> None:
    """Audit hook: note every file opened for reading (and only reading)."""
    if event != "open" or not _active or _quiet:
        return
    path, mode, flags = args
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    if mode is not None:
        if any(c in mode for c in "wax+"):
            return
    elif flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        return
    p = os.fsdecode(path)
    _inputs.add(os.path.abspath(p))


@contextmanager
def tracking_inputs() -> Iterator[None]:
    """Note the files opened for reading while one command runs (the CLI wraps each command)."""
    global _hooked, _active
    if not _hooked:
        sys.addaudithook(_audit)  # an audit hook cannot be removed: it stays, idle outside commands
        _hooked = True
    _inputs.clear()
    _active = True
    try:
        yield
    finally:
        _active = False
        _inputs.clear()


@contextmanager
def reading_own_output() -> Iterator[None]:
    """Files read inside this block are moesim's own outputs (checked before replacing), not inputs."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1


def _default_mode(mode: int) -> int:
    """`mode` less the process's umask (mkstemp/mkdtemp create private files and folders)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def inputs() -> set[str]:
    """Real paths of every file noted as read so far."""
    return {p for p in (_absolute(q) for q in _inputs) if p is not None}


def _input_at(path: Path, inside: bool) -> str | None:
    """An input that is `path` (or lies under it, with `inside`), or None."""
    target = _absolute(path)
    if target is None:
        return None
    for p in inputs():
        if p == target or (inside and p.startswith(target.rstrip(os.sep) + os.sep)):
            return p
    return None


def _is_run_dir(path: Path) -> bool:
    """A run directory written by moesim before the marker: its summary.json says so."""
    try:
        with reading_own_output():
            summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "moesim_version" in summary and "metrics" in summary


def is_moesim_output(path: Path) -> bool:
    """An empty folder, one holding moesim's marker, or from before the marker a run directory or
    the `report` folder inside one."""
    path = Path(path)
    if not any(path.iterdir()) or (path / MARKER).is_file():
        return True
    if path.name == "report" and (path / "report.html").is_file() and _is_run_dir(path.parent):
        return True
    return _is_run_dir(path)


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one: a file, a path under a file, or unwritable."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder; give a folder for the results", field=option)
        parent = path
        while not parent.exists():
            if parent == parent.parent:
                break
            parent = parent.parent
    except (OSError, RuntimeError) as err:  # a symlink loop on the way
        raise ConfigError(f"cannot use {path} as an output folder ({err})", field=option) from None
    if not parent.is_dir():
        raise ConfigError(f"{path} lies under {parent}, which is a file", field=option)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write under {parent} (permission denied)", field=option)


def holds_files(path: Path) -> bool:
    """A folder that exists and is not empty."""
    return path.is_dir() and any(path.iterdir())


def check_replaceable(path: Path, option: str = "--out", force: bool = False) -> None:
    """An output folder moesim may write: new or empty, or (with --force) one moesim wrote that
    holds none of this command's inputs. Refused otherwise, before any work is done."""
    path = Path(path)
    check_out_dir(path, option)
    if holds_files(path):
        if not force:
            raise ConfigError(f"{path} already holds files (an earlier run?); pass --force to replace it, or "
                              f"{option} another folder", field=option)
        if not is_moesim_output(path):
            raise ConfigError(f"{path} holds files moesim did not write (it has no {MARKER} marker), so --force "
                              "will not replace it and nothing was deleted; give an empty or new folder, or one "
                              "moesim wrote", field=option)
    hit = _input_at(path, inside=True)
    if hit is not None:
        raise ConfigError(f"{path} would replace {hit}, which this command reads; give an output folder that "
                          "holds none of its inputs", field=option)


def _marker(command: str) -> str:
    from moesim import __version__

    return json.dumps({"written_by": "moesim", "moesim_version": __version__, "command": command,
                       "written": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n"


def _commit_dir(partial: Path, target: Path) -> None:
    """Rename `partial` to `target`, moving an earlier `target` aside first and deleting it after."""
    if target.exists() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists():
            target.rmdir()
        os.replace(partial, target)


@contextmanager
def atomic_dir(target: str | Path, *, command: str, force: bool = False, option: str = "--out",
               keep: str | Callable[[], str | None] | None = None) -> Iterator[Path]:
    """Yield a hidden folder beside `target` to write into; when the block ends normally, mark
    it as moesim's and rename it to `target` (replacing an earlier moesim output with `force`).
    On an error or an interrupt the hidden folder is removed and `target` is untouched. `keep`
    names the output in the interrupt message if a signal arrives once it is committed (a
    callable: asked at that moment, None to say nothing)."""
    target = Path(target)
    check_replaceable(target, option, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(partial, _default_mode(0o777))
        yield partial
        (partial / MARKER).write_text(_marker(command))
        with interrupts.deferred():
            check_replaceable(target, option, force)  # an input read during the work may lie there
            _commit_dir(partial, target)
            what = keep() if callable(keep) else keep
            if what:
                interrupts.keep(f"{what} {target}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def check_file_target(path: Path, option: str, force: bool = False) -> None:
    """An output file moesim may write: not a folder, its folder writable, not one of this
    command's inputs, and (unless --force) not there yet."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
        exists = path.exists() or path.is_symlink()
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"cannot use {path} as an output file ({err})", field=option) from None
    if is_dir:
        raise ConfigError(f"{path} is a folder; give a file name", field=option)
    check_out_dir(path.parent, option)
    hit = _input_at(path, inside=False)
    if hit is not None:
        raise ConfigError(f"{path} is an input of this command; write the output to another file", field=option)
    if exists and not force:
        raise ConfigError(f"{path} already exists; pass --force to replace it, or give another file name",
                          field=option)


@contextmanager
def atomic_file(target: str | Path, *, option: str = "--out", force: bool = False,
                keep: str | None = None) -> Iterator[Path]:
    """Yield a hidden path beside `target` (same suffix, so writers pick the format) and rename
    it to `target` when the block ends normally; on an error or interrupt it is removed."""
    target = Path(target)
    check_file_target(target, option, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.partial-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with interrupts.deferred():
            check_file_target(target, option, force=True)
            os.chmod(tmp, _default_mode(0o666))
            os.replace(tmp, target)
            if keep:
                interrupts.keep(f"{keep} {target}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def free_name(path: Path) -> Path:
    """`path` if nothing is there, else the first free `path-2`, `path-3`, ..."""
    if not path.exists():
        return path
    i = 2
    while path.with_name(f"{path.name}-{i}").exists():
        i += 1
    return path.with_name(f"{path.name}-{i}")
