"""Settings given that the rest of a config would leave unused.

``rnnlab train`` refuses them rather than train what was not asked for, and ``rnnlab compare``
would otherwise train the same model under several names (``--sweep model.nonlinearity=tanh,relu``
on an LSTM). A saved config may hold them: only settings given as overrides are refused. A config
built in Python (or loaded) is judged by its settings that differ from the defaults, and
``rnnlab.train`` warns of them (:func:`unused_settings`).
"""

from __future__ import annotations

from typing import Any

from rnnlab.errors import ConfigError, option


class UnusedSettingWarning(UserWarning):
    """A config holds a setting the rest of it leaves unused (``rnnlab.train``); a compare, whose shared
    settings some entries use and others not, leaves it unsaid."""


def refuse_what_would_be_ignored(raw: dict[str, Any], given: set[str]) -> None:
    """``raw``: the config as a nested dict, overrides applied; ``given``: the dotted keys overridden."""
    if "preset" in given:  # the label of where a config came from: it would relabel the run, not load the preset
        raise ConfigError("preset names the preset a config came from; to start from one, use "
                          + option("--preset NAME", "rnnlab.get_preset(NAME).config"))
    problems = _left_unused(raw, given)
    if problems:
        raise ConfigError(problems[0])


def unused_settings(raw: dict[str, Any], default: dict[str, Any]) -> list[str]:
    """What ``raw`` (a config as a nested dict) sets away from ``default`` (the default config's) that
    the rest of it leaves unused, one sentence each: what a config built in Python would be refused
    for had its settings been given as overrides."""
    given = {f"{section}.{key}" for section, values in raw.items() if isinstance(values, dict)
             for key, value in values.items() if value != default[section][key]}
    return _left_unused(raw, given)


def _left_unused(raw: dict[str, Any], given: set[str]) -> list[str]:
    from rnnlab.config import CELLS  # late: config imports this module. A model of one's own reads what it will.

    data, model, train = raw["data"], raw["model"], raw["train"]
    problems = []
    if data["file"] and data["data_dir"] and "data.data_dir" in given:
        problems.append("data.data_dir is the folder of an image dataset's IDX files; a sequence file is read "
                         f"from data.file alone: drop data.data_dir{option(' (--data-dir)', '')}")
    if "data.permutation_seed" in given and data["view"] != "permuted-pixels":
        problems.append(f"data.permutation_seed orders the pixels of data.view=permuted-pixels; this run reads "
                         f"{data['view'] if data['dataset'] != 'file' else 'a sequence file'}: drop it, or add "
                         "data.view=permuted-pixels")
    if "model.nonlinearity" in given and model["cell"] in ("lstm", "gru"):  # a model of one's own may read it
        problems.append(f"model.nonlinearity is the Elman RNN's (model.cell=rnn); a{'n' * (model['cell'] == 'lstm')} "
                         f"{model['cell'].upper()} has its own gates: drop it, or add model.cell=rnn")
    if model["dropout"] and model["layers"] == 1 and "model.dropout" in given and model["cell"] in CELLS:
        problems.append("model.dropout drops out between stacked layers, as torch.nn's does; with model.layers=1 "
                         "there are none: drop it, or add model.layers=2")
    for key in ("impl", "init"):  # a model of one's own builds and initialises its own module
        if f"model.{key}" in given and model["cell"] not in CELLS:
            problems.append(f"model.{key} is for rnnlab's own cells (rnn, lstm, gru); model.cell={model['cell']} is "
                            "a model of your own, whose builder makes its module: drop it")
    if train["protocol"] == "tutorial" and data["val_size"] and "data.val_size" in given:
        problems.append("train.protocol=tutorial (the tutorial presets') holds out no validation split and "
                         "evaluates on the test set; drop data.val_size, or add train.protocol=standard")
    if "train.momentum" in given and train["momentum"] and train["optimizer"] not in ("sgd", "rmsprop"):
        problems.append(f"train.momentum is SGD's and RMSprop's; train.optimizer={train['optimizer']} keeps its "
                         "own moments (its betas): drop it, or add train.optimizer=sgd")
    for key in ("step_size", "gamma"):
        if f"train.{key}" in given and train["schedule"] != "step":
            problems.append(f"train.{key} is for train.schedule=step; this run's schedule is "
                             f"{train['schedule']}: drop it, or add train.schedule=step")
    return problems
