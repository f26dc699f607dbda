"""Run folders: checkpoints (state_dicts + JSON metadata), JSON-lines logs and safe loading.

``checkpoint.pt`` holds only tensors and plain containers and is always read with
``torch.load(..., weights_only=True)``, so a checkpoint from someone else cannot run code.
``checkpoint.json`` holds the schema version, the config and where training stood.
"""

from __future__ import annotations

import json
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

from rnnlab.atomic import atomic_write, atomic_write_json, atomic_write_text
from rnnlab.errors import CheckpointError, ConfigError, option_value, warn_caller
from rnnlab.locks import LOCK_FILE, Busy, exclusive

SCHEMA_VERSION = 1
# The files of a run folder.
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFUSION = "confusion.png"  # written by `rnnlab eval` and `rnnlab report`
CHECKPOINT_PT = "checkpoint.pt"
CHECKPOINT_JSON = "checkpoint.json"
_RESTORE = "restore it from a copy or train the run again"


def holds(folder: Path, *names: str) -> bool:
    """Whether ``folder`` holds any of the files ``names`` (a run's: CONFIG, SUMMARY); a folder that
    cannot be read (another user's, lost+found) holds none."""
    try:
        return any((folder / name).exists() for name in names)
    except OSError:
        return False


def check_out_dir(out: Path, purpose: str = "", keyword: str = "out") -> Path:
    """Refuse an ``--out`` folder that is, or lies inside, a file before any work, rather than fail
    after it (mkdir would raise FileExistsError); ``purpose`` ends the message (" for the run"),
    ``keyword`` is the Python caller's name for the folder (``out_dir`` for a compare)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside a file ({path})"
                raise ConfigError(f"{option_value('--out', keyword, out)} {where}; give a folder{purpose}")
            break
    return out


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append one line; a crash can at worst leave a partial last line, which readers skip."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(obj) + "\n")
            handle.flush()
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a full disk fails the write, which names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a JSON-lines file atomically."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects, skipping a torn last line left by a crash and any line
    that is not a JSON object (damaged bytes, a stray list): callers index rows by key."""
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


_META_IN_PT = "meta_json"  # checkpoint.pt's own copy of its metadata


