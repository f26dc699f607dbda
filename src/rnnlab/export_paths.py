"""Where ``rnnlab export`` may write: checks on the output path, made before any work.

The export replaces its output with ``os.replace``, which destroys whatever file was there without
a word. So an existing file is replaced only if it is a previous rnnlab export (or the caller
forces it), never if it is one of a run folder's own files, and a destination that cannot be
written is reported up front, naming the user's path rather than the hidden temporary file.

Recognising a previous export reads only a few bytes and runs nothing: a TorchScript export is a
zip holding our metadata as the extra file ``rnnlab.json`` (read with :mod:`zipfile`, never
``torch.jit.load``, which would run the file's code); an ONNX export is a protobuf ``ModelProto``
whose ``metadata_props`` hold our key ``rnnlab_version``. For ONNX the top-level fields are walked
by hand rather than with ``onnx.load``: that works without onnx installed, and it seeks past the
graph instead of reading and parsing a file that may be large and may not be ONNX at all.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

from rnnlab import checkpoint as ckpt

__all__ = ["METADATA_FILE", "VERSION_KEY", "cannot_write", "is_rnnlab_export", "out_refusal", "run_files"]

METADATA_FILE = "rnnlab.json"  # TorchScript extra file with the same metadata as ONNX's metadata_props
VERSION_KEY = "rnnlab_version"  # the metadata entry every export carries, in both formats
_MAX_METADATA_BYTES = 16 << 20  # far above any real metadata (a permutation of 784 is ~4 KB)
_ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props, repeated StringStringEntryProto {key = 1, value = 2}
_MAX_FIELDS = 10_000  # an export has ~20 top-level fields; a stray file must not keep us walking


def run_files() -> tuple[str, ...]:
    """The names of the files ``rnnlab train`` keeps in a run folder."""
    return ckpt.CHECKPOINT_PT, ckpt.CHECKPOINT_JSON, ckpt.CONFIG, ckpt.SUMMARY, ckpt.METRICS, ckpt.CONFUSION


def cannot_write(path: Path, reason: str) -> str:
    """The one line for an output that cannot be written, naming the user's path."""
    return f"cannot write {path}: {reason}; choose another --out"


def out_refusal(path: Path, run_dir: str | Path, extension: str, *, given: bool = True,
                force: bool = False) -> str | None:
    """Why the export must not be written to ``path`` (one line), or None if it may be.

    Checks, in order: a folder; a path inside a file; a run folder's own file (even with
    ``force``: it would destroy the run); an existing file that is not a previous rnnlab export
    (unless ``force``); a folder the export cannot be created in.
    """
    what = f"--out {path}" if given else f"the default output {path}"
    if path.is_dir():
        return f"{what} is a directory; give a file name such as {path / 'model'}{extension}"
    for parent in path.parents:  # wording as ``train --out`` (checkpoint.check_out_dir)
        if parent.exists():
            if not parent.is_dir():
                return (f"{what} is inside a file ({parent}); give a folder for the export, such as "
                        f"--out {Path(run_dir) / 'model'}{extension}")
            break
    target = path.resolve()  # RUN/./checkpoint.pt, a symlink to it: the same file
    names = run_files()
    in_this_run = target.parent == Path(run_dir).resolve()
    # Another run's file counts too: its folder holds other run files next to it.
    others = any((target.parent / name).is_file() for name in names if name != target.name)
    if target.name in names and (in_this_run or others):
        whose = "the exported run's" if in_this_run else "a run folder's"
        return (f"{what} is {whose} {target.name}; writing the export there would destroy the run: "
                f"give another file name, such as {Path(run_dir) / 'model'}{extension}")
    if path.exists() and not force and not is_rnnlab_export(path):
        return (f"{what} exists and is not an rnnlab export: writing the export there would destroy it; "
                "choose another --out, or add --force to replace it")
    return _unwritable(path)


