"""Ctrl-C and SIGTERM in the process that runs a compare's worker pool (:mod:`rnnlab.pool`).

While the pool runs, a signal must not raise KeyboardInterrupt in the main thread: it would land
anywhere, and in concurrent.futures and threading that is inside their lock handling. Seen there:
a lock left released ("RuntimeError: release unlocked lock", with a traceback), and on Python
3.11 a ``Thread.join()`` of the pool's manager thread, interrupted by the second delivery of a
Ctrl-C (``timeout`` and shells signal the process and its group), marks that thread finished
while it runs on: the process then reaches its exit functions, which close the queue that was
to tell the workers to end, and waits for those workers forever. So :class:`StopRequests` only
notes signals, and the pool's scheduler acts on them between two short waits.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from rnnlab.stopping import SAME_SIGNAL, Terminated, note_heeded, raise_terminated

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class StopRequests:
    """While inside (``with``), Ctrl-C and SIGTERM are noted instead of raising; :meth:`take`
    hands them to the scheduler. Taken over only from the main thread, and only where they would
    raise (SIGINT's default handler; SIGTERM under the command line, :func:`sigterm_raises`): an
    embedding program's own handlers, SIG_IGN, and SIGTERM's default action (the process ends on
    the spot, its workers within half a second) are left as they are.

    The first signal stops the compare: the busy workers get it (:attr:`first`), and their runs
    stop between two steps and save. The same signal again within :data:`SAME_SIGNAL` seconds is
    that one delivered twice; SIGTERM then, after a Ctrl-C, is passed on too (the runs then skip
    their test evaluation, as the process is to end soon). Any signal later than that is a second
    one: :attr:`at_once`, the workers are ended without waiting for them to save."""

    def __init__(self) -> None:
        self._noted: list[tuple[int, float]] = []  # (signal, time.monotonic()); appended by the handler
        self._taken = 0
        self.first: int | None = None
        self._first_at = 0.0
        self._passed: set[int] = set()
        self.terminated = False  # a SIGTERM came: the process is to end as that signal asks
        self.at_once = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum, raising in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, raise_terminated)):
                if signal.getsignal(signum) is raising:
                    self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: Any) -> None:
        # Only this: the handler runs between any two bytecodes of the main thread, locks held or not.
        self._noted.append((signum, time.monotonic()))

    @property
    def requested(self) -> bool:
        """Whether a signal came (taken or not yet)."""
        return bool(self._noted)

    def take(self) -> list[int]:
        """The signals to pass on to the busy workers among those that came since the last call;
        sets :attr:`at_once` for a second signal."""
        new = self._noted[self._taken:]  # sliced once: the handler may append meanwhile
        self._taken += len(new)
        pass_on = []
        for signum, at in new:
            if signum == signal.SIGTERM:
                self.terminated = True
                note_heeded(signum, at)  # its second delivery, after the pool, is not a second SIGTERM
            if self.first is None:
                self.first, self._first_at = signum, at
            elif at - self._first_at > SAME_SIGNAL:
                self.at_once = True
            if not self.at_once and signum not in self._passed:  # the first; or SIGTERM just after a Ctrl-C
                self._passed.add(signum)
                pass_on.append(signum)
        return pass_on

    def exception(self) -> KeyboardInterrupt:
        """What the compare raises once its pool has ended: Terminated after a SIGTERM (the command
        line exits 143), else KeyboardInterrupt (130)."""
        return Terminated() if self.terminated else KeyboardInterrupt()


@contextlib.contextmanager
def blocked_while_workers_start() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while it starts worker processes: a new process
    inherits the mask through fork and exec, and so starts with them blocked until its initializer
    has set its handlers and unblocks them (:func:`unblock_in_worker`). Else a Ctrl-C to the process
    group while a worker imports ends it with a traceback, and breaks the pool. This process loses
    nothing: a signal to it goes to a thread that does not block it, or waits for the unblocking."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no such signals to a process group
        yield
        return
    from multiprocessing import resource_tracker

    # Started first: starting it unblocks both signals in this thread, as it sets them aside for itself.
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def unblock_in_worker() -> None:
    """In a worker's initializer, once its handlers are set: let Ctrl-C and SIGTERM in (one that came
    while it started is delivered now, to those handlers)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
