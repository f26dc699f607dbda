"""Where the IDX datasets come from: locating and verifying their files (downloading them is
:mod:`rnnlab.data.downloads`'s job).

The table of known datasets lives in ``rnnlab.data.datasets``; its public names are re-exported here.

``load_split`` looks for a split in this order: an explicit ``data_dir``, ``$RNNLAB_DATA_DIR``,
the MNIST copy shipped inside the package, then the cache folder
(``$RNNLAB_CACHE_DIR/<dataset>``, default ``~/.cache/rnnlab/<dataset>``), which is only filled by
a download when asked for.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from pathlib import Path

import numpy as np
import torch

from rnnlab.data.datasets import (DATASETS, DatasetSpec, candidates, find_in, get_dataset, known_file,
                                  other_datasets_file, split_files)
from rnnlab.data.downloads import fix_dir as _fix_dir
from rnnlab.data.downloads import _file_in_the_way, _make_folder, _mismatch, _wrong_kind, download
from rnnlab.data.downloads import download as _download  # load_split's own `download` is a flag
from rnnlab.data.idx import parse_idx, read_idx_bytes
from rnnlab.errors import DataError, MissingDataError, option, option_value

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "cache_dir",
    "download",
    "embedded_dir",
    "find_file",
    "get_dataset",
    "load_split",
]


def _fix_sentence() -> str:
    """A bad data file's fix, as a sentence of its own."""
    return f"Point {option('--data-dir', 'data_dir')} at a folder holding a good copy of the IDX files."


def _download_hint(spec: DatasetSpec) -> str:
    """How to download ``spec``'s files. There is no --download flag: downloading is the config
    setting, given as a KEY=VALUE override, with data.dataset for any but the default MNIST
    (the command would otherwise fetch MNIST)."""
    dataset = f"data.dataset={spec.name} " if spec.name != "mnist" and spec.name in DATASETS else ""
    return f"the setting data.download=true (e.g. `rnnlab train {dataset}data.download=true`)"


def find_file(directory: str | os.PathLike[str], base: str, *, fix: str | None = None) -> Path:
    """Find ``base`` in ``directory`` under either name style, plain or ``.gz``. ``fix`` ends
    the error messages: it names the setting the folder came from (--data-dir, RNNLAB_DATA_DIR;
    by default the data folder, as the user spells it)."""
    fix = fix if fix is not None else f"point {option('--data-dir', 'data_dir')} at a folder that has it"
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise DataError(f"data folder {d} is a file; {fix}.")
    if not d.is_dir():
        raise MissingDataError(f"data folder {d} does not exist. Create it, or {fix}.")
    found = find_in(d, base)
    if found is None:
        folders = [name for name in candidates(base) if (d / name).is_dir()]
        if folders:  # e.g. an archive unpacked into a folder of the file's name
            raise DataError(f"{d / folders[0]} is a folder, not the IDX file {base}; put the file itself "
                            f"in {d}, or {fix}.")
        looked = ", ".join(candidates(base))
        raise MissingDataError(f"{base} not found in {d} (looked for {looked}). Put the file there, or {fix}.")
    return found


def embedded_dir() -> Path | None:
    """The MNIST copy shipped inside the package, or None if it is not installed as plain files."""
    res = importlib.resources.files("rnnlab.data").joinpath("mnist")
    return res if isinstance(res, Path) and res.is_dir() else None


def cache_dir(dataset: str | DatasetSpec) -> Path:
    """Download cache for ``dataset``: ``$RNNLAB_CACHE_DIR/<name>`` or ``~/.cache/rnnlab/<name>``."""
    root = os.environ.get("RNNLAB_CACHE_DIR") or Path.home() / ".cache" / "rnnlab"
    return Path(root).expanduser() / get_dataset(dataset).name  # "~/cache", quoted in a shell: $HOME's


# ---------------------------------------------------------------------------- decoding + checks


@functools.lru_cache(maxsize=8)
def _decode(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, str]:
    """Decompress, hash and parse one file; cached because tests and sweeps reload MNIST often.

    ``mtime_ns`` and ``size`` are only part of the key so a replaced file is decoded afresh.
    """
    raw = read_idx_bytes(path)
    arr = parse_idx(raw, name=path)
    arr.setflags(write=False)  # shared by every caller of the cache
    return arr, hashlib.sha256(raw).hexdigest()


def _load_checked(spec: DatasetSpec, base: str, path: Path, verify: bool) -> np.ndarray:
    st = path.stat()
    arr, digest = _decode(str(path), st.st_mtime_ns, st.st_size)
    expected = spec.sha256.get(base)
    other = other_datasets_file(spec, digest) if verify and not expected else None
    if other is not None:  # e.g. RNNLAB_DATA_DIR set for MNIST, then data.dataset=kmnist: MNIST under kmnist's name
        raise DataError(f"{path} is {other}, not a file of {spec.name} (which uses the same file names); point "
                        f"{option('--data-dir', 'data_dir')} at a folder of {spec.name}'s files, or fetch them with "
                        f"{_download_hint(spec)}")
    if verify and expected and digest != expected:
        if known_file(spec, digest) is not None:
            # Another file of the dataset in the wrong place: a fresh download would not help.
            raise DataError(f"{path}: {_mismatch(spec, base, digest)}. Put the right file there, or {_fix_dir()}.")
        raise DataError(
            f"{path}: {_mismatch(spec, base, digest)}. The file is corrupt or a different version; delete it "
            f"and fetch a fresh copy with {_download_hint(spec)}, or {_fix_dir()}."
        )
    return arr


