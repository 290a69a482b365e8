"""One writer per run directory: an OS file lock (``flock`` on ``DIR/.lock``) held for the
whole command.

A second process that wants to write into a run directory another one holds gets one line
naming the holder (exit code 2) instead of interleaving its files with the other's. The lock
is re-entrant within a process (``evaluate`` samples and trains siblings under its own lock),
and the OS releases it when its process dies, so a killed run never leaves a stale lock. On
taking it, temporary files an interrupted writer left behind (``.*.tmp``) are removed: no one
else can be writing them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"
_held: dict[str, tuple[object, int]] = {}  # resolved path -> (open file, depth)


def _command() -> str:
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:200]


def remove_stale_temporaries(root: Path) -> int:
    """Delete ``.*.tmp`` files and folders below ``root`` (atomic writes cut off by an interruption),
    leaving alone folders with a lock of their own (runs inside a sweep clean up after themselves)."""
    n = 0
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(here, d) / LOCK_NAME).exists() or d.endswith(".tmp")]
        for name in files + [d for d in dirs if d.endswith(".tmp")]:
            if name.startswith(".") and name.endswith(".tmp"):
                p = Path(here, name)
                try:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    n += 1
                except FileNotFoundError:
                    pass
        dirs[:] = [d for d in dirs if not d.endswith(".tmp")]
    return n


@contextmanager
def locked(path: str | Path, what: str = ""):
    """Hold the lock of the folder ``path`` (created if missing) for the ``with`` block."""
    path = Path(path)
    key = str(path.resolve())
    if key in _held:
        fh, depth = _held[key]
        _held[key] = (fh, depth + 1)
        try:
            yield
        finally:
            fh, depth = _held[key]
            _held[key] = (fh, depth - 1)
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise UserError(f"{path} is in use by another collafuse-privacy process ({holder}); wait for it to finish "
                        "or choose another folder") from None  # fmt: skip
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}: {what or _command()}")
    fh.flush()
    _held[key] = (fh, 1)
    try:
        remove_stale_temporaries(path)
        yield
    finally:
        del _held[key]
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
        if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:  # refused before it wrote anything
            (path / LOCK_NAME).unlink()
            path.rmdir()


def locks_run(fn):
    """Run ``fn(run_dir, ...)`` holding ``run_dir``'s lock (when the folder exists: otherwise
    ``fn`` reports the missing run itself, and no folder is created)."""
    import functools

    @functools.wraps(fn)
    def wrapper(run_dir, *args, **kwargs):
        if not Path(run_dir).is_dir():
            return fn(run_dir, *args, **kwargs)
        with locked(run_dir):
            return fn(run_dir, *args, **kwargs)

    return wrapper
