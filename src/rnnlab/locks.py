"""Advisory folder locks: one process at a time trains a run folder, or compares into a folder.

An ``flock`` on the folder itself: no lock file is left behind, and the kernel releases the lock
when the process ends, however it ends (a killed process leaves no stale lock). Where ``fcntl``
is missing (Windows) there is no lock, and one process per folder is up to the user.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rnnlab.errors import ConfigError


@contextlib.contextmanager
def exclusive(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the block; ConfigError ``busy``
    at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(busy) from None
        yield
    finally:
        os.close(fd)