def _check_pair(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, ipath: Path, lpath: Path) -> None:
    for path, array, kind in ((ipath, images, "images"), (lpath, labels, "labels")):
        problem = _wrong_kind(spec, array, images=kind == "images")
        if problem is not None:
            raise DataError(f"{path}: {problem}. Check the dataset name and that this is the {kind} file, "
                            f"or {_fix_dir()}.")
    if images.shape[0] == 0:
        raise DataError(f"{ipath}: the file holds no images. {_fix_sentence()}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lpath}: {labels.shape[0]} labels but {ipath.name} has {images.shape[0]} images; "
            f"the two files must come from the same split. {_fix_sentence()}"
        )


def _folder_fix(data_dir: str | os.PathLike[str] | None) -> str:
    """How to point rnnlab at another data folder, naming the setting in use."""
    if data_dir is None and os.environ.get("RNNLAB_DATA_DIR"):
        return "set RNNLAB_DATA_DIR to a folder that has it (or unset it)"
    return f"point {option('--data-dir', 'data_dir')} at a folder that has it"


def _resolve_dir(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike[str] | None, download_: bool
) -> Path:
    """Pick the folder to read ``split`` from, downloading into it if allowed and needed."""
    bases = split_files(spec, split)
    env_data = os.environ.get("RNNLAB_DATA_DIR") or None
    if data_dir is not None or env_data is not None:
        # Messages name the setting the folder came from: that is what the user has to change.
        d = Path(data_dir if data_dir is not None else str(env_data)).expanduser()
        what = option_value("--data-dir", "data_dir", d) if data_dir is not None else f"RNNLAB_DATA_DIR={d}"
        if d.exists() and not d.is_dir():
            fix = ("give a folder that holds the IDX files" if data_dir is not None
                   else "set it to a folder that holds the IDX files, or unset it")
            if any(d.name in candidates(b) for names in spec.files.values() for b in names):
                fix += f" ({d.name} is one of them: give its folder, {d.absolute().parent})"
            elif d.suffix == ".npz":  # one's own sequences: data.file (--data-file) trains on them
                fix += f"; to train on your own sequences, give the file as data.file={d}{option(' (--data-file)', '')}"
            raise DataError(f"{what} is a file; {fix}")
        if download_ and any(find_in(d, b) is None for b in bases):
            _make_folder(d, f"Give {option('--data-dir', 'data_dir')} a folder you can write." if data_dir is not None
                         else "Set RNNLAB_DATA_DIR to a folder you can write, or unset it.")
            download(spec, d, splits=[split])
        return d
    emb = embedded_dir()
    if spec.name == "mnist" and emb is not None and all(find_in(emb, b) for b in bases):
        return emb
    d = cache_dir(spec)
    env_cache = os.environ.get("RNNLAB_CACHE_DIR")
    origin = f" (from RNNLAB_CACHE_DIR={env_cache})" if env_cache else ""
    unset = " (or unset it to use ~/.cache/rnnlab)" if env_cache else ""
    fix = (f"Set RNNLAB_CACHE_DIR to a folder you can write{unset}, or point {option('--data-dir', 'data_dir')} "
           "at a folder with the IDX files.")
    blocker = _file_in_the_way(d)
    if blocker is not None:
        # Checked before "not found": suggesting a download into a path that cannot be a folder
        # would only lead to a second, vaguer error.
        raise DataError(f"cannot use the download cache {d}{origin}: {blocker} is a file, not a folder. {fix}")
    if all(d.is_dir() and find_in(d, b) for b in bases):
        return d
    if download_:
        _make_folder(d, fix)
        download(spec, d, splits=[split])
        return d
    raise MissingDataError(
        f"{spec.name} {split} split not found locally (looked in {d}). Use {_download_hint(spec)} to fetch it "
        f"into {d}, or point {option('--data-dir', 'data_dir')} (or $RNNLAB_DATA_DIR) at a folder with the IDX files."
    )


def load_split(
    dataset: str | DatasetSpec = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as ``(images uint8 (N, H, W), labels int64 (N,))``.

    The returned tensors are fresh copies, so callers may modify them.
    """
    spec = get_dataset(dataset)
    d = _resolve_dir(spec, split, data_dir, download)
    ibase, lbase = split_files(spec, split)
    fix = _folder_fix(data_dir)

    def checked() -> tuple[np.ndarray, np.ndarray]:
        ipath, lpath = find_file(d, ibase, fix=fix), find_file(d, lbase, fix=fix)
        images, labels = _load_checked(spec, ibase, ipath, verify), _load_checked(spec, lbase, lpath, verify)
        _check_pair(spec, images, labels, ipath, lpath)
        return images, labels

    try:
        images, labels = checked()
    except DataError:
        # A damaged file in rnnlab's own download cache, with downloads on: fetched again (download()
        # replaces what does not verify). Never in a folder the user gave: that may hold other files.
        if not (download and d == cache_dir(spec)):
            raise
        _download(spec, d, splits=[split])
        images, labels = checked()
    # One copy each: the cached arrays are read-only and shared.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
