"""Run folders as records: find them, read their config and summary, group them into entries.

An *entry* is what was compared: a preset or a config, trained for several seeds. Inside a
compare folder its runs live in ``runs/<entry>/seed<k>/``; loose run folders are grouped by
their config's label (name, else preset, else model), and split further where their settings
differ. A damaged or missing summary still gives a record (``failed`` or ``unfinished``), so
every seed is accounted for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.checkpoint import CONFIG, METRICS, SUMMARY
from rnnlab.config import RunConfig, load_toml, to_flat_dict
from rnnlab.errors import CheckpointError, ConfigError

__all__ = ["RunRecord", "collect", "read_record", "read_summary", "result_settings"]


@dataclass
class RunRecord:
    """One seed of one entry: where it is and what its summary says."""

    entry: str
    dir: Path
    status: str
    seed: int | None = None
    config: RunConfig | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.summary.get("error") or self.summary.get("message")

    def metrics(self) -> list[dict[str, Any]]:
        try:
            return ckpt.read_jsonl(self.dir / METRICS)
        except OSError:  # e.g. a folder in its place: the seed just has no curve
            return []


# Summary keys the report reads, with the JSON type each must have (a damaged file may hold anything).
_NUMBER = (int, float)
_SUMMARY_TYPES = {"status": str, "name": str, "seed": int, "reference": dict, "confusion_matrix": list,
                  **dict.fromkeys(("test_accuracy", "val_accuracy", "train_seconds", "samples_per_second",
                                   "iterations", "epochs", "parameters"), _NUMBER)}
_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer", _NUMBER: "a number"}


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run folder's summary.json: ``{}`` if there is none, and a ``failed`` summary saying why
    if it is unusable, so that one damaged seed is reported (and retrained) instead of ending it all."""
    summary, problem = ckpt.read_summary_file(Path(run_dir))
    if problem is not None:
        return _corrupt(problem)
    if summary is None:
        return {}
    for key, kind in _SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return _corrupt(f"its {key} is {json.dumps(value)[:40]}, not {_KINDS[kind]}")
        if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN: the statistics would fail
            return _corrupt(f"its {key} is {value}, not a finite number")
    return summary


def _corrupt(why: str) -> dict[str, Any]:
    return {"status": "failed", "error": f"{SUMMARY} is corrupt: {why}"}


def read_record(run_dir: Path, entry: str | None = None) -> RunRecord:
    """A run folder as a record; one without a summary (still running, or killed) is ``unfinished``."""
    run_dir = Path(run_dir)
    config = None
    if (run_dir / CONFIG).exists():
        try:
            config = load_toml(run_dir / CONFIG)
        except ConfigError:
            config = None  # still report the seed; its summary may say why
    summary = read_summary(run_dir)
    status = summary.get("status", "unfinished")
    if entry is None:
        entry = (config.label if config else None) or summary.get("name") or run_dir.name
    seed = summary.get("seed", config.seed if config else None)
    return RunRecord(entry, run_dir, status, seed, config, summary)


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG).exists() or (path / SUMMARY).exists()


def collect(paths: list[str | Path]) -> dict[str, list[RunRecord]]:
    """Group the runs under ``paths`` (run folders, compare folders, or folders of either) by entry."""
    groups: dict[str, list[RunRecord]] = {}
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a run folder or compare folder; "
                                  "give run folders or compare folders")
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such folder; give run folders or compare folders")
        found = _records_under(path)
        if not found:
            raise CheckpointError(f"{path}: no run folders found (a run folder holds {CONFIG} or {SUMMARY})")
        for record in found:
            key = record.dir.resolve()
            if key not in seen:
                seen.add(key)
                groups.setdefault(record.entry, []).append(record)
    split: dict[str, list[RunRecord]] = {}
    for entry, records in groups.items():
        split.update(_split_by_config(entry, records))
    for records in split.values():
        records.sort(key=lambda r: (r.seed is None, r.seed or 0, str(r.dir)))
    return split


def result_settings(config: RunConfig) -> dict[str, Any]:
    """A config as a flat dict of dotted keys, without the settings that do not change results
    (threads, device, backward, checkpoint_every, where the data was read from): two runs with
    equal ones differ only by chance, or by floating-point rounding."""
    return {key: value for key, value in to_flat_dict(config).items()
            if key not in ("train.threads", "train.device", "train.backward", "train.checkpoint_every",
                           "data.data_dir", "data.download")}


def _split_by_config(entry: str, records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Loose runs are grouped by label (the model's shape, or the run's name), which does not say
    what they trained on or how: runs of the same label but different settings (other than the
    seed) become separate rows, each named by the settings that set it apart. A run whose config
    could not be read stays with the others of its label."""
    by_settings: dict[str, tuple[dict[str, Any], list[RunRecord]]] = {}
    unread = []
    for record in records:
        if record.config is None:
            unread.append(record)
            continue
        settings = {k: v for k, v in result_settings(record.config).items() if k not in ("seed", "name")}
        key = json.dumps(settings, sort_keys=True, default=str)
        by_settings.setdefault(key, (settings, []))[1].append(record)
    if len(by_settings) <= 1:
        return {entry: records}
    differ = [k for k in next(iter(by_settings.values()))[0]
              if len({json.dumps(s.get(k), default=str) for s, _ in by_settings.values()}) > 1]
    def name(settings: dict[str, Any], keys: list[str], short: bool) -> str:
        shown = [f"{k}={Path(v).name if short and k == 'data.file' and v else v}" for k, v in
                 ((k, settings.get(k)) for k in keys)]
        return f"{entry} [{', '.join(shown)}{', ...' if len(keys) < len(differ) else ''}]"

    # Short names first (three keys, a file's name without its folder); all of it where they clash.
    names = [name(settings, differ[:3], True) for settings, _ in by_settings.values()]
    names = [short if names.count(short) == 1 else name(settings, differ, False)
             for short, (settings, _) in zip(names, by_settings.values())]
    groups = {label: members for label, (_, members) in zip(names, by_settings.values())}
    if unread:  # runs without a readable config: their own row, under the plain label
        groups[entry] = unread
    return groups


def _records_under(path: Path) -> list[RunRecord]:
    """Run folders at or below ``path``; a compare folder's layout names the entries."""
    if _is_run_dir(path):
        return [read_record(path)]
    if (path / "runs").is_dir():  # a compare folder: runs/<entry>/seed<k>/
        records = []
        for entry_dir in sorted(p for p in (path / "runs").iterdir() if p.is_dir()):
            for run_dir in sorted(p for p in entry_dir.iterdir() if p.is_dir() and _is_run_dir(p)):
                records.append(read_record(run_dir, entry=entry_dir.name))
        if records:
            return records
    records = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        records.extend(_records_under(child))
    return records
