"""Where the IDX datasets come from: locating, verifying and downloading their files.

The table of known datasets lives in ``rnnlab.data.datasets``; its public names are re-exported here.

``load_split`` looks for a split in this order: an explicit ``data_dir``, ``$RNNLAB_DATA_DIR``,
the MNIST copy shipped inside the package, then the cache folder
(``$RNNLAB_CACHE_DIR/<dataset>``, default ``~/.cache/rnnlab/<dataset>``), which is only filled by
a download when asked for.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import http.client
import importlib.resources
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rnnlab.atomic import replacing
from rnnlab.data.datasets import (
    DATASETS, DatasetSpec, candidates, find_in, get_dataset, known_file, split_files,
)
from rnnlab.data.idx import MAX_IDX_BYTES, IdxError, decompress_idx, parse_idx, read_idx_bytes
from rnnlab.errors import DataError

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

_USER_AGENT = "rnnlab/0.1 (+python urllib)"
_FIX_DIR = "point --data-dir at a folder holding a good copy of the IDX files"
_FIX_SENTENCE = "Point --data-dir at a folder holding a good copy of the IDX files."
# There is no --download flag: downloading is the config setting, given as a KEY=VALUE override.
_DOWNLOAD = "the setting data.download=true (e.g. `rnnlab train data.download=true`)"


def find_file(directory: str | os.PathLike[str], base: str, *,
              fix: str = "point --data-dir at a folder that has it") -> Path:
    """Find ``base`` in ``directory`` under either name style, plain or ``.gz``. ``fix`` ends
    the error messages: it names the setting the folder came from (--data-dir, RNNLAB_DATA_DIR)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise DataError(f"data folder {d} is a file; {fix}.")
    if not d.is_dir():
        raise DataError(f"data folder {d} does not exist. Create it, or {fix}.")
    found = find_in(d, base)
    if found is None:
        folders = [name for name in candidates(base) if (d / name).is_dir()]
        if folders:  # e.g. an archive unpacked into a folder of the file's name
            raise DataError(f"{d / folders[0]} is a folder, not the IDX file {base}; put the file itself "
                            f"in {d}, or {fix}.")
        looked = ", ".join(candidates(base))
        raise DataError(f"{base} not found in {d} (looked for {looked}). Put the file there, or {fix}.")
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
        if known_file(spec, digest) is not None:
            # Another file of the dataset in the wrong place: a fresh download would not help.
            raise DataError(f"{path}: {_mismatch(spec, base, digest)}. Put the right file there, or {_FIX_DIR}.")
        raise DataError(
            f"{path}: {_mismatch(spec, base, digest)}. The file is corrupt or a different version; delete it "
            f"and fetch a fresh copy with {_DOWNLOAD}, or {_FIX_DIR}."
        )
    return arr


def _mismatch(spec: DatasetSpec, base: str, digest: str) -> str:
    """Why a file whose decompressed bytes have sha256 ``digest`` is not a good copy of ``base``."""
    other = known_file(spec, digest)
    if other is not None:
        want = (known_file(spec, spec.sha256[base]) or (base, base))[1]
        return f"the file holds the {spec.name} {other[1]} ({other[0]}), not the {want} ({base})"
    return f"checksum mismatch for {spec.name} {base}: expected sha256 {spec.sha256[base]}, got {digest}"


def _wrong_kind(spec: DatasetSpec, array: np.ndarray, *, images: bool) -> str | None:
    """Why ``array`` cannot be ``spec``'s images (or labels) file, or None. Checked on every
    loaded file, and on downloads from a mirror when there is no checksum to compare."""
    if images:
        if array.ndim != 3 or array.dtype != np.uint8 or array.shape[1:] != tuple(spec.image_shape):
            height, width = spec.image_shape
            return f"not {spec.name} images: expected uint8 (N, {height}, {width}), got {array.dtype} {array.shape}"
        return None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        return f"not {spec.name} labels: expected integers of shape (N,), got {array.dtype} {array.shape}"
    out_of_range = array[(array < 0) | (array >= spec.num_classes)]
    if out_of_range.size:
        return (f"label {int(out_of_range[0])} is out of range for {spec.name}, which has classes "
                f"0..{spec.num_classes - 1}")
    return None


