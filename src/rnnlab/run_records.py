"""Run folders as records: find them, read their config and summary, group them into entries.

An *entry* is what was compared: a preset or a config, trained for several seeds. Inside a
compare folder its runs live in ``runs/<entry>/seed<k>/``; loose run folders are grouped by
their config's label (name, else preset, else model), and split further where their settings
differ. A damaged or missing summary still gives a record (``failed`` or ``unfinished``), so
every seed is accounted for. An earlier report's ``results.json`` gives records too, without
the run folders: each seed's accuracy, times and status, so that a report can be rebuilt (another
baseline, a newer layout) on a machine that does not have the runs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.checkpoint import CONFIG, METRICS, SUMMARY
from rnnlab.config import RunConfig, from_dict, load_toml, to_flat_dict
from rnnlab.errors import CheckpointError, ConfigError, UnknownModelError, describe, warn_caller

__all__ = ["RESULTS_SCHEMA", "RunRecord", "collect", "read_record", "read_results", "read_summary",
           "result_settings"]

RESULTS_SCHEMA = 1  # the results.json schema_version this rnnlab writes and reads


@dataclass
class RunRecord:
    """One seed of one entry: where it is and what its summary says."""

    entry: str
    dir: Path
    status: str
    seed: int | None = None
    config: RunConfig | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # From an earlier report's results.json: that file, and what its row says of the entry where
    # there is no config to read it from (architecture, batch size, optimizer, protocol).
    results_file: Path | None = None
    carried: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.summary.get("error") or self.summary.get("message")

    def metrics(self) -> list[dict[str, Any]]:
        if self.results_file is not None:  # its dir names a folder on the machine that made the report
            return []
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
    problem = _accuracy_problem(summary, "its ")
    return _corrupt(problem) if problem else summary


def _accuracy_problem(record: dict[str, Any], its: str) -> str | None:
    """Why a run's accuracies cannot be what rnnlab wrote (the types are checked already): a value
    outside 0-100, or a completed run without its test accuracy, which the mean would silently skip."""
    for key in ("test_accuracy", "val_accuracy"):
        value = record.get(key)
        if value is not None and not 0.0 <= value <= 100.0:
            return f"{its}{key} is {value}, not a percentage from 0 to 100"
    if record.get("status") == "completed" and record.get("test_accuracy") is None:
        return f"{its}status is completed, but it has no test_accuracy"
    return None


def _corrupt(why: str) -> dict[str, Any]:
    return {"status": "failed", "error": f"{SUMMARY} is corrupt: {why}"}


def read_record(run_dir: Path, entry: str | None = None) -> RunRecord:
    """A run folder as a record; one without a summary (still running, or killed) is ``unfinished``."""
    run_dir = Path(run_dir)
    config, unreadable = None, None
    if (run_dir / CONFIG).exists():
        try:
            config = load_toml(run_dir / CONFIG)
        except UnknownModelError as error:  # its settings unread, it would be pooled with other runs
            raise UnknownModelError(f"{run_dir / CONFIG}: {error}") from None
        except ConfigError as error:  # still report the seed, and say why it stands apart
            unreadable = f"its {CONFIG} cannot be read ({error}), so it cannot be resumed"
    summary = read_summary(run_dir)
    if unreadable and not (summary.get("error") or summary.get("message")):  # a reason of its own comes first
        summary = {**summary, "error": unreadable}
    # no summary yet: another process still training it (a compare under way), or stopped for good
    status = summary.get("status") or ("running" if ckpt.training_now(run_dir) else "unfinished")
    if entry is None:
        entry = (config.label if config else None) or summary.get("name") or run_dir.name
    seed = summary.get("seed", config.seed if config else None)
    return RunRecord(entry, run_dir, status, seed, config, summary)


def collect(paths: list[str | Path]) -> dict[str, list[RunRecord]]:
    """Group the runs under ``paths`` (run folders, compare folders, folders of either, or an
    earlier report's results.json) by entry. An entry of a results.json whose name another path
    also has is named after the file's folder: ``dlw-rnn-a [tutorials]``."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, (list, tuple)):
        # a string would be read character by character: "/" first, and the whole disk walked
        raise ConfigError(f"give a list of run folders, compare folders or results.json files, not {describe(paths)}"
                          + (f": [{str(paths)!r}]" if isinstance(paths, (str, os.PathLike)) else ""))
    if not paths:
        raise ConfigError("no run folders, compare folders or results.json files given")
    parts: list[tuple[Path, dict[str, list[RunRecord]]]] = []  # per path; a folder's records under ""
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() == ".json":
            if any(p.resolve() == path.resolve() for p, _ in parts):
                raise CheckpointError(f"{path} is given twice; give each results.json once")
            parts.append((path, _records_from_results(path)))
            continue
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a run folder or compare folder; "
                                  "give run folders, compare folders or a results.json")
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such folder; give run folders or compare folders")
        found = _records_under(path)
        if not found:
            hint = (f"; to rebuild the report it holds, give its {path / 'results.json'}"
                    if (path / "results.json").is_file() else "")
            raise CheckpointError(f"{path}: no run folders found (a run folder holds {CONFIG} or {SUMMARY}){hint}")
        parts.append((path, {"": found}))
    groups: dict[str, list[RunRecord]] = {}
    seen: set[Path] = set()
    for _, part in parts:
        for record in part.get("", []):  # run folders: merged by entry, each folder once
            key = record.dir.resolve()
            if key not in seen:
                seen.add(key)
                groups.setdefault(record.entry, []).append(record)
    from_runs: dict[str, list[RunRecord]] = {}
    for entry, records in groups.items():
        from_runs.update(_split_by_config(entry, _without_repeats(entry, records)))
    reports = [(path, part) for path, part in parts if "" not in part]
    split: dict[str, list[RunRecord]] = {}
    for path, part in parts:  # in the order given; the run folders' entries where the first folder is
        if "" in part:
            split.update(from_runs)
            continue
        for entry, records in part.items():
            others = [p for p, q in reports if p != path and entry in q]
            clash = entry in from_runs or bool(others)
            label = path.resolve().parent.name
            if clash and any(p.resolve().parent.name == label for p in others):
                label = str(path)
            split[f"{entry} [{label}]" if clash else entry] = records
    for records in split.values():
        records.sort(key=lambda r: (r.seed is None, r.seed or 0, str(r.dir)))
    return split


