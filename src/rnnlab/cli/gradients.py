"""``rnnlab gradients``: how far back through the steps the loss's gradient reaches."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnlab.cli.common import (DefaultsHelpFormatter, add_config_arguments, check_at_least, check_plot_path,
                               config_from_args, settings_given, typed_settings)
from rnnlab.config import RunConfig
from rnnlab.errors import ConfigError

# Where a trained run's model runs and whence it reads its test data, not what model it is:
# --run takes these, as `rnnlab eval RUN` does (--data-dir: the run's data moved elsewhere).
RUN_OPTIONS = ("--device", "--data-dir")
# The train.* settings a fresh model's gradients depend on: the device they are computed on,
# torch's threads, and the protocol, which decides whether a validation split is carved from the
# training data the standardisation statistics come from. The others only shape training.
TRAIN_KEYS_USED = ("train.device", "train.threads", "train.protocol")
# Overrides shown in `rnnlab gradients --help`; tests run them.
EXAMPLE = "model.cell=rnn model.hidden=256 seed=1"


def gradients_uses(key: str) -> bool:
    """Whether a fresh model's gradients depend on the dotted ``key``: the model, data and seed
    settings do, of the training settings only TRAIN_KEYS_USED."""
    return not key.startswith("train.") or key in TRAIN_KEYS_USED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gradients", help="gradient norm at every step: see gradients vanish or explode",
        formatter_class=DefaultsHelpFormatter,
        description="Mean ||dL/dh_t|| over test images for every step, layer and direction, of a "
                    "trained run (--run) or of a fresh model at its initialisation (--preset, --config, "
                    "overrides), e.g. `rnnlab gradients --preset dlw-rnn-c` against "
                    "`rnnlab gradients --preset dlw-lstm-b`. It runs on --device (default auto, as training "
                    "does), in float32: train.amp is refused, as are the optimiser, rate and budget (nothing is trained). "
                    "With --run the model is the run's own; --device and --data-dir (a moved copy of the "
                    "run's data, as for `rnnlab eval`) still apply.")
    parser.add_argument("--run", metavar="RUN_DIR", help="a trained run (its final weights) instead of a fresh "
                                                         "model; takes --device and --data-dir, no model settings")
    parser.add_argument("--images", type=int, default=256, help="test images to average over")
    parser.add_argument("--plot", metavar="FILE", help="also draw the norms against the step (log scale) into "
                                                       "FILE (.png, .svg, .pdf, ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_config_arguments(parser, uses=gradients_uses, example=EXAMPLE)
    parser.set_defaults(func=run)


def check_training_settings(config: RunConfig, typed: list[tuple[str, str]]) -> None:
    """Refuse training settings given for a fresh model, which gradients would otherwise ignore:
    mixed precision (computed in float32, by design) and the optimisation recipe and budget."""
    if config.train.amp != "off":
        asked = [text for key, text in typed if key == "train.amp"]
        if asked:
            raise ConfigError(f"{' '.join(asked)}: `rnnlab gradients` computes in float32, never in mixed "
                              "precision: the norms it measures fall to 1e-11 and below, far under fp16's "
                              "range, and bf16 keeps 3 significant digits; drop it (train.amp is for training)")
        # From a preset or a config file (a bf16 run's config.toml): part of its training recipe.
        print(f"rnnlab: warning: train.amp={config.train.amp} of the config is not used: "
              "`rnnlab gradients` computes in float32", file=sys.stderr)
    # train.amp=off (left here) says what gradients does anyway.
    unused = [text for key, text in typed if not gradients_uses(key) and key != "train.amp"]
    if unused:
        raise ConfigError(f"`rnnlab gradients` trains nothing, so training settings do not apply; drop "
                          f"{' '.join(unused)} (--images sets how many test sequences it averages over)")


def check_plot_folder(plot: str) -> None:
    """Refuse a --plot inside a file: the plot's folders are made when it is written, after the work."""
    target = Path(plot)
    for parent in target.parents:  # wording as ``train --out`` (checkpoint.check_out_dir)
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--plot {plot} is inside a file ({parent}); give a folder for the plot, "
                                  f"such as --plot {parent.parent / target.name}")
            break


