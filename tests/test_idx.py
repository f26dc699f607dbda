"""IDX parsing: every malformed header is rejected with a message naming file and problem."""

from __future__ import annotations

import gzip
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from rnnlab.data.idx import IdxError, parse_idx, read_idx, write_idx
from rnnlab.errors import ConfigError, DataError

FIX = "Re-download it or point data_dir at a good copy."


def header(type_code: int, *dims: int) -> bytes:
    return struct.pack(f">BBBB{len(dims)}I", 0, 0, type_code, len(dims), *dims)


def test_idx_error_is_data_error() -> None:
    assert issubclass(IdxError, DataError)


def test_parses_uint8_3d() -> None:
    arr = parse_idx(header(0x08, 2, 2, 3) + bytes(range(12)), name="x")
    assert arr.shape == (2, 2, 3) and arr.dtype == np.uint8
    assert arr[1, 1, 2] == 11
    assert arr.flags.writeable


def test_big_endian_values_are_decoded() -> None:
    arr = parse_idx(header(0x0B, 2) + b"\x01\x02\xff\xfe", name="x")
    assert arr.tolist() == [0x0102, -2]
    assert arr.dtype == np.dtype("int16") and arr.dtype.isnative


def test_empty_file() -> None:
    with pytest.raises(IdxError, match=r"^empty\.idx: empty file \(0 bytes\)") as exc:
        parse_idx(b"", name="empty.idx")
    assert FIX in str(exc.value)


def test_short_header() -> None:
    with pytest.raises(IdxError, match=r"f: truncated header: 3 bytes"):
        parse_idx(b"\x00\x00\x08", name="f")


@pytest.mark.parametrize("magic", [b"\x01\x00", b"\x00\x01", b"<!"])
def test_bad_magic_zero_bytes(magic: bytes) -> None:
    with pytest.raises(IdxError, match=r"^lbl: not an IDX file: starts with bytes .* 00 00 <type> <ndim>"):
        parse_idx(magic + b"\x08\x01" + b"\x00\x00\x00\x01\x05", name="lbl")


def test_gzip_bytes_given_to_parse_get_a_hint() -> None:
    data = gzip.compress(header(0x08, 1) + b"\x00")
    with pytest.raises(IdxError, match="looks gzip-compressed"):
        parse_idx(data, name="f.gz")


def test_unknown_type_code() -> None:
    with pytest.raises(IdxError, match=r"^f: unknown IDX type code 0x0A \(known: 0x08, 0x09, 0x0B"):
        parse_idx(header(0x0A, 1) + b"\x00", name="f")


def test_ndim_zero() -> None:
    with pytest.raises(IdxError, match=r"^f: header says 0 dimensions, an IDX file needs at least 1"):
        parse_idx(b"\x00\x00\x08\x00", name="f")


def test_too_many_dimensions_is_an_idx_error_not_numpys() -> None:
    # NumPy refuses more than 64 with a ValueError, which a download would not take for a bad mirror's file
    with pytest.raises(IdxError, match=r"^f: header says 255 dimensions; an IDX file rnnlab reads has at most 8\. Re-download it"):
        parse_idx(b"\x00\x00\x08\xff" + struct.pack(">I", 1) * 255 + b"\x01", name="f")


def test_header_cut_inside_dimensions() -> None:
    with pytest.raises(IdxError, match=r"truncated header: 3 dimensions need a 16-byte header, file has 10"):
        parse_idx(b"\x00\x00\x08\x03" + b"\x00" * 6, name="f")


def test_truncated_payload_message() -> None:
    data = header(0x08, 60000, 28, 28) + bytes(1234)
    with pytest.raises(IdxError) as exc:
        parse_idx(data, name="train-images-idx3-ubyte.gz")
    assert str(exc.value) == (
        "train-images-idx3-ubyte.gz: truncated: header says 60000x28x28 = 47040000 bytes of data, "
        "file has 1234. Re-download it or point data_dir at a good copy."
    )


