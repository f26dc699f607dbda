"""``rnnlab train``: train a model from a preset, a config file and overrides; or resume a run."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from typing import Any

import tomli_w

from rnnlab.budget import Budget
from rnnlab.cli.common import DefaultsHelpFormatter, add_config_arguments, config_from_args, settings_given
from rnnlab.config import to_dict
from rnnlab.stopping import Interrupted, Terminated


# A dry run evaluates this many samples of each split: the whole val and test sets of a 784-step
# pixel view took minutes on a CPU, for a figure that means nothing after 2 iterations.
DRY_RUN_EVAL_SAMPLES = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model and write a run folder",
        description="Train a recurrent classifier. Without arguments: an LSTM on row MNIST (28 steps of 28 pixels).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<name-or-preset-or-model>-<timestamp>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint (with --data-dir: reading "
                             "its data from where it moved)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"check that the run is wired, in seconds: train 2 iterations in a temporary folder, "
                             f"evaluate the first {DRY_RUN_EVAL_SAMPLES} samples of each split (not a result), "
                             "print the config, and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import rnnlab
    from rnnlab.run import _train

    progress = not args.no_progress
    if args.resume is not None:
        from rnnlab.errors import ConfigError

        # --data-dir is where the data is now, not a setting: it points the run at its moved data.
        given = [flag for flag in settings_given(args) if flag != "--data-dir"]
        if given:  # the run's saved config decides; these would be silently ignored
            raise ConfigError(f"--resume continues a run with its own saved config; drop the other settings "
                              f"({' '.join(given)}); --data-dir DIR (or FILE.npz) points it at its moved data")
        for flag, value in (("--out", args.out), ("--dry-run", args.dry_run)):
            if value:  # the run folder is the one resumed, and trained in for good
                raise ConfigError(f"--resume continues the run in its own folder, for good; drop {flag}")
        try:
            result, ctrl_c = rnnlab.resume(args.resume, progress=progress, data_dir=args.short_data_dir), False
        except Interrupted as stop:  # saved: reported below, as any other end of the run
            result, ctrl_c = stop.run, True
    else:
        config = config_from_args(args)
        if args.dry_run and args.out is not None:  # nothing is kept: an --out would go unchecked and unused
            from rnnlab.errors import ConfigError

            raise ConfigError("--dry-run trains in a temporary folder and keeps nothing; drop --out")
        if args.dry_run:  # the config is printed once it has run: a refused one prints only its error
            folder = tempfile.mkdtemp(prefix="rnnlab-dry-run-")
            try:
                result = _train(config, folder, progress=progress, stop_after=2, eval_limit=DRY_RUN_EVAL_SAMPLES)
            except Terminated:  # its folder is about to go: there is nothing to resume
                raise Terminated from None
            except KeyboardInterrupt:  # Ctrl-C: the same, not "dry run ok"
                raise KeyboardInterrupt from None
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(tomli_w.dumps(to_dict(config)))
            if result.status == "diverged":  # as the real run would end: not "ok"
                print(f"rnnlab: dry run diverged: {result.summary['message']}", file=sys.stderr)
                return 1
            print(f"dry run ok: {_dry_run_outcome(result.summary)}")
            return 0
        try:
            result, ctrl_c = rnnlab.train(config, args.out, progress=progress), False
        except Interrupted as stop:
            result, ctrl_c = stop.run, True
    from rnnlab import distributed as dist

    code = _report(result, ctrl_c) if dist.is_main_process() else int(result.status == "diverged")
    # Under torchrun: together at the end of the run, each at its own step after a Ctrl-C.
    dist.end_process(code, together=result.status != "interrupted")
    return code


def _dry_run_outcome(summary: dict[str, Any]) -> str:
    """What a dry run did, its test accuracy marked as measured on a few samples: not a result."""
    steps, accuracy = summary["iterations"], summary.get("test_accuracy")
    done = f"{steps} iteration{'s' * (steps != 1)}"
    if accuracy is None:
        return done
    tested, of = summary.get("evaluation_subset", {}).get("test"), summary["data"]["test"]
    sample = "" if tested is None or tested >= of else f" on the first {tested:,} of {of:,} test samples"
    return f"{done}, loss and evaluation ran (test accuracy {accuracy:.2f}%{sample}: a check, not a result)"


def _report(result: Any, ctrl_c: bool) -> int:
    """Print how the run ended; returns the exit status: 130 after a Ctrl-C, as a shell loop expects,
    even where the run completed as it came."""
    from rnnlab import distributed as dist
    from rnnlab.checkpoint import CHECKPOINT_JSON

    print_summary(result.summary, str(result.dir))
    if result.status == "diverged":
        print(f"rnnlab: run diverged: {result.summary['message']}", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        if not (result.dir / CHECKPOINT_JSON).is_file():  # under torchrun, before the first periodic save
            print(f"rnnlab: interrupted before its first checkpoint: nothing to resume; train again into another "
                  f"--out (or delete {result.dir})", file=sys.stderr)
        else:
            launcher = "torchrun ... " if dist.world_size() > 1 else ""
            print(f"rnnlab: interrupted; continue with: {launcher}rnnlab train --resume {result.dir}", file=sys.stderr)
        return 130
    if ctrl_c:
        print(f"rnnlab: interrupted as the run ended: it is {result.status} and saved", file=sys.stderr)
        return 130
    return 0


def print_summary(summary: dict[str, Any], run_dir: str) -> None:
    """The closing lines of a run: accuracy, budget, time, throughput, where it is."""
    lines = [f"status            {summary['status']}"]
    if "test_accuracy" in summary:
        lines.append(f"test accuracy     {summary['test_accuracy']:.2f}%")
    if "val_accuracy" in summary:
        lines.append(f"val accuracy      {summary['val_accuracy']:.2f}%")
    reference = summary.get("reference")
    if reference and reference.get("reported_test_accuracy") is not None:
        budget = reference.get("budget")  # the figure came after the tutorial's budget, perhaps not this run's
        after = f" (after {Budget.from_dict(budget).text()})" if isinstance(budget, dict) else ""
        lines.append(f"tutorial reported {reference['reported_test_accuracy']:.2f}%{after}")
    best = summary.get("best_val")
    if best and best["weights"] == "best":
        lines.append(f"weights           of iteration {best['iteration']}, the best val accuracy "
                     f"({best['val_accuracy']:.2f}%; train.keep_best)")
    elif best:
        lines.append(f"best val          {best['val_accuracy']:.2f}% at iteration {best['iteration']}")
    if summary.get("stopped_early"):
        lines.append(f"stopped early     no better val accuracy in {summary['stopped_early']['patience']} "
                     "evaluations (train.patience)")
    lines += [
        f"iterations        {summary['iterations']} ({summary['epochs']:.2f} epochs)",
        f"train time        {summary['train_seconds']:.1f} s",
        f"samples/s         {summary['samples_per_second']:.0f}",
        f"parameters        {summary['parameters']:,}",
    ]
    if summary.get("amp", "off") != "off":
        lines.append(f"precision         {summary['amp']} autocast (float32 weights)")
    data = summary.get("data")
    if data:
        lengths = f" (lengths {data['lengths'][0]}-{data['lengths'][1]})" if data.get("lengths") else ""
        features = f"{data['features']} feature" + ("s" if data["features"] != 1 else "")
        lines.append(f"data              {data['train']:,} train / {data['val']:,} val / {data['test']:,} test, "
                     f"{data['steps']} steps x {features}{lengths}, {data['classes']} classes")
    if summary.get("protocol_note"):
        lines.append(f"protocol          {summary['protocol_note']}")
    lines.append(f"run folder        {run_dir}")
    print("\n".join(lines))
