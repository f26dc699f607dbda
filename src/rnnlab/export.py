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
import numbers
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnlab import checkpoint as ckpt
from rnnlab.atomic import replacing
from rnnlab.export_formats import (INPUT_NAME, LENGTHS_NAME, OUTPUT_NAME, ExportError, Runner, onnx_runner,
                                   require_onnx, torchscript_runner, write_onnx, write_torchscript)
from rnnlab.data.sequences import lengths_problem, zero_padding
from rnnlab.models.recurrent import GATES
from rnnlab.errors import DataError, MissingDataError, describe, option
from rnnlab.export_paths import (EXTENSIONS, FORMAT_NAMES, cannot_write, is_rnnlab_export, misnamed, out_refusal,
                                 renamed_for)
from rnnlab.run import path_arg
from rnnlab.trained import CHUNK_STEPS

__all__ = ["EXTENSIONS", "FORMATS", "ExportError", "ExportReport", "export_run", "load_exported", "reference_model"]

FORMATS = ("onnx", "torchscript")
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
    input_range: list[float] | None = None  # [0, 1] for pixels and a uint8 file's values / 255, else None
    steps_fixed_by: str = ""  # why T is fixed, where it is: "readout 'all'" or "a model of your own"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_model(run_dir: str | Path | Any) -> tuple[Any, torch.nn.Module]:
    """``(TrainedModel, eval-mode model rebuilt on the reference torch.nn layers)``; ``run_dir``
    is a run folder or a :class:`rnnlab.Run`."""
    from rnnlab.config import from_dict
    from rnnlab.model_state import build_from_state
    from rnnlab.trained import TrainedModel

    run_dir = path_arg(run_dir, "run_dir", "export_run('runs/my-run', 'onnx')")
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
    """A function ``(sequences (N, T, F)[, lengths (N,)]) -> logits (N, C)`` (a NumPy array)
    running a file that ``rnnlab export`` wrote (for checks and demos); ``fmt`` None goes by the
    file's extension (``.onnx``: ONNX, else TorchScript).

    The function takes float32 sequences, and converts float64 and float16 arrays, torch tensors
    and nested lists to them; lengths (int64, one per sequence) only for a model exported with a
    lengths input, and for that one always, converted from any integer type. Other types, another
    shape than the export's, an empty batch (N = 0), NaN or infinite values, pixels outside [0, 1] (for
    a model of images), a missing ``lengths``, or lengths not one per sequence from 1 to T are
    refused (ExportError)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ExportError(f"path must be an exported model's file path (str or Path), not {describe(path)}; "
                          "e.g. load_exported('runs/my-run/model.onnx')")
    path = Path(path)
    if fmt is None:
        fmt = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
    elif fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)} "
                          "(or leave it out to go by the file's extension)")
    name = FORMAT_NAMES[fmt]
    if path.is_dir():
        raise ExportError(f"{path} is a directory, not an exported model; give the file, such as "
                          f"{path / 'model'}{EXTENSIONS[fmt]}")
    if not path.is_file():  # a FIFO or a device would block or fail in the runtime's own words
        out = path if misnamed(path, fmt) is None else renamed_for(path, fmt)  # an --out export takes
        raise ExportError(f"{path}: no such file; write one with: rnnlab export RUN_DIR --format {fmt} --out {out}"
                          if not path.exists() else f"{path} is not a regular file; give an exported model's file")
    try:
        run, metadata = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)
    except ExportError:
        raise  # onnx or onnxruntime missing: says what to install
    except Exception as exc:  # noqa: BLE001 - the runtimes' own types (InvalidProtobuf, RuntimeError...)
        raise ExportError(f"{path} is not a model {name} can load ({ckpt.error_line(exc)}); "
                          f"{_other_format(path, fmt)}") from None
    if metadata is None or not all(isinstance(metadata.get(key), int) for key in ("steps", "features")):
        raise ExportError(f"{path} is a{'n' * (fmt == 'onnx')} {name} model, but not one rnnlab exported (it has "
                          "no rnnlab metadata); load_exported runs the files `rnnlab export` writes")

    def checked_run(sequences: Any, lengths: Any = None) -> np.ndarray:
        return run(*_runner_inputs(metadata, sequences, lengths))

    return checked_run


def _other_format(path: Path, fmt: str) -> str:
    """How to read a file that ``fmt``'s runtime could not load: as the other format, if it is one."""
    zipped = zipfile.is_zipfile(path)  # a TorchScript file is a zip archive; an ONNX file (protobuf) is not
    if fmt == "onnx" and zipped:
        return "it is a zip archive, as TorchScript files are: pass fmt='torchscript'"
    if fmt == "torchscript" and not zipped and is_rnnlab_export(path):
        return "it is an rnnlab ONNX export: pass fmt='onnx'"
    return "give a file that `rnnlab export` wrote"


def _as_array(value: Any, name: str) -> np.ndarray:
    """A runner's argument as a NumPy array of numbers: torch tensors (on any device, bfloat16)
    and nested lists too."""
    if isinstance(value, torch.Tensor):  # numpy takes no GPU, grad-tracking or bfloat16 tensor
        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise ExportError(f"{name} must be one array of numbers: {ckpt.error_line(exc, kind=False)}") from None
    if array.dtype.kind not in "biuf":  # an object array (None, ...) is described as given
        raise ExportError(f"{name} must hold numbers, not {describe(value if array.dtype.kind == 'O' else array)}")
    return array


