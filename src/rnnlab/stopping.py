"""Ctrl-C during training: finish the step under way, then stop, so that a checkpoint never
holds half a step.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from rnnlab import distributed as dist


class StopBetweenSteps:
    """Ctrl-C during training lets the step under way finish, then the loop stops: the checkpoint
    written on the way out then holds whole steps, and a resumed run matches one never stopped.
    A second Ctrl-C stops at once, unless it comes within a second of the first: that is the same
    Ctrl-C delivered twice (by the terminal and by a launcher passing it on: compare, torchrun).
    Only for one process, in the main thread: under torchrun each process would see the signal at
    its own step (there the KeyboardInterrupt stops mid-step, and the last periodic checkpoint is
    kept)."""

    SAME_CTRL_C = 1.0  # seconds

    def __init__(self) -> None:
        self.requested = False
        self.requested_at = 0.0
        self.previous: Any = None
        if dist.world_size() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)  # None: set outside Python, leave it be
            if self.previous is not None:
                signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested, self.requested_at = True, time.monotonic()
        elif time.monotonic() - self.requested_at > self.SAME_CTRL_C:  # a second Ctrl-C: stop at once
            self.restore()
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
