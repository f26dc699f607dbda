"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM during training finish the step under way,
then stop, so that a checkpoint never holds half a step.

SIGTERM is what a batch scheduler (Slurm's time limit, ``scancel``), ``kill``, ``timeout`` and
``docker stop`` send before they kill a process for good, usually some seconds later. A run
stopped by it keeps a checkpoint of its last whole step and then ends the process as the signal
asked. A Ctrl-C ends training the same way; ``Trainer.fit`` then returns, and ``rnnlab.train``
raises :class:`Interrupted`, so that a script, or a loop of runs, stops as a Ctrl-C stops Python.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any



class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run after its step under way, saved (and, for a first Ctrl-C, after the test
    evaluation). A KeyboardInterrupt, so that a script stops as Ctrl-C stops Python; ``run`` is the
    :class:`~rnnlab.Run` as it stopped, ``run_dir`` its folder: ``run.status`` is "interrupted" (which
    ``rnnlab.resume`` continues), or "completed" where the Ctrl-C came as the run ended."""

    def __init__(self, run: Any) -> None:
        what = (f"continue with rnnlab.resume({str(run.dir)!r})" if run.status == "interrupted" else
                f"the run had ended ({run.status}), saved, in {run.dir}")
        super().__init__(f"interrupted; {what}")
        self.run, self.run_dir = run, run.dir

    def __reduce__(self) -> tuple[type, tuple[Any]]:  # pickled with its run: a process pool sends it back
        return Interrupted, (self.run,)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that everything that cleans up after a Ctrl-C
    (partial downloads, a compare's workers, the server) cleans up after it too; ``run_dir`` is
    the run folder whose checkpoint was kept, when the signal stopped a training run."""

    def __init__(self, run_dir: Path | None = None) -> None:
        super().__init__("terminated (SIGTERM)")
        self.run_dir = run_dir


SAME_SIGNAL = 1.0  # seconds: a signal again within this is the same one delivered twice

_heeded: dict[int, float] = {}  # signal number -> when (time.monotonic()) a run, or raise_terminated, heeded it


def _again(signum: int) -> bool:
    """Whether ``signum`` is a second delivery of one heeded within :data:`SAME_SIGNAL` seconds."""
    return time.monotonic() - _heeded.get(signum, -float("inf")) <= SAME_SIGNAL


def note_heeded(signum: int, when: float) -> None:
    """Say that ``signum`` was heeded at ``when`` (time.monotonic()) by a handler of one's own (a
    compare's pool): :func:`raise_terminated` then ignores its second delivery, as its own."""
    _heeded[signum] = when


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler that ends the process the Python way, with ``finally`` blocks run. The
    same SIGTERM delivered twice (a scheduler signals every process of a job, and a launcher or a
    wrapper passes it on as well) is heeded once, also after the training loop, while the run
    saves its checkpoint and summary; one more than a second later stops at once."""
    if _again(signal.SIGTERM):
        return
    _heeded[signal.SIGTERM] = time.monotonic()
    raise Terminated


def heed_once(signum: int, frame: Any) -> None:
    """A handler for SIGINT or SIGTERM in a process that must finish saving whatever signals come
    next: a compare's worker, to which the terminal, the compare and a scheduler may each pass the
    same Ctrl-C or SIGTERM, and whose pool sends SIGTERM to every worker when one ends. It raises
    (:class:`Terminated` for SIGTERM, KeyboardInterrupt for SIGINT) once, and leaves the signal
    ignored. A training run takes it over (:class:`StopBetweenSteps`): the first signal stops the
    run between two steps, and later ones are ignored, while it saves too. SIGTERM's handler left
    at SIG_IGN says that one came: the process is then to end once its run is saved."""
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` instead of killing the process on the spot
    (the command line runs every command so). Only from the main thread, and only over the default
    action: a handler the embedding program set, or SIG_IGN, is kept."""
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if ours:
        _heeded.pop(signal.SIGTERM, None)  # a new command: no SIGTERM heeded yet
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def held_while_saving() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a checkpoint is written and noted, then take effect as if they
    came just after. Under torchrun no :class:`StopBetweenSteps` holds them, and one landing between
    the checkpoint's last write and the note of it left the summary naming the save before (1 CI run
    in ~20). Only from the main thread, and only over a handler Python can take back."""
    came: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler is not None and handler != signal.SIG_IGN:
                previous[signum] = handler
                signal.signal(signum, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(came):  # each once: the terminal's and a launcher's are one Ctrl-C
            signal.raise_signal(signum)


def pass_on_sigterm(run_dir: Path) -> None:
    """After a run that SIGTERM stopped has saved its checkpoint: end the process, as the signal
    asked. With the default action that is the signal itself, so the parent sees the process
    killed by SIGTERM; under the command line it is :class:`Terminated`, naming the run folder.
    Ignored (:func:`heed_once`): nothing here, the caller ends the process."""
    handler = signal.getsignal(signal.SIGTERM)
    if handler is raise_terminated:
        raise Terminated(run_dir)
    if handler != signal.SIG_IGN:
        signal.raise_signal(signal.SIGTERM)


class StopBetweenSteps:
    """Ctrl-C or SIGTERM during training lets the step under way finish, then the loop stops: the
    checkpoint written on the way out then holds whole steps, and a resumed run matches one never
    stopped. ``received`` is the first signal (None while there was none). A second signal stops
    at once, unless it comes within a second of the first: that is the same signal delivered twice
    (by the terminal and by a launcher passing it on: compare, torchrun; or by a scheduler that
    signals every process of a job). Only for one process, in the main thread: under torchrun each
    process would see the signal at its own step (there the KeyboardInterrupt stops mid-step, and
    the last periodic checkpoint is kept). SIGTERM is taken over only from its default action, from
    :func:`sigterm_raises` or from :func:`heed_once` (a signal whose handler that is, is heeded once
    and later ignored); a program's own SIGTERM handler is left in place."""

    def __init__(self) -> None:
        from rnnlab import distributed as dist  # late: the command line imports this module before torch

        self.once: set[int] = set()  # signals whose handler was heed_once: heeded once, then ignored
        self.received: int | None = None
        self.received_at = 0.0
        self.previous: dict[int, Any] = {}
        # Set once the run's final checkpoint is saved: a first SIGTERM then cuts the test evaluation
        # (tens of seconds on pixel MNIST) as it skips it during training, for the kill comes soon.
        self.cut_on_sigterm = False
        if dist.world_size() > 1 or threading.current_thread() is not threading.main_thread():
            return
        sigterm = (signal.SIG_DFL, raise_terminated, heed_once)
        for signum, ours in ((signal.SIGINT, None), (signal.SIGTERM, sigterm)):
            handler = signal.getsignal(signum)  # None: set outside Python, leave it be
            if handler is not None and handler != signal.SIG_IGN and (ours is None or handler in ours):
                self.previous[signum] = handler
                signal.signal(signum, self._request)
        self.once = {signum for signum, handler in self.previous.items() if handler is heed_once}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def terminated(self) -> bool:
        """Whether SIGTERM stopped the run (the process is then to end once its checkpoint is saved)."""
        return self.received == signal.SIGTERM

    def _request(self, signum: int, frame: Any) -> None:
        first_sigterm = signum == signal.SIGTERM and self.received != signum
        self._note(signum)
        if first_sigterm and self.cut_on_sigterm:  # the run is saved: SIGTERM skips the test evaluation
            raise Terminated

    def _note(self, signum: int) -> None:
        if signum in self.once:  # heeded once, then ignored, after training too
            self.previous[signum] = signal.SIG_IGN
            if self.received is None or (signum == signal.SIGTERM and self.received != signum):
                self.received, self.received_at = signum, time.monotonic()  # after a Ctrl-C, SIGTERM still skips the test
            return
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
            _heeded[signum] = self.received_at  # a second delivery after the loop is ignored too
        elif time.monotonic() - self.received_at > SAME_SIGNAL:  # a second signal: stop at once
            self.restore()
            raise Terminated if signal.SIGTERM in (signum, self.received) else KeyboardInterrupt
        elif signum == signal.SIGTERM and self.received != signum:  # SIGTERM just after a Ctrl-C:
            self.received = signum  # the process is still to end soon, without the test evaluation
            _heeded[signum] = time.monotonic()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