def _runner_inputs(metadata: dict[str, Any], sequences: Any,
                   lengths: Any) -> tuple[np.ndarray] | tuple[np.ndarray, np.ndarray]:
    """A runner's arguments as the exported graph takes them, ``float32 (N, T, F)`` and ``int64
    (N,)``, checked against the export's ``metadata`` (see :func:`_metadata`)."""
    steps, features = metadata["steps"], metadata["features"]
    dynamic = bool(metadata.get("dynamic_steps", True))
    pixels = metadata.get("input_range") is not None  # values in [0, 1], as pixels / 255
    x = _as_array(sequences, "sequences")
    # ONNX Runtime's recurrent ops abort the whole process on N = 0 (no exception to catch), and
    # TorchScript's packing of varying lengths raises "Cannot pack empty tensors".
    if x.shape[:1] == (0,):
        raise ExportError(f"an exported model cannot run an empty batch: sequences has shape "
                          f"{x.shape}; give at least one sequence (N >= 1)")
    if x.dtype.kind != "f":  # integers may be pixels 0-255, which the model reads divided by 255: not guessed
        fix = "x.astype(np.float32) / 255 for pixels 0-255" if pixels else "x.astype(np.float32)"
        raise ExportError(f"sequences must be floats (float32{' in [0, 1]' if pixels else ''}), not {x.dtype}; "
                          f"pass {fix}")
    if x.ndim != 3 or x.shape[2] != features or x.shape[1] < 1 or not (dynamic or x.shape[1] == steps):
        expected = f"(N, T, {features}), T steps ({steps} in training)" if dynamic else f"(N, {steps}, {features})"
        hint = ""
        if x.ndim == 2 and x.shape[1] == features and (dynamic or x.shape[0] == steps):
            hint = "; for one sequence add the batch dimension: x[None]"
        elif x.ndim == 2 and features == 1:
            hint = "; add the feature dimension: x[..., None]"
        raise ExportError(f"sequences must have shape {expected}; got {x.shape}{hint}")
    given_x = x  # as given: float64 values past float32's range are finite there, and named so below
    with np.errstate(over="ignore"):  # numpy's "overflow encountered in cast" would say less than the error
        x = np.ascontiguousarray(x, dtype=np.float32)
    inputs: tuple[np.ndarray] | tuple[np.ndarray, np.ndarray] = (x,)
    if not metadata.get("lengths_input"):
        if lengths is not None:
            raise ExportError("this model takes no lengths (its run was trained on sequences of one length); "
                              "call it with the sequences alone")
    elif lengths is None:
        raise ExportError(f"this model was exported from a run on sequences of varying length and needs their "
                          f"lengths too: call it as run(sequences, lengths), lengths int64 of shape (N,) = "
                          f"({len(x)},), each sequence's own length from 1 to T = {x.shape[1]}")
    else:
        given = _as_array(lengths, "lengths")
        if given.dtype.kind not in "iu":
            raise ExportError(f"lengths must be integers (int64), not {given.dtype}; pass lengths.astype(np.int64)")
        # Checked here, so that both formats say it the same way (the ONNX graph would spread one
        # length over the batch, and cannot raise)
        problem = lengths_problem(given, len(x), x.shape[1])
        if problem is not None:
            raise ExportError(problem)
        x = zero_padding(x, given)  # (N, T, F)
        inputs = (x, np.ascontiguousarray(given, dtype=np.int64))
    if not np.isfinite(x).all():  # the graph would give NaN logits, which read as an answer
        if lengths is not None:  # the padding, which may hold anything, is not looked at
            given_x = zero_padding(given_x, np.asarray(inputs[1]))
        beyond = np.isfinite(given_x) & ~np.isfinite(x)  # (N, T, F): finite as given, infinite in float32
        if beyond.any():
            largest = float(np.abs(given_x[beyond]).max())
            raise ExportError(f"sequences hold {int(beyond.sum())} values beyond float32's range "
                              f"(±{float(np.finfo(np.float32).max):.1e}, up to {largest:.3g}), which the exported "
                              "model computes in; scale them as the training data was scaled")
        raise ExportError(f"sequences hold {int((~np.isfinite(x)).sum())} NaN or infinite values; "
                          "give finite values")
    if pixels and (x.min() < 0 or x.max() > 1):  # the model reads pixel / 255: 0-255 would be silently wrong
        raise ExportError(f"sequences must be pixels in [0, 1] (pixel / 255), as the model was trained on; got "
                          f"values from {x.min():g} to {x.max():g}; pass x / 255 for pixels 0-255")
    return inputs


# ---------------------------------------------------------------------------- check and entry point
def _names_output(filename: Any, path: Path) -> bool:
    """Whether an OSError's file is the output or a folder on its way (``replacing`` makes them)."""
    return Path(filename) == path or Path(filename) in path.parents


