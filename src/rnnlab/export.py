"""Export a trained run to ONNX or TorchScript, and prove the export computes what PyTorch does.

The exported model takes one input, ``sequences``: float32 ``(N, T, F)`` with pixel values in
[0, 1], laid out as the run's view reads an image (rows: ``(N, 28, 28)``; pixels and
permuted-pixels: ``(N, 784, 1)``, permuted by the run's permutation, which is stored in the
file's metadata). Any standardisation happens inside. It returns ``logits`` ``(N, classes)``.
The batch dimension is dynamic, and so is ``T`` unless the readout is ``all`` (a Linear over
every step fixes the length). A run trained on sequences of varying length (a sequence file
with ``lengths_*``) takes a second input, ``lengths``: int64 ``(N,)``, each padded sequence's
own length, read as in training (to each sequence's end, the reverse direction packed). Each
must be in 1..T. TorchScript refuses others with a clear error; the ONNX graph does not check
them (ONNX has no assertion op that would stop a run), so its caller must.

Export always uses the reference ``torch.nn`` layers (same state_dict names as the fast ones),
writes through a temporary file, and is checked on real test images before it replaces ``--out``.
An existing ``--out`` is replaced only if it is a previous export (or ``force``); see
:mod:`rnnlab.export_paths`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnlab import checkpoint as ckpt
from rnnlab.atomic import replacing
from rnnlab.export_formats import (INPUT_NAME, LENGTHS_NAME, OUTPUT_NAME, ExportError, Runner, onnx_runner,
                                   require_onnx, torchscript_runner, write_onnx, write_torchscript)
from rnnlab.export_paths import cannot_write, out_refusal

__all__ = ["EXTENSIONS", "FORMATS", "ExportError", "ExportReport", "export_run", "load_exported", "reference_model"]

FORMATS = ("onnx", "torchscript")
EXTENSIONS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript"}  # --out names each claims
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
TOLERANCE = 1e-4  # max abs difference of logits allowed between the export and eager PyTorch


@dataclass
class ExportReport:
    """Where the model went and how closely it matches eager PyTorch on real test images."""

    path: str
    format: str
    input_shape: list[Any]  # e.g. ["N", 28, 28] or ["N", "T", 28]
    dynamic_steps: bool
    samples: int  # test images compared (0: not checked)
    max_abs_diff: float | None
    same_classes: float | None  # fraction of images where both predict the same class
    prefix_max_abs_diff: float | None  # on shorter sequences, when T is dynamic
    bytes: int
    reads_sequences: bool = False  # trained on a sequence file: inputs are not pixels in [0, 1]
    lengths_input: bool = False  # a second input, lengths (N,) int64, for padded sequences

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_model(run_dir: str | Path) -> tuple[Any, torch.nn.Module]:
    """``(TrainedModel, eval-mode model rebuilt on the reference torch.nn layers)``."""
    from rnnlab.config import from_dict
    from rnnlab.trained import TrainedModel, build_from_state

    tensors, meta = ckpt.load_checkpoint(run_dir)
    config = from_dict(meta["config"], source=str(Path(run_dir) / ckpt.CHECKPOINT_JSON))
    model = build_from_state(config, tensors["model"], impl="torch", input_shape=meta.get("input"),
                             source=Path(run_dir) / ckpt.CHECKPOINT_JSON).eval()
    return TrainedModel(Path(run_dir), config, model, tensors.get("permutation"), meta), model


class _WithLengths(torch.nn.Module):
    """The classifier with ``lengths`` as a positional input, as exporters take inputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # An ONNX graph cannot raise (TorchScript refuses, _LengthsChecked): a length outside 1..T
        # would give meaningless logits, or stop ONNX Runtime's LSTM. Its row reads length 1, then NaN.
        valid = (lengths >= 1) & (lengths <= sequences.shape[1])  # (N,); T stays dynamic in the graph
        logits = self.model(sequences, torch.where(valid, lengths, torch.ones_like(lengths)))  # (N, T, F) -> (N, C)
        return logits.masked_fill(~valid.unsqueeze(1), float("nan"))


