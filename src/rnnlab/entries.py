"""What a compare trains: entries from presets, config files and suites, with overrides, and
sweeps that expand each entry over a grid of settings.

An entry is a name (its folder under ``runs/``) and the config every seed starts from. A sweep
``train.lr=0.001,0.01`` turns entry ``dlw-rnn-a`` into ``dlw-rnn-a+lr0.001`` and ``dlw-rnn-a+lr0.01``;
two sweeps make their product. A swept ``data.file`` names entries by file (``gru+filedigits``)
and implies ``data.dataset=file``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from rnnlab.checkpoint import CONFIG
from rnnlab.config import DATA_LOCATION, RunConfig, apply_overrides, load_toml, parse_override
from rnnlab.config_values import check_folder_name
from rnnlab.errors import ConfigError, describe, option
from rnnlab.presets import get_preset, list_presets, suite as suite_names

MAX_SWEEP_ENTRIES = 1000  # more is a typo, and would plan (and print) for minutes


@dataclass(frozen=True)
class Entry:
    """One thing to compare: a name and the config every seed starts from."""

    name: str
    config: RunConfig
    swept_from: str = ""  # the entry a --sweep made this one from


def resolve_entries(specs: list[str], *, suite: str | None = None, overrides: list[str] | None = None,
                    sweeps: list[str] | None = None) -> list[Entry]:
    """Presets (by name), config files (TOML) and a suite's presets, each with the overrides
    applied, then expanded over the ``KEY=V1,V2,...`` sweeps."""
    for what, given in (("specs", specs), ("overrides", overrides), ("sweeps", sweeps)):
        if isinstance(given, str) or not isinstance(given, (list, tuple, type(None))):  # read letter by letter
            raise ConfigError(f"{what} must be a list of strings, not {describe(given)}"
                              + (f": [{given!r}]" if isinstance(given, str) else ""))
    names = list(suite_names(suite)) if suite else []
    names += list(specs)
    if not names:
        raise ConfigError("nothing to compare: name presets or config files, or give "
                          f"{option('--suite', 'suite=NAME')} (presets: {', '.join(list_presets())})")
    swept = [parse_sweep(item) for item in sweeps or []]
    entries: list[Entry] = []
    applied: list[tuple[RunConfig, list[str]]] = []
    for index, spec in enumerate(names):
        path = Path(spec)
        if path.suffix == ".toml" or path.is_file() or (path.is_dir() and (path / CONFIG).exists()):
            config = load_toml(path / CONFIG if path.is_dir() else path)
            name = config.name or config.preset or (path.name if path.is_dir() else path.stem)
            if not config.name and not config.preset:
                try:  # a file name may hold anything
                    check_folder_name("name", name)
                except ConfigError as error:
                    raise ConfigError(f"{path}: the entry is named after the file, but {error}; "
                                      "or set `name` in the config") from None
                config = replace(config, name=name)  # so that `rnnlab report` finds the same entry name
        else:
            config = get_preset(spec).config
            name = spec
        if not swept:  # else with each sweep value, which may be what makes them valid (data.file)
            applied.append((config, list(overrides or [])))
            config = apply_overrides(config, list(overrides or []), refuse_unused=False)  # used by some entries
        if spec in names[:index]:  # twice on the command line, or a suite's preset named again
            in_suite = " (the suite has it)" if suite and spec in suite_names(suite) else ""
            raise ConfigError(f"{spec!r} is given twice{in_suite}; name each entry once")
        if any(e.name == name for e in entries):
            raise ConfigError(f"{spec!r} is named {name!r} like an earlier entry; give each config a distinct "
                              "`name` (or list each preset once)")
        entries.append(Entry(name, config))
    _refuse_if_every_entry_ignores(applied)
    return expand_sweeps(entries, swept, overrides or [])


def _refuse_if_every_entry_ignores(applied: list[tuple[RunConfig, list[str]]]) -> None:
    """Overrides go to every entry, and one entry may use what another ignores (a validation
    split, say, where some entries follow the tutorial protocol). An override every entry would
    ignore is refused, as ``rnnlab train`` refuses it. Each is judged alone: one entry may use one
    override and another entry another."""
    if not applied or not applied[0][1]:
        return
    configs = [apply_overrides(config, settings, refuse_unused=False) for config, settings in applied]
    for item in applied[0][1]:
        errors = []
        for config in configs:
            try:  # given again on top of everything: judged on what the config would then hold
                apply_overrides(config, [item])
                break  # this entry uses it
            except ConfigError as error:
                errors.append(error)
        else:
            raise ConfigError(f"every entry would ignore a setting given: {errors[0]}")


def _sweep() -> str:
    """A sweep, as the caller gave it: a --sweep on the command line, one of ``sweeps`` from Python."""
    return option("--sweep", "sweep")


def parse_sweep(item: str) -> tuple[str, list[str]]:
    """``"train.lr=0.001,0.01"`` -> ``("train.lr", ["0.001", "0.01"])``."""
    key, sep, text = item.partition("=")
    key, values = key.strip(), [v.strip() for v in text.split(",")]
    if not sep or not key or not all(values):
        example = option("--sweep train.lr=0.001,0.01", "sweeps=['train.lr=0.001,0.01']")
        raise ConfigError(f"{_sweep()} {item!r} is not KEY=V1,V2,... (e.g. {example})")
    if key == "seed":
        seeds = option("--seeds", "compare's seeds=")
        raise ConfigError(f"{_sweep()} seed=... is what {seeds} does: every entry runs seeds 0..N-1")
    if key in ("name", "preset"):  # labels: each value would train the same config again
        raise ConfigError(f"{_sweep()} {key}=... only labels a run, every value would train the same config; "
                          "to compare presets, name the presets as entries (rnnlab compare dlw-rnn-a dlw-lstm-a)")
    if len(set(values)) < len(values):
        raise ConfigError(f"{_sweep()} {item!r} lists a value twice")
    return key, values


def expand_sweeps(entries: list[Entry], sweeps: list[tuple[str, list[str]]], overrides: list[str]) -> list[Entry]:
    """Each entry once per combination of the sweeps' values, named ``<entry>+<key><value>...``
    after the last part of each key (the whole key where two sweeps share that last part)."""
    if not sweeps:
        return entries
    keys = [key for key, _ in sweeps]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"{_sweep()} {key} is given twice; list all of its values in one {_sweep()}")
        if _given(key, overrides):
            raise ConfigError(f"{key} is both an override and a {_sweep()}; give it once")
    short = [key.rpartition(".")[2] for key in keys]
    tags = [s if short.count(s) == 1 else key for s, key in zip(short, keys)]
    labels = {key: _value_labels(key, values) for key, values in sweeps}
    if "data.file" in keys:
        _check_swept_files(dict(sweeps)["data.file"], overrides)
    # A swept sequence file implies reading one, as --data-file does.
    implied = ["data.dataset=file"] if "data.file" in keys and not _given("data.dataset", overrides) else []
    grid = list(itertools.product(*(values for _, values in sweeps)))
    if len(entries) * len(grid) > MAX_SWEEP_ENTRIES:
        raise ConfigError(f"the sweeps make {len(entries) * len(grid):,} entries; at most {MAX_SWEEP_ENTRIES} "
                          "(each is trained for every seed)")
    expanded: list[Entry] = []
    _refuse_if_every_entry_ignores([(entry.config, list(overrides)) for entry in entries])
    for entry in entries:
        seen: dict[RunConfig, str] = {}
        for combo in grid:
            name = entry.name + "".join(f"+{tag}{labels[k][v]}" for tag, k, v in zip(tags, keys, combo))
            try:
                check_folder_name("the entry name", name)
            except ConfigError as error:
                raise ConfigError(f"{_sweep()} value {', '.join(combo)}: {error}; use plainer values") from None
            # The overrides together with the swept values: a swept data.file is what makes data.dataset=file valid.
            settings = [*overrides, *implied, *(f"{k}={v}" for k, v in zip(keys, combo))]
            config = apply_overrides(entry.config, settings, refuse_unused=False)
            try:  # an entry that ignores its swept value trains what its siblings train, under another name
                apply_overrides(config, [f"{k}={v}" for k, v in zip(keys, combo)])
            except ConfigError as error:
                raise ConfigError(f"{_sweep()} gives {name} a setting it would ignore: {error}; sweep it over "
                                  "entries that use it (compare the others apart)") from None
            if config in seen:  # e.g. 0.01 and 1e-2
                raise ConfigError(f"{_sweep()} gives {entry.name} the same config twice ({seen[config]} and {name}); "
                                  "list each value once")
            seen[config] = name
            expanded.append(Entry(name, replace(config, name=name), swept_from=entry.name))  # report names it so too
    return expanded


def _given(key: str, overrides: list[str]) -> bool:
    """Whether ``KEY=VALUE`` overrides set ``key``."""
    return any(item.partition("=")[0].strip() == key for item in overrides)


def _check_swept_files(values: list[str], overrides: list[str]) -> None:
    """Before any seed trains: every swept sequence file is there, and no IDX folder is given beside them."""
    if _given("data.data_dir", overrides):
        raise ConfigError("data.data_dir is the folder of an image dataset's IDX files; a swept data.file is read "
                          "alone: drop data.data_dir")
    for value in values:
        if not Path(value).expanduser().is_file():
            raise ConfigError(f"{_sweep()} data.file: {value} is not a file; give .npz files of your sequences "
                              "(x_train, y_train, x_test, y_test)")


def _value_labels(key: str, values: list[str]) -> dict[str, str]:
    """How each value shows in entry names: as written, but a data path by its file or folder name."""
    if key not in DATA_LOCATION:
        return {value: value for value in values}
    labels = {value: Path(value).stem if key == "data.file" else Path(value).name for value in values}
    for value, label in labels.items():
        twins = [v for v, other in labels.items() if other == label]
        if len(twins) > 1:
            what = "files" if key == "data.file" else "folders"
            raise ConfigError(f"{_sweep()} {key}: {' and '.join(twins)} would both name their entries {label!r}; "
                              f"give the {what} distinct names")
    return labels


def default_out_dir(entries: list[Entry], suite: str | None, overrides: list[str], root: str = "runs",
                    sweeps: list[str] | None = None) -> Path:
    """A stable folder per (entries, overrides, sweeps), so that rerunning the same compare resumes it.
    Overrides count by the settings they make: ``train.lr=1e-3 model.hidden=64`` and
    ``model.hidden=64 train.lr=0.001`` name one folder."""
    names = list(dict.fromkeys(e.swept_from or e.name for e in entries))  # as named before any sweep
    base = suite if suite and len(names) == len(suite_names(suite)) else "+".join(names)
    if len(base) > 60:
        base = f"{len(names)}-entries-" + _digest(names)
    if not (overrides or sweeps):
        return Path(root) / f"compare-{base}"
    made = dict(parse_override(item) for item in overrides)  # the last of a key wins, as in apply_overrides
    settings = [*(f"{key}={value!r}" for key, value in sorted(made.items())), *(f"sweep {s}" for s in sweeps or [])]
    folder = Path(root) / f"compare-{base}-{_digest(settings)}"
    # Earlier versions hashed the overrides as spelled: a rerun still finds its seeds there.
    spelled = Path(root) / f"compare-{base}-{_digest([*overrides, *(f'sweep {s}' for s in sweeps or [])])}"
    return spelled if spelled.is_dir() and not folder.exists() else folder


def _digest(lines: list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:8]
