"""Advisory folder locks: one process at a time trains a run folder, or compares into a folder.

An ``flock`` on the folder itself, so that no lock file is left behind, and the kernel releases
it when the process ends, however it ends (a killed process leaves no stale lock). On NFS,
``flock`` becomes a POSIX lock, which needs a file open for writing: there the lock is on
``.rnnlab.lock`` in the folder, which stays. Where a file system has no locks at all (Lustre
mounted without ``flock``), or ``fcntl`` is missing (Windows), there is no lock, and one process
per folder is up to the user. A process that holds a folder's lock may take it again (a compare
worker holds its run folder while ``rnnlab.train`` takes it too).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rnnlab.errors import ConfigError

LOCK_FILE = ".rnnlab.lock"


class Busy(ConfigError):
    """Another process holds the folder."""


_held: set[str] = set()  # the folders this process holds


@contextlib.contextmanager
def exclusive(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block; :class:`Busy` with the
    message ``busy`` at once if another process holds it."""
    key = os.path.realpath(folder)
    if key in _held:
        yield
        return
    fd = _acquire(Path(folder), busy)
    _held.add(key)
    try:
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
    for path, flags in ((folder, os.O_RDONLY), (folder / LOCK_FILE, os.O_WRONLY | os.O_CREAT)):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            raise Busy(busy) from None
        except OSError:  # EBADF on NFS for a folder (not open for writing); ENOLCK, ENOSYS: no locks here
            os.close(fd)
    return None
