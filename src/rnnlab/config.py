"""Run configuration: typed, frozen dataclasses validated on construction.

A ``RunConfig`` holds everything needed to run an experiment again. It round-trips through
TOML (``config.toml`` in every run folder) and takes dotted command-line overrides such as
``model.cell=lstm train.lr=1e-3`` that reject unknown keys and bad values.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from rnnlab.atomic import atomic_write_text
from rnnlab.config_ignored import refuse_what_would_be_ignored
from rnnlab.config_values import (at_least, at_most, check_folder_name, check_values, choice, coerce, field_type,
                                  parse_value)
from rnnlab.errors import ConfigError, UnknownModelError, describe, option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The cells a run can use (model.cell), as `rnnlab models` lists them; models/registry.py registers their builders.
CELL_SUMMARIES = {"rnn": "Elman RNN, nonlinearity relu or tanh (model.nonlinearity)",
                  "lstm": "Long short-term memory (Hochreiter & Schmidhuber, 1997)",
                  "gru": "Gated recurrent unit (Cho et al., 2014)"}
CELLS = tuple(CELL_SUMMARIES)
# Cells registered with rnnlab.register_model (a model of one's own): a run can use them too, once
# the module that registers them is imported (on the command line, --import).
REGISTERED_CELLS: dict[str, str] = {}
NONLINEARITIES = ("tanh", "relu")
READOUTS = ("last", "mean", "all")
INITS = ("default", "orthogonal", "identity")
IMPLS = ("auto", "fast", "torch")
VIEWS = ("rows", "pixels", "permuted-pixels")
DATASETS = ("mnist", "fashion-mnist", "kmnist", "file")  # file: your own sequences (data.file)
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "step", "cosine")
PROTOCOLS = ("standard", "tutorial")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("off", "bf16", "fp16", "auto")
BACKWARDS = ("auto", "autograd", "hand")
MAX_SEED = 2**63 - 1  # TOML integers and torch's int64 seeds stop here
MAX_LAYERS = 128  # stacked recurrent layers
MAX_THREADS = 1024  # far above any CPU's use; torch segfaults on some counts (5000) instead of failing
# A run folder is runs/<name>-<time>: one plain folder name, portable and safe to type in a shell.


def check_cell(cell: str) -> None:
    """Refuse a model.cell that is neither rnnlab's nor registered in this process."""
    valid = CELLS + tuple(REGISTERED_CELLS)
    if not isinstance(cell, str) or cell not in valid:
        raise UnknownModelError(f"model.cell={cell!r} is not valid; choose one of: {', '.join(valid)} (a model of your "
                          "own is registered with rnnlab.register_model: import the module that registers it "
                          "first; on the command line, rnnlab --import FILE_OR_MODULE)")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how an image becomes a sequence."""

    dataset: str = "mnist"
    view: str = "rows"  # rows: 28 steps of 28 pixels; pixels: 784 steps of 1; permuted-pixels
    val_size: int = 5000  # carved from the training set; 0 disables validation
    standardize: bool = True  # subtract the training split's mean, divide by its std (per feature for a file)
    permutation_seed: int = 0  # for the permuted-pixels view; the permutation is saved with the run
    data_dir: str = ""  # empty: RNNLAB_DATA_DIR, then the copy embedded in the package
    download: bool = False  # fetch missing files from the dataset's mirrors into the cache
    file: str = ""  # with dataset=file: a .npz of your own sequences (x_train, y_train, x_test, y_test)

    def __post_init__(self) -> None:
        for key in ("file", "data_dir"):  # from Python, a Path is as good as its text
            if isinstance(getattr(self, key), os.PathLike):
                object.__setattr__(self, key, os.fspath(getattr(self, key)))
        check_values("data", self)
        choice("data", "dataset", self.dataset, DATASETS)
        choice("data", "view", self.view, VIEWS)
        if self.dataset == "file" and not self.file:
            raise ConfigError("data.dataset=file needs data.file=PATH, a .npz of your sequences "
                              "(x_train, y_train, x_test, y_test)")
        if self.file and self.dataset != "file":
            raise ConfigError(f"data.file={self.file!r} is only read with data.dataset=file (now "
                              f"{self.dataset!r}); add data.dataset=file{option(', or use --data-file PATH', '')} "
                              f"(or, to train on {self.dataset} instead, clear it: data.file=)")
        for key in ("file", "data_dir"):  # saved with the run: an absolute path finds the data from elsewhere
            if getattr(self, key) and not Path(getattr(self, key)).expanduser().is_absolute():
                # abspath, not resolve: a symlink the user points the run at stays the way to the data
                object.__setattr__(self, key, os.path.abspath(Path(getattr(self, key)).expanduser()))
        if self.file and (self.view != "rows" or self.download):
            raise ConfigError("data.view and data.download apply to the image datasets; a sequence file "
                              "is read as it is (leave them at their defaults)")
        if self.file:  # an IDX folder means nothing to a sequence file (given with it: apply_overrides refuses)
            object.__setattr__(self, "data_dir", "")
        at_least("data", "val_size", self.val_size, 0)
        at_least("data", "permutation_seed", self.permutation_seed, 0)
        at_most("data.permutation_seed", self.permutation_seed, MAX_SEED, " (2**63 - 1)")


@dataclass(frozen=True)
class ModelConfig:
    """The recurrent classifier: cell, size, readout and initialisation."""

    cell: str = "lstm"
    nonlinearity: str = "tanh"  # only for cell=rnn
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.0  # between stacked layers, as torch.nn does
    bidirectional: bool = False
    readout: str = "last"  # last: final hidden state; mean: average over steps; all: Linear over every step
    init: str = "orthogonal"  # default (PyTorch's), orthogonal, identity (IRNN)
    impl: str = "auto"  # auto: fast layers where they win; fast; torch: reference torch.nn layers

    def __post_init__(self) -> None:
        check_values("model", self)
        check_cell(self.cell)
        choice("model", "nonlinearity", self.nonlinearity, NONLINEARITIES)
        choice("model", "readout", self.readout, READOUTS)
        choice("model", "init", self.init, INITS)
        choice("model", "impl", self.impl, IMPLS)
        at_least("model", "hidden", self.hidden, 1)
        at_least("model", "layers", self.layers, 1)
        # Deeper stacks do not train as recurrent networks, and torch.nn takes minutes to build one.
        at_most("model.layers", self.layers, MAX_LAYERS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout!r} is out of range; it must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe and the budget."""

    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.0  # sgd and rmsprop
    weight_decay: float = 0.0
    batch_size: int = 128
    iterations: int = 0  # the budget: iterations, or else epochs (exactly one of them > 0)
    epochs: int = 5
    schedule: str = "cosine"
    warmup: int = 0  # linear warm-up, in iterations
    step_size: int = 1000  # schedule=step: multiply lr by gamma every step_size iterations
    gamma: float = 0.5
    clip: float = 1.0  # gradient-norm clipping; 0 turns it off
    label_smoothing: float = 0.0
    eval_every: int = 500  # iterations between evaluations (and at the end)
    eval_batch_size: int = 1000
    protocol: str = "standard"  # standard: validate on the split, test once; tutorial: test every eval
    device: str = "auto"
    amp: str = "off"  # off, bf16 (cpu; on cuda the recurrence stays fp32), fp16 (cuda), auto (bf16 where it pays)
    backward: str = "auto"  # auto: the whole step by hand where the model allows (models/fast_step.py); autograd; hand: refused where it can't
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    flush_denormals: bool = True  # CPU: denormal floats read and written as 0 (rnnlab/denormals.py: up to 10x faster)
    checkpoint_every: int = 500  # iterations between resumable checkpoints
    keep_best: bool = False  # end with the weights of the best validation accuracy, not the last ones
    patience: int = 0  # stop after this many evaluations without a better validation accuracy; 0: never

    def __post_init__(self) -> None:
        check_values("train", self)
        choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        choice("train", "schedule", self.schedule, SCHEDULES)
        choice("train", "protocol", self.protocol, PROTOCOLS)
        choice("train", "device", self.device.split(":")[0], DEVICES)
        kind, colon, index = self.device.partition(":")
        if colon and not (kind == "cuda" and index.isascii() and index.isdigit()):  # cuda:1, not cpu:0 or cuda:x
            raise ConfigError(f"train.device={self.device!r}: only cuda takes an index (cuda:0, cuda:1, ...); "
                              f"use {kind if kind != 'cuda' else 'cuda or cuda:N'}")
        choice("train", "amp", self.amp, AMP_MODES)
        choice("train", "backward", self.backward, BACKWARDS)
        at_least("train", "lr", self.lr, 0.0, strict=True)
        for name in ("momentum", "weight_decay", "clip", "label_smoothing", "iterations", "epochs",
                     "warmup", "threads", "patience"):
            at_least("train", name, getattr(self, name), 0)
        for name in ("batch_size", "eval_every", "eval_batch_size", "step_size", "checkpoint_every"):
            at_least("train", name, getattr(self, name), 1)
        at_least("train", "gamma", self.gamma, 0.0, strict=True)
        at_most("train.threads", self.threads, MAX_THREADS,
                 f" (this machine has {os.cpu_count() or 'an unknown number of'} CPUs; 0 keeps torch's default)")
        if self.label_smoothing >= 1.0:
            raise ConfigError("train.label_smoothing must be < 1")
        if (self.iterations > 0) == (self.epochs > 0):
            raise ConfigError(
                f"set exactly one budget: train.iterations={self.iterations}, train.epochs={self.epochs}; "
                "give one of them a positive value and the other 0"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Saved as ``config.toml`` in the run folder."""

    name: str = ""  # free-form label; the run folder defaults to runs/<name or model>-<time>
    preset: str = ""  # the preset this config came from, if any
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for section, cls in _SECTIONS.items():  # a dict here would fail later, deep in training
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"RunConfig({section}=...) takes a {cls.__name__}, not "
                                  f"{describe(getattr(self, section))}; e.g. RunConfig({section}={cls.__name__}(...)), "
                                  "or build a config from a dict with rnnlab.config.from_dict")
        check_values("", self)
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} is out of range; it must be >= 0")
        at_most("seed", self.seed, MAX_SEED, " (2**63 - 1)")
        # The run folder is runs/<label>-<time>, and the label is the name, else the preset.
        for key in ("name", "preset"):
            if getattr(self, key):
                check_folder_name(key, getattr(self, key))
        t = self.train
        if (t.keep_best or t.patience) and (self.data.val_size == 0 or t.protocol == "tutorial"):
            given = " and ".join(k for k, on in (("train.keep_best", t.keep_best), ("train.patience", t.patience)) if on)
            why = "train.protocol=tutorial" if t.protocol == "tutorial" else "data.val_size=0"
            verb = "need" if t.keep_best and t.patience else "needs"
            raise ConfigError(f"{given} {verb} a validation split to measure progress on, and this run has none "
                              f"({why}); set data.val_size > 0 (e.g. 5000) and train.protocol=standard")

    @property
    def label(self) -> str:
        """A short human label: the name, else the preset, else the model's description."""
        return self.name or self.preset or describe_model(self.model)


def describe_model(m: ModelConfig) -> str:
    """e.g. ``lstm-2x100`` or ``rnn-relu-1x100-bi``."""
    cell = f"rnn-{m.nonlinearity}" if m.cell == "rnn" else m.cell
    return f"{cell}-{m.layers}x{m.hidden}" + ("-bi" if m.bidirectional else "")


# --------------------------------------------------------------------------- dict / TOML

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain nested dict (TOML- and JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: RunConfig) -> dict[str, Any]:
    """Every setting under its dotted key, as overrides name it: ``{"train.lr": 0.1, "seed": 0, ...}``."""
    return {f"{top}.{key}" if isinstance(value, dict) else top: inner
            for top, value in to_dict(cfg).items()
            for key, inner in (value.items() if isinstance(value, dict) else [("", value)])}


DATA_LOCATION = ("data.data_dir", "data.file")  # where the data is, not what it is: a moved copy is the same run


def settings_of_the_run(cfg: RunConfig) -> dict[str, Any]:
    """``to_flat_dict`` less where the data lives: what a resumed run must share with its start."""
    return {key: value for key, value in to_flat_dict(cfg).items() if key not in DATA_LOCATION}


def from_dict(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Build a config from a nested dict, rejecting unknown keys and wrong types."""
    top_names = {f.name for f in fields(RunConfig)}
    unknown = set(raw) - top_names
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(top_names)}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table of settings")
            kwargs[key] = _build_section(key, _SECTIONS[key], value, source)
        else:
            kwargs[key] = coerce(key, field_type(RunConfig, key), value, source)
    return RunConfig(**kwargs)


def _build_section(section: str, cls: type, values: dict[str, Any], source: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(unknown))}; "
            f"valid keys in [{section}]: {', '.join(sorted(names))}"
        )
    coerced = {k: coerce(f"{section}.{k}", field_type(cls, k), v, source) for k, v in values.items()}
    written = {"iterations", "epochs"} & set(coerced)
    if section == "train" and len(written) == 1 and coerced[next(iter(written))]:
        # One budget written (a config by hand): it replaces the default one, as an override does
        coerced["epochs" if "iterations" in written else "iterations"] = 0
    return cls(**coerced)


def save_toml(cfg: RunConfig, path: str | Path) -> None:
    """Write the config as TOML, atomically."""
    atomic_write_text(Path(path), tomli_w.dumps(to_dict(cfg)))


def load_toml(path: str | Path) -> RunConfig:
    """Read a config written by :func:`save_toml` (or by hand)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        inside = f", e.g. {path / 'config.toml'}" if (path / "config.toml").is_file() else ""
        raise ConfigError(f"{path} is a folder, not a config file; give a .toml file{inside}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # callers differ (--config, compare, reports)
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
    return from_dict(raw, source=str(path))


# --------------------------------------------------------------------------- overrides


def apply_overrides(cfg: RunConfig, overrides: list[str], *, refuse_unused: bool = True) -> RunConfig:
    """Apply ``KEY=VALUE`` overrides such as ``model.hidden=256`` or ``seed=3``.

    Setting one of ``train.iterations`` / ``train.epochs`` clears the other, so that a
    preset's budget can be switched from epochs to iterations in one override. A setting the
    rest of the config would leave unused is refused, unless ``refuse_unused`` is off: a
    compare gives the same overrides to every entry, and some entries use them.
    """
    _check_override_arguments(cfg, overrides)
    raw = to_dict(cfg)
    budget_keys: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        section, _, name = key.rpartition(".")
        target = raw[section] if section else raw
        target[name] = value
        if key in ("train.iterations", "train.epochs"):
            budget_keys.add(key)
    if budget_keys == {"train.iterations"}:
        raw["train"]["epochs"] = 0
    elif budget_keys == {"train.epochs"}:
        raw["train"]["iterations"] = 0
    result = from_dict(raw, source="overrides")  # its own checks first: they say more
    if refuse_unused:
        refuse_what_would_be_ignored(raw, {item.partition("=")[0].strip() for item in overrides})
    return result


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.hidden=256"`` -> ``("model.hidden", 256)``: the key checked, the value parsed to its type."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. model.hidden=256)")
    section, dot, name = key.rpartition(".")
    if not dot:
        section, name = "", key
    if section and section not in _SECTIONS:
        raise ConfigError(f"unknown key {key!r}; sections are: {', '.join(_SECTIONS)}")
    cls = _SECTIONS[section] if section else RunConfig
    names = [f.name for f in fields(cls) if f.name not in _SECTIONS]
    if name not in names:
        where = f"[{section}]" if section else "top level"
        prefix = f"{section}." if section else ""
        raise ConfigError(f"unknown key {key!r}; valid keys at {where}: {', '.join(prefix + n for n in names)}")
    return key, parse_value(key, field_type(cls, name), text.strip())


def _check_override_arguments(cfg: Any, overrides: Any) -> None:
    # Library callers: a bare string would be read character by character, a dict or a Preset fail in asdict.
    if not isinstance(cfg, RunConfig):
        hint = ("the preset's .config: rnnlab.get_preset(name).config" if hasattr(cfg, "config") else
                "rnnlab.RunConfig(), rnnlab.get_preset(name).config or rnnlab.config.load_toml(path)")
        extra = "; for a dict of settings, rnnlab.config.from_dict(settings)" if isinstance(cfg, dict) else ""
        raise ConfigError(f"apply_overrides needs a RunConfig, not {describe(cfg)}; pass {hint}{extra}")
    if not isinstance(overrides, (list, tuple)):
        hint = f": wrap it in a list, [{overrides!r}]" if isinstance(overrides, str) else ", e.g. ['model.hidden=256']"
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got {describe(overrides)}{hint}")
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"override {item!r} is {describe(item)}, not a 'key=value' string "
                              "(e.g. 'model.hidden=256')")
