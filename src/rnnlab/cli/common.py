"""Helpers shared by subcommands: building a config from a preset, a file and overrides."""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnlab.config import RunConfig, apply_overrides, load_toml, parse_override
from rnnlab.errors import ConfigError
from rnnlab.presets import get_preset


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except where there is none to show (None, False) or the
    help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "default:" in text:
            return text
        return super()._get_help_string(action)


class IntermixedParser(argparse.ArgumentParser):
    """Positionals may come before and after options: ``train --preset X model.hidden=64 --out DIR train.lr=1e-3``.

    A plain parser stops filling a ``nargs="*"`` positional at the first option, then rejects
    the KEY=VALUE overrides that follow; ``parse_known_intermixed_args`` collects them all.
    """

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


# What every --device takes (rnnlab.distributed.select_device): one wording for all commands.
DEVICE_HELP = "auto (the first available of cuda, mps, cpu), cpu, cuda, cuda:N or mps"

# Short flags for the most common settings; each maps to a dotted key. Their values are read as
# overrides are (a bad one is one line that names the flag, not argparse's usage block).
SHORTCUTS = {
    "model": ("model.cell", "recurrent cell: rnn, lstm, gru, or one of your own (--import)"),
    "nonlinearity": ("model.nonlinearity", "tanh or relu (cell rnn)"),
    "layers": ("model.layers", "stacked recurrent layers"),
    "hidden": ("model.hidden", "hidden units per layer"),
    "readout": ("model.readout", "last, mean or all"),
    "view": ("data.view", "rows, pixels or permuted-pixels"),
    "optimizer": ("train.optimizer", "sgd, adam, adamw or rmsprop"),
    "lr": ("train.lr", "learning rate"),
    "batch_size": ("train.batch_size", "batch size"),
    "epochs": ("train.epochs", "budget in epochs"),
    "iterations": ("train.iterations", "budget in iterations"),
    "seed": ("seed", "random seed"),
    "device": ("train.device", f"{DEVICE_HELP} (default: auto, unless the preset or config sets one)"),
    "amp": ("train.amp", "mixed precision: off, bf16, fp16 (cuda) or auto (bf16 where measured to pay)"),
    "data_dir": ("data.data_dir", "folder with the IDX files (default: RNNLAB_DATA_DIR, then the embedded "
                                  "MNIST or the download cache)"),
    "data_file": ("data.file", "a .npz of your own sequences (x_train, y_train, x_test, y_test); "
                               "sets data.dataset=file"),
}
# Overrides a shortcut brings along with its own key.
SHORTCUT_IMPLIES = {"data_file": ("data.dataset=file",)}


