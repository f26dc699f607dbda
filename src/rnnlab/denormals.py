"""Denormal floats flushed to zero on the CPU, in every thread torch computes in.

Over long sequences the gradients that flow back through time shrink below float32's
normal range (~1.2e-38) and become denormal. x86 CPUs compute on denormals through a
slow microcode path: on an Intel Xeon here, one training step of an LSTM of 128 over
pixel MNIST's 784 steps took 3.6 s with them and 0.38 s with them flushed to zero. Values
that small carry nothing a classifier can use; GPUs flush them in most kernels anyway.

``torch.set_flush_denormal`` sets the flags (MXCSR's FTZ and DAZ bits) of the calling
thread only. Threads started later inherit them, but torch's OpenMP workers usually exist
by the time a run starts, and each keeps its own flags: with only the calling thread set,
that step still took 2.3 s. So :func:`set_flush_denormals` also sets them in each thread
of the calling thread's OpenMP team, by running one tiny parallel region through the
OpenMP runtime torch itself links (its ``GOMP_parallel`` entry point, which libgomp,
Intel's and LLVM's runtimes all export), looked up through torch's own library: another
runtime in the process (scikit-learn's, the system's) has other threads. Where torch has
none that exports it (Windows), only the calling thread is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Any, Iterator

import torch

from rnnlab import torch_library

_DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38
_REGION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void (*fn)(void *data)


def denormals_flushed() -> bool:
    """Whether the calling thread flushes denormals to zero: a denormal times one reads as
    zero there (one element: the multiply runs in this thread)."""
    return torch.tensor([_DENORMAL]).mul_(1.0).item() == 0.0


def set_flush_denormals(on: bool) -> bool:
    """Flush denormals to zero (``on``) or compute with them (IEEE, torch's default), in the
    calling thread and in the threads of its OpenMP team. Returns False where torch has no
    such mode for the CPU (it sets one on x86 and AArch64); nothing changes there."""
    if not torch.set_flush_denormal(on):
        return False
    runtime = _openmp_runtime()
    if runtime is not None:
        @_REGION
        def in_each_thread(_data: int | None) -> None:
            torch.set_flush_denormal(on)

        # As many threads as torch's own parallel regions ask for from this thread. CDLL releases
        # the GIL for the call; each thread takes it in turn to run the callback.
        runtime(in_each_thread, None, torch.get_num_threads(), 0)
    return True


@contextlib.contextmanager
def denormal_mode_kept() -> Iterator[None]:
    """The calling thread's denormal mode as it was before the block, given to its OpenMP team
    too: a run sets its own (``train.flush_denormals``), which must not outlast it. (A caller
    that set the calling thread alone, with ``torch.set_flush_denormal``, gets its mode back
    in every thread of the team.)"""
    before = denormals_flushed()
    try:
        yield
    finally:
        if denormals_flushed() != before:
            set_flush_denormals(before)


@functools.lru_cache(maxsize=1)
def _openmp_runtime() -> Any:
    """``GOMP_parallel`` of the OpenMP runtime torch links (``torch_library``), or None."""
    entry = torch_library.symbol("GOMP_parallel")
    if entry is not None:
        entry.argtypes = [_REGION, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        entry.restype = None
    return entry
