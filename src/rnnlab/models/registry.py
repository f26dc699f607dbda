"""A registry of model builders, in the style of timm: ``list_models()``, ``create_model()``.

Each builder is keyword-only and typed; it returns a :class:`SequenceClassifier`. The registry
is the one place that maps a name (``rnn``, ``lstm``, ``gru``, ...) to a model.
"""

from __future__ import annotations

import os
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Callable

import torch

from rnnlab.config import ModelConfig, TrainConfig
from rnnlab.errors import ConfigError
from rnnlab.models.recurrent import GATES, SequenceClassifier

Builder = Callable[..., SequenceClassifier]
_REGISTRY: dict[str, tuple[Builder, str]] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available under ``name``."""

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
    """Build the model a :class:`ModelConfig` describes (its ``cell`` names the builder)."""
    builder = get_builder(config.cell)
    count = check_model_size(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes)
    try:
        return builder(config=config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                       input_mean=input_mean, input_std=input_std)
    except (RuntimeError, MemoryError) as exc:  # under the check, yet still more than the memory free now
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc).lower():
            raise
        raise ConfigError(f"the model's {_count(count)} parameters ({_size(4 * count)} of float32 weights) do not "
                          f"fit in the memory free now: torch could not allocate them; {_ADVICE}") from None


_ADVICE = "lower model.hidden or model.layers"


def parameter_estimate(config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int) -> int:
    """The parameter count of the model ``create_model`` would build, without building it: per
    layer and direction ``G*H*(I+H) + 2*G*H`` (two bias vectors), as ``flops_per_sample`` counts."""
    gates, hidden, directions = GATES[config.cell], config.hidden, 2 if config.bidirectional else 1
    per_layer = directions * gates * hidden * (directions * hidden + hidden + 2)  # layers after the first
    recurrent = directions * gates * hidden * (input_size + hidden + 2) + (config.layers - 1) * per_layer
    features = directions * hidden * (seq_len if config.readout == "all" else 1)
    return recurrent + (features + 1) * num_classes


# Initialisation works on H x H blocks: orthogonal_ keeps a random matrix and its QR factors
# (measured peak: ~3-4 extra blocks), identity one torch.eye; default works in place.
_INIT_BLOCKS = {"orthogonal": 4, "identity": 1}


def check_model_size(config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int,
                     train: TrainConfig | None = None, gpu: tuple[int, str] | None = None) -> int:
    """Refuse a model whose float32 weights would not fit in memory while it is built (with
    ``train``: nor its gradients and optimizer state), before torch tries; return the parameter count.
    ``gpu``: (free bytes, name) of the GPU that will hold the model (``distributed.device_memory``).
    The model is built on the host either way, so the host must hold the build, and whichever
    device trains must hold the training copies."""
    count = parameter_estimate(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes)
    weights = 4 * count
    building = weights + _INIT_BLOCKS.get(config.init, 0) * 4 * config.hidden**2
    copies = 1 if train is None else _training_copies(train)
    host, host_copies = _memory_bytes(), 1 if gpu is not None else copies
    if max(building, weights * host_copies) > host:
        _refuse(count, config, train if gpu is None else None, host, "this machine has", building, copies)
    if gpu is not None and weights * copies > gpu[0]:
        _refuse(count, config, train, gpu[0], f"the GPU {gpu[1]} has", weights, copies, free=True)
    return count


def _refuse(count: int, config: ModelConfig, train: TrainConfig | None, memory: int, where: str,
            building: int, copies: int, *, free: bool = False) -> None:
    """The model-size error: what does not fit where, and what to change."""
    weights = 4 * count
    notes, advice = "", _ADVICE  # the weights alone too big: that says it all; else say what else is
    if weights <= memory < building:
        notes += f"; model.init={config.init} needs {_size(building)} while building it"
        advice += " (or set model.init=default)" if train is None or weights * copies <= memory else ""
    if train is not None and weights <= memory < weights * copies:
        notes += (f"; training with {train.optimizer} adds gradients and optimizer state: "
                  f"{copies} copies, {_size(weights * copies)}")
    raise ConfigError(f"the model would have {_count(count)} parameters ({_size(weights)} of float32 "
                      f"weights{notes}); {where} {_size(memory)} of memory{' free' if free else ''}; {advice}")


def _training_copies(train: TrainConfig) -> int:
    """Weights, gradients, and Adam's two moments or one momentum/RMSprop buffer."""
    return 2 + (2 if train.optimizer in ("adam", "adamw") else (train.optimizer == "rmsprop") + (train.momentum > 0))


def _memory_bytes() -> int:
    """This machine's memory, or a container's limit if lower; 1 TiB where neither can be read."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        memory = 2**40
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()  # cgroup v2; "max": no limit
    except OSError:
        limit = ""
    return min(memory, int(limit)) if limit.isdigit() else memory


# Decimal, not float: an absurd model.hidden (hundreds of digits) overflows a float.
def _count(count: int) -> str:
    return f"{count:,}" if count < 10**7 else f"{Decimal(count):.1e}".replace("+", "")  # e.g. 1.6e9


def _size(nbytes: int) -> str:
    gib = Decimal(nbytes) / 2**30
    if gib < 1:  # e.g. a container's limit
        return f"{gib * 1024:.1f} MiB"
    if gib < 1000:
        return f"{gib:.1f} GiB"
    return f"{gib:,.0f} GiB" if gib < 10**6 else f"{gib:.1e} GiB".replace("+", "")


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


register_model("rnn", "Elman RNN, nonlinearity relu or tanh (model.nonlinearity)")(_build("rnn"))
register_model("lstm", "Long short-term memory (Hochreiter & Schmidhuber, 1997)")(_build("lstm"))
register_model("gru", "Gated recurrent unit (Cho et al., 2014)")(_build("gru"))