def _unwritable(path: Path) -> str | None:
    """Why no file can be made next to ``path``, or None; found by making one where that is cheap."""
    parent = path.parent
    if not parent.exists():  # made at save time: ask the nearest folder that exists (no side effects)
        existing = next((p for p in parent.parents if p.exists()), Path("."))
        if not os.access(existing, os.W_OK | os.X_OK):
            return cannot_write(path, f"{existing} is not writable")
        return None
    # A real file, as the export will make: os.access says yes to root on /proc and the like.
    probe = parent / f".{path.name}.{os.urandom(6).hex()}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        return cannot_write(path, exc.strerror or type(exc).__name__)
    os.close(fd)
    try:
        probe.unlink()
    except OSError:
        pass  # an empty hidden file at worst; the export itself can go on
    return None


# ---------------------------------------------------------------------------- previous exports
def is_rnnlab_export(path: str | Path) -> bool:
    """Whether ``path`` is a regular file written by ``rnnlab export`` (TorchScript or ONNX)."""
    path = Path(path)
    if not path.is_file():  # a FIFO would block the read below; a device is no export either
        return False
    return _is_torchscript_export(path) or _is_onnx_export(path)


def _is_torchscript_export(path: Path) -> bool:
    """A zip with ``<archive>/extra/rnnlab.json`` holding a JSON object with our version key."""
    try:
        with zipfile.ZipFile(path) as archive:  # reads only the central directory at the end
            for info in archive.infolist():
                parts = info.filename.split("/")
                if len(parts) == 3 and parts[1:] == ["extra", METADATA_FILE]:
                    if info.file_size > _MAX_METADATA_BYTES:
                        return False
                    meta = json.loads(archive.read(info))
                    return isinstance(meta, dict) and VERSION_KEY in meta
    except Exception:  # noqa: BLE001 - not a zip, a damaged one, not JSON: in every case not ours
        return False
    return False


def _is_onnx_export(path: Path) -> bool:
    """A protobuf whose top-level field 14 (``metadata_props``) has an entry keyed ``rnnlab_version``."""
    try:
        with open(path, "rb") as handle:
            return _has_onnx_metadata_key(handle, path.stat().st_size, VERSION_KEY.encode())
    except OSError:
        return False


def _has_onnx_metadata_key(handle: BinaryIO, size: int, key: bytes) -> bool:
    """Walk the top-level protobuf fields, seeking past every value but metadata entries.

    Any byte that is not valid protobuf (a bad wire type, a length past the end) ends the walk:
    the file is not an ONNX model at all.
    """
    for _ in range(_MAX_FIELDS):
        if handle.tell() >= size:
            return False
        tag = _varint(handle)
        if tag is None or tag >> 3 == 0:
            return False
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            if _varint(handle) is None:
                return False
        elif wire in (1, 5):  # fixed 64 / 32 bits
            handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:  # length-delimited: a string, bytes or a message
            length = _varint(handle)
            if length is None or handle.tell() + length > size:
                return False
            if field == _ONNX_METADATA_FIELD and length <= _MAX_METADATA_BYTES:
                if _entry_key(io.BytesIO(handle.read(length))) == key:
                    return True
            else:
                handle.seek(length, os.SEEK_CUR)
        else:  # groups (3, 4) are not in ONNX; 6 and 7 do not exist
            return False
    return False


def _varint(handle: BinaryIO) -> int | None:
    """A protobuf varint (at most 10 bytes), or None at the end of the file or if too long."""
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _entry_key(entry: BinaryIO) -> bytes | None:
    """The key (field 1, a string) of a serialized StringStringEntryProto, or None."""
    end = entry.seek(0, os.SEEK_END)
    entry.seek(0)
    while entry.tell() < end:
        tag = _varint(entry)
        if tag is None or tag & 7 != 2:  # both fields of the entry are strings
            return None
        length = _varint(entry)
        if length is None or entry.tell() + length > end:
            return None
        if tag >> 3 == 1:
            return entry.read(length)
        entry.seek(length, os.SEEK_CUR)
    return None
