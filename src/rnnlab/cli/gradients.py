"""``rnnlab gradients``: how far back through the steps the loss's gradient reaches."""

from __future__ import annotations

import argparse
import json

from rnnlab.cli.common import (DefaultsHelpFormatter, add_config_arguments, check_at_least, check_plot_path,
                               config_from_args, settings_given)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gradients", help="gradient norm at every step: see gradients vanish or explode",
        formatter_class=DefaultsHelpFormatter,
        description="Mean ||dL/dh_t|| over test images for every step, layer and direction, of a "
                    "trained run (--run) or of a fresh model at its initialisation (--preset, --config, "
                    "overrides), e.g. `rnnlab gradients --preset dlw-rnn-c` against "
                    "`rnnlab gradients --preset dlw-lstm-b`.")
    parser.add_argument("--run", metavar="RUN_DIR", help="a trained run (its final weights) instead of a fresh model")
    parser.add_argument("--images", type=int, default=256, help="test images to average over")
    parser.add_argument("--plot", metavar="FILE", help="also draw the norms against the step (log scale) into "
                                                       "FILE (.png, .svg, .pdf, ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import rnnlab
    from rnnlab.distributed import seed_everything
    from rnnlab.data.splits import load_datasets
    from rnnlab.models.build import build_model
    from rnnlab.errors import ConfigError
    from rnnlab.gradients import format_flow, gradient_flow
    from rnnlab.plots import gradient_flow_png

    check_at_least("--images", args.images, 1)
    if args.plot:
        check_plot_path("--plot", args.plot)  # before the work, not after it
    if args.run:
        given = settings_given(args)
        if given:  # the run's own saved config decides the model; these would be ignored
            raise ConfigError(f"--run uses a trained run with its own saved config; drop the other settings "
                              f"({' '.join(given)})")
        trained = rnnlab.load(args.run)
        model, test = trained.model, trained.test_split()
        title = f"{args.run}: trained"
    else:
        config = config_from_args(args)
        seed_everything(config.seed)
        # Standardisation statistics come from the training split, carved as training carves it;
        # nothing here validates, so one too small to give up data.val_size is kept whole.
        datasets = load_datasets(config, needs_validation=False)
        model, test = build_model(config, datasets), datasets.test
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
    flow = gradient_flow(model, x, y)
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