def add_config_arguments(parser: argparse.ArgumentParser, *, uses: Callable[[str], bool] = lambda key: True,
                         example: str = "model.hidden=256 train.lr=1e-3 data.val_size=0") -> None:
    """--preset, --config, the shortcut flags of the keys ``uses`` accepts, and KEY=VALUE overrides.

    ``uses`` is the command's own test of which dotted keys it takes: a flag it would always refuse
    is left out of its help but still parsed, so that the command refuses it as it refuses the same
    key given as an override, in one line that says why (argparse would only say "unrecognized
    arguments", with its usage block). ``example``: overrides the command runs with, shown in its help."""
    parser.add_argument("--preset", help="start from a named preset (see `rnnlab presets`)")
    parser.add_argument("--config", metavar="FILE", help="start from a TOML config (e.g. a run's config.toml)")
    group = parser.add_argument_group("shortcuts (each is the same as a KEY=VALUE override)")
    for flag, (key, text) in SHORTCUTS.items():
        group.add_argument(f"--{flag.replace('_', '-')}", dest=f"short_{flag}", metavar="X",
                           help=f"{text} [{key}]" if uses(key) else argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"dotted overrides, e.g. {example}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Preset or config file (or the defaults), then shortcut flags, then KEY=VALUE overrides."""
    if args.preset and args.config:
        raise ConfigError("give --preset or --config, not both")
    if args.preset:
        config = get_preset(args.preset).config
    elif args.config:
        if Path(args.config).is_dir():  # often a run folder, whose config.toml was meant
            inside = Path(args.config) / "config.toml"
            example = f"e.g. {inside}" if inside.is_file() else "e.g. a run folder's config.toml"
            raise ConfigError(f"--config {args.config} is a folder; give a config file, {example}")
        config = load_toml(args.config)
    else:
        config = RunConfig()
    overrides = []
    for flag, (key, _) in SHORTCUTS.items():
        value = getattr(args, f"short_{flag}", None)
        if value is not None:
            try:
                parse_override(f"{key}={value}")
            except ConfigError as exc:
                raise ConfigError(f"--{flag.replace('_', '-')} {value}: {exc}") from None
            overrides += [*SHORTCUT_IMPLIES.get(flag, ()), f"{key}={value}"]
    for item in args.overrides:
        if "=" not in item:  # before apply_overrides' "not KEY=VALUE": a run folder, a config file, ...
            refuse_a_misplaced_positional(item, getattr(args, "command", None))
    return apply_overrides(config, overrides + list(args.overrides))


# The option by which a command takes a run folder itself, where it has one.
_RUN_OPTIONS = {"train": ("--resume", "to continue it"), "gradients": ("--run", "for its trained weights")}


def refuse_a_misplaced_positional(item: str, command: str | None) -> None:
    """Where a positional meant as an override is a run folder, a compare folder, a config file or a
    preset, say which and the option that takes it (else apply_overrides says "not KEY=VALUE")."""
    from rnnlab.presets import list_presets

    path = Path(item)
    run_option = _RUN_OPTIONS.get(command or "")
    if path.is_dir() and (path / "config.toml").is_file():
        also = f"; {run_option[1]}, {run_option[0]} {item}" if run_option else ""
        raise ConfigError(f"{item} is a run folder, not a KEY=VALUE override: to start from its settings give "
                          f"--config {path / 'config.toml'}{also}")
    if path.is_dir() and ((path / "compare.json").is_file() or any(path.glob("runs/*/seed[0-9]*/config.toml"))):
        configs = sorted(path.glob("runs/*/seed0/config.toml")) or sorted(path.glob("runs/*/seed[0-9]*/config.toml"))
        example = (" or ".join(f"--config {config}" for config in configs[:2])
                   or "--config with one of its runs' config.toml")
        raise ConfigError(f"{item} is a compare folder, not a KEY=VALUE override: to start from the settings of "
                          f"one of its runs give {example}")
    if path.is_file() and path.suffix.lower() == ".toml":
        raise ConfigError(f"{item} is a config file, not a KEY=VALUE override: give --config {item}")
    if item in list_presets():
        raise ConfigError(f"{item} is a preset, not a KEY=VALUE override: give --preset {item}")


def settings_given(args: argparse.Namespace) -> list[str]:
    """The config settings on the command line (--preset, --config, shortcut flags, KEY=VALUE), as
    typed: a command that works on a saved run refuses them rather than silently ignore them."""
    given = [f"--{name}" for name in ("preset", "config") if getattr(args, name, None)]
    given += [f"--{flag.replace('_', '-')}" for flag in SHORTCUTS if getattr(args, f"short_{flag}", None) is not None]
    return given + list(getattr(args, "overrides", None) or [])


def typed_settings(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(dotted key, as typed)`` for every setting on the command line: shortcut flags, then overrides."""
    typed = [(key, f"--{flag.replace('_', '-')} {getattr(args, f'short_{flag}')}")
             for flag, (key, _) in SHORTCUTS.items() if getattr(args, f"short_{flag}", None) is not None]
    return typed + [(item.partition("=")[0].strip(), item) for item in args.overrides]


def check_at_least(flag: str, value: float, low: float) -> None:
    """Refuse an option value below ``low``; for a float also nan and inf (nan passes every comparison)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag}={value} must be a finite number >= {low:g}")
    if value < low:
        raise ConfigError(f"{flag}={value:g} must be >= {low:g}" if isinstance(value, float)
                          else f"{flag}={value} must be >= {low:g}")


def plot_formats() -> list[str]:
    """File extensions matplotlib can write a figure to here."""
    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    formats = set(FigureCanvasBase.get_supported_filetypes())
    if not shutil.which(matplotlib.rcParams["pgf.texsystem"]):  # pgf runs LaTeX
        formats.discard("pgf")
    return sorted(formats)


def check_plot_path(flag: str, path: str) -> None:
    """Refuse a figure path matplotlib would reject or change, before any work: a folder (savefig
    writes FOLDER.png next to it) or an extension it does not write (none at all: NAME.png)."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name such as {target / 'plot.png'}")
    formats = plot_formats()
    extension = target.suffix[1:].lower()
    if extension not in formats:
        what = f"has an unsupported extension .{extension}" if extension else "has no extension"
        raise ConfigError(f"{flag} {path} {what}; use one of: {', '.join(formats)} "
                          f"(e.g. {target.with_suffix('.png')})")
