"""Where the IDX datasets come from: known datasets, locating files, verifying and downloading.

``load_split`` looks for a split in this order: an explicit ``data_dir``, ``$RNNLAB_DATA_DIR``,
the MNIST copy shipped inside the package, then the cache folder
(``$RNNLAB_CACHE_DIR/<dataset>``, default ``~/.cache/rnnlab/<dataset>``), which is only filled by
a download when asked for.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import importlib.resources
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rnnlab.data.idx import IdxError, parse_idx, read_idx_bytes
from rnnlab.errors import ConfigError, DataError

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

_STD_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of an IDX image-classification dataset."""

    name: str
    files: dict[str, tuple[str, str]]  # split -> (images base name, labels base name)
    sha256: dict[str, str]  # base name -> sha256 of the *decompressed* bytes; may be empty
    mirrors: tuple[str, ...]
    num_classes: int = 10
    image_shape: tuple[int, int] = (28, 28)
    class_names: tuple[str, ...] | None = None  # None: the digits are their own names


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_STD_FILES,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    # We do not ship sums for these two: they are checked structurally (valid IDX, sizes, labels).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=_STD_FILES,
        sha256={},
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        files=_STD_FILES,
        sha256={},
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        # kmnist_classmap.csv: the ten hiragana, romanised
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}

_USER_AGENT = "rnnlab/0.1 (+python urllib)"
_FIX_DIR = "point --data-dir at a folder holding a good copy of the IDX files"
_FIX_SENTENCE = "Point --data-dir at a folder holding a good copy of the IDX files."


def get_dataset(dataset: str | DatasetSpec) -> DatasetSpec:
    """Look a dataset up by name (a ``DatasetSpec`` is passed through)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    try:
        return DATASETS[dataset]
    except KeyError:
        valid = ", ".join(DATASETS)
        raise ConfigError(f"unknown dataset {dataset!r}; valid names are: {valid}.") from None


def _split_files(spec: DatasetSpec, split: str) -> tuple[str, str]:
    try:
        return spec.files[split]
    except KeyError:
        valid = ", ".join(spec.files)
        raise ConfigError(f"unknown split {split!r} for {spec.name}; valid splits are: {valid}.") from None


def _candidates(base: str) -> list[str]:
    # Both spellings are in the wild: "train-images-idx3-ubyte" and "train-images.idx3-ubyte".
    names = [base]
    alt = base.replace("-idx", ".idx", 1)
    if alt != base:
        names.append(alt)
    return [n + ext for n in names for ext in ("", ".gz")]


def _find(directory: Path, base: str) -> Path | None:
    for name in _candidates(base):
        p = directory / name
        if p.is_file():
            return p
    return None


def find_file(directory: str | os.PathLike[str], base: str) -> Path:
    """Find ``base`` in ``directory`` under either name style, plain or ``.gz``."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(
            f"data folder {d} does not exist. Create it or point --data-dir at the folder with "
            "the IDX files."
        )
    found = _find(d, base)
    if found is None:
        looked = ", ".join(_candidates(base))
        raise DataError(
            f"{base} not found in {d} (looked for {looked}). "
            "Put the file there, or point --data-dir at a folder that has it."
        )
    return found


def embedded_dir() -> Path | None:
    """The MNIST copy shipped inside the package, or None if it is not installed as plain files."""
    res = importlib.resources.files("rnnlab.data").joinpath("mnist")
    return res if isinstance(res, Path) and res.is_dir() else None


def cache_dir(dataset: str | DatasetSpec) -> Path:
    """Download cache for ``dataset``: ``$RNNLAB_CACHE_DIR/<name>`` or ``~/.cache/rnnlab/<name>``."""
    root = os.environ.get("RNNLAB_CACHE_DIR") or Path.home() / ".cache" / "rnnlab"
    return Path(root) / get_dataset(dataset).name


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
    if verify and expected and digest != expected:
        raise DataError(
            f"{path}: checksum mismatch for {spec.name} {base}: expected sha256 {expected}, "
            f"got {digest}. The file is corrupt or a different version; delete it and re-download "
            f"(--download), or {_FIX_DIR}."
        )
    return arr