def _metadata(trained: Any, model: torch.nn.Module, dynamic_steps: bool) -> dict[str, Any]:
    permutation = trained.permutation
    return {
        "rnnlab_version": __import__("rnnlab").__version__,
        "input": INPUT_NAME, "output": OUTPUT_NAME,
        "lengths_input": LENGTHS_NAME if trained.variable_lengths else None,
        "view": "sequence-file" if trained.reads_sequences else trained.view,
        "steps": model.seq_len, "features": model.input_size,
        "classes": model.num_classes, "dynamic_steps": dynamic_steps,
        # pixels in [0, 1]; a sequence file's values as they are (uint8 ones were divided by 255)
        "input_range": [0.0, 1.0] if _pixels_in(trained) else None,
        "cell": trained.config.model.cell, "readout": trained.config.model.readout,
        "class_names": trained.class_names,  # None: the class numbers are the names
        "permutation": None if permutation is None else [int(i) for i in permutation.tolist()],
    }


def _pixels_in(trained: Any) -> bool:
    return not trained.reads_sequences or trained.meta.get("input", {}).get("dtype") == "uint8"


def load_exported(path: str | Path, fmt: str | None = None) -> Runner:
    """A function ``float32 (N, T, F)[, int64 lengths (N,)] -> logits (N, C)`` running an exported
    file (for checks and demos); lengths only for a model exported with a lengths input. An empty
    batch (N = 0) is refused."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    run = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)

    def run_nonempty(x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        # ONNX Runtime's recurrent ops abort the whole process on N = 0 (no exception to catch), and
        # TorchScript's packing of varying lengths raises "Cannot pack empty tensors".
        if np.shape(x)[:1] == (0,):
            raise ExportError(f"an exported model cannot run an empty batch: sequences has shape "
                              f"{tuple(np.shape(x))}; give at least one sequence (N >= 1)")
        return run(x, lengths)

    return run_nonempty


# ---------------------------------------------------------------------------- check and entry point
def _names_output(filename: Any, path: Path) -> bool:
    """Whether an OSError's file is the output or a folder on its way (``replacing`` makes them)."""
    return Path(filename) == path or Path(filename) in path.parents


