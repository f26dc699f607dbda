"""Atomic writes: the target holds the old content or the new, and no temporary file is left."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from rnnlab.atomic import atomic_write, atomic_write_json, atomic_write_text, replacing

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions and rename semantics")


def test_a_clean_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("old\n")
    atomic_write_text(target, "new ✓\n")
    assert target.read_bytes() == "new ✓\n".encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_an_error_inside_leaves_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def half_write(handle: BinaryIO) -> None:
        handle.write(b"half of the new cont")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_write)
    with pytest.raises(type(error)):
        with replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


@posix_only
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_permissions_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "a")
        with replacing(tmp_path / "b.bin") as tmp:  # a writer that creates the file itself
            tmp.write_bytes(b"b")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode


def test_a_writer_given_a_path(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with replacing(target, suffix=".onnx") as tmp:
        # A hidden, fresh name next to the target, left for the writer (an exporter) to create.
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.suffix == ".onnx"
        assert not tmp.exists()
        tmp.write_bytes(b"graph")
        assert not target.exists()  # nothing is in place before the block ends
    assert target.read_bytes() == b"graph"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_the_folder_is_created_if_missing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "summary.json"
    atomic_write_json(target, {"status": "completed", "accuracy": 0.5})
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == {"status": "completed", "accuracy": 0.5} and text.endswith("}\n")


@posix_only
def test_a_failed_rename_names_the_target_not_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # a folder in the way: the rename fails
    with pytest.raises(IsADirectoryError) as exc:
        atomic_write_text(target, "x")
    assert exc.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any(target.iterdir())


def _disk_full() -> OSError:
    """What a write into a full disk raises: no file named (the handle's write or close)."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("how", ["write", "zip writer's close"])
def test_a_full_disk_names_the_target(tmp_path: Path, how: str) -> None:
    """A full disk fails a write with no file name; torch.save's zip writer then raises a RuntimeError
    ("unexpected pos") of its own as it closes. Either way the error is the disk's, naming the file."""
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def full(handle: BinaryIO) -> None:
        handle.write(b"part")
        if how == "write":
            raise _disk_full()
        try:
            raise _disk_full()
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20096 vs 19984")

    with pytest.raises(OSError) as caught:
        atomic_write(target, full)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_other_errors_without_a_file_name_stay_as_they_are(tmp_path: Path) -> None:
    def refused(handle: BinaryIO) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")  # not a failed write: nothing to name

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "x", refused)
    assert caught.value.filename is None
