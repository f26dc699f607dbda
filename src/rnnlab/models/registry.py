"""A registry of model builders, in the style of timm: ``list_models()``, ``create_model()``.

Each builder is keyword-only and typed; it returns a :class:`SequenceClassifier`. The registry
is the one place that maps a name (``rnn``, ``lstm``, ``gru``, ...) to a model.
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Any, Callable

import torch

from rnnlab.config import CELL_SUMMARIES, ModelConfig
from rnnlab.distributed import is_out_of_memory
from rnnlab.errors import ConfigError, describe
from rnnlab.models.recurrent import SequenceClassifier
from rnnlab.models.size import ADVICE, check_model_size, format_count, format_size

Builder = Callable[..., SequenceClassifier]
_REGISTRY: dict[str, tuple[Builder, str]] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available under ``name`` (``list_models`` lists it, ``get_builder``
    finds it). The names a run can use are those ``ModelConfig.cell`` accepts, ``config.CELLS``: rnn,
    lstm and gru, which the size check, the FLOP count and ``rnnlab inspect`` also know. A model of
    another name is built by calling its builder directly, outside ``rnnlab.train``."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (builder, summary)
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_summaries() -> dict[str, str]:
    return {name: summary for name, (_, summary) in sorted(_REGISTRY.items())}


def get_builder(name: str) -> Builder:
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def create_model(config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int,
                 input_mean: float | torch.Tensor = 0.0, input_std: float | torch.Tensor = 1.0) -> SequenceClassifier:
    """Build the model a :class:`ModelConfig` describes (its ``cell`` names the builder), in float32
    whatever the caller's default dtype (the data is float32)."""
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"create_model takes a ModelConfig (a run config's .model), not {describe(config)}")
    sizes = {}
    for key, value, low in (("input_size", input_size, 1), ("seq_len", seq_len, 1), ("num_classes", num_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # NumPy's integers too: y.max() + 1
            raise ConfigError(f"create_model: {key}={value!r} must be a whole number >= {low}, not {describe(value)}")
        if value < low:
            raise ConfigError(f"create_model: {key}={value!r} must be a whole number >= {low}")
        sizes[key] = int(value)
    input_size, seq_len, num_classes = sizes["input_size"], sizes["seq_len"], sizes["num_classes"]
    _check_standardisation(input_mean, input_std, input_size)
    builder = get_builder(config.cell)
    count = check_model_size(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return builder(config=config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                       input_mean=input_mean, input_std=input_std)
    except (RuntimeError, MemoryError) as exc:  # under the check, yet still more than the memory free now
        if not is_out_of_memory(exc):
            raise
        raise ConfigError(f"the model's {format_count(count)} parameters ({format_size(4 * count)} of float32 "
                          "weights) do not fit in the memory free now: torch could not allocate them; "
                          f"{ADVICE}") from None
    finally:
        torch.set_default_dtype(dtype)


def _check_standardisation(mean: Any, std: Any, features: int) -> None:
    """The input's mean and std: a number, or one per feature ``(F,)``; std > 0 and all finite (a
    std of 0 or NaN makes every logit NaN)."""
    for name, value in (("input_mean", mean), ("input_std", std)):
        try:
            values = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"create_model: {name} must be a number or one per feature ({features},), not "
                              f"{describe(value)}") from None
        if values.shape not in ((), (1,), (features,)):
            raise ConfigError(f"create_model: {name} has shape {tuple(values.shape)}; give a number or one per "
                              f"feature ({features},)")
        if values.device.type != "meta" and not (torch.isfinite(values).all() and (name == "input_mean" or
                                                                                    (values > 0).all())):
            raise ConfigError(f"create_model: {name} must be finite{' and > 0' * (name == 'input_std')}, got "
                              f"{values.flatten()[:4].tolist()}")


def _build(cell: str) -> Builder:
    def builder(*, config: ModelConfig, input_size: int, seq_len: int, num_classes: int,
                input_mean: float | torch.Tensor = 0.0, input_std: float | torch.Tensor = 1.0) -> SequenceClassifier:
        if config.cell != cell:
            config = replace(config, cell=cell)
        return SequenceClassifier(config, input_size=input_size, seq_len=seq_len,
                                  num_classes=num_classes, input_mean=input_mean, input_std=input_std)

    builder.__name__ = f"build_{cell}"
    builder.__doc__ = f"A {cell.upper()} sequence classifier described by ``config``."
    return builder


for _cell, _summary in CELL_SUMMARIES.items():
    register_model(_cell, _summary)(_build(_cell))
