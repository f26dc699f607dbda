"""Named configurations. Each tutorial preset reproduces a published recipe and cites it.

The tutorial presets copy the tutorials exactly: plain SGD (or Adam for ``rnn-allsteps``), no
schedule, no clipping, PyTorch's default initialisation, pixels scaled to [0, 1], and the
tutorials' protocol (no validation split; test accuracy every 500 iterations).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnlab.errors import ConfigError, describe

DLW_RNN = "https://www.deeplearningwizard.com/deep_learning/practical_pytorch/pytorch_recurrent_neuralnetwork/"
DLW_LSTM = "https://www.deeplearningwizard.com/deep_learning/practical_pytorch/pytorch_lstm_neuralnetwork/"
ALLSTEPS = "'Recurrent neural networks introduction' tutorial (2-layer tanh RNN, Linear over all 28 hidden states)"


@dataclass(frozen=True)
class Preset:
    """A named config: a tutorial's model and recipe as the tutorial ran it, or a better recipe
    for the same model (``-plus``), with where it comes from and the accuracy it reported."""

    name: str
    config: RunConfig
    description: str
    source: str = ""  # where the recipe comes from
    reported_accuracy: float | None = None  # test accuracy the source reported, percent
    notes: str = ""
    suites: tuple[str, ...] = field(default=())

    def reference(self) -> dict[str, Any] | None:
        """Where the recipe comes from, the accuracy it reported and the budget it reported it after
        (the preset's own: a run's difference from the figure means something only at that budget)."""
        if not self.source:
            return None
        train = self.config.train
        budget = {"iterations": train.iterations} if train.iterations else {"epochs": train.epochs}
        return {"source": self.source, "reported_test_accuracy": self.reported_accuracy, "notes": self.notes,
                "budget": {**budget, "batch_size": train.batch_size}}


_PRESETS: dict[str, Preset] = {}


def _add(preset: Preset) -> None:
    _PRESETS[preset.name] = preset


def _tutorial(name: str, *, cell: str, layers: int, lr: float, reported: float, source: str,
              nonlinearity: str = "tanh", notes: str = "") -> None:
    config = RunConfig(
        preset=name,
        data=DataConfig(view="rows", val_size=0, standardize=False),
        model=ModelConfig(cell=cell, nonlinearity=nonlinearity, hidden=100, layers=layers, readout="last",
                          init="default"),
        train=TrainConfig(optimizer="sgd", lr=lr, batch_size=100, iterations=3000, epochs=0, schedule="none",
                          clip=0.0, eval_every=500, protocol="tutorial"),
    )
    what = f"{'RNN ' + nonlinearity if cell == 'rnn' else cell.upper()} {layers}x100"
    _add(Preset(name, config, f"{what}, SGD lr {lr:g}, batch 100, 3000 iterations (tutorial recipe)",
                source=source, reported_accuracy=reported, notes=notes, suites=("tutorials",)))


_tutorial("dlw-rnn-a", cell="rnn", nonlinearity="relu", layers=1, lr=0.01, reported=92.48, source=DLW_RNN,
          notes="Model A; the tutorial's printed log at 3000 iterations shows 71")
_tutorial("dlw-rnn-b", cell="rnn", nonlinearity="relu", layers=2, lr=0.01, reported=95.09, source=DLW_RNN,
          notes="Model B; printed log at 3000 iterations shows 69")
_tutorial("dlw-rnn-c", cell="rnn", nonlinearity="tanh", layers=2, lr=0.1, reported=95.54, source=DLW_RNN,
          notes="Model C; printed log at 3000 iterations shows 95")
_tutorial("dlw-lstm-a", cell="lstm", layers=1, lr=0.1, reported=96.05, source=DLW_LSTM,
          notes="Model A; printed log at 3000 iterations shows 95")
_tutorial("dlw-lstm-b", cell="lstm", layers=2, lr=0.1, reported=95.24, source=DLW_LSTM,
          notes="Model B; printed log at 3000 iterations shows 95")
_tutorial("dlw-lstm-c", cell="lstm", layers=3, lr=0.1, reported=91.22, source=DLW_LSTM,
          notes="Model C; printed log at 3000 iterations shows 88-89")
_add(Preset(
    "rnn-allsteps",
    RunConfig(
        preset="rnn-allsteps",
        data=DataConfig(view="rows", val_size=0, standardize=False),
        model=ModelConfig(cell="rnn", nonlinearity="tanh", hidden=256, layers=2, readout="all", init="default"),
        train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, epochs=3, iterations=0, schedule="none",
                          clip=0.0, eval_every=500, protocol="tutorial"),
    ),
    "RNN tanh 2x256, Linear over all 28 hidden states, Adam 1e-3, batch 64, 3 epochs (tutorial recipe)",
    source=ALLSTEPS, reported_accuracy=97.48, notes="97.21 train, 97.48 test",
    suites=("tutorials",),
))


def list_presets() -> list[str]:
    """The presets' names, in the order ``rnnlab presets`` lists them."""
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset ``name`` (its ``.config`` is the RunConfig to train); ConfigError listing the
    valid names for any other."""
    if not isinstance(name, str):
        raise ConfigError(f"get_preset takes a preset's name, not {describe(name)}; e.g. get_preset('dlw-lstm-a')")
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(_PRESETS)} "
                          "(`rnnlab presets` describes them)") from None


def suite(name: str) -> list[str]:
    """Preset names in a suite such as ``tutorials``."""
    names = [p.name for p in _PRESETS.values() if name in p.suites]
    if not names:
        valid = sorted({s for p in _PRESETS.values() for s in p.suites})
        raise ConfigError(f"unknown suite {name!r}; valid suites: {', '.join(valid)}")
    return names


def reference_for(preset_name: str, config: RunConfig | None = None) -> dict[str, Any] | None:
    """The source and reported accuracy of a preset, or None; None too where ``config`` (a run of
    the preset) changed what the figure was reported for (see :func:`changes_the_model`)."""
    preset = _PRESETS.get(preset_name)
    if preset is None or (config is not None and changes_the_model(config)):
        return None
    return preset.reference()


def reference_budget(reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """The budget a reference's figure was reported after: its own record of it, else (a summary or
    results.json written before references recorded it) that of the preset citing the same figure."""
    if not reference:
        return None
    if isinstance(reference.get("budget"), dict):
        return reference["budget"]
    for preset in _PRESETS.values():
        if preset.reported_accuracy is not None and (preset.source, preset.reported_accuracy) == (
                reference.get("source"), reference.get("reported_test_accuracy")):
            return (preset.reference() or {}).get("budget")
    return None


def changes_the_model(config: RunConfig) -> bool:
    """Whether a run of a preset changed its model or data (a sweep over model.hidden, say), so that
    the tutorial's reported accuracy is not a figure to set it against. The recipe may change: the
    ``-plus`` presets are the tutorials' models trained better; so may the implementation (model.impl)."""
    preset = _PRESETS.get(config.preset)
    if preset is None:
        return False
    mine, theirs = dataclasses.replace(config.model, impl="auto"), dataclasses.replace(preset.config.model, impl="auto")
    return mine != theirs or (config.data.dataset, config.data.view) != (preset.config.data.dataset,
                                                                          preset.config.data.view)


from rnnlab import presets_plus as _presets_plus  # noqa: E402,F401  (registers the -plus presets and row-best)
