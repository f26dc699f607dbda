"""The training loop's progress bar: tqdm's, or one that shows nothing."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


class NoBar:
    """What the loop calls on a progress bar, doing nothing (progress off, or not rank 0)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, values: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def training_bar(total: int, initial: int, label: str, shown: bool) -> Any:
    """A bar counting iterations ``initial..total`` under ``label``; a :class:`NoBar` if not ``shown``:
    even a disabled tqdm starts tqdm's monitor thread, and leaves it running."""
    if not shown:
        return NoBar()
    return tqdm(total=total, initial=initial, unit="it", desc=label, dynamic_ncols=True, leave=True,
                mininterval=0.2 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s
