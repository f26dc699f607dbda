"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything goes through :func:`replacing`: the new content is written to a temporary file in
the target's folder (``os.replace`` is atomic only within one file system), synced to disk and
only then renamed over the target, so a crash or a Ctrl-C at any moment leaves either the old
file or the complete new one. Writers that want a path (exporters, a download) use
:func:`replacing` directly; writers that want a binary file use :func:`atomic_write`.

Finished files get the usual permissions (``0o666`` less the umask): the temporary file is
created by ``open`` (or by the writer), so the kernel applies the umask itself and nobody has
to read it (``os.umask`` can only be read by setting it, which is not thread-safe).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "replacing"]

# Errors only a write into the file can raise (a full disk or quota, a file too large, the disk
# failing): one of them with no file name is about the file being written, whose name is then given.
_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO")
                          if hasattr(errno, name))


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path`` (not yet created) for the block to write.

    On a clean exit the file is synced and renamed over ``path`` (its folder is created first
    if missing). On any exception, Ctrl-C included, the temporary file is removed and ``path``
    is left as it was; to discard the file, leave the block by raising. An OSError about the
    temporary file, or a failed write into it (a full disk: no file named), is raised again
    naming ``path``, the name the user knows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, so folder listings and globs skip it; random, so concurrent writers never collide.
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}{suffix}"
    try:
        yield tmp
        _fsync_file(tmp)  # data before name: a crash must not leave a renamed but empty file
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # best effort: never hide the error that got us here
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and str(exc.filename) == str(tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # keeps the subclass
        failed_write = _failed_write(exc) if isinstance(exc, Exception) else None  # not a Ctrl-C
        if failed_write is not None:
            raise OSError(failed_write.errno, failed_write.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)


def _failed_write(exc: BaseException) -> OSError | None:
    """The write error behind ``exc``, where a full disk (say) failed a write into the file: such an
    error names no file, and may be followed by another one in the writer's cleanup (torch.save's zip
    writer raises "unexpected pos" as it closes after a failed write)."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, OSError) and exc.filename is None and exc.errno in _WRITE_ERRNOS:
            return exc
        exc, seen = exc.__context__, seen + 1  # type: ignore[assignment]
    return None


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a binary file; when it returns, the file replaces ``path`` atomically."""
    with replacing(path) as tmp:
        # "x": O_CREAT | O_EXCL with mode 0o666 (plus O_CLOEXEC, and O_BINARY on Windows), so the
        # kernel applies the umask; mkstemp would make the file 0600.
        with open(tmp, "xb") as handle:
            write(handle)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8, atomically (no newline translation: the same bytes everywhere)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON with a final newline, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk; opened again by name, as path writers have closed theirs."""
    # POSIX syncs through a read-only descriptor (no write permission needed); Windows
    # (_commit) only through one open for writing.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable, where the OS lets a folder be opened and synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder: there the rename is as durable as it gets
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to sync a folder; the file is in place all the same
    finally:
        os.close(fd)