def _check_sequences(trained: Any, samples: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``samples`` test sequences as the run reads them: float ``(N, T, F)``, and their
    lengths ``(N,)`` if they vary (else None)."""
    test = trained.test_split(data_dir)
    rows = torch.arange(min(samples, len(test)))
    return test.batch(rows)[0], test.batch_lengths(rows)  # (N, T, F), (N,) or None


def _compare(run: Runner, model: torch.nn.Module, x: torch.Tensor,
             lengths: torch.Tensor | None = None) -> tuple[float, float]:
    """``(max abs diff of logits, fraction of equal predicted classes)`` on ``x`` ``(N, T, F)``."""
    with torch.no_grad():
        expected = (model(x) if lengths is None else model(x, lengths)).numpy()  # (N, C)
    try:
        inputs = [np.ascontiguousarray(x.numpy(), dtype=np.float32)]
        if lengths is not None:
            inputs.append(lengths.numpy().astype(np.int64))
        got = np.asarray(run(*inputs))
    except Exception as exc:  # noqa: BLE001 - the runtime's own errors are not ours to type
        raise ExportError(f"the exported model failed to run on input {tuple(x.shape)}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    if got.shape != expected.shape:
        raise ExportError(f"the exported model returned {got.shape}, PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    same = float((got.argmax(1) == expected.argmax(1)).mean()) if got.size else 1.0
    return diff, same


def _misnamed(path: Path, fmt: str) -> str | None:
    """Why ``path``'s extension is the other format's, or None: a model.onnx holding TorchScript
    would reach onnxruntime and fail there, far from the cause. Other extensions are the user's."""
    named = _FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if named is None or named == fmt:
        return None
    theirs = EXTENSIONS[named]  # model.torchscript.pt becomes model.onnx, not model.torchscript.onnx
    stem = path.name[:-len(theirs)] if path.name.lower().endswith(theirs) else path.stem
    return (f"--out {path} ends in {path.suffix}, but --format {fmt} writes {_FORMAT_NAMES[fmt]}: "
            f"use {path.with_name(stem + EXTENSIONS[fmt])}, or --format {named}")


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, check: bool = True,
               samples: int = 256, data_dir: str | None = None, force: bool = False) -> ExportReport:
    """Export a run's model to ``out`` (default ``RUN_DIR/model.onnx`` / ``model.torchscript.pt``).
    An existing file there is replaced only if it is a previous export, or with ``force``; an ``out``
    ending in the other format's extension (model.onnx for TorchScript) is refused."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if samples < 1:
        raise ExportError(f"samples={samples} must be >= 1")
    if fmt == "onnx":
        require_onnx()  # fail before any work
    trained, model = reference_model(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / f"model{EXTENSIONS[fmt]}"
    # Where first: a name's fix is no help for a path inside a file or over someone's file.
    refusal = (out_refusal(path, run_dir, EXTENSIONS[fmt], given=out is not None, force=force)
               or _misnamed(path, fmt))
    if refusal:
        raise ExportError(refusal)
    dynamic_steps = trained.config.model.readout != "all"
    with_lengths = trained.variable_lengths
    metadata = _metadata(trained, model, dynamic_steps)
    # A batch of 2 random sequences: a size the checks never use, so a batch size baked into the
    # graph would show up as a failure. With lengths, two different ones, for the same reason.
    steps = model.seq_len
    example: tuple[torch.Tensor, ...] = (
        torch.rand(2, steps, model.input_size, generator=torch.Generator().manual_seed(0)),)
    exported: torch.nn.Module = model
    if with_lengths:
        example += (torch.tensor([steps, max(1, steps - 1)]),)
        exported = _WithLengths(model).eval()
    checked: dict[str, Any] = {"samples": 0, "max_abs_diff": None, "same_classes": None, "prefix_max_abs_diff": None}

    def verify(tmp: Path) -> None:
        if not check:
            return
        run = load_exported(tmp, fmt)
        x, lengths = _check_sequences(trained, samples, data_dir)  # (N, T, F), (N,) or None
        if with_lengths and lengths is None:  # a test split of one length: all of it counts
            lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
        diff, same = _compare(run, model, x, lengths)
        checked.update(samples=len(x), max_abs_diff=diff, same_classes=same)
        if dynamic_steps and steps > 1:
            half = max(1, steps // 2)
            prefix = x[: min(len(x), 8), :half]  # (n, T/2, F)
            prefix_lengths = None if lengths is None else lengths[: len(prefix)].clamp(max=half)
            checked["prefix_max_abs_diff"] = _compare(run, model, prefix, prefix_lengths)[0]
        worst = max(diff, checked["prefix_max_abs_diff"] or 0.0)
        if worst > TOLERANCE or same < 1.0:
            raise ExportError(f"the {fmt} export disagrees with PyTorch: max abs logit difference {worst:.3g} "
                              f"(allowed {TOLERANCE:g}), same class on {100 * same:.2f}% of {len(x)} test "
                              "images; the file was not written")

    writer = write_onnx if fmt == "onnx" else write_torchscript
    # The exporter creates the temporary file itself (so it gets the usual permissions), and the
    # file replaces ``path`` only if it passes the check.
    try:
        with replacing(path, suffix=EXTENSIONS[fmt]) as tmp:
            writer(exported, example, tmp, dynamic_steps, metadata)
            verify(tmp)
    except OSError as exc:  # the folder changed since the check, a full disk: one line naming --out
        if exc.filename is not None and not _names_output(exc.filename, path):
            raise
        raise ExportError(cannot_write(path, exc.strerror or os.strerror(exc.errno or errno.EIO))) from None
    shape: list[Any] = ["N", "T" if dynamic_steps else steps, model.input_size]
    return ExportReport(path=str(path), format=fmt, input_shape=shape, dynamic_steps=dynamic_steps,
                        bytes=path.stat().st_size, reads_sequences=trained.reads_sequences,
                        lengths_input=with_lengths, **checked)
