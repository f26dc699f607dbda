"""A compare folder holds one compare: a rerun with other settings is refused, naming them.

A compare folder's seeds were all made with the same settings (overrides, sweeps, config files).
Rerun with a changed setting into the same folder, some of its seeds would be of one config and
some of another; so the whole compare is refused, naming each setting that changed (as the seed
folders' ``config.toml`` record it against what this compare would train), and the way out is a
new folder, or starting the whole compare again: never deleting one seed's folder, which would
leave its siblings on the old settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlab.checkpoint import CONFIG
from rnnlab.config import DATA_LOCATION, RunConfig, load_toml
from rnnlab.errors import ConfigError, option
from rnnlab.pool import Task
from rnnlab.run_records import result_settings

__all__ = ["changed_settings", "refuse_changed_settings"]

SHOWN = 4  # changes (and entries per change) named in full; more are counted


def _settings(config: RunConfig) -> dict[str, Any]:
    """What makes two runs the same run: not threads or device, nor where the data was read from
    (a sequence file may have moved; whether it holds the same data is checked apart)."""
    return {k: v for k, v in result_settings(config).items() if k not in DATA_LOCATION}


def _shown(value: Any) -> str:
    """A setting's value as an override writes it: ``100``, ``adam``, ``""``; ``unset`` where absent."""
    if value is None:
        return "unset"
    return f"{value}" if value != "" else '""'


def changed_settings(tasks: list[Task]) -> dict[str, list[str]]:
    """``{"train.iterations 120 -> 100": [entries]}``: each setting a task's seed folder was made
    with that this compare would change, with the entries whose seeds it changes."""
    changes: dict[str, list[str]] = {}
    for task in tasks:
        path = Path(task.run_dir) / CONFIG
        if not path.exists():
            continue
        then, now = _settings(load_toml(path)), _settings(task.config)
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key):
                entries = changes.setdefault(f"{key} {_shown(then.get(key))} -> {_shown(now.get(key))}", [])
                if task.entry not in entries:
                    entries.append(task.entry)
    return changes


def _listed(items: list[str], what: str = "more", sep: str = ", ") -> str:
    return sep.join(items[:SHOWN]) + (f" and {len(items) - SHOWN} {what}" if len(items) > SHOWN else "")


def refuse_changed_settings(tasks: list[Task]) -> None:
    """Raise ConfigError where the compare folder of ``tasks`` (``<out>/runs/<entry>/seed<k>``) was
    made with other settings than these tasks', naming each changed setting and the entries it touches."""
    changes = changed_settings(tasks)
    if not changes:
        return
    run_dir = Path(tasks[0].run_dir)
    out = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir.parent  # <out>/runs/<entry>/seed<k>
    held = {task.entry for task in tasks if (Path(task.run_dir) / CONFIG).exists()}
    # which entries a change touches, where it is not all of those the folder holds
    named = [change + (f" ({_listed(entries)})" if set(entries) != held else "") for change, entries in changes.items()]
    folder = option("--out", "folder (out_dir=)")
    raise ConfigError(f"the compare folder {out} was made with other settings: {_listed(named, 'more changes', '; ')}; "
                      f"its seeds would mix two configs: use another {folder} for these settings, or delete "
                      f"the whole compare folder {out} to run the compare again with them")
