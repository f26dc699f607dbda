"""Downloading a dataset's IDX files: mirrors tried in turn, retries with backoff, each file
verified (SHA-256 of the decompressed bytes, or its structure where no sum is known) before it is
renamed into place. Also the checks of a file's contents that loading shares.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rnnlab.atomic import replacing
from rnnlab.data.datasets import DatasetSpec, find_in, get_dataset, known_file, other_datasets_file, split_files
from rnnlab.data.idx import MAX_IDX_BYTES, IdxError, decompress_idx, parse_idx
from rnnlab.errors import DataError, MissingDataError, option

__all__ = ["download"]

_USER_AGENT = "rnnlab/0.1 (+python urllib)"


def fix_dir() -> str:
    """The end of a message on a bad data file: where to point rnnlab instead."""
    return f"point {option('--data-dir', 'data_dir')} at a folder holding a good copy of the IDX files"


# ---------------------------------------------------------------------------- checks of a file


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


# ---------------------------------------------------------------------------- downloading


def _verify_bytes(spec: DatasetSpec, base: str, raw: bytes, name: str) -> str | None:
    """Return why ``raw`` (a file as stored, maybe gzip) is not a good copy of ``base``, or None."""
    try:
        data = decompress_idx(raw, name=name)  # bounded: a mirror may serve a decompression bomb
        expected = spec.sha256.get(base)
        if expected:
            digest = hashlib.sha256(data).hexdigest()
            return None if digest == expected else _mismatch(spec, base, digest)
        # No known sum: insist on a well-formed IDX file of the right kind and shape, and not another
        # dataset's known file, so that a mirror serving another file under this name is passed over.
        other = other_datasets_file(spec, hashlib.sha256(data).hexdigest())
        if other is not None:
            return f"it is {other}, not a file of {spec.name}"
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
        raise MissingDataError(
            f"could not download {spec.name} {base}: every mirror failed ({attempts}). "
            f"Download the file by hand and {fix_dir()}, or retry later."
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
    # dest_dir, download's own keyword: through load_split the folder was made (and named) before this.
    _make_folder(dest, f"Pick a writable {option('--data-dir', 'dest_dir')}.")
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
        try:
            _download_one(spec, base, target, mirror_list, retries, timeout, backoff)
        except OSError as exc:  # a read-only disk, a folder in the file's place: the folder, not a mirror
            if exc.filename is None or dest.resolve() not in Path(exc.filename).resolve().parents:
                raise
            raise DataError(f"cannot write {exc.filename} ({exc.strerror or exc}): downloads need a folder they "
                            "can write; set RNNLAB_CACHE_DIR to one (or give "
                            f"{option('--data-dir', 'data_dir')} a writable folder)") from None
        paths.append(target)
    return paths
