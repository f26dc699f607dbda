"""Strict reader and writer for the IDX format used by MNIST and its look-alikes.

An IDX file is ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimension sizes, then the
payload in C order. We check every part of that and require the payload length to match the
header exactly, because a silently truncated download otherwise shows up much later as a
reshape error or, worse, as a model trained on fewer images than intended.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from rnnlab.atomic import atomic_write
from rnnlab.errors import ConfigError, DataError, option

__all__ = [
    "IDX_TYPES", "MAX_IDX_BYTES", "IdxError", "decompress_idx", "parse_idx", "read_idx", "read_idx_bytes",
    "write_idx",
]

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
# The largest IDX file read by default: 20 times MNIST's largest (47 MB) and room for EMNIST's
# (0.55 GB). A header may declare up to (2**32)**255 bytes; we do not take its word for that.
MAX_IDX_BYTES = 1 << 30


class IdxError(DataError):
    """An IDX file is malformed: bad header, truncated, trailing bytes or a corrupt gzip stream."""


def _fail(name: str, problem: str) -> IdxError:
    return IdxError(f"{name}: {problem}. Re-download it or point {option('--data-dir', 'data_dir')} at a good copy.")


MAX_DIMS = 8


def _parse_header(data: bytes, *, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """Check the header at the start of ``data``; return ``(dtype, shape, header bytes, data bytes)``.

    Only the header is looked at, so this also works on the first bytes of a stream.
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
    if ndim > MAX_DIMS:  # NumPy holds at most 64; a data set needs a handful
        raise _fail(name, f"header says {ndim} dimensions; an IDX file rnnlab reads has at most {MAX_DIMS}")
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
    return dtype, shape, header_len, count * dtype.itemsize


def _declared(dtype: np.dtype, shape: tuple[int, ...], nbytes: int) -> str:
    """``"10000x28x28 = 7840000 bytes of data"``: what a header promises, for messages."""
    dims = "x".join(str(s) for s in shape)
    if dtype.itemsize > 1:
        return f"{dims} values of {dtype.itemsize} bytes = {nbytes} bytes of data"
    return f"{dims} = {nbytes} bytes of data"


def parse_idx(data: bytes, *, name: str) -> np.ndarray:
    """Decode the (already decompressed) bytes of an IDX file into a native-endian array.

    ``name`` is only used in error messages, so pass the file name or path.
    """
    dtype, shape, header_len, expected = _parse_header(data, name=name)
    actual = len(data) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes"
        raise _fail(name, f"{problem}: header says {_declared(dtype, shape, expected)}, file has {actual}")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    # astype always copies: that gives a writable array (torch.from_numpy warns on read-only
    # buffers) and swaps big-endian values into native order in the same pass.
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _gunzip(data: bytes, n: int) -> bytes:
    """Up to ``n`` decompressed bytes of gzip ``data`` (one or more members, zero padding after the
    last ignored, as ``gzip.decompress`` reads them); inflates no more than it returns."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        return stream.read(n)


def _gunzip_bounded(data: bytes, name: str, max_bytes: int | None) -> bytes:
    # Enough for any header (255 dimensions at most), so one read settles how much may follow.
    head = _gunzip(data, 4 + 4 * 255)
    dtype, shape, header_len, nbytes = _parse_header(head, name=name)
    total = header_len + nbytes
    if max_bytes is not None and total > max_bytes:
        raise _fail(name, f"header says {_declared(dtype, shape, nbytes)}, more than the "
                          f"{max_bytes} bytes an IDX file may have here")
    # One byte more than declared is enough to know there is too much: a small file holding
    # gigabytes of zeros behind a valid header stops here, not after filling memory. Starting
    # over (re-inflating the header costs nothing) saves copying the output onto the header.
    out = _gunzip(data, total + 1) if len(head) <= total else head
    if len(out) > total:
        raise _fail(name, f"trailing bytes: header says {_declared(dtype, shape, nbytes)}, the gzip "
                          "stream decompresses to more (stopped reading there)")
    return out


def decompress_idx(data: bytes, *, name: str, max_bytes: int | None = MAX_IDX_BYTES) -> bytes:
    """Return the IDX bytes in ``data``: gunzipped if it starts with the gzip magic, else as is.

    Decompression stops as soon as the output exceeds the size the IDX header declares, and a
    header declaring more than ``max_bytes`` (None: no limit) is refused before decompressing, so
    hostile input costs neither unbounded memory nor time. The caller still runs ``parse_idx``.
    """
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return _gunzip_bounded(data, name, max_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        # EOFError: a cut-off stream; zlib.error: bad data, a bad CRC or length, or a bad next member.
        raise _fail(name, f"corrupt gzip stream ({exc or type(exc).__name__})") from None


def read_idx_bytes(path: str | os.PathLike[str], *, max_bytes: int | None = MAX_IDX_BYTES) -> bytes:
    """Return the decompressed bytes of an IDX file; gzip is detected by its magic, not the name.

    Files (plain or decompressed) larger than ``max_bytes`` are refused; None: no limit.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise _fail(str(p), f"file is {size} bytes, more than the {max_bytes} an IDX file may have here")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{p}: file not found. Check the path, or point {option('--data-dir', 'data_dir')} at a folder with "
            "the IDX files."
        ) from None
    except OSError as exc:
        raise DataError(
            f"{p}: cannot read it ({exc.strerror or exc}). Check the path and its permissions."
        ) from None
    return decompress_idx(raw, name=str(p), max_bytes=max_bytes)


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

    The write is atomic (see :mod:`rnnlab.atomic`) so a reader never sees a half-written file.
    """
    p = Path(path)
    payload = _encode(array)
    if p.name.endswith(".gz"):
        # mtime=0 keeps the output byte-identical across runs.
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write(p, lambda handle: handle.write(payload))
    return p
