"""torch's own CPU library, opened with ctypes for the symbols rnnlab calls in it: the OpenMP
runtime torch links (``denormals``, the C step's threads) and its BLAS (the C step's GEMMs).

Looked up through torch's library rather than by name or by scanning what the process has
loaded: that finds them among its own dependencies, where another copy (scikit-learn's libgomp,
the system's BLAS) would have threads or settings of its own.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def torch_cpu() -> ctypes.CDLL | None:
    """torch's CPU library (already loaded by ``import torch``: the same one), or None."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (lib_dir / name).is_file():
            try:
                return ctypes.CDLL(str(lib_dir / name))
            except OSError:
                return None
    return None


def symbol(name: str) -> Any:
    """A new ctypes function object for ``name`` in torch's CPU library or its dependencies (the
    caller may set its argtypes), or None where there is none."""
    lib = torch_cpu()
    if lib is None:
        return None
    try:
        return lib[name]  # indexing, unlike attribute access, never hands out a cached, shared object
    except AttributeError:
        return None
