"""glibc's allocator, tuned for training loops: freed buffers kept for reuse during a run, and
after it the settings glibc settles on by itself. Elsewhere (macOS, Windows, musl) nothing is changed."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from typing import Iterator


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers
_tuned = False  # whether tune_allocator's settings are in force


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """glibc, for its allocator settings; None elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # musl: neither


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (glibc only).

    Every training step allocates and frees the same activation and gradient buffers. With
    glibc's defaults, buffers over its mmap threshold are unmapped on free and mapped again
    next step, so each step pays page faults on fresh memory: an LSTM 2x100 step took ~80 ms
    instead of ~52 ms on a 2-core CPU here. Raising the thresholds keeps those pages (the
    effect that PyTorch's CPU tuning guide gets from jemalloc or tcmalloc); pixel MNIST's
    buffers (hundreds of MB) need mmap off altogether; ``release_free_memory`` keeps the peak
    where it was. Set ``RNNLAB_MALLOC_TUNING=0`` to leave the allocator alone. Returns True if
    it was applied.
    """
    global _tuned
    libc = _glibc()
    if os.environ.get("RNNLAB_MALLOC_TUNING", "1") == "0" or libc is None:
        return False
    trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # keep up to 1 GiB of freed heap
    mmap = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the most mallopt accepts: 32 MiB
    # Larger buffers still got fresh pages every step: a GRU's 784-step workspaces (120 MB)
    # made pixel MNIST 1.3x slower. No mmap at all puts them on the heap too.
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0)
    _tuned = bool(trim and mmap and no_mmap)
    return _tuned


# Where glibc's own settings end up in a process that frees large buffers: any mallopt turns its
# sliding mmap threshold off for good, so the settings after a run are set to its ceiling (32 MiB
# on 64-bit, with the trim threshold at twice that). Its starting values (128 KiB) would map and
# fault in afresh every buffer over 128 KiB: a 16 MB allocate-and-free loop took 4.8 ms a round
# with them after a run, against 0.6 ms in a fresh process.
_GLIBC_SETTLED = ((_M_TRIM_THRESHOLD, 64 << 20), (_M_MMAP_THRESHOLD, 32 << 20), (_M_MMAP_MAX, 65536))


@contextlib.contextmanager
def allocator_tuned() -> Iterator[None]:
    """:func:`tune_allocator` for the length of a run, then glibc's settings as a process settles
    on them by itself, with the freed memory handed back: a notebook's later work would otherwise
    keep every page it frees. A caller that tuned the allocator itself keeps its tuning."""
    global _tuned
    tuned_before = _tuned
    applied = tune_allocator()
    try:
        yield
    finally:
        libc = _glibc()
        if applied and not tuned_before and libc is not None:
            for parameter, value in _GLIBC_SETTLED:
                libc.mallopt(parameter, value)
            libc.malloc_trim(0)
            _tuned = False


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``), where the allocator
    tuning keeps them. Called before, within and after evaluations: their batches are larger
    than training's, and without it they stack on top of the training buffers kept for reuse
    and of each other (pixel MNIST, GRU of 128, 20 iterations: a peak of 5.0 GB instead of
    2.5 GB untuned; with it, 2.5 GB). Training then faults its buffers back in once, about
    the cost of one untuned step; evaluation time does not change measurably (19.5 s for the
    10k pixel MNIST test images either way)."""
    libc = _glibc()
    if libc is not None:  # elsewhere nothing was tuned, so nothing is kept
        libc.malloc_trim(0)
