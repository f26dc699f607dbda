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
someone else cannot run code, and every array is checked before training starts. At most
``MAX_CLASSES`` classes: see there why.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rnnlab.data.sequences import SequenceData
from rnnlab.errors import DataError, DataWarning, MissingDataError, option, warn_caller

__all__ = ["MAX_CLASSES", "OPTIONAL_ARRAYS", "REQUIRED_ARRAYS", "SequenceFile", "check_against_run",
           "load_sequence_file", "not_numpy", "sequence_file_shape"]

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("lengths_train", "lengths_test", "num_classes", "class_names")
_HOW = ("write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...): x as (N, T, F) "
        "or (N, T) numbers, y as (N,) integer labels from 0")
# The number of classes C sizes the output layer (hidden x C) and the C x C confusion matrix that
# every evaluation keeps and summary.json stores: 1,000 classes cost 3 s and a 9 MB summary.json
# for a 2-iteration run, 10,000 cost 65 s, 9.8 GB of memory and a 900 MB summary.json, and one
# stray label of 10**9 would ask for 32 GB before the first step. So a larger C is refused.
MAX_CLASSES = 1000

# The first bytes of files that are often given instead of NumPy's: named in the error message.
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")  # an empty zip starts PK\x05\x06
_KNOWN_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
                (b"\x89HDF", "an HDF5 file (read it with h5py)"), (b"\x1f\x8b", "gzip-compressed data"))


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {_HOW}")


def _describe(head: bytes) -> str:
    """What a file (or an archive member) that is not NumPy's looks like, from its first bytes:
    "empty (0 bytes)", "a PNG image", "text, starting '...'"."""
    if not head:
        return "empty (0 bytes)"
    for magic, kind in _KNOWN_KINDS:
        if head.startswith(magic):
            return kind
    if head.startswith(b"\x80") and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, refused because loading one can run code"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut off at the end of head is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        if not text.strip():
            return "blank text (only spaces and line breaks)"
        return f"text, starting {text.strip().splitlines()[0][:40]!r}"
    if head.startswith(b"BM"):  # after the text test: a text file may well start with "BM"
        return "a BMP image"
    return f"data in no format known here (starting {head[:8].hex(' ')})"


def not_numpy(path: str | os.PathLike[str]) -> str | None:
    """None for a file in NumPy's format (a .npy array or a .npz archive); else what it looks like
    instead: "it is empty (0 bytes)", "it is a PNG image", "it is text, starting ... (read it ...)".

    np.load would take any other file for a pickle and, with allow_pickle=False, say it "contains
    pickled data" that could be loaded "unsafely": wrong for an image or text, and bad advice."""
    with open(path, "rb") as file:
        head = file.read(64)
    if head.startswith((_NPY_MAGIC, *_ZIP_MAGIC)):
        return None
    kind = _describe(head)
    return f"it is {kind}" + (" (read it with np.loadtxt, then save the arrays)" if kind.startswith("text") else "")


