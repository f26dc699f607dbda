"""Advisory folder locks: one process at a time trains a run folder, or compares into a folder.

An ``flock`` on ``.rnnlab.lock`` in the folder, opened for writing: on a local disk the kernel
releases it when the process ends, however it ends (a killed process leaves no stale lock, only
the empty file), and on NFS Linux turns it into a POSIX lock that every machine sees (a flock on
the folder itself would be seen by one machine only). Where a file system has no locks (Lustre
mounted without ``flock``), the folder cannot be written, or ``fcntl`` is missing (Windows), there
is no lock, and one process per folder is up to the user. The thread that holds a folder's lock
may take it again (a compare worker holds its run folder while ``rnnlab.train`` takes it too); a
forked child may not.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from rnnlab.errors import ConfigError

LOCK_FILE = ".rnnlab.lock"
_held: set[tuple[int, str]] = set()  # (thread, folder) of the locks this process holds
if hasattr(os, "register_at_fork"):
    # A forked child inherits the set, and its main thread has the forking thread's id: it would
    # take a folder its parent holds as its own. Cleared, it asks for the lock and is refused.
    os.register_at_fork(after_in_child=_held.clear)


class Busy(ConfigError):
    """Another process holds the folder."""


@contextlib.contextmanager
def exclusive(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block; :class:`Busy` with the
    message ``busy`` at once if another process (or thread) holds it."""
    key = (threading.get_ident(), os.path.realpath(folder))
    if key in _held:
        yield
        return
    fd = None
    try:
        fd = _acquire(Path(folder), busy)
        _held.add(key)
        yield
    finally:
        _held.discard(key)
        if fd is not None:
            os.close(fd)


def _acquire(folder: Path, busy: str) -> int | None:
    """A descriptor holding the lock, or None where locks are not to be had; Busy if busy."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a folder we may not write: nobody can train into it either
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        raise Busy(busy) from None
    except OSError:  # ENOLCK, ENOSYS: no locks on this file system
        os.close(fd)
        return None
