"""``rnnlab presets``, ``rnnlab models`` and ``rnnlab inspect``: what there is and what it costs."""

from __future__ import annotations

import argparse

from rnnlab.cli.common import add_config_arguments, config_from_args, typed_settings
from rnnlab.errors import ConfigError


# Overrides shown in `rnnlab inspect --help`; tests run them.
INSPECT_EXAMPLE = "model.cell=gru model.hidden=256 data.view=pixels"


def inspect_uses(key: str) -> bool:
    """Nothing is trained: training settings would change nothing shown, so inspect takes none."""
    return not key.startswith("train.")


def register(subparsers: argparse._SubParsersAction) -> None:
    presets = subparsers.add_parser("presets", help="list the presets, their sources and reported accuracy")
    presets.set_defaults(func=run_presets)
    models = subparsers.add_parser("models", help="list the models a run can use (model.cell)")
    models.set_defaults(func=run_models)
    inspect = subparsers.add_parser(
        "inspect", help="parameter groups and shapes, counts, FLOPs per sample",
        description="Show a model's parameters (as the tutorials list them), its size and its cost.",
    )
    add_config_arguments(inspect, uses=inspect_uses, example=INSPECT_EXAMPLE)
    inspect.set_defaults(func=run_inspect)


def run_presets(args: argparse.Namespace) -> int:
    from rnnlab.presets import get_preset, list_presets

    rows, sources = [], {}  # source -> its number, in the order the presets name them
    for name in list_presets():
        preset = get_preset(name)
        reported = f"{preset.reported_accuracy:.2f}" if preset.reported_accuracy is not None else "-"
        number = sources.setdefault(preset.source, len(sources) + 1) if preset.source else None
        rows.append((name, reported, preset.description + (f" [{number}]" if number else "")))
    width = max(len(r[0]) for r in rows)
    print(f"{'preset':<{width}}  reported  recipe [source]")
    for name, reported, description in rows:
        print(f"{name:<{width}}  {reported:>8}  {description}")
    print("\nsources:\n" + "\n".join(f"  [{number}] {source}" for source, number in sources.items()))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from rnnlab.config import CELL_SUMMARIES, REGISTERED_CELLS  # no torch: the list is the config's

    models = {**CELL_SUMMARIES, **REGISTERED_CELLS}  # with --import, the models it registered too
    width = max(6, *map(len, models))
    for name, summary in models.items():
        print(f"{name:<{width}} {summary}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from rnnlab.config import describe_model
    from rnnlab.data.splits import config_input_shape
    from rnnlab.models import create_model, describe_parameters, flops_per_sample, parameter_count

    config = config_from_args(args)
    training = [text for key, text in typed_settings(args) if not inspect_uses(key)]
    if training:  # they would be dropped without a word
        raise ConfigError(f"`rnnlab inspect` shows a model and its input, which training settings do not "
                          f"change; drop {' '.join(training)}")
    steps, features, classes = config_input_shape(config)
    if config.data.dataset == "file" and config.model.readout == "all":  # as training would refuse it
        from rnnlab.data.files import load_sequence_file
        from rnnlab.models.build import check_readout

        check_readout(config, load_sequence_file(config.data.file).train.lengths is not None)
    source = config.data.file or config.data.view
    model = create_model(config.model, input_size=features, seq_len=steps, num_classes=classes)
    print(f"{config.label}: {describe_model(config.model)}, readout {config.model.readout}, "
          f"input {steps} steps x {features} features ({source}), {classes} classes")
    params = describe_parameters(model)
    width = max(len(name) for name, _, _ in params)
    print(f"\n{'parameter':<{width}}  {'shape':<14} {'count':>9}")
    for name, shape, count in params:
        print(f"{name:<{width}}  {str(list(shape)):<14} {count:>9,}")
    flops = flops_per_sample(model, steps)
    print(f"\nparameters         {parameter_count(model):,}")
    if flops is None:
        print(f"FLOPs per sample   not counted: model.cell={config.model.cell} is a model of your own")
    else:
        # Per step, the recurrence alone: a hand count of 2*G*H*(I+H) per layer should find it exactly; the
        # head runs once (over every step's state for readout=all), so spread over the steps it is in no step.
        head = 2 * model.head.in_features * model.head.out_features
        print(f"FLOPs per sample   {flops:,} forward ({(flops - head) // steps:,} per step of the recurrence, "
              f"{head:,} for the head), ~{3 * flops:,} training")
    return 0
