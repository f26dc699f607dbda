"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM during training finish the step under way,
then stop, so that a checkpoint never holds half a step.

SIGTERM is what a batch scheduler (Slurm's time limit, ``scancel``), ``kill``, ``timeout`` and
``docker stop`` send before they kill a process for good, usually some seconds later. A run
stopped by it keeps a checkpoint of its last whole step and then ends the process as the signal
asked; a Ctrl-C only ends training, and the caller carries on.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any



class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that everything that cleans up after a Ctrl-C
    (partial downloads, a compare's workers, the server) cleans up after it too; ``run_dir`` is
    the run folder whose checkpoint was kept, when the signal stopped a training run."""

    def __init__(self, run_dir: Path | None = None) -> None:
        super().__init__("terminated (SIGTERM)")
        self.run_dir = run_dir


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler that ends the process the Python way, with ``finally`` blocks run."""
    raise Terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` instead of killing the process on the spot
    (the command line runs every command so). Only from the main thread, and only over the default
    action: a handler the embedding program set, or SIG_IGN, is kept."""
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if ours:
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pass_on_sigterm(run_dir: Path) -> None:
    """After a run that SIGTERM stopped has saved its checkpoint: end the process, as the signal
    asked. With the default action that is the signal itself, so the parent sees the process
    killed by SIGTERM; under the command line it is :class:`Terminated`, naming the run folder."""
    if signal.getsignal(signal.SIGTERM) is raise_terminated:
        raise Terminated(run_dir)
    signal.raise_signal(signal.SIGTERM)


class StopBetweenSteps:
    """Ctrl-C or SIGTERM during training lets the step under way finish, then the loop stops: the
    checkpoint written on the way out then holds whole steps, and a resumed run matches one never
    stopped. ``received`` is the first signal (None while there was none). A second signal stops
    at once, unless it comes within a second of the first: that is the same signal delivered twice
    (by the terminal and by a launcher passing it on: compare, torchrun; or by a scheduler that
    signals every process of a job). Only for one process, in the main thread: under torchrun each
    process would see the signal at its own step (there the KeyboardInterrupt stops mid-step, and
    the last periodic checkpoint is kept). SIGTERM is taken over only from its default action or
    from :func:`sigterm_raises`; a program's own SIGTERM handler is left in place."""

    SAME_CTRL_C = 1.0  # seconds

    def __init__(self) -> None:
        from rnnlab import distributed as dist  # late: the command line imports this module before torch

        self.received: int | None = None
        self.received_at = 0.0
        self.previous: dict[int, Any] = {}
        if dist.world_size() > 1 or threading.current_thread() is not threading.main_thread():
            return
        for signum, ours in ((signal.SIGINT, None), (signal.SIGTERM, (signal.SIG_DFL, raise_terminated))):
            handler = signal.getsignal(signum)  # None: set outside Python, leave it be
            if handler is not None and handler != signal.SIG_IGN and (ours is None or handler in ours):
                self.previous[signum] = handler
                signal.signal(signum, self._request)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def terminated(self) -> bool:
        """Whether SIGTERM stopped the run (the process is then to end once its checkpoint is saved)."""
        return self.received == signal.SIGTERM

    def _request(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
        elif time.monotonic() - self.received_at > self.SAME_CTRL_C:  # a second signal: stop at once
            self.restore()
            raise Terminated if signal.SIGTERM in (signum, self.received) else KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
