"""Your own sequences: a NumPy ``.npz`` file with a training and a test split.

The file holds four arrays (``np.savez("data.npz", x_train=..., y_train=..., x_test=...,
y_test=...)``):

- ``x_train``, ``x_test``: ``(N, T, F)`` sequences (``(N, T)`` means one feature per step),
  float (used as they are) or uint8 (scaled to [0, 1] like image pixels);
- ``y_train``, ``y_test``: ``(N,)`` integer class labels ``0 .. C-1``.

An optional ``num_classes`` (a scalar) sets C when some classes never occur; otherwise C is
the largest label plus one. The file is read with ``allow_pickle=False``, so an archive from
someone else cannot run code, and every array is checked before training starts.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from rnnlab.data.sequences import SequenceData
from rnnlab.errors import DataError

__all__ = ["REQUIRED_ARRAYS", "load_sequence_file", "sequence_file_shape"]

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_HOW = ("write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...): x as (N, T, F) "
        "or (N, T) numbers, y as (N,) integer labels from 0")


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {_HOW}")


def _open(path: str | os.PathLike[str]) -> tuple[Path, dict[str, np.ndarray]]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such sequence file; check data.file (a .npz written with np.savez)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _fail(path, "this is a single .npy array, not a .npz archive of four arrays")
        with archive:
            missing = [name for name in REQUIRED_ARRAYS if name not in archive.files]
            if missing:
                raise _fail(path, f"missing {', '.join(missing)} (found: {', '.join(archive.files) or 'nothing'})")
            arrays = {name: archive[name] for name in archive.files if name in (*REQUIRED_ARRAYS, "num_classes")}
    except DataError:
        raise
    except ValueError as exc:  # pickled data or object arrays: refused, they could run code
        raise _fail(path, f"cannot read it safely ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(path, f"not a readable .npz archive ({exc})") from None
    return path, arrays


def _sequences(path: Path, name: str, x: np.ndarray) -> torch.Tensor:
    if x.ndim == 2:
        x = x[:, :, None]  # (N, T) -> (N, T, 1): one feature per step
    if x.ndim != 3:
        raise _fail(path, f"{name} has shape {x.shape}; it must be (N, T, F) or (N, T)")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise _fail(path, f"{name} has shape {x.shape}; it needs at least one sequence, step and feature")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(path, f"{name} has dtype {x.dtype}; it must hold numbers (float, or uint8 pixels)")
    values = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    bad = ~torch.isfinite(values)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise _fail(path, f"{name} holds {int(bad.sum())} NaN or infinite values (first in sequence {first}); "
                          "fill or drop them")
    return values


def _labels(path: Path, name: str, y: np.ndarray, count: int) -> torch.Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise _fail(path, f"{name} has shape {y.shape} and dtype {y.dtype}; it must be (N,) integers")
    if len(y) != count:
        raise _fail(path, f"{name} has {len(y)} labels for {count} sequences")
    if len(y) and y.min() < 0:
        raise _fail(path, f"{name} holds a negative label ({int(y.min())}); labels are 0 .. C-1")
    return torch.from_numpy(y.astype(np.int64))


def load_sequence_file(path: str | os.PathLike[str]) -> tuple[SequenceData, SequenceData, int]:
    """``(train, test, num_classes)`` from a ``.npz`` sequence file, checked array by array."""
    path, arrays = _open(path)
    x_train, x_test = (_sequences(path, name, arrays[name]) for name in ("x_train", "x_test"))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _fail(path, f"x_train has (T, F) = {tuple(x_train.shape[1:])} but x_test has "
                          f"{tuple(x_test.shape[1:])}; both splits need the same steps and features")
    if x_train.dtype != x_test.dtype:
        raise _fail(path, f"x_train is {x_train.dtype} but x_test is {x_test.dtype}; use one dtype for both")
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train))
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test))
    seen = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    classes = seen
    if "num_classes" in arrays:
        given = arrays["num_classes"]
        if given.shape != () or not np.issubdtype(given.dtype, np.integer) or int(given) < seen:
            raise _fail(path, f"num_classes must be one integer >= {seen} (the largest label + 1), got {given!r}")
        classes = int(given)
    if classes < 2:
        raise _fail(path, "every label is 0; a classifier needs at least two classes")
    return SequenceData(x_train, y_train), SequenceData(x_test, y_test), classes


def sequence_file_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(steps, features, num_classes)`` of a sequence file (reads and checks it)."""
    train, _, classes = load_sequence_file(path)
    steps, features = train.seq_shape
    return steps, features, classes
