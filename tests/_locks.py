"""A run folder's lock held as a run training there holds it, for tests of what other commands do then."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnlab.locks import exclusive


@contextmanager
def held_by_another(folder: Path) -> Iterator[None]:
    """While inside, ``folder``'s lock is held by another thread, which the lock refuses as it would
    another process training there."""
    holding, release = threading.Event(), threading.Event()

    def trainer() -> None:
        with exclusive(folder, "busy"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=trainer)
    thread.start()
    assert holding.wait(10), f"the lock on {folder} was not taken"
    try:
        yield
    finally:
        release.set()
        thread.join()