def _check_pair(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, ipath: Path, lpath: Path) -> None:
    for path, array, kind in ((ipath, images, "images"), (lpath, labels, "labels")):
        problem = _wrong_kind(spec, array, images=kind == "images")
        if problem is not None:
            raise DataError(f"{path}: {problem}. Check the dataset name and that this is the {kind} file, "
                            f"or {_FIX_DIR}.")
    if images.shape[0] == 0:
        raise DataError(f"{ipath}: the file holds no images. {_FIX_SENTENCE}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lpath}: {labels.shape[0]} labels but {ipath.name} has {images.shape[0]} images; "
            f"the two files must come from the same split. {_FIX_SENTENCE}"
        )


def _folder_fix(data_dir: str | os.PathLike[str] | None) -> str:
    """How to point rnnlab at another data folder, naming the setting in use."""
    if data_dir is None and os.environ.get("RNNLAB_DATA_DIR"):
        return "set RNNLAB_DATA_DIR to a folder that has it (or unset it)"
    return "point --data-dir at a folder that has it"


def _resolve_dir(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike[str] | None, download_: bool
) -> Path:
    """Pick the folder to read ``split`` from, downloading into it if allowed and needed."""
    bases = split_files(spec, split)
    env_data = os.environ.get("RNNLAB_DATA_DIR") or None
    if data_dir is not None or env_data is not None:
        # Messages name the setting the folder came from: that is what the user has to change.
        d = Path(data_dir if data_dir is not None else str(env_data)).expanduser()
        what = f"--data-dir {d}" if data_dir is not None else f"RNNLAB_DATA_DIR={d}"
        if d.exists() and not d.is_dir():
            fix = ("give a folder that holds the IDX files" if data_dir is not None
                   else "set it to a folder that holds the IDX files, or unset it")
            if any(d.name in candidates(b) for names in spec.files.values() for b in names):
                fix += f" ({d.name} is one of them: give its folder, {d.absolute().parent})"
            raise DataError(f"{what} is a file; {fix}")
        if download_ and any(find_in(d, b) is None for b in bases):
            _make_folder(d, "Give --data-dir a folder you can write." if data_dir is not None
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
    fix = f"Set RNNLAB_CACHE_DIR to a folder you can write{unset}, or point --data-dir at a folder with the IDX files."
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
    raise DataError(
        f"{spec.name} {split} split not found locally (looked in {d}). Use {_DOWNLOAD} to fetch it "
        f"into {d}, or point --data-dir (or $RNNLAB_DATA_DIR) at a folder with the IDX files."
    )


def _file_in_the_way(d: Path) -> Path | None:
    """The first of ``d`` and its parents that exists but is not a folder, or None."""
    # os.path, unlike Path.exists, never raises (e.g. on a folder we may not list).
    return next((p for p in (d, *d.parents) if os.path.exists(p) and not os.path.isdir(p)), None)


def _make_folder(d: Path, fix: str) -> None:
    """Create ``d`` to download into; ``fix`` says which setting to change if that fails."""
    blocker = _file_in_the_way(d)
    if blocker is not None:
        raise DataError(f"cannot create download folder {d}: {blocker} is a file, not a folder. {fix}")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder {d} ({exc.strerror or exc}). {fix}") from None


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
    ipath, lpath = find_file(d, ibase, fix=fix), find_file(d, lbase, fix=fix)
    images = _load_checked(spec, ibase, ipath, verify)
    labels = _load_checked(spec, lbase, lpath, verify)
    _check_pair(spec, images, labels, ipath, lpath)
    # One copy each: the cached arrays are read-only and shared.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------- downloading


def _verify_bytes(spec: DatasetSpec, base: str, raw: bytes, name: str) -> str | None:
    """Return why ``raw`` (a file as stored, maybe gzip) is not a good copy of ``base``, or None."""
    try:
        data = decompress_idx(raw, name=name)  # bounded: a mirror may serve a decompression bomb
        expected = spec.sha256.get(base)
        if expected:
            digest = hashlib.sha256(data).hexdigest()
            return None if digest == expected else _mismatch(spec, base, digest)
        # No known sum: insist on a well-formed IDX file of the right kind and shape, so that a
        # mirror serving another file under this name is passed over, not cached.
        is_images = any(base == images for images, _ in spec.files.values())
        return _wrong_kind(spec, parse_idx(data, name=name), images=is_images)
    except IdxError as exc:
        return str(exc)


# ``timeout`` bounds each wait for data; a mirror that trickles data gets this many times it in all.
_TOTAL_TIMEOUTS = 20


def _fetch(url: str, tmp: Path, timeout: float | None) -> str | None:
    """Stream ``url`` into ``tmp``; return what is wrong with the mirror (a response too large or
    too slow), or None. A connection closed before the announced length raises IncompleteRead,
    which is retried like any network error."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
        announced = resp.headers.get("Content-Length")
        size = 0
        while chunk := resp.read1(1 << 20):  # what has arrived, up to 1 MiB: never waits for a full MiB
            size += len(chunk)
            if size > MAX_IDX_BYTES:  # an endless response must not fill the disk
                return f"response is larger than {MAX_IDX_BYTES} bytes, too large for an IDX file"
            if timeout is not None and time.monotonic() - started > _TOTAL_TIMEOUTS * timeout:
                return f"too slow: {size} bytes in {_TOTAL_TIMEOUTS * timeout:g} s"
            out.write(chunk)
    if announced is not None and announced.isdigit() and size < int(announced):
        # Python's HTTP client ends a cut-off body quietly; without this the truncated file
        # would be judged a bad payload, and the mirror skipped instead of retried.
        raise http.client.IncompleteRead(b"", int(announced) - size)
    return None


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


def _try_mirror(
    spec: DatasetSpec, base: str, url: str, tmp: Path, retries: int, timeout: float | None, backoff: float,
    tried: list[str],
) -> bool:
    """Fetch ``url`` into ``tmp`` in up to ``retries`` attempts; return whether ``tmp`` then holds
    a good copy of ``base``. Each failure is noted in ``tried``."""
    attempts = max(1, retries)
    for attempt in range(1, attempts + 1):
        try:
            problem = _fetch(url, tmp, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            tried.append(f"{url} (attempt {attempt}): {_describe(exc)}")
            if not _retryable(exc) or attempt == attempts:
                return False
            time.sleep(backoff * 2 ** (attempt - 1))
            continue
        if problem is None:
            problem = _verify_bytes(spec, base, tmp.read_bytes(), url)
        if problem is not None:
            tried.append(f"{url}: {problem}")  # a bad payload is a bad mirror, not a transient error: move on
        return problem is None
    return False  # not reached (the last attempt returns); for the type checker


STALE_PART_SECONDS = 3600.0


def _remove_stale_parts(dest: Path) -> None:
    """Delete what a download killed outright (SIGKILL, power loss) left: the hidden temporary
    files ``atomic.replacing`` names ``.<name>.<12 hex digits>.part`` next to ``dest``, once
    untouched for an hour. A download in progress writes to its own as data arrives (an hour
    without a byte is a dead connection); other files are never touched."""
    ours = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{12}}\.part")
    now = time.time()
    for part in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        with contextlib.suppress(OSError):  # gone already, or not ours to delete: not worth failing for
            if ours.fullmatch(part.name) and part.is_file() and now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()


def _download_one(
    spec: DatasetSpec, base: str, dest: Path, mirrors: Sequence[str], retries: int,
    timeout: float | None, backoff: float,
) -> None:
    """Try every mirror for one file; atomically place the first good copy at ``dest``."""
    _remove_stale_parts(dest)
    tried: list[str] = []
    with replacing(dest, suffix=".part") as tmp:
        tmp.touch(exist_ok=False)  # here, not in _fetch: failing to create it is no mirror's fault
        for mirror in mirrors:
            if _try_mirror(spec, base, mirror.rstrip("/") + "/" + base + ".gz", tmp, retries, timeout, backoff,
                           tried):
                return  # leaving the block normally puts the file in place
        attempts = "; ".join(tried) or "no mirrors configured"
        # Raised inside the block, so that the temporary file is discarded.
        raise DataError(
            f"could not download {spec.name} {base}: every mirror failed ({attempts}). "
            f"Download the file by hand and {_FIX_DIR}, or retry later."
        )


def download(
    dataset: str | DatasetSpec,
    dest_dir: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] | None = None,
    retries: int = 3,
    timeout: float | None = 30.0,
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
    _make_folder(dest, "Pick a writable --data-dir.")
    mirror_list = tuple(mirrors) if mirrors is not None else spec.mirrors
    wanted = list(splits) if splits is not None else list(spec.files)
    bases = [b for s in wanted for b in split_files(spec, s)]
    paths: list[Path] = []
    for base in bases:
        existing = find_in(dest, base)
        if existing is not None and _verify_bytes(spec, base, existing.read_bytes(), str(existing)) is None:
            paths.append(existing)
            continue
        # Replace an invalid copy in place so it cannot shadow the new file under another name.
        target = existing if existing is not None else dest / f"{base}.gz"
        _download_one(spec, base, target, mirror_list, retries, timeout, backoff)
        paths.append(target)
    return paths
