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
OpenMP runtime torch has loaded (its ``GOMP_parallel`` entry point, which libgomp,
Intel's and LLVM's runtimes all export).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from typing import Iterator

import torch

_DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38
_REGION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void (*fn)(void *data)


def denormals_flushed() -> bool:
    """Whether the calling thread flushes denormals to zero: a denormal times one reads as
    zero there (one element: the multiply runs in this thread)."""
    return torch.tensor([_DENORMAL]).mul_(1.0).item() == 0.0


def set_flush_denormals(on: bool) -> bool:
    """Flush denormals to zero (``on``) or compute with them (IEEE, torch's default), in the
    calling thread and in the threads of its OpenMP team. Returns False where the CPU has no
    such mode (torch sets it on x86 only; elsewhere nothing changes)."""
    if not torch.set_flush_denormal(on):
        return False
    runtime = _openmp_runtime()
    if runtime is not None:
        @_REGION
        def in_each_thread(_data: int | None) -> None:
            torch.set_flush_denormal(on)

        # As many threads as torch's own parallel regions ask for from this thread. CDLL releases
        # the GIL for the call; each thread takes it in turn to run the callback.
        runtime.GOMP_parallel(in_each_thread, None, torch.get_num_threads(), 0)
    return True


@contextlib.contextmanager
def denormal_mode_kept() -> Iterator[None]:
    """The calling thread's denormal mode as it was before the block, and its OpenMP team's
    with it: a run sets its own (``train.flush_denormals``), which must not outlast it."""
    before = denormals_flushed()
    try:
        yield
    finally:
        if denormals_flushed() != before:
            set_flush_denormals(before)


@functools.lru_cache(maxsize=1)
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (torch's), found in /proc/self/maps; None
    where there is none or no /proc (macOS, Windows): there only the calling thread is set."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            fields = [line.split(maxsplit=5) for line in maps]  # address perms offset dev inode [path]
    except OSError:
        return None
    paths = {parts[5].strip() for parts in fields if len(parts) == 6}
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(("libgomp", "libiomp", "libomp")):
            continue
        try:
            runtime = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
        except OSError:
            continue
        if hasattr(runtime, "GOMP_parallel"):
            runtime.GOMP_parallel.argtypes = [_REGION, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            runtime.GOMP_parallel.restype = None
            return runtime
    return None
