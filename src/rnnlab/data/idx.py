"""Strict reader and writer for the IDX format used by MNIST and its look-alikes.

An IDX file is ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimension sizes, then the
payload in C order. We check every part of that and require the payload length to match the
header exactly, because a silently truncated download otherwise shows up much later as a
reshape error or, worse, as a model trained on fewer images than intended.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from rnnlab.errors import ConfigError, DataError

__all__ = ["IdxError", "IDX_TYPES", "parse_idx", "read_idx", "read_idx_bytes", "write_idx"]

# Type code -> big-endian numpy dtype, as in the IDX specification.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "Re-download it or point --data-dir at a good copy."


class IdxError(DataError):
    """An IDX file is malformed: bad header, truncated, trailing bytes or a corrupt gzip stream."""


def _fail(name: str, problem: str) -> IdxError:
    return IdxError(f"{name}: {problem}. {_FIX}")


def parse_idx(data: bytes, *, name: str) -> np.ndarray:
    """Decode the (already decompressed) bytes of an IDX file into a native-endian array.

    ``name`` is only used in error messages, so pass the file name or path.
    """
    if len(data) == 0:
        raise _fail(name, "empty file (0 bytes), expected an IDX file")
    if len(data) < 4:
        raise _fail(name, f"truncated header: {len(data)} bytes, an IDX header has at least 4")
    if data[:2] != b"\x00\x00":
        hint = " (it looks gzip-compressed; decompress it first)" if data[:2] == _GZIP_MAGIC else ""
        raise _fail(
            name,
            f"not an IDX file: starts with bytes {data[:4].hex(' ')}, "
            f"an IDX file starts with 00 00 <type> <ndim>{hint}",
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise _fail(name, f"unknown IDX type code 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise _fail(name, "header says 0 dimensions, an IDX file needs at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(
            name,
            f"truncated header: {ndim} dimensions need a {header_len}-byte header, "
            f"file has {len(data)} bytes",
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_TYPES[type_code]
    count = 1
    for size in shape:
        count *= size
    expected = count * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        dims = "x".join(str(s) for s in shape)
        what = f"{dims} = {expected} bytes of data"
        if dtype.itemsize > 1:
            what = f"{dims} values of {dtype.itemsize} bytes = {expected} bytes of data"
        problem = "truncated" if actual < expected else "trailing bytes"
        raise _fail(name, f"{problem}: header says {what}, file has {actual}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(shape)
    # astype always copies: that gives a writable array (torch.from_numpy warns on read-only
    # buffers) and swaps big-endian values into native order in the same pass.
    return arr.astype(dtype.newbyteorder("="))


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the decompressed bytes of an IDX file; gzip is detected by its magic, not the name."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{p}: file not found. Check the path, or point --data-dir at a folder with the IDX files."
        ) from None
    except OSError as exc:
        raise DataError(
            f"{p}: cannot read it ({exc.strerror or exc}). Check the path and its permissions."
        ) from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError), EOFError for a cut-off stream, zlib.error for bad data.
        raise _fail(str(p), f"corrupt gzip stream ({exc or type(exc).__name__})") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a native-endian numpy array."""
    return parse_idx(read_idx_bytes(path), name=str(path))


def _encode(array: np.ndarray) -> bytes:
    arr = np.asarray(array)
    for code, dtype in IDX_TYPES.items():
        if arr.dtype.kind == dtype.kind and arr.dtype.itemsize == dtype.itemsize:
            break
    else:
        kinds = ", ".join(str(d.newbyteorder("=")) for d in IDX_TYPES.values())
        raise ConfigError(f"write_idx: dtype {arr.dtype} has no IDX type code; use one of {kinds}.")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ConfigError(f"write_idx: arrays need 1 to 255 dimensions, got {arr.ndim}.")
    header = struct.pack(f">BBBB{arr.ndim}I", 0, 0, code, arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dtype).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed if the name ends in ``.gz``.

    The write is atomic (temp file in the same folder, then ``os.replace``) so a reader never sees
    a half-written file.
    """
    p = Path(path)
    payload = _encode(array)
    if p.name.endswith(".gz"):
        # mtime=0 keeps the output byte-identical across runs.
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