def _check_sequences(trained: Any, samples: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``samples`` test sequences as the run reads them: float ``(N, T, F)``, and their
    lengths ``(N,)`` if they vary (else None). Test data that is not there (a run folder shared
    without it) may be done without: --no-check is offered. Data that is there but wrong (corrupt,
    another data set, not the run's shape) is to be mended as its error says: skipping the check
    would not help."""
    what = f"checking the export needs the run's test {'sequences' if trained.reads_sequences else 'images'}"
    try:
        test = trained.test_split(data_dir)
    except MissingDataError as exc:
        raise MissingDataError(f"{what}: {str(exc).rstrip('.')}; without them, "
                               f"{option('--no-check', 'check=False')} exports unchecked") from None
    except DataError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    rows = torch.arange(min(samples, len(test)))
    return test.batch(rows)[0], test.batch_lengths(rows)  # (N, T, F), (N,) or None


def _compare(run: Runner, model: torch.nn.Module, x: torch.Tensor,
             lengths: torch.Tensor | None = None) -> tuple[float, float]:
    """``(max abs diff of logits, fraction of equal predicted classes)`` on ``x`` ``(N, T, F)``,
    in chunks of at most CHUNK_STEPS sequence-steps, as predictions run: both runtimes hold every
    step's activations, and 1,000 pixel-view sequences at once took a GB."""
    per_chunk = max(1, CHUNK_STEPS // max(1, x.shape[1]))  # sequences per chunk
    worst, same = 0.0, 0
    for start in range(0, len(x), per_chunk):
        xs = x[start:start + per_chunk]  # (n, T, F)
        ls = None if lengths is None else lengths[start:start + per_chunk]  # (n,)
        with torch.no_grad():
            expected = (model(xs) if ls is None else model(xs, ls)).numpy()  # (n, C)
        if not np.isfinite(expected).all():  # not the export's fault: nothing to compare
            raise ExportError("the model itself gives NaN or infinite logits on test sequences (its weights "
                              "overflow, as in a diverged run); export a run that trained well")
        try:
            inputs = [np.ascontiguousarray(xs.numpy(), dtype=np.float32)]
            if ls is not None:
                inputs.append(ls.numpy().astype(np.int64))
            got = np.asarray(run(*inputs))
        except Exception as exc:  # noqa: BLE001 - the runtime's own errors are not ours to type
            raise ExportError(f"the exported model failed to run on input {tuple(xs.shape)}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
        if got.shape != expected.shape:
            raise ExportError(f"the exported model returned {got.shape}, PyTorch {expected.shape}")
        if got.size:  # NaN in the export's logits is the largest difference, not none (NaN > x is False)
            worst = max(worst, float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("inf"))
            same += int((got.argmax(1) == expected.argmax(1)).sum())
    return worst, same / len(x) if len(x) else 1.0


def export_run(run_dir: str | Path | Any, fmt: str = "onnx", out: str | Path | None = None, *, check: bool = True,
               samples: int = 256, data_dir: str | Path | None = None, force: bool = False) -> ExportReport:
    """Export a run's model (``run_dir``: its folder, or a :class:`rnnlab.Run`) to ``out`` (default
    ``RUN_DIR/model.onnx`` / ``model.torchscript.pt``).
    An existing file there is replaced only if it is a previous export, or with ``force``; an ``out``
    ending in the other format's extension (model.onnx for TorchScript) is refused."""
    run_dir = path_arg(run_dir, "run_dir", "export_run('runs/my-run', 'onnx')")  # a Run stands for its folder
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ExportError(f"out must be a file path (str or Path) or None (the run folder's "
                          f"model{EXTENSIONS[fmt]}), not {describe(out)}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ExportError(f"data_dir must be a path (str or Path) or None (the run's own data), "
                          f"not {describe(data_dir)}")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral):
        raise ExportError(f"samples must be a whole number of test sequences to check, not {describe(samples)}; "
                          "e.g. samples=256")
    if samples < 1:
        raise ExportError(f"{option('--samples', 'samples')}={samples} must be >= 1")  # the flag the user typed
    samples = int(samples)  # a NumPy integer too
    data_dir = None if data_dir is None else os.fspath(data_dir)
    if fmt == "onnx":
        require_onnx()  # fail before any work
    trained, model = reference_model(run_dir)
    path = Path(out) if out is not None else run_dir / f"model{EXTENSIONS[fmt]}"
    # Where first: a name's fix is no help for a path inside a file or over someone's file.
    refusal = (out_refusal(path, run_dir, EXTENSIONS[fmt], given=out is not None, force=force)
               or misnamed(path, fmt))
    if refusal:
        raise ExportError(refusal)
    # A model of one's own (register_model) may loop over the steps in Python, which the export
    # unrolls: its graph then takes the trained length only, as readout=all's does.
    dynamic_steps = trained.config.model.readout != "all" and trained.config.model.cell in GATES
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
                        lengths_input=with_lengths, input_range=metadata["input_range"],
                        steps_fixed_by="" if dynamic_steps else (
                            "readout 'all'" if trained.config.model.readout == "all"
                            else "a model of your own, its steps unrolled"),
                        **checked)
