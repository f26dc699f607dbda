"""Your own sequences: a NumPy ``.npz`` file with a training and a test split.

The file holds four arrays (``np.savez("data.npz", x_train=..., y_train=..., x_test=...,
y_test=...)``):

- ``x_train``, ``x_test``: ``(N, T, F)`` sequences (``(N, T)`` means one feature per step),
  float (used as they are) or uint8 (scaled to [0, 1] like image pixels);
- ``y_train``, ``y_test``: ``(N,)`` integer class labels ``0 .. C-1``.

Sequences of varying length are padded to a common T (with anything: padding is never read)
and come with ``lengths_train`` and ``lengths_test``, ``(N,)`` integers from 1 to T. An optional
``num_classes`` (a scalar) sets C when some classes never occur; otherwise C is the largest
label plus one. An optional ``class_names`` (C strings) names the classes in ``eval`` and
``predict``. The file is read with ``allow_pickle=False``, so an archive from
someone else cannot run code, and every array is checked before training starts.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rnnlab.data.sequences import SequenceData
from rnnlab.errors import DataError

__all__ = ["OPTIONAL_ARRAYS", "REQUIRED_ARRAYS", "SequenceFile", "load_sequence_file", "sequence_file_shape"]

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("lengths_train", "lengths_test", "num_classes", "class_names")
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
            unknown = [name for name in archive.files if name not in (*REQUIRED_ARRAYS, *OPTIONAL_ARRAYS)]
            if unknown:  # a misspelt lengths_train must not silently train on the padding
                raise _fail(path, f"unknown arrays {', '.join(unknown)}; the optional ones are "
                                  f"{', '.join(OPTIONAL_ARRAYS)}")
            arrays = {name: archive[name] for name in archive.files}
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
        return torch.from_numpy(np.array(x))
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(path, f"{name} has dtype {x.dtype}; it must hold numbers (float, or uint8 pixels)")
    return torch.from_numpy(np.array(x, dtype=np.float32))  # a copy of our own: padding is zeroed later


def _zero_padding_and_check(path: Path, name: str, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """Zero the steps past each sequence's length (a NaN there would still reach the weight
    gradients through the states it makes), then refuse NaN or infinity in the steps that count."""
    if lengths is not None:
        x[torch.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0  # (N, T) mask over steps
    if x.dtype == torch.uint8:
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise _fail(path, f"{name} holds {int(bad.sum())} NaN or infinite values (first in sequence {first}); "
                          "fill or drop them")


def _lengths(path: Path, arrays: dict[str, np.ndarray], split: str, x: torch.Tensor) -> torch.Tensor | None:
    given = [name for name in ("lengths_train", "lengths_test") if name in arrays]
    if not given:
        return None
    if len(given) == 1:
        raise _fail(path, f"{given[0]} is there but not its partner; give lengths_train and lengths_test "
                          "(or neither, for sequences of one length)")
    name, lengths = f"lengths_{split}", arrays[f"lengths_{split}"]
    count, steps = x.shape[0], x.shape[1]
    if lengths.shape != (count,) or not np.issubdtype(lengths.dtype, np.integer):
        raise _fail(path, f"{name} has shape {lengths.shape} and dtype {lengths.dtype}; it must be ({count},) "
                          "integers, one length per sequence")
    if lengths.min() < 1 or lengths.max() > steps:
        raise _fail(path, f"{name} holds lengths from {int(lengths.min())} to {int(lengths.max())}; each must be "
                          f"between 1 and {steps}, the padded length of x_{split}")
    return torch.from_numpy(lengths.astype(np.int64))


def _labels(path: Path, name: str, y: np.ndarray, count: int) -> torch.Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise _fail(path, f"{name} has shape {y.shape} and dtype {y.dtype}; it must be (N,) integers")
    if len(y) != count:
        raise _fail(path, f"{name} has {len(y)} labels for {count} sequences")
    if len(y) and y.min() < 0:
        raise _fail(path, f"{name} holds a negative label ({int(y.min())}); labels are 0 .. C-1")
    return torch.from_numpy(y.astype(np.int64))


class SequenceFile(NamedTuple):
    train: SequenceData
    test: SequenceData
    num_classes: int
    class_names: list[str] | None


def load_sequence_file(path: str | os.PathLike[str]) -> SequenceFile:
    """``(train, test, num_classes, class_names)`` from a ``.npz`` sequence file, checked array by array."""
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
    lengths_train, lengths_test = (_lengths(path, arrays, split, x) for split, x in (("train", x_train),
                                                                                    ("test", x_test)))
    _zero_padding_and_check(path, "x_train", x_train, lengths_train)
    _zero_padding_and_check(path, "x_test", x_test, lengths_test)
    names = None
    if "class_names" in arrays:
        given = arrays["class_names"]
        if given.dtype.kind != "U" or given.shape != (classes,):
            raise _fail(path, f"class_names must be {classes} strings, one per class, got {given.dtype} "
                              f"{given.shape}")
        names = [str(name) for name in given]
    return SequenceFile(SequenceData(x_train, y_train, lengths_train), SequenceData(x_test, y_test, lengths_test),
                        classes, names)


def sequence_file_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(steps, features, num_classes)`` of a sequence file (reads and checks it)."""
    loaded = load_sequence_file(path)
    steps, features = loaded.train.seq_shape
    return steps, features, loaded.num_classes