def test_truncated_wide_dtype_mentions_value_size() -> None:
    msg = r"truncated: header says 3 values of 4 bytes = 12 bytes of data, file has 8"
    with pytest.raises(IdxError, match=msg):
        parse_idx(header(0x0D, 3) + bytes(8), name="f")


def test_trailing_bytes() -> None:
    msg = r"^lab: trailing bytes: header says 2 = 2 bytes of data, file has 3\."
    with pytest.raises(IdxError, match=msg):
        parse_idx(header(0x08, 2) + b"\x01\x02\x03", name="lab")


@pytest.mark.parametrize(
    "dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"]
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert not list(tmp_path.glob(".*tmp")), "temp file left behind"


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    gz = write_idx(tmp_path / "x.gz", arr)
    plain_named = tmp_path / "looks-plain"
    plain_named.write_bytes(gz.read_bytes())
    np.testing.assert_array_equal(read_idx(plain_named), arr)
    raw_named_gz = tmp_path / "really-raw.gz"
    write_idx(tmp_path / "raw", arr).rename(raw_named_gz)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int64 has no IDX type code"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ConfigError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(header(0x08, 100) + bytes(100))
    path = tmp_path / "labels.gz"
    path.write_bytes(good[:10] + b"\xff" * 20 + good[30:])
    with pytest.raises(IdxError, match=rf"^{re.escape(str(path))}: corrupt gzip stream .*Re-download it"):
        read_idx(path)


def test_cut_off_gzip(tmp_path: Path) -> None:
    good = gzip.compress(header(0x08, 1000) + bytes(range(250)) * 4)
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IdxError, match=rf"^{re.escape(str(path))}: corrupt gzip stream"):
        read_idx(path)


def test_empty_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(IdxError, match=rf"^{re.escape(str(path))}: empty file"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope-idx1-ubyte.gz"
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: file not found\. .*point data_dir at a folder") as exc:
        read_idx(path)
    assert not isinstance(exc.value, IdxError)


def test_real_mnist_parses(mnist_dir: Path) -> None:
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert labels.max() == 9 and images.max() == 255


# ---------------------------------------------------------------------------- bounded decompression


def test_decompression_stops_at_the_declared_size(tmp_path: Path) -> None:
    # A valid header for 100 bytes, then 8 MB of zeros: a few kB on disk. Decompression must stop
    # just past the declared size instead of inflating (and holding) everything.
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(header(0x08, 100) + bytes(8 << 20), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(IdxError) as exc:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes: the stream was inflated past the declared size"
    assert str(exc.value) == (
        f"{path}: trailing bytes: header says 100 = 100 bytes of data, the gzip stream decompresses to more "
        "(stopped reading there). Re-download it or point data_dir at a good copy."
    )


def test_header_declaring_a_huge_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header(0x08, 0xFFFFFFFF, 0xFFFFFFFF, 2) + bytes(1000)))
    with pytest.raises(IdxError, match=r"header says 4294967295x4294967295x2 = \d+ bytes of data, more than the "
                                       r"1073741824 bytes an IDX file may have here\. Re-download it"):
        read_idx(path)


def test_gzip_members_and_zero_padding_still_read(tmp_path: Path) -> None:
    # What gzip.decompress accepts, the bounded reader accepts too: several members, zero padding.
    data = header(0x08, 6) + bytes(range(6))
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(data[:5]) + gzip.compress(data[5:9]) + gzip.compress(data[9:]) + bytes(7))
    assert read_idx(path).tolist() == list(range(6))
    # ... and bombs in a later member are bounded all the same.
    path.write_bytes(gzip.compress(data) + gzip.compress(bytes(8 << 20), compresslevel=1))
    with pytest.raises(IdxError, match="trailing bytes: .* the gzip stream decompresses to more"):
        read_idx(path)


@pytest.mark.parametrize("payload, problem", [
    (b"", "empty file"), (b"hello, world", "not an IDX file"), (header(0x08, 5, 5)[:9], "truncated header"),
])
def test_gzip_of_a_bad_header(tmp_path: Path, payload: bytes, problem: str) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(IdxError, match=rf"^{re.escape(str(path))}: {problem}"):
        read_idx(path)
