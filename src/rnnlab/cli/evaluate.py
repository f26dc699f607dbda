"""``rnnlab eval``: test accuracy, per-class accuracy and the confusion matrix of a run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnnlab.cli.common import DEVICE_HELP, DefaultsHelpFormatter

LOWEST_SHOWN = 10  # of more classes than a confusion plot draws, the text lists only the worst


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a run on the test set",
                                   formatter_class=DefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the IDX files, or for a run on a sequence file the .npz (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--no-plot", action="store_true", help="do not write confusion.png into the run folder")
    parser.set_defaults(func=run)


def evaluate_run(run_dir: str, *, data_dir: str | None = None, batch_size: int = 1000,
                 device: str = "cpu") -> dict:
    """Evaluate a saved run on its dataset's test split (:meth:`rnnlab.TrainedModel.evaluate`)."""
    import rnnlab
    from rnnlab.checkpoint import training_now
    from rnnlab.distributed import select_device
    from rnnlab.errors import ConfigError

    if batch_size < 1:  # before loading: the flag's name, and no time spent on a refused call
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    trained = rnnlab.load(run_dir, device=select_device(device))
    if training_now(Path(run_dir)):  # the figures are of a checkpoint the run will soon replace: say which
        print(f"rnnlab: note: a run is still training in {run_dir}; this evaluates its checkpoint of iteration "
              f"{trained.meta.get('iteration', '?')}", file=sys.stderr)
    return {"run_dir": str(run_dir), **trained.evaluate(data_dir, batch_size=batch_size)}


def format_report(report: dict) -> str:
    """The evaluation as text; of more classes than a plot draws, the worst classes and no matrix
    (1000 classes would be a 5 MB matrix): ``--json`` has them all."""
    from rnnlab.plots import MAX_CONFUSION_CLASSES

    matrix = report["confusion_matrix"]
    n = len(matrix)
    lines = [f"test accuracy {report['test_accuracy']:.2f}% on {report['samples']} {report.get('unit', 'images')} "
             f"(loss {report['test_loss']:.4f})", ""]
    names = report.get("class_names")
    accuracies = report["per_class_accuracy"]
    if n <= MAX_CONFUSION_CLASSES:
        listed, heading = list(range(n)), "per-class accuracy:"
    else:  # the classes that need a look; all of them would be pages
        tested = [c for c in range(n) if accuracies[c] is not None]
        listed = sorted(tested, key=accuracies.__getitem__)[:LOWEST_SHOWN]
        untested = f"; {n - len(tested)} have no test samples" if len(tested) < n else ""
        heading = f"per-class accuracy, the {len(listed)} lowest of {n} classes{untested} (--json lists all):"
    lines.append(heading)
    lines += [f"  {c}{' ' + names[c] if names else ''}: "
              + (f"{accuracies[c]:6.2f}%" if accuracies[c] is not None else "   n/a (no test samples)") for c in listed]
    if n > MAX_CONFUSION_CLASSES:
        return "\n".join([*lines, "", f"confusion matrix: {n} x {n}, too large to print (--json gives it)"])
    width = max(5, max(len(str(v)) for row in matrix for v in row) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              "true\\pred" + "".join(f"{c:>{width}}" for c in range(n))]
    lines += [f"{r:>9}" + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(matrix)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = evaluate_run(args.run_dir, data_dir=args.data_dir, batch_size=args.batch_size, device=args.device)
    # The figures first: they are the evaluation, and a plot that cannot be written must not lose them.
    print(json.dumps(report, allow_nan=False) if args.json else format_report(report), flush=True)
    if not args.no_plot and write_confusion_plot(report, args.run_dir):  # said, as it writes into the run folder;
        # on stderr, so that --json's output stays one JSON document
        print(f"wrote {Path(args.run_dir) / 'confusion.png'} (--no-plot skips it)", file=sys.stderr)
    return 0


def write_confusion_plot(report: dict, run_dir: str) -> bool:
    """Draw the confusion matrix into ``run_dir/confusion.png``; a path that cannot be written (a
    folder in the way, a read-only run folder, a full disk) is one warning on stderr, not an error:
    the evaluation itself has succeeded and been printed; more classes than a plot can show is one
    note. Returns whether the plot was written."""
    from rnnlab.checkpoint import CONFUSION
    from rnnlab.plots import MAX_CONFUSION_CLASSES, class_labels, confusion_matrix_png

    path = Path(run_dir) / CONFUSION
    classes = len(report["confusion_matrix"])
    if classes > MAX_CONFUSION_CLASSES:
        print(f"rnnlab: note: {path} not drawn: {classes} classes are more than a plot can show "
              f"(at most {MAX_CONFUSION_CLASSES}); --json gives the confusion matrix", file=sys.stderr)
        return False
    try:
        labels = class_labels(report.get("class_names"))  # fashion-mnist's, kmnist's, a sequence file's
        confusion_matrix_png(report["confusion_matrix"], path, f"{Path(run_dir).name}: test set", labels=labels)
    except OSError as exc:
        print(f"rnnlab: warning: could not write the confusion-matrix plot {path}: {exc.strerror or exc} "
              "(the evaluation above is complete; --no-plot skips the plot)", file=sys.stderr)
        return False
    return True
