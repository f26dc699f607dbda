"""Advisory folder locks: one process at a time trains a run folder, or compares into a folder.

An ``flock`` on ``.rnnlab.lock`` in the folder, opened for writing: on a local disk the kernel
releases it when the process ends, however it ends (a killed process leaves no stale lock, only
the empty file), and on NFS Linux turns it into a POSIX lock that every machine sees (a flock on
the folder itself would be seen by one machine only). Where a file system has no locks (Lustre
mounted without ``flock``), the folder cannot be written, or ``fcntl`` is missing (Windows), there
is no lock, and one process per folder is up to the user. The thread that holds a folder's lock
may take it again (a compare worker holds its run folder while ``rnnlab.train`` takes it too); a
forked child may not.

A lock is on a file, not on a path: if the folder is deleted (or moved away) and made again while
a process holds it, another process can lock the new folder's new lock file, and both would write
there. The holder therefore asks :func:`check_held` before each write that matters (a checkpoint,
metrics, a summary, a compare's results), which compares the lock file in the folder now with
the one it locked, and stops with :class:`LockLost` rather than write into a folder that may be
another process's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from rnnlab.errors import ConfigError, RnnlabError

LOCK_FILE = ".rnnlab.lock"
# (thread, folder) of the locks this process holds: the (device, inode) of the lock file it locked,
# or None where there is no lock to be had
_held: dict[tuple[int, str], tuple[int, int] | None] = {}
if hasattr(os, "register_at_fork"):
    # A forked child inherits the record, and its main thread has the forking thread's id: it would
    # take a folder its parent holds as its own. Cleared, it asks for the lock and is refused.
    os.register_at_fork(after_in_child=_held.clear)


class Busy(ConfigError):
    """Another process holds the folder."""


class LockLost(RnnlabError):
    """The folder this process locked was deleted, moved or replaced while it held it."""


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
        _held[key] = None if fd is None else _identity(os.fstat(fd))
        yield
    finally:
        _held.pop(key, None)
        if fd is not None:
            os.close(fd)


def still_held(folder: Path) -> bool:
    """Whether ``folder``'s lock file is still the one this thread locked; True where this thread
    holds no lock on it (none taken, or none to be had), since there is nothing to compare."""
    locked = _held.get((threading.get_ident(), os.path.realpath(folder)))
    if locked is None:
        return True
    try:
        return _identity(os.stat(Path(folder) / LOCK_FILE)) == locked
    except OSError:  # no lock file there, or no folder: deleted or moved away
        return False


def check_held(folder: Path) -> None:
    """:class:`LockLost` if ``folder`` was deleted, moved or replaced since this thread locked it:
    its files now may be another process's, which locked the new lock file. A check between two
    writes, not during one; it costs a ``stat``."""
    if not still_held(folder):
        raise LockLost(f"{folder} was deleted, moved or replaced while this process was writing into it "
                       f"(its {LOCK_FILE} is not the one this process locked): stopped without writing more "
                       "there, since another process may be using the folder now")


def _identity(status: os.stat_result) -> tuple[int, int]:
    # The file this process keeps open cannot give its inode number to another while it is open.
    return status.st_dev, status.st_ino


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
