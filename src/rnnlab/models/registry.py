"""A registry of model builders, in the style of timm: ``list_models()``, ``create_model()``.

Each builder is keyword-only and typed; it returns a :class:`SequenceClassifier`. The registry
is the one place that maps a name (``rnn``, ``lstm``, ``gru``, ...) to a model.
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from rnnlab.config import CELL_SUMMARIES, REGISTERED_CELLS, ModelConfig
from rnnlab.config_values import folder_name
from rnnlab.distributed import is_out_of_memory
from rnnlab.errors import ConfigError, describe
from rnnlab.models.own import check_builder_signature, check_own_model, count_registration
from rnnlab.models.recurrent import SequenceClassifier
from rnnlab.models.size import ADVICE, check_model_size, format_count, format_size

Builder = Callable[..., SequenceClassifier]
_REGISTRY: dict[str, tuple[Builder, str]] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available under ``name``, for ``create_model`` and for runs
    (``model.cell=name``), beside rnn, lstm and gru. The name is a plain word (letters, digits, '.',
    '_', '-', '+'): it also names the run folders, ``runs/<name>-1x128-<time>``.

    The builder is called with keyword arguments ``config`` (the run's ModelConfig), ``input_size``,
    ``seq_len``, ``num_classes``, ``input_mean`` and ``input_std``, and returns a
    :class:`SequenceClassifier` made with ``recurrent=`` a module of one's own: it maps ``(B, T, F)``
    (batch first) to a tuple whose first item is the top layer's states ``(B, T, D*H)``, as
    ``torch.nn.LSTM(batch_first=True)`` does, where ``D`` is 2 if ``config.bidirectional`` (forward
    direction first) and ``H`` is ``config.hidden``. rnnlab's readout, loss, training loop,
    checkpoints, evaluation and predictions then work as for its own cells; ``rnnlab gradients``
    (which reads each layer's weights) does not, and the FLOP count and size check are skipped.

    A run in another process (``rnnlab.load``, a compare's workers, the command line) needs the
    module that registers it imported first; on the command line, ``rnnlab --import FILE_OR_MODULE``.
    Registering a name again from the same function (a module run twice, a notebook cell) replaces it."""
    if not isinstance(name, str) or not folder_name(name):  # it names run folders: runs/<name>-1x128-<time>
        raise ConfigError(f"register_model: the name must be a non-empty string of up to 100 letters, digits, '.', "
                          f"'_', '-' or '+', starting with a letter or digit (it is model.cell, and names run "
                          f"folders: runs/<name>-1x128-<time>), not {name!r}; e.g. 'indrnn'")

    def wrap(builder: Builder) -> Builder:
        if not callable(builder):
            raise ConfigError(f"register_model({name!r}) decorates a builder function, not {describe(builder)}")
        if name in _REGISTRY and (name in CELL_SUMMARIES or not _same_function(_REGISTRY[name][0], builder)):
            by = "rnnlab" if name in CELL_SUMMARIES else _origin(_REGISTRY[name][0])
            raise ConfigError(f"model {name!r} is already registered (by {by}); choose another name")
        _REGISTRY[name] = (builder, summary)
        count_registration()  # import_models tells a module that registered nothing
        if name not in CELL_SUMMARIES:
            REGISTERED_CELLS[name] = summary  # a run's config may now name it
        return builder

    return wrap


def unregister_model(name: str) -> None:
    """Forget a model registered with :func:`register_model` (rnn, lstm and gru stay)."""
    if name in CELL_SUMMARIES:
        raise ConfigError(f"{name!r} is one of rnnlab's own models; only a model of your own can be unregistered")
    get_builder(name)  # the error lists the valid names
    del _REGISTRY[name]
    REGISTERED_CELLS.pop(name, None)


def _same_function(old: Builder, new: Builder) -> bool:
    """Whether ``new`` is ``old`` defined again: from the same file (a module imported under two names),
    or of the same module and name. IPython names each run of a cell's code anew (``<ipython-input-N-...>``,
    Jupyter by the cell's text), so a cell run again, say with a fix, has the same module and name only."""
    def named(builder: Builder) -> tuple[Any, Any]:
        return getattr(builder, "__module__", None), getattr(builder, "__qualname__", None)

    return _origin(old) == _origin(new) or (None not in named(old) and named(old) == named(new))


def _origin(builder: Builder) -> str:
    """Where a builder is defined: its source file (a module imported under two names is one) and name."""
    code = getattr(builder, "__code__", None)
    where = str(Path(code.co_filename).resolve()) if code is not None else getattr(builder, "__module__", "?")
    return f"{where}:{getattr(builder, '__qualname__', repr(builder))}"


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
    arguments = dict(config=config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                     input_mean=input_mean, input_std=input_std)
    if config.cell not in CELL_SUMMARIES:
        check_builder_signature(builder, config.cell, arguments)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = builder(**arguments)
    except (RuntimeError, MemoryError) as exc:  # under the check, yet still more than the memory free now
        if not is_out_of_memory(exc):
            raise
        size = ("" if count is None else
                f"{format_count(count)} parameters ({format_size(4 * count)} of float32 weights)")
        raise ConfigError(f"the model's {size or 'weights'} do not fit in the memory free now: torch could not "
                          f"allocate them; {ADVICE}") from None
    finally:
        torch.set_default_dtype(dtype)
    if config.cell not in CELL_SUMMARIES:
        check_own_model(model, config, input_size=input_size, seq_len=seq_len)
    return model


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
