"""Refusing an ``--out`` folder of other files: a run, a compare and a report each write a folder
of their own, never their files among a user's (``--out img`` beside one's PNGs).

An empty folder is taken, and so is one holding only rnnlab's lock file (left by a run that failed
to start) or what file browsers leave in any folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from rnnlab.checkpoint import CHECKPOINT_JSON, CHECKPOINT_PT, CONFIG, METRICS, SUMMARY, holds
from rnnlab.errors import ConfigError, option_value
from rnnlab.locks import LOCK_FILE

# Not a user's files: rnnlab's lock, what macOS and Windows file browsers add to any folder, and
# what keeps an empty folder in git.
_IGNORED = frozenset({LOCK_FILE, ".DS_Store", "Thumbs.db", "desktop.ini", ".gitkeep", ".gitignore"})
# A report's own files: one cut short while drawing its figures left them, and is run again.
_REPORT_FILES = ("results.md", "results.csv", "learning_curves.png", "accuracy.png", "sweep.png")
# The temporary file of an atomic write cut short (rnnlab.atomic.replacing: ".NAME.HEX12SUFFIX").
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}(\.[A-Za-z0-9]+)?$")


def of_a_run(entry: Path) -> bool:
    """Whether ``entry`` makes its folder a run's, begun or whole (train's checks then say what to do)."""
    return entry.name in (CONFIG, METRICS, SUMMARY, CHECKPOINT_PT, CHECKPOINT_JSON)


def of_a_compare(entry: Path) -> bool:
    """Whether ``entry`` makes its folder a compare's: its compare.json, or its runs/ENTRY/seedN
    folders (a compare stopped before compare.json, or a seed's folder made by its worker and no
    more: rerunning the compare finishes it)."""
    if entry.name == "compare.json":
        return True
    return entry.name == "runs" and entry.is_dir() and any(seed.is_dir() for seed in entry.glob("*/seed[0-9]*"))


def of_runs(entry: Path) -> bool:
    """Whether ``entry`` makes its folder one a report may write into: a compare's, a report's
    results.json, a run's files, or a run or compare folder (``rnnlab report runs`` writes there)."""
    marks = ("compare.json", "results.json", CONFIG, SUMMARY)
    return (entry.name in marks or entry.name in _REPORT_FILES or of_a_compare(entry)
            or (entry.is_dir() and holds(entry, *marks)))


def other_files(folder: Path, ours: Callable[[Path], bool]) -> list[str]:
    """What makes ``folder`` someone else's: its entries, sorted (folders with a trailing ``/``),
    unless one of them is ``ours`` (the folder is rnnlab's already: its own checks decide) or it
    holds nothing but ignorable files. [] for a folder that is missing or cannot be listed."""
    try:
        entries = [entry for entry in folder.iterdir()
                   if entry.name not in _IGNORED and not _TEMPORARY.match(entry.name)]
        if any(ours(entry) for entry in entries):
            return []
        return sorted(entry.name + "/" * entry.is_dir() for entry in entries)
    except OSError:  # missing, a file, unreadable: refused elsewhere if at all (check_out_dir)
        return []


def refuse_other_files(folder: Path, ours: Callable[[Path], bool], *, keyword: str, kind: str,
                       example: Path) -> None:
    """ConfigError naming what ``folder`` holds if :func:`other_files` finds any; ``kind`` is what
    rnnlab would write there ("a run"), ``example`` a new folder to suggest, ``keyword`` the Python
    caller's name for ``--out``."""
    names = other_files(folder, ours)
    if names:
        shown = ", ".join(names[:3]) + ", ..." * (len(names) > 3)
        count = f"{len(names)} entries: " if len(names) > 3 else ""
        raise ConfigError(f"{option_value('--out', keyword, folder)} is a folder of other files ({count}{shown}), "
                          f"not {kind}; {kind} writes a folder of its own: choose a new one, e.g. "
                          f"{option_value('--out', keyword, example)}")