# What a results.json entry and each of its runs must hold, with the JSON type of each (None allowed
# except for the names and statuses): a file from elsewhere is checked before it is believed.
_ROW_TYPES = {"entry": str, "runs": list, "architecture": str, "parameters": int, "epochs": _NUMBER,
              "batch_size": int, "optimizer": str, "protocol": str, "reported_test_accuracy": _NUMBER,
              "source": str, "reference_notes": str, "reference_budget": dict, "config": dict}
_RUN_TYPES = {"status": str, "seed": int, "dir": str, "error": str, "stopped_early": dict, "test_set": str,
              **dict.fromkeys(("test_accuracy", "val_accuracy", "train_seconds", "samples_per_second",
                               "iterations", "epochs"), _NUMBER)}
_CARRIED = ("architecture", "batch_size", "optimizer", "protocol")  # a row's fields a config would give


def read_results(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The context and the entries of a results.json that ``rnnlab compare`` or ``report`` wrote,
    checked: a file that is not one, or that a newer rnnlab wrote, is refused with the reason."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON ({exc}); give a results.json that rnnlab wrote") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list) or "schema_version" not in data:
        raise CheckpointError(f"{path} is not a results.json of rnnlab (it has no schema_version and entries)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > RESULTS_SCHEMA or version < 1:
        raise CheckpointError(f"{path} has results schema {version!r}; this rnnlab reads schema "
                              f"{RESULTS_SCHEMA} (a newer rnnlab wrote it: upgrade rnnlab)")
    context = data.get("context") if isinstance(data.get("context"), dict) else {}
    for index, row in enumerate(data["entries"]):
        problem = _type_problem(row, _ROW_TYPES, required=("entry", "runs"))
        for run in (row.get("runs") or []) if problem is None else []:
            problem = problem or _type_problem(run, _RUN_TYPES, required=("status",), within="a run whose ")
            if problem is None and (wrong := _accuracy_problem(run, "")):
                problem = f"has a run whose {wrong}"
        if problem is not None:
            name = row.get("entry") if isinstance(row, dict) else None
            raise CheckpointError(f"{path}: entry {index + 1}{f' ({name})' if isinstance(name, str) else ''} "
                                  f"{problem}; it is not a results.json rnnlab wrote, or it was edited")
    return context, data["entries"]


def _type_problem(item: Any, types: dict[str, Any], *, required: tuple[str, ...], within: str = "") -> str | None:
    if not isinstance(item, dict):
        return f"has {within or 'itself as '}{json.dumps(item)[:40]}, not an object"
    for key in required:
        if item.get(key) is None or item.get(key) == "":
            return f"has {within}no {key}"
    for key, kind in types.items():
        value = item.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (isinstance(value, float) and not math.isfinite(value))):
            return f"has {within}{key} {json.dumps(value)[:40]}, not {_KINDS[kind]}"
    return None