def _member(path: Path, archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        array = archive[name]
    except ValueError as exc:  # an object array: stored with pickle, which could run code
        if "allow_pickle" not in str(exc):
            raise _fail(path, f"{name} is not a readable array ({exc})") from None
        raise _fail(path, f"{name} holds Python objects (dtype=object, stored with pickle), so it cannot be "
                          "read safely; store numbers, and class_names as np.array(names, dtype=str)") from None
    if not isinstance(array, np.ndarray):  # NpzFile hands over a member without .npy's header as bytes
        raise _fail(path, f"{name} is not a NumPy array (the archive's {name}.npy holds {len(array)} bytes of "
                          f"{_describe(array[:64])}, not .npy data)")
    return array


def _open(path: str | os.PathLike[str]) -> tuple[Path, dict[str, np.ndarray]]:
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a folder, not a sequence file" if path.is_dir() else "no such sequence file"
        error = DataError if path.is_dir() else MissingDataError  # a folder is there, just wrong
        moved = option("--data-dir NEW.npz points eval, export, gradients --run and train --resume at it",
                       "pass data_dir='NEW.npz' to rnnlab.resume, TrainedModel.evaluate or export_run")
        raise error(f"{path}: {what}; check data.file (a .npz written with np.savez); if a run's file moved, "
                    f"{moved}")
    try:
        looks = not_numpy(path)
        if looks is not None:
            raise _fail(path, f"not a NumPy .npz archive: {looks}")
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
            arrays = {name: _member(path, archive, name) for name in archive.files}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(path, f"not a readable .npz archive ({exc})") from None
    return path, arrays


def _sequences(path: Path, name: str, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` as a tensor ``(N, T, F)`` of our own (uint8 as it is, else float32), and where a float64
    or int64 value was beyond float32's range (None if none): refused later, outside the padding."""
    if x.ndim == 2:
        x = x[:, :, None]  # (N, T) -> (N, T, 1): one feature per step
    if x.ndim != 3:
        raise _fail(path, f"{name} has shape {x.shape}; it must be (N, T, F) or (N, T)")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise _fail(path, f"{name} has shape {x.shape}; it needs at least one sequence, step and feature")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.array(x)), None
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(path, f"{name} has dtype {x.dtype}; it must hold numbers (float, or uint8 pixels)")
    beyond = None
    if x.dtype.itemsize > 4:  # float64 or int64: values past float32's range would become infinite
        with np.errstate(invalid="ignore"):
            mask = np.abs(x.astype(np.float64, copy=False)) > np.finfo(np.float32).max  # (N, T, F)
        mask &= np.isfinite(x)  # NaN and inf are refused as such
        beyond = torch.from_numpy(mask) if mask.any() else None
    with np.errstate(over="ignore"):  # values beyond float32's range become inf here: marked in beyond
        return torch.from_numpy(np.array(x, dtype=np.float32)), beyond  # our own copy: padding is zeroed later


def _zero_padding_and_check(path: Path, name: str, x: torch.Tensor, lengths: torch.Tensor | None,
                            beyond: torch.Tensor | None) -> None:
    """Zero the steps past each sequence's length (a NaN there would still reach the weight
    gradients through the states it makes), then refuse values beyond float32's range (``beyond``,
    from :func:`_sequences`), NaN or infinity in the steps that count: padding is never read."""
    if lengths is not None:
        padding = torch.arange(x.shape[1])[None, :] >= lengths[:, None]  # (N, T) mask over steps
        x[padding] = 0
        if beyond is not None:
            beyond[padding] = False
    if beyond is not None and beyond.any():
        first = int(beyond.flatten(1).any(1).nonzero()[0])
        raise _fail(path, f"{name} holds {int(beyond.sum())} values beyond float32's range "
                          f"(±{float(np.finfo(np.float32).max):.1e}; first in sequence {first}), which rnnlab "
                          "computes in; scale the features down")
    if x.dtype == torch.uint8:
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise _fail(path, f"{name} holds {int(bad.sum())} NaN or infinite values (first in sequence {first}); "
                          "fill or drop them")


_PRECISION_SAMPLE = 2**20  # values: enough to see an offset that float32 cannot resolve, in little time and memory


def _check_precision(path: Path, name: str, given: np.ndarray, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """Refuse a float64 or int64 feature whose variation float32 (what rnnlab computes in) cannot
    resolve: a large offset (timestamps, positions, a sensor's DC level) leaves a feature constant,
    or its spread changed, after the cast, and the run would learn nothing from it without a word."""
    if given.dtype.itemsize <= 4:
        return
    count = max(1, min(len(x), _PRECISION_SAMPLE // (x.shape[1] * x.shape[2])))  # sequences
    exact = given[:count].astype(np.float64).reshape(x[:count].shape)  # (n, T, F), as the file holds it
    cast = x[:count].double().numpy()  # (n, T, F), float32 values
    if lengths is not None:
        valid = (np.arange(x.shape[1])[None, :] < lengths[:count, None].numpy())  # (n, T)
        exact, cast = exact[valid], cast[valid]  # (M, F): the steps that count
    else:
        exact, cast = exact.reshape(-1, x.shape[2]), cast.reshape(-1, x.shape[2])  # (n*T, F)
    spread, kept = exact.std(axis=0), cast.std(axis=0)  # (F,) each
    lost = np.flatnonzero((spread > 0) & (np.abs(kept - spread) > 0.01 * spread))
    if len(lost):
        f = int(lost[0])
        became = "it is constant" if kept[f] == 0 else f"its standard deviation becomes {kept[f]:.3g}"
        raise _fail(path, f"{name} feature {f} varies by {spread[f]:.3g} (standard deviation) around "
                          f"{exact[:, f].mean():.6g}; in float32, which rnnlab computes in, {became}"
                          f"{f' ({len(lost)} features so)' if len(lost) > 1 else ''}: subtract the offset before "
                          f"saving (e.g. x - x_train.mean(axis=(0, 1)), which predict's input then needs too)")


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
    # Checked here, on the file's own dtype: a uint64 label of 2**63 or more would turn negative in int64.
    if len(y) and y.max() >= MAX_CLASSES:
        raise _fail(path, f"{name} holds label {int(y.max())}; labels must be 0 .. C-1 with at most "
                          f"{MAX_CLASSES} classes (C is the largest label + 1, or num_classes)")
    return torch.from_numpy(y.astype(np.int64))


def _check_classes(path: Path, y_train: torch.Tensor, y_test: torch.Tensor, classes: int, *, given: bool) -> None:
    """At least two classes to learn; a warning for test labels training never shows, and for labels
    that leave most of the model's outputs unused (C is the largest label + 1)."""
    from rnnlab.distributed import is_main_process  # late: torch's distributed package, only when training

    learned = torch.unique(y_train)
    if len(learned) < 2:
        raise _fail(path, f"every y_train label is {int(learned[0])}; a classifier needs at least two classes "
                          "to learn")
    if not is_main_process():  # under torchrun every process loads the file: one says it
        return
    unseen = sorted(set(torch.unique(y_test).tolist()) - set(learned.tolist()))
    if unseen:
        affected = int(torch.isin(y_test, torch.tensor(unseen)).sum())
        warn_caller(f"{path.name}: y_test holds label{'s' * (len(unseen) > 1)} {_some(unseen)} that y_train never "
                    f"has ({_count(affected, 'test sequence')}): the model cannot "
                    f"learn {'them' if len(unseen) > 1 else 'it'}, and they count as errors", DataWarning)
    used = len(torch.unique(torch.cat([y_train, y_test])))
    lowest = int(min(y_train.min(), y_test.min() if len(y_test) else y_train.min()))
    if not given and lowest == 1 and used == classes - 1:  # classes 1 .. C, as R or MATLAB number them
        warn_caller(f"{path.name}: the labels are 1 .. {classes - 1} and none is 0, so the model has an output for a "
                    f"class 0 that no sequence has (C is the largest label + 1, here {classes}): labels count from "
                    "0, so save y_train - 1 and y_test - 1 (or num_classes, to say class 0 is meant)", DataWarning)
    elif not given and classes > 2 and used <= classes // 2:
        warn_caller(f"{path.name}: the labels use {used} of {classes} classes (C is the largest label + 1, so the "
                    "model has an output for each): number them 0 .. C-1, e.g. with np.unique(y, return_inverse=True), "
                    "or save num_classes to say the others are meant", DataWarning)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _some(values: list[int]) -> str:
    return ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")


class SequenceFile(NamedTuple):
    train: SequenceData
    test: SequenceData
    num_classes: int
    class_names: list[str] | None


def load_sequence_file(path: str | os.PathLike[str], *, to_train: bool = True) -> SequenceFile:
    """``(train, test, num_classes, class_names)`` from a ``.npz`` sequence file, checked array by array;
    ``to_train``: also judged as training data (its classes, float32's precision), which a run
    already trained (eval, export) is not: what it was trained on stands."""
    path, arrays = _open(path)
    (x_train, beyond_train), (x_test, beyond_test) = (_sequences(path, name, arrays[name])
                                                      for name in ("x_train", "x_test"))
    if x_train.shape[1:] != x_test.shape[1:]:
        padded = ("lengths_train" in arrays and x_train.shape[2] == x_test.shape[2])
        raise _fail(path, f"x_train has (T, F) = {tuple(x_train.shape[1:])} but x_test has "
                          f"{tuple(x_test.shape[1:])}; both splits need the same steps and features"
                          + (f" (pad both to {max(x_train.shape[1], x_test.shape[1])} steps: the lengths mark where "
                             "each sequence ends)" if padded else ""))
    if x_train.dtype != x_test.dtype:  # uint8 pixels against values: named as the file holds them
        raise _fail(path, f"x_train is {arrays['x_train'].dtype} but x_test is {arrays['x_test'].dtype}; uint8 is "
                          "read as pixels (value / 255) and other types as values: use one kind for both")
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train))
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test))
    seen = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    classes = seen
    if "num_classes" in arrays:
        given = arrays["num_classes"]
        if given.shape != () or not np.issubdtype(given.dtype, np.integer) or given.dtype == np.bool_:
            raise _fail(path, f"num_classes must be one integer >= {seen} (the largest label + 1), got {given!r}")
        if int(given) < seen:
            where = "y_train" if int(y_train.max()) + 1 == seen else "y_test"
            lowest = int(min(y_train.min(), y_test.min() if len(y_test) else y_train.min()))
            if lowest == 1 and seen - 1 == int(given):  # classes 1 .. C, as R or MATLAB number them
                raise _fail(path, f"num_classes is {int(given)} and the labels are 1 .. {int(given)}; labels count "
                                  f"from 0 (0 .. {int(given) - 1}): save y_train - 1 and y_test - 1")
            raise _fail(path, f"num_classes is {int(given)} but {where} holds label {seen - 1}; num_classes must "
                              f"be one integer >= {seen} (the largest label + 1)")
        if int(given) > MAX_CLASSES:
            raise _fail(path, f"num_classes is {int(given)}; at most {MAX_CLASSES} classes are supported (the "
                              f"labels need only {seen}: leave num_classes out, or set it to the classes there are)")
        classes = int(given)
    if to_train:
        _check_classes(path, y_train, y_test, classes, given="num_classes" in arrays)
    lengths_train, lengths_test = (_lengths(path, arrays, split, x) for split, x in (("train", x_train),
                                                                                    ("test", x_test)))
    _zero_padding_and_check(path, "x_train", x_train, lengths_train, beyond_train)
    _zero_padding_and_check(path, "x_test", x_test, lengths_test, beyond_test)
    if to_train:
        _check_precision(path, "x_train", arrays["x_train"], x_train, lengths_train)
        _check_precision(path, "x_test", arrays["x_test"], x_test, lengths_test)
    names = None
    if "class_names" in arrays:
        given = arrays["class_names"]
        if given.dtype.kind == "S":  # np.array([b"low", ...]): bytes, as some writers store text
            try:
                given = np.char.decode(given, "utf-8")
            except UnicodeDecodeError:
                raise _fail(path, "class_names holds bytes that are not UTF-8 text; store them as "
                                  "np.array(names, dtype=str)") from None
        if given.dtype.kind != "U" or given.shape != (classes,):
            raise _fail(path, f"class_names must be {classes} strings, one per class, got {given.dtype} "
                              f"{given.shape}")
        names = [str(name) for name in given]
    return SequenceFile(SequenceData(x_train, y_train, lengths_train), SequenceData(x_test, y_test, lengths_test),
                        classes, names)


def check_against_run(path: str | os.PathLike[str], test: SequenceData, *, steps: int, features: int,
                      classes: int, variable_lengths: bool, dtype: str | None = None) -> None:
    """Refuse a file's test split that a run cannot be evaluated on, saying what differs: other
    features, other steps (as ``predict`` decides: the run's T, or up to it for a run trained on
    varying lengths), varying lengths for a run of one length, labels past the run's classes, or
    values of the other kind (``dtype``: uint8 pixels read as value / 255, or float32 as they are)."""
    length, count = test.seq_shape  # (T, F) of the file
    now = str(test.x.dtype).removeprefix("torch.")
    if dtype is not None and now != dtype:  # the model would read every value on another scale
        # Every type but uint8 was read into float32: not the file's own type, which is not named then
        held = "uint8 values" if now == "uint8" else "values that are not uint8 (read as they are)"
        raise DataError(f"{path}: x_test holds {held}, but the run was trained on {dtype} ones "
                        f"({_KIND_OF_VALUES.get(dtype, dtype)}); evaluate it on a file of {dtype} sequences like its "
                        "training file")
    if count != features:
        raise DataError(f"{path}: x_test has {count} feature{'s' * (count != 1)} per step but the run was trained "
                        f"on {features}; evaluate it on a file of (N, T, {features}) sequences like its training file")
    if variable_lengths and length > steps:
        raise DataError(f"{path}: x_test is padded to {length} steps but the run was trained on sequences of 1 to "
                        f"{steps} steps; give it sequences of at most {steps} steps (padded to at most {steps})")
    if not variable_lengths and length != steps:
        raise DataError(f"{path}: x_test has {length} steps but the run was trained on sequences of {steps} steps "
                        f"(one length); give it (N, {steps}, {features}) sequences like its training file")
    if not variable_lengths and test.lengths is not None and int(test.lengths.min()) < steps:
        raise DataError(f"{path}: lengths_test holds lengths from {int(test.lengths.min())}, but the run was "
                        f"trained on sequences of one length ({steps} steps); give it full-length sequences")
    if len(test.y) and int(test.y.max()) >= classes:
        raise DataError(f"{path}: y_test holds label {int(test.y.max())}, but the run was trained on {classes} "
                        f"classes (0 .. {classes - 1}); evaluate it on a file with the run's classes")


_KIND_OF_VALUES = {"uint8": "0-255, read as value / 255", "float32": "read as they are"}


def sequence_file_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(steps, features, num_classes)`` of a sequence file (reads and checks it)."""
    loaded = load_sequence_file(path)
    steps, features = loaded.train.seq_shape
    return steps, features, loaded.num_classes
