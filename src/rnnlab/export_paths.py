"""Where ``rnnlab export`` may write, and under what name: checks on the output path, made before any work.

The export replaces its output with ``os.replace``, which destroys whatever file was there without
a word. So an existing file is replaced only if it is a previous rnnlab export (or the caller
forces it), never if it is one of a run folder's own files, and a destination that cannot be
written is reported up front, naming the user's path rather than the hidden temporary file.

Recognising a previous export runs nothing: a TorchScript export is a
zip holding our metadata as the extra file ``rnnlab.json`` (read with :mod:`zipfile`, never
``torch.jit.load``, which would run the file's code); an ONNX export is a protobuf ``ModelProto``
(parsed by ``onnx.load``, data only) whose ``metadata_props`` hold our key ``rnnlab_version``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from rnnlab import checkpoint as ckpt
from rnnlab.errors import option, option_value

__all__ = ["EXTENSIONS", "FORMAT_NAMES", "METADATA_FILE", "VERSION_KEY", "cannot_write", "is_rnnlab_export", "misnamed",
           "out_refusal", "renamed_for", "run_files"]

EXTENSIONS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # each format's default file name ends so
_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript"}  # --out names each claims
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}

METADATA_FILE = "rnnlab.json"  # TorchScript extra file with the same metadata as ONNX's metadata_props
VERSION_KEY = "rnnlab_version"  # the metadata entry every export carries, in both formats
_MAX_METADATA_BYTES = 16 << 20  # far above any real metadata (a permutation of 784 is ~4 KB)
_MAX_ONNX_BYTES = 2 << 30  # protobuf's limit for one serialized message


def run_files() -> tuple[str, ...]:
    """The names of the files ``rnnlab train`` keeps in a run folder."""
    return ckpt.CHECKPOINT_PT, ckpt.CHECKPOINT_JSON, ckpt.CONFIG, ckpt.SUMMARY, ckpt.METRICS, ckpt.CONFUSION


def cannot_write(path: Path, reason: str) -> str:
    """The one line for an output that cannot be written, naming the user's path."""
    return f"cannot write {path}: {reason}; choose another {option('--out', 'path (out=)')}"


def out_refusal(path: Path, run_dir: str | Path, extension: str, *, given: bool = True,
                force: bool = False) -> str | None:
    """Why the export must not be written to ``path`` (one line), or None if it may be.

    Checks, in order: a folder; a path inside a file; a run folder's own file (even with
    ``force``: it would destroy the run); an existing file that is not a previous rnnlab export
    (unless ``force``); a folder the export cannot be created in.
    """
    what = option_value("--out", "out", path) if given else f"the default output {path}"
    if path.is_dir():
        return f"{what} is a directory; give a file name such as {path / 'model'}{extension}"
    for parent in path.parents:  # wording as ``train --out`` (checkpoint.check_out_dir)
        if parent.exists():
            if not parent.is_dir():
                return (f"{what} is inside a file ({parent}); give a folder for the export, such as "
                        f"{option_value('--out', 'out', Path(run_dir) / f'model{extension}')}")
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
                f"choose another {option('--out', 'path (out=)')}, or "
                f"{option('add --force', 'pass force=True')} to replace it")
    return _unwritable(path)


def misnamed(path: Path, fmt: str) -> str | None:
    """Why ``path``'s extension is the other format's, or None: a model.onnx holding TorchScript
    would reach onnxruntime and fail there, far from the cause. Other extensions are the user's."""
    named = _FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if named is None or named == fmt:
        return None
    return (f"{option_value('--out', 'out', path)} ends in {path.suffix}, but {option_value('--format', 'fmt', fmt)} "
            f"writes {FORMAT_NAMES[fmt]}: use {renamed_for(path, fmt)}, or {option_value('--format', 'fmt', named)}")


def renamed_for(path: Path, fmt: str) -> Path:
    """``path`` named for ``fmt``: model.torchscript.pt becomes model.onnx, not model.torchscript.onnx."""
    theirs = EXTENSIONS[_FORMAT_OF_SUFFIX[path.suffix.lower()]]
    stem = path.name[:-len(theirs)] if path.name.lower().endswith(theirs) else path.stem
    return path.with_name(stem + EXTENSIONS[fmt])


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
    """An ONNX model whose ``metadata_props`` hold our version key. Parsing runs nothing; a file
    over protobuf's 2 GB limit is no ONNX file, and without onnx installed none is recognised
    (``--force`` replaces it)."""
    try:
        if path.stat().st_size >= _MAX_ONNX_BYTES:
            return False
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no onnx, not protobuf, not a model: in every case not ours
        return False
    return any(entry.key == VERSION_KEY for entry in model.metadata_props)
