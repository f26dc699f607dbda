"""Run folders: atomic writes, checkpoints (state_dicts + JSON metadata) and safe loading.

``checkpoint.pt`` holds only tensors and plain containers and is always read with
``torch.load(..., weights_only=True)``, so a checkpoint from someone else cannot run code.
``checkpoint.json`` holds the schema version, the config and where training stood.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rnnlab.errors import CheckpointError

SCHEMA_VERSION = 1
CHECKPOINT_PT = "checkpoint.pt"
CHECKPOINT_JSON = "checkpoint.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append one line; a crash can at worst leave a partial last line, which readers skip."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(obj) + "\n")
        handle.flush()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a JSON-lines file atomically."""
    atomic_write_text(Path(path), "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn last line left by a crash."""
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def save_checkpoint(run_dir: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` then ``checkpoint.json`` (the JSON names the iteration it matches)."""
    meta = {"schema_version": SCHEMA_VERSION, **meta}
    _atomic_write(run_dir / CHECKPOINT_PT, lambda handle: torch.save(tensors, handle))
    atomic_write_json(run_dir / CHECKPOINT_JSON, meta)


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load ``(tensors, meta)`` from a run folder, with clear errors for every way it can be wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    pt, js = run_dir / CHECKPOINT_PT, run_dir / CHECKPOINT_JSON
    if not pt.exists() or not js.exists():
        raise CheckpointError(
            f"{run_dir}: no checkpoint here (expected {CHECKPOINT_PT} and {CHECKPOINT_JSON}); "
            "is this a run folder written by `rnnlab train`?"
        )
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{js}: corrupt checkpoint metadata ({exc})") from None
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{js}: checkpoint schema version {version!r} is not supported (this rnnlab reads version "
            f"{SCHEMA_VERSION}); retrain, or use the rnnlab release that wrote it"
        )
    try:
        tensors = torch.load(pt, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(
            f"{pt}: cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "the file is corrupt or was not written by rnnlab"
        ) from None
    if not isinstance(tensors, dict) or "model" not in tensors:
        raise CheckpointError(f"{pt}: not an rnnlab checkpoint (no model state_dict)")
    return tensors, meta
