"""``rnnlab export``: write a run's model as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
import json

from rnnlab.cli.common import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a run's model to ONNX or TorchScript",
        description="Export a run's model. Input `sequences` float32 (N, T, F): for a run on images, pixels "
                    "in [0, 1] laid out as the run's view reads an image; for a run on a sequence file, values "
                    "as the file held them (a uint8 file's read as value/255). A run whose sequences vary in "
                    "length also takes `lengths` int64 (N,), each sequence's own length (1 to T). Output "
                    "`logits` (N, classes). The export is checked against PyTorch on real test images or "
                    "sequences before it is written.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="file format")
    parser.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/model.onnx or "
                                                      "RUN_DIR/model.torchscript.pt); a name ending in the other "
                                                      "format's extension (.onnx, .pt, .pth) is refused")
    parser.add_argument("--samples", type=int, default=256, help="test images (or sequences) used to check the export")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the IDX files, or for a run on a sequence file the .npz (default: the run's)")
    parser.add_argument("--no-check", action="store_true", help="skip the check against PyTorch (not advised)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out file that is not a previous rnnlab export (default: "
                             "refuse, naming it; a run folder's own files are refused even with --force)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.export import TOLERANCE, export_run

    report = export_run(args.run_dir, args.format, args.out, check=not args.no_check, samples=args.samples,
                        data_dir=args.data_dir, force=args.force)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    shape = "(" + ", ".join(str(d) for d in report.input_shape) + ")"
    print(f"wrote {report.path} ({report.format}, {report.bytes / 1024:.1f} KiB)")
    values = "" if report.input_range is None else ", values in [0, 1]"
    print(f"  input  sequences float32 {shape}{values}"
          + ("" if report.dynamic_steps else f"  (T fixed: {report.steps_fixed_by})"))
    if report.lengths_input:
        print("  input  lengths   int64 (N,)  each padded sequence's own length")
    print("  output logits    float32 (N, classes)")
    if report.samples:
        unit = "sequences" if report.reads_sequences else "images"
        line = (f"  check  {report.samples} test {unit}: max |logit diff| {report.max_abs_diff:.2e} "
                f"(<= {TOLERANCE:g}), same class {100 * report.same_classes:.1f}%")
        if report.prefix_max_abs_diff is not None:
            line += f"; shorter sequences {report.prefix_max_abs_diff:.2e}"
        print(line)
    else:
        print("  check  skipped (--no-check)")
    return 0