def _records_from_results(path: Path) -> dict[str, list[RunRecord]]:
    """A results.json's entries as records: what aggregation reads of a run's summary, rebuilt from
    the row (reference accuracy, parameters, epochs) and its runs (seed, status, accuracy, times)."""
    _, rows = read_results(path)
    groups: dict[str, list[RunRecord]] = {}
    for row in rows:
        if row["entry"] in groups:
            raise CheckpointError(f"{path} lists the entry {row['entry']!r} twice; it was edited")
        carried = {k: row.get(k) for k in _CARRIED}
        try:  # newer reports carry each entry's config: its architecture, the sweep's axis
            config = from_dict(row["config"], source=f"{path}, entry {row['entry']}") if row.get("config") else None
        except ConfigError as error:  # another version's keys: the row's own fields stand in for it,
            config, carried["config"] = None, row["config"]  # and the config is written back as it was
            warn_caller(f"{error}; the entry is reported without it (its config is kept as it was)",
                        RuntimeWarning)
        reference = {"reported_test_accuracy": row.get("reported_test_accuracy"), "source": row.get("source"),
                     "notes": row.get("reference_notes"), "budget": row.get("reference_budget")}
        shared = {"parameters": row.get("parameters"), "epochs": row.get("epochs"),
                  "reference": reference if any(v is not None for v in reference.values()) else None}
        groups[row["entry"]] = [RunRecord(
            row["entry"], Path(run.get("dir") or f"{row['entry']}/seed{run.get('seed')}"), run["status"],
            run.get("seed"), config,
            {k: v for k, v in {**shared, **run}.items() if v is not None and k != "dir"},
            results_file=path, carried=carried) for run in row["runs"]]
    return groups


def result_settings(config: RunConfig) -> dict[str, Any]:
    """A config as a flat dict of dotted keys, without the settings that do not change results
    (threads, device, backward, checkpoint_every, where the data was read from): two runs with
    equal ones differ only by chance, or by floating-point rounding."""
    return {key: value for key, value in to_flat_dict(config).items()
            if key not in ("train.threads", "train.device", "train.backward", "train.checkpoint_every",
                           "data.data_dir", "data.download")}


def _without_repeats(entry: str, records: list[RunRecord]) -> list[RunRecord]:
    """One record per run: records of the same settings and seed are one run twice (a compare's
    seed and a loose run of the same config; a run started again instead of resumed), which would
    count as two samples, or as a seed both done and unfinished. A completed one stands for the
    others, else the one that got furthest; each dropped record is warned of."""
    attempts: dict[str, list[RunRecord]] = {}
    order: list[RunRecord | str] = []  # records, and the key of each repeated run where it first came
    for record in records:
        if record.config is None or not isinstance(record.seed, int):
            order.append(record)
            continue
        settings = {k: v for k, v in result_settings(record.config).items() if k not in ("name", "seed")}
        key = json.dumps([settings, record.seed], sort_keys=True, default=str)
        if key not in attempts:
            attempts[key] = []
            order.append(key)
        attempts[key].append(record)
    kept = []
    for item in order:
        if isinstance(item, RunRecord):
            kept.append(item)
            continue
        runs = attempts[item]
        done = [r for r in runs if r.status == "completed"]
        chosen = done[0] if done else max(runs, key=lambda r: _iterations(r))  # the first of equals
        for record in runs:
            if record is chosen:
                continue
            what = ("is the same run as" if record.status == "completed" else
                    f"is an attempt ({record.status}) at the same run as")
            warn_caller(f"{record.dir} {what} {chosen.dir} (the same settings and seed {record.seed}): counted once "
                        f"in {entry}", RuntimeWarning)
        kept.append(chosen)
    return kept


def _iterations(record: RunRecord) -> int:
    done = record.summary.get("iterations")
    return done if isinstance(done, int) and not isinstance(done, bool) else -1


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


def _compare_order(path: Path) -> dict[str, int]:
    """Entry name -> place, from a compare folder's compare.json ({} if it has none, or a damaged one)."""
    try:
        entries = json.loads((path / "compare.json").read_text(encoding="utf-8")).get("entries")
        return {e["name"]: i for i, e in enumerate(entries) if isinstance(e.get("name"), str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _records_under(path: Path) -> list[RunRecord]:
    """Run folders at or below ``path``; a compare folder's layout names the entries."""
    if ckpt.holds(path, CONFIG, SUMMARY):
        return [read_record(path)]
    if (path / "runs").is_dir():  # a compare folder: runs/<entry>/seed<k>/
        records = []
        order = _compare_order(path)  # the entries in the order the compare gave them, as its report shows them
        for entry_dir in sorted((p for p in (path / "runs").iterdir() if p.is_dir()),
                                key=lambda p: (order.get(p.name, len(order)), p.name)):
            for run_dir in sorted(p for p in entry_dir.iterdir() if p.is_dir() and ckpt.holds(p, CONFIG, SUMMARY)):
                records.append(read_record(run_dir, entry=entry_dir.name))
        if records:
            return records
    records = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        records.extend(_records_under(child))
    return records