def flow_or_memory_error(flow: Callable[..., Any], model: Any, x: Any, y: Any) -> Any:
    """``flow(model, x, y)``, with running out of memory said in one line: the gradients keep every
    step's states and their graph for all ``--images`` at once (memory grows as images x steps x
    hidden: pixel MNIST's 784 steps fill it first), so the fix is fewer images."""
    from rnnlab.distributed import is_out_of_memory
    from rnnlab.errors import ResourceError

    try:
        return flow(model, x, y)
    except Exception as exc:  # noqa: BLE001 - only running out of memory is handled here
        if not is_out_of_memory(exc):
            raise
        detail = (str(exc) or type(exc).__name__).splitlines()[0][:160]
        error = ResourceError(f"out of memory on {x.device} computing the gradients of {len(x)} test sequences "
                              f"of {x.shape[1]} steps ({detail}); every step's states are kept for all of them at "
                              f"once: lower --images (now {len(x)})")
    raise error  # outside the handler: the graph that filled the memory is freed, not kept as its context


def run(args: argparse.Namespace) -> int:
    import torch

    import rnnlab
    from rnnlab.distributed import configure_threads, select_device
    from rnnlab.seeding import seed_everything
    from rnnlab.data.splits import load_datasets
    from rnnlab.models.build import build_model
    from rnnlab.gradients import format_flow, gradient_flow
    from rnnlab.plots import gradient_flow_png

    check_at_least("--images", args.images, 1)
    if args.plot:  # before the work, not after it
        check_plot_path("--plot", args.plot)
        check_plot_folder(args.plot)
    if args.run is not None:  # "" too: an unset $RUN must not measure a fresh model instead
        given = [name for name in settings_given(args) if name not in RUN_OPTIONS]
        if given:  # the run's own saved config decides the model; these would be ignored
            moved = (" (to read the run's data from a moved copy, give --data-dir: an IDX folder, or the "
                     "moved .npz of a run on a sequence file)" if "--data-file" in given else "")
            raise ConfigError(f"--run uses a trained run with its own saved config; drop the other settings "
                              f"({' '.join(given)}){moved}")
        device = select_device(args.short_device or "auto")  # an absent GPU is refused, not replaced
        trained = rnnlab.load(args.run, device=device)
        # As `rnnlab eval RUN --data-dir`: an IDX folder, or for a sequence-file run the moved .npz.
        model, test = trained.model, trained.test_split(args.short_data_dir)
        title = f"{args.run}: trained"
    else:
        config = config_from_args(args)
        check_training_settings(config, typed_settings(args))
        device = select_device(config.train.device)  # as training picks and checks it
        configure_threads(config.train.threads)
        seed_everything(config.seed)
        # Standardisation statistics come from the training split, carved as training carves it;
        # nothing here validates, so one too small to give up data.val_size is kept whole.
        datasets = load_datasets(config, needs_validation=False)
        # Built on the CPU, as training builds it, so a seed gives the same weights on every device.
        model, test = build_model(config, datasets).to(device), datasets.test
        title = f"{config.label}: at initialisation (seed {config.seed})"
    if test.lengths is not None:  # varying lengths: the step axis means the same only at full length
        full = (test.lengths == test.seq_shape[0]).nonzero().flatten()
        if len(full) == 0:
            raise ConfigError(f"no test sequence has the full {test.seq_shape[0]} steps; `rnnlab gradients` "
                              "compares steps across sequences, so it needs some of full length; add test "
                                  f"sequences of all {test.seq_shape[0]} steps to the file")
        test = test.subset(full)
    count = min(args.images, len(test))
    x, y = test.batch(torch.arange(count))  # (N, T, F), (N,)
    flow = flow_or_memory_error(gradient_flow, model, x.to(device), y.to(device))
    if flow.state_difference > 1e-3:  # the unrolled cells should be the model's own maths
        raise ConfigError(f"the step-by-step rerun differs from the model's own run by {flow.state_difference:.3g}; "
                          "this model's recurrence is not supported by `rnnlab gradients`")
    layers, directions, _ = flow.norms.shape
    plotted = None
    if args.plot:
        labels = {(layer, d): f"layer {layer + 1}" + ((" reverse" if d else " forward") if directions == 2 else "")
                  for layer in range(layers) for d in range(directions)}
        curves = {f"{labels[k]}, h": flow.norms[k].numpy() for k in labels}
        if flow.cell_norms is not None:  # an LSTM: the cell state's gradient too
            curves |= {f"{labels[k]}, c": flow.cell_norms[k].numpy() for k in labels}
        plotted = gradient_flow_png(curves, args.plot, title=f"Gradient flow through time: {title}")
    if args.json:
        print(json.dumps({"model": title, **flow.to_dict()}))
    else:
        print(format_flow(flow, title))
        if args.plot:  # nothing is drawn when every norm is 0 (a log axis has no place for them)
            print(f"\nplot: {args.plot}" if plotted else "\nplot: not written, every gradient norm is 0")
    return 0
