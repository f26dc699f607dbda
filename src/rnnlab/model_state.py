"""A model rebuilt from a run's config and state_dict, with clear errors where the two do not fit:
for ``rnnlab.load``, export and anything else that reads a checkpoint's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.errors import CheckpointError
from rnnlab.models import SequenceClassifier, create_model


def build_from_state(config: RunConfig, state: dict[str, torch.Tensor], *, impl: str | None = None,
                     input_shape: dict[str, Any] | None = None,
                     source: str | Path | None = None) -> SequenceClassifier:
    """Rebuild a model from its config and state_dict (optionally forcing the layer implementation).
    ``input_shape`` is a checkpoint's ``meta["input"]``; without it the config decides. ``source``
    (the checkpoint.json the config came from) is named in errors."""
    from dataclasses import replace

    from rnnlab.data.splits import config_input_shape

    if input_shape is not None:
        steps, features, classes = input_shape["steps"], input_shape["features"], input_shape["classes"]
    else:  # a checkpoint from before meta "input": the config says it (a sequence file: the file does)
        steps, features, classes = config_input_shape(config)
    model_cfg = config.model if impl is None else replace(config.model, impl=impl)
    # Built on the meta device, with no values, then given the checkpoint's: create_model's random
    # initialisation would draw from the global generator, which a run in another thread is using
    # (forking and restoring it rewound that run's stream), and would be thrown away anyway.
    # The standardisation buffers are scalars or (F,): build them in the checkpoint's shape.
    arguments = dict(input_size=features, seq_len=steps, num_classes=classes,
                     input_mean=state.get("input_mean", 0.0), input_std=state.get("input_std", 1.0))
    with torch.device("meta"):
        model = create_model(model_cfg, **arguments)
    if _values_no_state_dict_holds(model):
        # A module of one's own keeps values the checkpoint cannot hold (a non-persistent buffer, a
        # tensor attribute): only its builder makes them, so it is built for real (to_empty would
        # leave them uninitialised memory), with no run of this process drawing from the generators
        # meanwhile and the caller's random state given back.
        from rnnlab import seeding
        from rnnlab.run import _ONE_RUN_AT_A_TIME

        with _ONE_RUN_AT_A_TIME, seeding.callers_state_kept(), torch.device("cpu"):
            model = create_model(model_cfg, **arguments)
    else:
        model = model.to_empty(device="cpu")  # every tensor is then loaded: _state_mismatch refuses missing ones
    where = f"{source}: " if source is not None else ""
    mismatch = _state_mismatch(model, state)
    try:
        if mismatch is None:
            model.load_state_dict(state)
    except RuntimeError as exc:
        mismatch = ckpt.error_line(exc, kind=False)
    if mismatch is not None:
        # torch's own message starts with an empty "Error(s) in loading state_dict" line: name the tensors.
        raise CheckpointError(f"{where}the config's model does not match the checkpoint's weights ({mismatch}); "
                              "put the model settings (model.cell, model.hidden, model.layers, ...) back to those "
                              "the run was trained with, or retrain") from None
    return model


def _values_no_state_dict_holds(model: torch.nn.Module) -> list[str]:
    """Names of the tensors ``model`` keeps outside its state_dict: non-persistent buffers, and
    tensors set as plain attributes (neither is saved, nor moved by ``to_empty``)."""
    saved = set(model.state_dict())
    names = [name for name, _ in model.named_buffers() if name not in saved]
    for prefix, module in model.named_modules():
        names += [f"{prefix}.{key}" if prefix else key for key, value in vars(module).items()
                  if isinstance(value, torch.Tensor)]
    return names


def _state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``model``, naming the first tensors at fault; None if it fits."""
    expected = model.state_dict()
    sizes = [f"{name} is {tuple(state[name].shape)} in the checkpoint but {tuple(tensor.shape)} for this config"
             for name, tensor in expected.items() if name in state and state[name].shape != tensor.shape]
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]

    def first(names: list[str]) -> str:
        return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")

    problems = []
    if sizes:
        problems.append(sizes[0] + (f" (and {len(sizes) - 1} more sizes differ)" if len(sizes) > 1 else ""))
    if missing:
        problems.append(f"missing from the checkpoint: {first(missing)}")
    if unexpected:
        problems.append(f"not in this config's model: {first(unexpected)}")
    return "; ".join(problems) or None