def save_checkpoint(run_dir: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` then ``checkpoint.json`` (the JSON names the iteration it matches).
    The two files cannot be replaced at once: a signal or a crash between the two (a Ctrl-C under
    torchrun lands anywhere) leaves a new ``.pt`` beside the last save's ``.json``. So the ``.pt``
    carries its metadata too, and :func:`load_checkpoint` goes by it where the two are of different
    saves (a ``save_id`` each); an edit of the ``.json`` alone stands."""
    meta = {"schema_version": SCHEMA_VERSION, **meta, "save_id": uuid.uuid4().hex}
    tensors = {**tensors, _META_IN_PT: json.dumps(meta, sort_keys=True)}
    atomic_write(run_dir / CHECKPOINT_PT, lambda handle: torch.save(tensors, handle))
    atomic_write_json(run_dir / CHECKPOINT_JSON, meta)


def error_line(exc: BaseException, *, kind: bool = True, limit: int = 200) -> str:
    """One line about ``exc``: ``"Type: first line"`` (or just the line), or the type's name alone
    where the message is empty (``torch.load`` of an empty file raises a bare ``EOFError()``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0][:limit]}" if kind else lines[0][:limit]


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu", *,
                    training_state: bool = False, quiet: bool = False) -> tuple[dict, dict]:
    """Load ``(tensors, meta)`` from a run folder, with clear errors for every way it can be wrong.
    ``training_state=True`` (resuming) also requires the optimizer, scaler, RNG and progress entries.
    An unreadable ``checkpoint.json`` is stood in for by the copy ``checkpoint.pt`` carries, with a
    warning (not when ``quiet``: a second load of the same folder)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run folder; give the folder `rnnlab train` wrote "
                              f"(it holds {CHECKPOINT_PT})")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    pt, js = run_dir / CHECKPOINT_PT, run_dir / CHECKPOINT_JSON
    if not pt.exists() or not js.exists():
        raise CheckpointError(_no_checkpoint(run_dir))
    try:
        meta, unreadable = json.loads(js.read_text(encoding="utf-8")), None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # garbled (or nested past Python's
        # stack): the .pt's own copy may stand in
        meta, unreadable = None, error_line(exc, kind=False)
    if unreadable is None:  # JSON that parses but says wrong things is an edit: it stands, and is refused
        _check_meta(js, meta, training_state)
    if pt.stat().st_size == 0:  # torch.load would only say EOFError
        raise CheckpointError(f"{pt} is empty (a save or a copy cut short): the checkpoint is corrupt; {_RESTORE}")
    try:
        tensors = torch.load(pt, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise _unloadable(pt, exc) from None
    if unreadable is None:  # (a .json to be stood in for checks the .pt itself, below)
        damage = _zip_damage(pt)  # torch.load checks no checksums: a flipped bit loads as a wrong weight
        if damage is not None:
            raise CheckpointError(f"{pt} is {damage}): the checkpoint is corrupt; {_RESTORE}")
    _check_tensors(pt, tensors, training_state)
    own = tensors.pop(_META_IN_PT, None)  # None in checkpoints from before it was kept there
    if unreadable is not None:
        meta = _own_meta_instead(pt, js, own, unreadable, training_state, quiet=quiet)
    elif isinstance(own, str):
        try:
            own_meta = json.loads(own)
        except json.JSONDecodeError as exc:
            problem = error_line(exc, kind=False)
            raise CheckpointError(f"{pt}: corrupt checkpoint metadata ({problem}); {_RESTORE}") from None
        # A later save of the same run whose .json was never written (another run's .pt copied in is
        # not: the checks of its weights that follow name it).
        later = own_meta.get("save_id") != meta.get("save_id") if isinstance(own_meta, dict) else False
        if later and own_meta.get("config") == meta.get("config"):
            _check_meta(pt, own_meta, training_state)
            meta = own_meta
    return tensors, meta


def _own_meta_instead(pt: Path, js: Path, own: Any, unreadable: str, training_state: bool, *,
                      quiet: bool) -> dict[str, Any]:
    """The metadata ``checkpoint.pt`` carries, for an unreadable ``checkpoint.json``: written with these
    very weights, it is what a save cut between the two files goes by already. Taken only from a .pt
    whose every entry matches its checksum (torch.load checks none), with a warning; else the .json's
    error. A resume takes it too (a compare would otherwise train the seed again from scratch), and
    its next save writes the .json anew."""
    refused = CheckpointError(f"{js}: corrupt checkpoint metadata ({unreadable}); {_RESTORE}")
    try:
        own_meta = json.loads(own) if isinstance(own, str) else None  # None: a .pt from before it kept a copy
        _check_meta(pt, own_meta, training_state)
        with zipfile.ZipFile(pt) as archive:
            if archive.testzip() is not None:
                raise refused
    except (ValueError, RecursionError, CheckpointError, OSError, zipfile.BadZipFile):
        raise refused from None
    then = "; the resume's next save writes it anew" if training_state else ""
    if not quiet:
        warn_caller(f"{js} is unreadable ({unreadable}); going by the copy of its metadata that {pt} carries "
                    f"(iteration {own_meta.get('iteration', '?')}){then}", RuntimeWarning)
    return own_meta


def _unloadable(pt: Path, exc: BaseException) -> CheckpointError:
    """Why ``checkpoint.pt`` does not load, in words: torch's own text runs to a paragraph (cut at a
    line's length it stopped mid-sentence), or is a bare errno where a cut-short file is read past its end."""
    damage = _zip_damage(pt)
    reason = first_sentence(exc)
    if damage is None:  # a whole archive that torch refuses: another program's file, or damaged inside a tensor
        foreign = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if foreign and foreign.group(1).startswith(("numpy.", "numpy._core.")):
            # rnnlab before 2026-12-02 kept a setting given as a NumPy number (np.logspace(...)[i]) as it
            # was, and the optimizer's state pickled it: the file is whole, but a safe load refuses NumPy.
            return CheckpointError(f"{pt}: holds a NumPy value ({foreign.group(1)}), which rnnlab does not load "
                                   "(only tensors and plain values load safely): a run whose settings were given "
                                   "as NumPy numbers by rnnlab before 2026-12-02 wrote it so; train the run again "
                                   "(settings are now stored as plain numbers)")
        said = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        return CheckpointError(f"{pt}: cannot be loaded safely ({said}); the file is corrupt or was not written "
                               f"by rnnlab; {_RESTORE}")
    said = f"; torch says: {reason}" if reason and not isinstance(exc, OSError) else ""
    return CheckpointError(f"{pt} is {damage}{said}): the checkpoint is corrupt; {_RESTORE}")


def _zip_damage(pt: Path) -> str | None:
    """How a checkpoint file (a zip archive, as torch.save writes it) is damaged, or None where it is a
    whole archive (or none at all: not torch.save's); begun with "truncated (", "damaged (", unclosed."""
    try:
        with open(pt, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                return None
        if not zipfile.is_zipfile(pt):  # the directory at its end is missing
            return "truncated (cut short: the end of the archive is missing, as after a copy or a save that stopped"
        with zipfile.ZipFile(pt) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError):
        return "truncated (cut short inside the archive"
    return None if bad is None else f"damaged (its entry {bad} fails its checksum"


def first_sentence(exc: BaseException, limit: int = 160) -> str | None:
    """The first sentence of ``exc``'s message, whole, or None where it has none (``EOFError()``)."""
    line = error_line(exc, kind=False, limit=10_000)
    if line == type(exc).__name__ and not str(exc).strip():
        return None
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", line, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:  # at a word's end, marked as cut
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence


def read_summary_file(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run folder's summary.json: ``(summary, None)``; ``(None, None)`` if there is none;
    ``(None, why)`` if it cannot be used (unreadable, not UTF-8, not JSON, not an object). Each
    caller decides what a damaged summary means to it (an error, a failed seed, no hint)."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"it is not valid JSON ({exc})"
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror or exc})"
    if not isinstance(summary, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
        return None, f"it holds {kind.get(type(summary), 'null')}, not an object"
    return summary, None


def _no_checkpoint(run_dir: Path) -> str:
    """Why there is no checkpoint: a run that diverged before its first one says so in its summary."""
    summary, _ = read_summary_file(run_dir)
    if summary is not None and summary.get("status") == "diverged":
        said = summary.get("message")
        advice = (said if isinstance(said, str) and said else
                  "train it again with a lower learning rate (train.lr) or clipped gradients (train.clip=1.0)")
        return f"{run_dir}: no weights to load: the run diverged before its first checkpoint; {advice}"
    if (run_dir / "config.toml").is_file() and training_now(run_dir):
        return (f"{run_dir}: no checkpoint yet: a run is training there and has not saved its first one; "
                "load it once it has (train.checkpoint_every), or when it ends")
    inside = runs_inside(run_dir)
    if (run_dir / "compare.json").is_file() or any(run_dir.glob("runs/*/seed[0-9]*")):
        which = (f"give one of its runs, e.g. {_either(inside)}" if inside else
                 "none of its runs has a checkpoint yet")
        return (f"{run_dir} is a compare folder, not a run folder: {which} (`rnnlab report {run_dir}` "
                "tabulates them all)")
    if inside:
        return f"{run_dir} holds run folders, not a run's checkpoint: give one of them, e.g. {_either(inside)}"
    return (f"{run_dir}: no checkpoint here (expected {CHECKPOINT_PT} and {CHECKPOINT_JSON}); "
            "is this a run folder written by `rnnlab train`?")


def runs_inside(folder: Path) -> list[Path]:
    """Run folders with a checkpoint below ``folder``, as rnnlab lays them out: its subfolders, a
    compare's runs/ENTRY/seedN, or those of the compares in a folder of them; the first seed of each
    entry first (what an example names), then the others, each sorted."""
    found: list[Path] = []
    for pattern in ("*", "runs/*/*", "*/*", "*/runs/*/*"):
        try:
            found += sorted(path.parent for path in folder.glob(f"{pattern}/{CHECKPOINT_JSON}"))
        except OSError:  # a folder that cannot be read: no runs to name
            break
    runs = list(dict.fromkeys(found))  # deduplicated, in order
    firsts = list(dict.fromkeys(next(r for r in runs if r.parent == run.parent) for run in runs))
    return firsts + [run for run in runs if run not in firsts]


def _either(runs: list[Path]) -> str:
    """One or two of ``runs`` as examples."""
    return str(runs[0]) if len(runs) == 1 else f"{runs[0]} or {runs[1]}"


def training_now(run_dir: Path) -> bool:
    """Whether another process holds the run folder's lock (it is training there)."""
    if not (run_dir / LOCK_FILE).exists():  # never locked, so nobody trains there: a look makes no lock file
        return False  # (rnnlab report and read_run read folders of others', read-only ones, archives)
    try:
        with exclusive(run_dir, "busy"):
            return False
    except Busy:
        return True
    except OSError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(js: Path, meta: Any, training_state: bool) -> None:
    """Refuse damaged metadata here, in one place, rather than with a KeyError deep inside loading."""
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{js}: corrupt checkpoint metadata ({problem}); {_RESTORE}")

    if not isinstance(meta, dict):
        raise bad(f"a JSON object was expected, got {type(meta).__name__}")
    if "schema_version" not in meta:
        raise bad("missing 'schema_version'")
    version = meta["schema_version"]
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{js}: checkpoint schema version {version!r} is not supported (this rnnlab reads version "
            f"{SCHEMA_VERSION}); retrain, or use the rnnlab release that wrote it"
        )
    if not isinstance(meta.get("config"), dict):
        raise bad("missing 'config'" if "config" not in meta else "'config' is not a table of settings")
    if "input" in meta:  # absent from checkpoints written before it was added: the config decides
        shape = meta["input"]
        if not isinstance(shape, dict):
            raise bad("'input' is not a table")
        for key in ("steps", "features", "classes"):
            if key not in shape:
                raise bad(f"missing 'input.{key}'")
            if not _is_int(shape[key]) or shape[key] < 1:
                raise bad(f"'input.{key}' is {shape[key]!r}, a positive integer was expected")
        if not isinstance(shape.get("variable_lengths", False), bool):
            raise bad("'input.variable_lengths' is not true or false")
        if shape.get("dtype", "float32") not in ("uint8", "float32"):  # absent: a checkpoint from before it
            raise bad("'input.dtype' is not uint8 or float32")
        names = shape.get("class_names")
        if names is not None and not (isinstance(names, list) and len(names) == shape["classes"]
                                      and all(isinstance(name, str) for name in names)):
            raise bad(f"'input.class_names' must be null or {shape['classes']} strings")
    required = ("iteration", "train_seconds", "running") if training_state else ()
    for key, kinds in (("iteration", int), ("total_iterations", int), ("train_seconds", (int, float)),
                       ("epoch", (int, float)), ("running", dict)):
        if key in required and key not in meta:
            raise bad(f"missing '{key}', which resuming needs")
        if key in meta and (not isinstance(meta[key], kinds) or isinstance(meta[key], bool)):
            raise bad(f"'{key}' is {type(meta[key]).__name__}, {getattr(kinds, '__name__', 'a number')} expected")


def _check_tensors(pt: Path, tensors: Any, training_state: bool) -> None:
    """The checkpoint must hold a state_dict (names -> tensors), not just any weights-only pickle."""
    if not isinstance(tensors, dict) or "model" not in tensors:
        raise CheckpointError(f"{pt}: not an rnnlab checkpoint (no model state_dict); "
                              "point at a run folder written by `rnnlab train`")
    state = tensors["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        held = "a dict holding other things" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{pt}: not an rnnlab checkpoint (its 'model' entry is {held}; a dict of tensors, "
                              "a state_dict, was expected); point at a run folder written by `rnnlab train`")
    perm = tensors.get("permutation")
    if perm is not None and not (isinstance(perm, torch.Tensor) and perm.dim() == 1 and perm.dtype == torch.long
                                 and torch.equal(perm.sort().values, torch.arange(len(perm), device=perm.device))):
        raise CheckpointError(f"{pt}: corrupt checkpoint ('permutation' is not a permutation of pixel "
                              f"positions); {_RESTORE}")
    if training_state:
        for key in ("optimizer", "scaler", "rng"):
            if key not in tensors:
                raise CheckpointError(f"{pt}: no '{key}' state, so training cannot resume from this checkpoint "
                                      "(eval and predict can still use it); train the run again")
