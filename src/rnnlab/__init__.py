"""rnnlab: train, compare, inspect, export and serve recurrent sequence classifiers.

    import rnnlab
    run = rnnlab.train(rnnlab.get_preset("dlw-lstm-a").config)
    model = rnnlab.load(run.dir)
    model.predict(images)            # images (N, 28, 28), MNIST form

The names below are imported on first use (PEP 562): ``import rnnlab`` alone does not
import torch (~1.5 s), so ``rnnlab --help`` answers at once, and a Ctrl-C while torch
loads reaches the command line's handler instead of ending in a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DataConfig": "rnnlab.config",
    "ModelConfig": "rnnlab.config",
    "RunConfig": "rnnlab.config",
    "TrainConfig": "rnnlab.config",
    "apply_overrides": "rnnlab.config",
    "RnnlabError": "rnnlab.errors",
    "create_model": "rnnlab.models",
    "list_models": "rnnlab.models",
    "register_model": "rnnlab.models",
    "SequenceClassifier": "rnnlab.models",
    "get_preset": "rnnlab.presets",
    "list_presets": "rnnlab.presets",
    "Run": "rnnlab.run",
    "TrainedModel": "rnnlab.trained",
    "load": "rnnlab.trained",
    "read_run": "rnnlab.run",
    "resume": "rnnlab.run",
    "train": "rnnlab.run",
}

__all__ = ["DataConfig", "ModelConfig", "RnnlabError", "Run", "RunConfig", "SequenceClassifier", "TrainConfig",
           "TrainedModel", "apply_overrides", "create_model", "get_preset", "list_models", "list_presets", "load",
           "read_run", "register_model", "resume", "train"]
# __all__ is a literal, for linters: the same names as _EXPORTS (tests/test_package.py checks it).


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"rnnlab.{name}") is not None:
        value = importlib.import_module(f"rnnlab.{name}")  # a subpackage, as `rnnlab.data.load_split`
    else:
        raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
    from rnnlab.errors import RnnlabError
    from rnnlab.models import SequenceClassifier, create_model, list_models, register_model
    from rnnlab.presets import get_preset, list_presets
    from rnnlab.run import Run, read_run, resume, train
    from rnnlab.trained import TrainedModel, load