def _check_pair(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, ipath: Path, lpath: Path) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{ipath}: expected uint8 images of shape (N, H, W), got {images.dtype} with shape "
            f"{images.shape}. Check that this is the images file, or {_FIX_DIR}."
        )
    if tuple(images.shape[1:]) != tuple(spec.image_shape):
        raise DataError(
            f"{ipath}: images are {images.shape[1]}x{images.shape[2]}, {spec.name} images are "
            f"{spec.image_shape[0]}x{spec.image_shape[1]}. Check the file, or {_FIX_DIR}."
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{lpath}: expected a 1-D integer label file, got {labels.dtype} with shape "
            f"{labels.shape}. Check that this is the labels file, or {_FIX_DIR}."
        )
    if images.shape[0] == 0:
        raise DataError(f"{ipath}: the file holds no images. {_FIX_SENTENCE}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lpath}: {labels.shape[0]} labels but {ipath.name} has {images.shape[0]} images; "
            f"the two files must come from the same split. {_FIX_SENTENCE}"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= spec.num_classes:
        bad = hi if hi >= spec.num_classes else lo
        raise DataError(
            f"{lpath}: label {bad} is out of range for {spec.name}, which has classes "
            f"0..{spec.num_classes - 1}. Check the dataset name, or {_FIX_DIR}."
        )


def _resolve_dir(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike[str] | None, download_: bool
) -> Path:
    """Pick the folder to read ``split`` from, downloading into it if allowed and needed."""
    bases = _split_files(spec, split)
    explicit = data_dir if data_dir is not None else os.environ.get("RNNLAB_DATA_DIR") or None
    if explicit is not None:
        d = Path(explicit).expanduser()
        if download_ and any(_find(d, b) is None for b in bases):
            download(spec, d, splits=[split])
        return d
    emb = embedded_dir()
    if spec.name == "mnist" and emb is not None and all(_find(emb, b) for b in bases):
        return emb
    d = cache_dir(spec)
    if all(d.is_dir() and _find(d, b) for b in bases):
        return d
    if download_:
        download(spec, d, splits=[split])
        return d
    raise DataError(
        f"{spec.name} {split} split not found locally (looked in {d}). Pass --download to fetch it "
        f"into {d}, or --data-dir (or $RNNLAB_DATA_DIR) pointing at a folder with the IDX files."
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
    ibase, lbase = _split_files(spec, split)
    ipath, lpath = find_file(d, ibase), find_file(d, lbase)
    images = _load_checked(spec, ibase, ipath, verify)
    labels = _load_checked(spec, lbase, lpath, verify)
    _check_pair(spec, images, labels, ipath, lpath)
    # One copy each: the cached arrays are read-only and shared.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------- downloading


def _verify_bytes(spec: DatasetSpec, base: str, raw: bytes, name: str) -> str | None:
    """Return why ``raw`` (a file as stored, maybe gzip) is not a good copy of ``base``, or None."""
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        return f"corrupt gzip stream ({exc or type(exc).__name__})"
    expected = spec.sha256.get(base)
    if expected:
        digest = hashlib.sha256(data).hexdigest()
        return None if digest == expected else f"checksum mismatch: expected sha256 {expected}, got {digest}"
    try:  # no known sum: at least insist on a well-formed IDX file
        parse_idx(data, name=name)
    except IdxError as exc:
        return str(exc)
    return None


def _fetch(url: str, tmp: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()  # release the error response's socket
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        # 404/403 and friends will not change on retry; throttling and server errors may.
        return exc.code in (408, 425, 429) or exc.code >= 500
    return True


def _download_one(
    spec: DatasetSpec, base: str, dest: Path, mirrors: Sequence[str], retries: int,
    timeout: float, backoff: float, tried: list[str],
) -> bool:
    """Try every mirror for one file; on success atomically place it at ``dest``."""
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + base + ".gz"
        attempts = max(1, retries)
        for attempt in range(1, attempts + 1):
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{base}.", suffix=".part")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                try:
                    _fetch(url, tmp, timeout)
                except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                    tried.append(f"{url} (attempt {attempt}): {_describe(exc)}")
                    if not _retryable(exc) or attempt == attempts:
                        break
                    time.sleep(backoff * 2 ** (attempt - 1))
                    continue
                problem = _verify_bytes(spec, base, tmp.read_bytes(), url)
                if problem is not None:
                    # A bad payload is a bad mirror, not a transient error: move on.
                    tried.append(f"{url}: {problem}")
                    break
                os.replace(tmp, dest)
                return True
            finally:
                tmp.unlink(missing_ok=True)
    return False


def download(
    dataset: str | DatasetSpec,
    dest_dir: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
    splits: Iterable[str] | None = None,
) -> list[Path]:
    """Download the dataset's IDX files into ``dest_dir``; return their paths.

    Files already present and valid are skipped. Each file is streamed to a temp file, verified
    (checksum of the decompressed bytes, or structure when no sum is known) and renamed into
    place. ``retries`` is the number of attempts per mirror, spaced ``backoff * 2**k`` seconds;
    only network errors and 408/425/429/5xx are retried, a 404 or a bad payload moves on to the
    next mirror. ``splits`` limits the download to some splits (default: all).
    """
    spec = get_dataset(dataset)
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create download folder {dest} ({exc.strerror or exc}). Pick a writable --data-dir."
        ) from None
    mirror_list = tuple(mirrors) if mirrors is not None else spec.mirrors
    wanted = list(splits) if splits is not None else list(spec.files)
    bases = [b for s in wanted for b in _split_files(spec, s)]
    paths: list[Path] = []
    for base in bases:
        existing = _find(dest, base)
        if existing is not None and _verify_bytes(spec, base, existing.read_bytes(), str(existing)) is None:
            paths.append(existing)
            continue
        # Replace an invalid copy in place so it cannot shadow the new file under another name.
        target = existing if existing is not None else dest / f"{base}.gz"
        tried: list[str] = []
        if not _download_one(spec, base, target, mirror_list, retries, timeout, backoff, tried):
            attempts = "; ".join(tried) or "no mirrors configured"
            raise DataError(
                f"could not download {spec.name} {base}: every mirror failed ({attempts}). "
                f"Download the file by hand and {_FIX_DIR}, or retry later."
            )
        paths.append(target)
    return paths
