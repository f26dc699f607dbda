"""Will a model fit? Its parameter count from the config alone, and a clear refusal, before torch
tries to allocate a model that this machine (or GPU) cannot hold.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

from rnnlab.config import ModelConfig, TrainConfig
from rnnlab.errors import ConfigError
from rnnlab.models.recurrent import GATES

ADVICE = "lower model.hidden or model.layers"


def parameter_estimate(config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int) -> int | None:
    """The parameter count of the model ``create_model`` would build, without building it: per
    layer and direction ``G*H*(I+H) + 2*G*H`` (two bias vectors), as ``flops_per_sample`` counts.
    None for a model of one's own (``register_model``): only its builder knows."""
    if config.cell not in GATES:
        return None
    gates, hidden, directions = GATES[config.cell], config.hidden, 2 if config.bidirectional else 1
    per_layer = directions * gates * hidden * (directions * hidden + hidden + 2)  # layers after the first
    recurrent = directions * gates * hidden * (input_size + hidden + 2) + (config.layers - 1) * per_layer
    features = directions * hidden * (seq_len if config.readout == "all" else 1)
    return recurrent + (features + 1) * num_classes


# Initialisation works on H x H blocks: orthogonal_ keeps a random matrix and its QR factors
# (measured peak: ~3-4 extra blocks), identity one torch.eye; default works in place.
_INIT_BLOCKS = {"orthogonal": 4, "identity": 1}


def check_model_size(config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int,
                     train: TrainConfig | None = None, gpu: tuple[int, str] | None = None) -> int | None:
    """Refuse a model whose float32 weights would not fit in memory while it is built (with
    ``train``: nor its gradients and optimizer state), before torch tries; return the parameter count.
    ``gpu``: (free bytes, name) of the GPU that will hold the model (``distributed.device_memory``).
    The model is built on the host either way, so the host must hold the build, and whichever
    device trains must hold the training copies."""
    count = parameter_estimate(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes)
    if count is None:  # a model of one's own: not estimated; torch's own out-of-memory error stands
        return None
    weights = 4 * count
    building = weights + _INIT_BLOCKS.get(config.init, 0) * 4 * config.hidden**2
    copies = 1 if train is None else _training_copies(train)
    host, host_copies = _memory_bytes(), 1 if gpu is not None else copies
    # readout=all's head reads every step's state: on 784 steps it can outweigh the recurrence
    head = config.hidden * (2 if config.bidirectional else 1) * seq_len * num_classes
    advice = (f"{ADVICE}, or set model.readout=last (the head of readout=all reads all {seq_len} steps: "
              f"{format_count(head)} of the parameters)" if config.readout == "all" and 2 * head > count else ADVICE)
    if max(building, weights * host_copies) > host:
        _refuse(count, config, train if gpu is None else None, host, "this machine has", building, copies, advice)
    if gpu is not None and weights * copies > gpu[0]:
        _refuse(count, config, train, gpu[0], f"the GPU {gpu[1]} has", weights, copies, advice, free=True)
    return count


def _refuse(count: int, config: ModelConfig, train: TrainConfig | None, memory: int, where: str,
            building: int, copies: int, advice: str, *, free: bool = False) -> None:
    """The model-size error: what does not fit where, and what to change (``advice``)."""
    weights = 4 * count
    notes = ""  # the weights alone too big: that says it all; else say what else is
    if weights <= memory < building:
        notes += f"; model.init={config.init} needs {format_size(building)} while building it"
        advice += " (or set model.init=default)" if train is None or weights * copies <= memory else ""
    if train is not None and weights <= memory < weights * copies:
        notes += (f"; training with {train.optimizer} adds gradients and optimizer state: "
                  f"{copies} copies, {format_size(weights * copies)}")
    raise ConfigError(f"the model would have {format_count(count)} parameters ({format_size(weights)} of float32 "
                      f"weights{notes}); {where} {format_size(memory)} of memory{' free' if free else ''}; {advice}")


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
def format_count(count: int) -> str:
    return f"{count:,}" if count < 10**7 else f"{Decimal(count):.1e}".replace("+", "")  # e.g. 1.6e9


def format_size(nbytes: int) -> str:
    gib = Decimal(nbytes) / 2**30
    if gib < 1:  # e.g. a container's limit
        return f"{gib * 1024:.1f} MiB"
    if gib < 1000:
        return f"{gib:.1f} GiB"
    return f"{gib:,.0f} GiB" if gib < 10**6 else f"{gib:.1e} GiB".replace("+", "")
