"""``rnnlab predict``: classify image files with a trained run, optionally step by step."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rnnlab.cli.common import DEVICE_HELP, DefaultsHelpFormatter

SHADES = " .:-=+*#%@"  # dark to light, for a row of pixels in text
BLOCKS = "▁▂▃▄▅▆▇█"  # probabilities as a sparkline
BAR_WIDTH = 10
DISPLAY_POINTS = 28  # --steps shows at most this many lines per image (row ends for 784-pixel views)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify digit images (PNG, JPEG, BMP, ...), or a .npy of sequences for a run "
                        "trained on a sequence file",
        description="Classify image files. Each image is brought to MNIST's form first: grey, light ink on "
                    "dark (inverted if the background is light), cropped to the ink, scaled to fit 20x20 and "
                    "centred by centre of mass in 28x28. An image already in that form (28x28, grey, light ink "
                    "reaching full brightness on black) is used as it is; any other 28x28 image (dim, coloured, "
                    "dark on light) is prepared like the rest. For a run trained on a sequence file, give .npy "
                    "files of sequences instead.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files; for a run trained on a sequence file (data.dataset=file), .npy "
                             "files of sequences, (N, T, F) or one (T, F), valued as its training file (a uint8 "
                             "file: integers 0-255 or floats in [0, 1])")
    parser.add_argument("--lengths", action="append", metavar="LENGTHS.npy",
                        help="for a run trained on sequences of varying length: a .npy of each padded sequence's "
                             "own length, (N,) integers, as lengths_test in its training file; give one per .npy "
                             "of sequences, in the same order (without it, each sequence is read to its file's T)")
    parser.add_argument("--top", type=int, default=3, metavar="K", help="show the K most likely classes")
    parser.add_argument("--steps", action="store_true",
                        help="also show how the probabilities evolve as the model reads the image")
    parser.add_argument("--json", action="store_true", help="print one JSON list, one entry per image")
    parser.add_argument("--device", default="cpu", help=f"where the model runs: {DEVICE_HELP}")
    parser.set_defaults(func=run)


def _supports(text: str) -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _top(probs: list[float], k: int) -> list[tuple[int, float]]:
    order = sorted(range(len(probs)), key=lambda c: -probs[c])
    return [(c, probs[c]) for c in order[:k]]


def _spark(probs: list[float], unicode: bool) -> str:
    if not unicode:
        return "".join(SHADES[min(len(SHADES) - 1, int(p * len(SHADES)))] for p in probs)
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int(p * len(BLOCKS)))] if p >= 0.02 else " " for p in probs)


def _bar(p: float, unicode: bool) -> str:
    full = round(p * BAR_WIDTH)
    return ("█" * full + "░" * (BAR_WIDTH - full)) if unicode else ("#" * full + "." * (BAR_WIDTH - full))


def _row_text(pixels: Any, row: int) -> str:
    return "".join(SHADES[min(len(SHADES) - 1, int(v) * len(SHADES) // 256)] for v in pixels[row])


def _classified(probs: list[float], trained: Any, k: int) -> dict[str, Any]:
    """One prediction: the class, its name where the classes have names, all probabilities, the top k."""
    best = max(range(len(probs)), key=probs.__getitem__)
    names = trained.class_names
    return ({"class": best} | ({"name": names[best]} if names else {})
            | {"probabilities": probs, "top": [{"class": c, "probability": q} for c, q in _top(probs, k)]})


def _finite(probs: Any) -> list[bool]:
    """Per input, whether its probabilities ``(N, ...)`` are all finite: an input far beyond those the
    model was trained on (3e38 into a ReLU RNN) overflows its arithmetic to inf, then NaN."""
    return probs.isfinite().flatten(1).all(1).tolist()


def _line(label: str, entry: dict[str, Any], trained: Any) -> str:
    """``label: class   (top-1 p  top-2 p ...)``, classes by name where they have names."""
    top = "  ".join(f"{trained.class_label(t['class'])} {100 * t['probability']:.1f}%" for t in entry["top"])
    return f"{label}: {trained.class_label(entry['class'])}   ({top})"


def format_steps(pixels: Any, view: str, points: list[int], steps: list[list[float]], total: int) -> list[str]:
    """One line per point: what was just read (a row of the image, in text) and the probabilities."""
    unicode = _supports(BLOCKS + "█░")
    unit = "row" if view == "rows" else "pixel"
    width = len(str(total))
    head = f"  {unit + 's':>{2 * width + 1}}  " + (f"{'last row read':<28}  " if view != "permuted-pixels" else "")
    lines = [head + f"{'top':>3}  {'p(top)':<{BAR_WIDTH + 7}}  0123456789"]
    for point, probs in zip(points, steps):
        best = max(range(len(probs)), key=probs.__getitem__)
        line = f"  {point:>{width}}/{total}  "
        if view != "permuted-pixels":
            # rows: step t is row t; pixels: step t ends in row (t - 1) // 28.
            row = point - 1 if view == "rows" else (point - 1) // len(pixels[0])
            line += f"{_row_text(pixels, row)}  "
        line += f"{best:>3}  {_bar(probs[best], unicode)} {100 * probs[best]:5.1f}%  {_spark(probs, unicode)}"
        lines.append(line)
    return lines


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import rnnlab
    from rnnlab.errors import ConfigError, RnnlabError
    from rnnlab.imaging import prepare_image

    if args.top < 1:
        raise ConfigError(f"--top={args.top} must be >= 1")
    from rnnlab.distributed import select_device

    trained = rnnlab.load(args.run_dir, device=select_device(args.device))
    if trained.reads_sequences:
        return _run_sequences(args, trained)
    if args.lengths:
        raise ConfigError("--lengths is for a run trained on sequences of varying length; this run reads images "
                          "whole: leave out --lengths")
    entries: list[dict[str, Any]] = []
    good: list[tuple[int, np.ndarray]] = []
    for path in args.images:
        try:
            if path.lower().endswith((".npy", ".npz")):  # arrays of sequences, for a run that reads them
                raise ConfigError(f"{path}: this run was trained on images and reads image files (PNG, JPEG, ...); "
                                  "arrays of sequences (.npy) are for a run trained on a sequence file "
                                  "(data.dataset=file); in Python, rnnlab.load(run).predict(array) takes an "
                                  "array of images")
            good.append((len(entries), prepare_image(path)))
            entries.append({"file": path})
        except RnnlabError as exc:  # one bad file must not stop the others
            entries.append({"file": path, "error": str(exc)})
    if good:
        batch = np.stack([pixels for _, pixels in good])  # (N, 28, 28) uint8
        probs = trained.probabilities(batch)  # (N, C)
        if args.steps:
            points, steps = trained.reading(batch, max_points=DISPLAY_POINTS, cheap_max_points=DISPLAY_POINTS)
        finite = _finite(probs)
        if args.steps:  # an overflow part-way need not reach the end: an LSTM's gates saturate
            finite = [a and b for a, b in zip(finite, _finite(steps))]
        for i, (index, pixels) in enumerate(good):
            entry = entries[index]
            if not finite[i]:  # refused, not shown as "nan%" (nor written as NaN, which is not JSON)
                entry["error"] = (f"{entry['file']}: the model produced non-finite probabilities for this image: "
                                  "pixels are bounded, so its weights overflow (a diverged run); retrain it")
                continue
            entry.update(_classified([float(v) for v in probs[i]], trained, args.top))
            if args.steps:
                entry.update({"steps_read": points, "steps": [[float(v) for v in row] for row in steps[i]],
                              "_pixels": pixels})
    failed = 0
    for entry in entries:
        if "error" in entry:
            failed += 1
            print(f"rnnlab: error: {entry['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps([{k: v for k, v in e.items() if not k.startswith("_")} for e in entries], allow_nan=False))
    else:
        total = trained.model.seq_len
        for entry in entries:
            if "error" in entry:
                continue
            print(_line(entry["file"], entry, trained))
            if args.steps:
                print("\n".join(format_steps(entry["_pixels"], trained.view, entry["steps_read"], entry["steps"],
                                             total)))
    return 2 if failed else 0


def _run_sequences(args: argparse.Namespace, trained: Any) -> int:
    """``predict`` for a run trained on a sequence file: each argument is a ``.npy`` of sequences."""
    import numpy as np

    from rnnlab.errors import ConfigError, RnnlabError

    if args.steps:
        raise ConfigError("--steps draws the image rows as they are read; this run reads sequences, "
                          "leave out --steps")
    if args.lengths and not trained.variable_lengths:
        raise ConfigError("--lengths is for a run trained on sequences of varying length; this run's sequences "
                          "all have one length: leave out --lengths")
    if args.lengths and len(args.lengths) != len(args.images):
        raise ConfigError(f"give one --lengths per .npy of sequences, in the same order: {len(args.images)} "
                          f"sequence files, {len(args.lengths)} --lengths")
    how = f"save sequences with np.save(path, x), x of shape {_sequence_shape(trained)}"
    entries: list[dict[str, Any]] = []
    failed = 0
    for i, path in enumerate(args.images):
        try:
            array = _load_npy(path, "sequences", how, one_length=not trained.variable_lengths)
            lengths = _load_npy(args.lengths[i], "lengths", "save them with np.save(path, lengths), (N,) "
                                "integers") if args.lengths else None
            probs = trained.probabilities(array, lengths)  # (N, C)
        except RnnlabError as exc:  # one bad file must not stop the others
            failed += 1
            message = str(exc)
            where = "" if message.startswith(f"{path}:") else f"{path}: "  # which of the files it was
            print(f"rnnlab: error: {where}{message}", file=sys.stderr)
            continue
        finite = _finite(probs)
        bad = [i for i, ok in enumerate(finite) if not ok]
        if bad:  # refused, not shown as "nan%" (nor written as NaN, which is not JSON); the others still are
            failed += 1
            which = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            print(f"rnnlab: error: {path}: the model produced non-finite probabilities for sequence"
                  f"{'s' * (len(bad) > 1)} {which} (of {len(finite)}): values far outside those it was trained on "
                  f"(here up to {float(np.abs(array).max()):.3g}) overflow its arithmetic; give values on the scale "
                  "of its training file", file=sys.stderr)
        entries += [{"file": path, "index": i} | _classified(row, trained, args.top)
                    for i, row in enumerate(probs.tolist()) if finite[i]]
    if args.json:
        print(json.dumps(entries, allow_nan=False))
    else:
        for entry in entries:
            print(_line(f"{entry['file']}[{entry['index']}]", entry, trained))
    return 2 if failed else 0


def _load_npy(path: str, what: str, how: str, *, one_length: bool = False) -> Any:
    """A ``.npy`` array of ``what``, or a DataError naming the file and saying ``how`` to write one
    (``one_length``: the run takes sequences of one length only, and no --lengths)."""
    import numpy as np

    from rnnlab.data.files import not_numpy
    from rnnlab.errors import DataError

    try:
        # Looked at first: np.load takes any other file for a pickle, and its message
        # ("contains pickled data ... load it unsafely") is wrong for an image or text.
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        looks = not_numpy(path)
        if looks is not None:
            raise DataError(f"{path}: not a .npy array of {what}: {looks}; {how}")
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        if "Object arrays" in str(exc):  # np.save of a ragged list: sequences of different lengths
            fix = ("this run was trained on sequences of one length, so give it sequences of that length, as one "
                   f"array: {how}") if one_length else ("pad them to one length and save their lengths beside them "
                                                        "for --lengths")
            raise DataError(f"{path}: an array of Python objects (sequences of different lengths?), which is not "
                            f"read, for safety; {fix}") from None
        raise DataError(f"{path}: not a readable .npy array of {what} ({exc}); {how}") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataError(f"{path}: give a .npy array of {what}, not a .npz archive; {how}")
    return array


def _sequence_shape(trained: Any) -> str:
    """The shapes a run's sequences take, for a message: ``(N, 12, 2) or one (12, 2)``."""
    steps, features = trained.model.seq_len, trained.model.input_size
    if trained.variable_lengths:
        return f"(N, T, {features}) or one (T, {features}), T from 1 to {steps} steps"
    return f"(N, {steps}, {features}) or one ({steps}, {features})"
