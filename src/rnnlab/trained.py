"""A trained run, loaded for inference: ``load(run_dir) -> TrainedModel``, which predicts, evaluates
and reads images step by step for the command line, the web API and Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numbers

import numpy as np
import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed as dist
from rnnlab.config import RunConfig, from_dict
from rnnlab.data import SequenceData, images_to_sequences, load_sequences
from rnnlab.data.files import check_against_run, load_sequence_file
from rnnlab.data.sequences import lengths_problem, zero_padding
from rnnlab.data.sources import DATASETS
from rnnlab.errors import ConfigError, DataError, ResourceError, warn_caller
from rnnlab.model_state import build_from_state
from rnnlab.models import SequenceClassifier
from rnnlab.run import Run, path_arg

# The model reads its inputs at most this many sequence-steps (N x T) at a time. Its recurrent
# layers keep every step's state, so memory grows with N x T: 10,000 pixel-view images (784 steps)
# in one pass asked 16 GB of an LSTM of 128. 28,000 is 1000 row-view images (28 steps, as
# evaluate's default batch) or 35 pixel-view ones (under 100 MB at hidden 128); on the CPU a
# 784-step LSTM of 128 runs as fast per sequence in batches of 25 as of 400 (measured).
CHUNK_STEPS = 28_000


class TrainedModel:
    """A model loaded from a run folder, ready to predict."""

    def __init__(self, run_dir: Path, config: RunConfig, model: SequenceClassifier,
                 permutation: torch.Tensor | None, meta: dict[str, Any]) -> None:
        self.run_dir, self.config, self.model, self.permutation, self.meta = run_dir, config, model, permutation, meta
        self.num_classes = model.num_classes
        # Image datasets: predictions start from images. A sequence file: from sequences.
        self.image_shape = None if self.reads_sequences else DATASETS[config.data.dataset].image_shape

    def __repr__(self) -> str:
        reads = "sequences" if self.reads_sequences else f"{self.config.data.dataset} images ({self.view})"
        return (f"TrainedModel({str(self.run_dir)!r}, {self.config.label}, {self.num_classes} classes from {reads}, "
                f"on {self.model.input_mean.device})")

    @property
    def view(self) -> str:
        return self.config.data.view

    @property
    def reads_sequences(self) -> bool:
        """True for a run trained on the user's own sequences (``data.dataset=file``), not images."""
        return self.config.data.dataset == "file"

    def test_split(self, data_dir: str | Path | None = None) -> SequenceData:
        """The run's test set, read as the run read it (view, permutation); ``data_dir``
        overrides the run's own data folder (or, for a sequence-file run, is the file to read)."""
        if data_dir is not None:  # a number or "" would fail deep in the data loading, or read the run's own
            data_dir = str(path_arg(data_dir, "data_dir", "data_dir='data/mnist'"))
        data = self.config.data
        if self.reads_sequences:
            path = data_dir or data.file
            test = load_sequence_file(path, to_train=False).test
            # Another file than the run's own may not fit the model: say how it differs, not crash.
            check_against_run(path, test, steps=self.model.seq_len, features=self.model.input_size,
                              classes=self.num_classes, variable_lengths=self.variable_lengths,
                              dtype=self.meta.get("input", {}).get("dtype"))
            return test
        return load_sequences(data.dataset, "test", view=data.view, permutation=self.permutation,
                              data_dir=data_dir or data.data_dir or None, download=data.download)

    def evaluate(self, data_dir: str | Path | None = None, *, batch_size: int = 1000) -> dict[str, Any]:
        """Test accuracy and loss, per-class accuracy (None for a class without test samples) and
        the confusion matrix (rows: true class) on the run's test split, on the model's device."""
        from rnnlab.evaluation import confusion_matrix, evaluate

        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a whole number >= 1")
        test = self.test_split(data_dir)
        result = evaluate(self.model, test, batch_size=batch_size, device=self.model.input_mean.device)
        matrix = confusion_matrix(test.y, result.predictions, self.num_classes)
        counts = torch.bincount(test.y, minlength=self.num_classes).tolist()  # (C,) test samples per class
        per_class = [100.0 * matrix[c][c] / counts[c] if counts[c] else None for c in range(self.num_classes)]
        return {"test_accuracy": result.accuracy, "test_loss": result.loss, "samples": len(test),
                "unit": "sequences" if self.reads_sequences else "images", "class_names": self.class_names,
                "per_class_accuracy": per_class, "confusion_matrix": matrix}

    @property
    def class_names(self) -> list[str] | None:
        """The classes' names (fashion-mnist's, kmnist's, or a sequence file's ``class_names``);
        None where the class numbers are the names (MNIST digits)."""
        if "input" in self.meta:
            return self.meta["input"].get("class_names")
        names = DATASETS[self.config.data.dataset].class_names  # a checkpoint from before "input"
        return list(names) if names else None

    def class_label(self, index: int) -> str:
        """``"3"``, or ``"3 walking"`` where the classes have names."""
        names = self.class_names
        return f"{index} {names[index]}" if names else str(index)

    @property
    def variable_lengths(self) -> bool:
        """True if the run was trained on padded sequences of varying length (``lengths_*`` arrays)."""
        return bool(self.meta.get("input", {}).get("variable_lengths", False))

    def sequences_in(self, sequences: Any, lengths: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequences as the run's model reads them -> ``(x float (N, T, F), lengths (N,) or None)``.

        ``(N, T, F)`` or one ``(T, F)`` (``(N, T)`` or ``(T,)`` for one feature; ``(k, 1)`` is one
        sequence of k steps, unless the run's sequences have one step). For a run trained on uint8
        pixels: integers 0-255 (any integer dtype, read as value / 255) or floats in [0, 1];
        otherwise floats or integers, used as they are. A run trained on sequences of varying length
        also takes shorter ones, a list of sequences of different lengths (padded here), or a padded
        array with ``lengths``, ``(N,)`` integers from 1 to its T, as in the training file.
        """
        if not self.reads_sequences:
            raise DataError(f"{self.run_dir} was trained on {self.config.data.dataset} images; "
                            "pass images (predict), not sequences")
        steps, features = self.model.seq_len, self.model.input_size
        if isinstance(sequences, (list, tuple)) and not sequences:
            raise DataError(f"no sequences given (an empty {type(sequences).__name__}); pass at least one")
        if lengths is not None:
            return self._padded(sequences, lengths, steps, features)
        if isinstance(sequences, (list, tuple)) and self.variable_lengths:
            parts = [self._one_batch(s, steps, features, single=True, index=i) for i, s in enumerate(sequences)]
            lengths = torch.tensor([p.shape[1] for p in parts])
            x = torch.zeros(len(parts), int(lengths.max()), features)  # (N, T_max, F), zero padding
            for i, part in enumerate(parts):
                x[i, : part.shape[1]] = part[0]
            return x, lengths
        x = self._one_batch(sequences, steps, features, single=False)
        zeros_last = (x[:, -1] == 0).all(dim=-1) if self.variable_lengths else None  # (N, F) -> (N,)
        if zeros_last is not None and bool(zeros_last.any()) and not bool(zeros_last.all()):  # as padding does
            warn_caller("this run was trained on sequences of varying length, and some of these end in a step of "
                        "zeros, as padding does: without lengths each is read whole, padding included; give "
                        "lengths (predict(x, lengths); --lengths on the command line), or a list of the sequences "
                        "unpadded",
                        UserWarning)
        return x, None  # one length for the whole batch: no padding to skip

    def _padded(self, sequences: Any, lengths: Any, steps: int, features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded array ``(N, T, F)`` and each sequence's own length ``(N,)``, checked; the padding,
        which the model never reads, is zeroed before the values are checked (it may hold anything)."""
        if not self.variable_lengths:
            raise DataError("this run was trained on sequences of one length; give the sequences without lengths")
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.detach().cpu()
        own = np.asarray(lengths)
        if own.dtype.kind not in "iu" or own.ndim != 1:
            raise DataError(f"lengths must be integers of shape (N,), one per sequence; got {own.dtype} {own.shape}")
        return self._one_batch(sequences, steps, features, single=False, lengths=own), torch.from_numpy(
            own.astype(np.int64))

    def _one_batch(self, sequences: Any, steps: int, features: int, *, single: bool, index: int | None = None,
                   lengths: np.ndarray | None = None) -> torch.Tensor:
        """One array of sequences -> float ``(N, T, F)``, read as the run read its training file
        (``index``: its place in a list, for messages; ``lengths``: steps past them are padding)."""
        if isinstance(sequences, torch.Tensor):  # numpy takes no GPU, grad-tracking or bfloat16 tensor
            sequences = sequences.detach().cpu()
            sequences = sequences.float() if sequences.dtype == torch.bfloat16 else sequences
        try:
            x = np.asarray(sequences)
        except (TypeError, ValueError, RuntimeError) as exc:  # ragged lists
            if lengths is not None:  # predict([s1, s2], lengths): numpy's words would not say what to change
                raise DataError("lengths go with one padded array of sequences, (N, T, F); a list of sequences of "
                                "different lengths needs none: pass the list alone (predict([s1, s2, ...]))") from None
            more = "" if self.variable_lengths else " (this run was trained on one length)"
            problem = ckpt.error_line(exc, kind=False)
            raise DataError(f"sequences must be one array of numbers{more}: {problem}") from None
        # Before torch sees them: its refusal of strings lists types (complex, bool) refused here too.
        if x.dtype.kind not in "iuf":
            what = {"U": "strings", "S": "bytes", "O": "Python objects"}.get(x.dtype.kind)
            ragged = " (sequences of different lengths: pass them as a list)" if x.dtype.kind == "O" else ""
            raise DataError("sequences must hold numbers (float or integer, or uint8 pixels), "
                            f"got {f'{what} ({x.dtype})' if what else x.dtype}{ragged}")
        given = x.shape  # errors name the shape the caller gave, not ours after reshaping
        where = "" if index is None else f"sequences[{index}]: "
        if features == 1 and (x.ndim == 1 or (x.ndim == 2 and (x.shape[-1] != 1 or steps == 1))):
            # (T,) or (N, T) -> one feature per step. (k, 1) is one sequence of k steps, but for a run
            # of one-step sequences it can only be k sequences.
            x = x[..., None]
        if x.ndim == 2:
            x = x[None]  # one sequence (T, F) -> (1, T, F)
        if x.ndim == 3 and x.shape[0] == 0:  # an empty batch would print nothing and succeed
            raise DataError(f"{where}no sequences in the input (shape {given}); give at least one sequence")
        length_ok = 1 <= x.shape[1] <= steps if (x.ndim == 3 and self.variable_lengths) else None
        shape_ok = x.ndim == 3 and x.shape[2] == features and (length_ok or x.shape[1] == steps)
        if not shape_ok or (single and x.shape[0] != 1):
            length = f"1 to {steps} steps" if self.variable_lengths else f"{steps} steps"
            raise DataError(f"{where}sequences must have shape (N, T, {features}) or (T, {features}) with "
                            f"T = {length}, as in the run's training file; got {given}")
        if lengths is not None:
            problem = lengths_problem(lengths, len(x), x.shape[1])
            if problem is not None:
                raise DataError(problem)
            x = zero_padding(x, lengths)  # (N, T, F), our own copy
        return _as_trained(x, self.meta.get("input", {}).get("dtype"))

    def to_sequences(self, images: Any) -> torch.Tensor:
        """Images in MNIST form, ``(N, H, W)`` or ``(H, W)``, integers 0-255 or float 0-1 -> float ``(N, T, F)``.

        Image files, bytes, PIL images, arrays of other shapes, or a list of them are first
        brought to MNIST form by :mod:`rnnlab.imaging`; MNIST-shaped arrays are used as they are.
        A run trained on a sequence file takes sequences instead (see ``sequences_in``).
        """
        from rnnlab.imaging import pixel_batch

        if self.image_shape is None:
            return self.sequences_in(images)[0]
        # Shapes, types and values are checked there: integers 0-255 are pixels, floats 0-1.
        pixels = torch.from_numpy(np.require(pixel_batch(images, tuple(self.image_shape)), requirements="W"))
        seqs = images_to_sequences(pixels, self.view, self.permutation)  # (N, T, F) uint8, or float32 in [0, 1]
        return seqs.float() / 255.0 if seqs.dtype == torch.uint8 else seqs

    def _model_inputs(self, inputs: Any, lengths: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images or sequences -> ``(x (N, T, F), lengths (N,) or None)`` on the CPU
        (:meth:`_softmax_in_chunks` moves each chunk to the model's device)."""
        if self.reads_sequences:
            return self.sequences_in(inputs, lengths)
        if lengths is not None:
            raise DataError("images take no lengths (every image is read whole); leave lengths out")
        return self.to_sequences(inputs), None

    def _softmax_in_chunks(self, x: torch.Tensor, lengths: torch.Tensor | None,
                           logits: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
        """``softmax(logits(x, lengths))`` over the last dimension, float32 on the CPU, computed
        at most :data:`CHUNK_STEPS` sequence-steps at a time on the model's device. Each row
        depends on its own sequence only, so the result is the chunks' results concatenated."""
        device, dtype = self.model.input_mean.device, self.model.input_mean.dtype  # as load() or the caller left it
        size = max(1, CHUNK_STEPS // max(1, x.shape[1]))  # sequences per chunk; at least one
        was_training = self.model.training  # given back: .model is the caller's module too
        self.model.eval()
        parts = []
        try:
            with torch.no_grad():
                for start in range(0, len(x), size):
                    part = logits(x[start:start + size].to(device=device, dtype=dtype),
                                  None if lengths is None else lengths[start:start + size].to(device))
                    # float32 whatever the caller's autocast made of the logits (bf16, say)
                    parts.append(torch.softmax(part.float(), dim=-1).cpu())
        except Exception as exc:  # noqa: BLE001 - only running out of memory is handled here
            self.model.train(was_training)
            if not dist.is_out_of_memory(exc):
                raise
            detail = (str(exc) or type(exc).__name__).splitlines()[0][:160]
            error = ResourceError(f"out of memory on {device} running the model on {len(x)} inputs of "
                                  f"{x.shape[1]} steps, {min(size, len(x))} at a time ({detail}); give it fewer "
                                  "inputs at a time" + ("" if device.type == "cpu" else
                                                        ", or load it on the CPU: rnnlab.load(run, device='cpu')"))
        else:
            self.model.train(was_training)
            return torch.cat(parts)
        parts.clear()
        raise error  # outside the handler: the failed chunk's tensors are freed, not kept as its context

    def probabilities(self, inputs: Any, lengths: Any = None) -> torch.Tensor:
        """Class probabilities ``(N, C)`` on the CPU, for images, or for a sequence-file run its
        sequences (and their ``lengths``, for a padded array: see :meth:`sequences_in`)."""
        x, lengths = self._model_inputs(inputs, lengths)
        return self._softmax_in_chunks(x, lengths, self.model)

    def step_probabilities(self, inputs: Any, points: list[int] | None = None, *,
                           lengths: Any = None) -> torch.Tensor:
        """Class probabilities ``(N, P, C)`` after reading ``points[i]`` steps (default: after each
        step, ``P = T``): how the prediction evolves as the model reads. Sequences of different
        lengths (a list, or a padded array with its ``lengths``) keep the probabilities of their
        last step after it."""
        x, lengths = self._model_inputs(inputs, lengths)
        return self._softmax_in_chunks(x, lengths, lambda xs, ls: self.model.step_logits(xs, points, ls))

    def reading(self, inputs: Any, *, lengths: Any = None, max_points: int | None = None,
                cheap_max_points: int | None = None) -> tuple[list[int], torch.Tensor]:
        """``(points, probabilities (N, P, C))`` for ``rnnlab predict --steps`` and the web page: at
        most ``max_points`` points where each costs a pass, ``cheap_max_points`` where one pass
        gives them all (``None``: every step), evenly spaced and ending at the last step.
        ``lengths`` as for :meth:`step_probabilities`."""
        x, lengths = self._model_inputs(inputs, lengths)
        points = sample_points(x.shape[1], cheap_max_points if self.model.steps_in_one_pass else max_points)
        return points, self._softmax_in_chunks(x, lengths, lambda xs, ls: self.model.step_logits(xs, points, ls))

    def predict(self, images: Any, lengths: Any = None) -> list[dict[str, Any]]:
        """``[{"class": int, "probabilities": [...]}, ...]`` for images (MNIST-form arrays, or files/PIL
        images), or a sequence-file run's sequences (with ``lengths`` for a padded array of sequences
        of varying length); with ``"name"`` where the classes have names."""
        probs = self.probabilities(images, lengths)
        bad = (~probs.isfinite().all(1)).nonzero().flatten().tolist()  # argmax of NaN would name class 0
        if bad:
            which = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise DataError(f"the model produced non-finite probabilities for input{'s' * (len(bad) > 1)} {which} "
                            f"(of {len(probs)}): values far outside those it was trained on overflow its arithmetic")
        names = self.class_names
        return [{"class": int(p.argmax()), "probabilities": p.tolist()}
                | ({"name": names[int(p.argmax())]} if names else {}) for p in probs]


def sample_points(steps: int, max_points: int | None) -> list[int]:
    """Step counts ``1..steps`` to report: all of them, or ``max_points`` evenly spaced, ending at ``steps``."""
    if max_points is None or steps <= max_points:
        return list(range(1, steps + 1))
    return [round(steps * k / max_points) for k in range(1, max_points + 1)]


def load(run_dir: str | Path | Run, *, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a run's final weights for inference (safely: ``weights_only=True``) onto ``device``
    (``auto``: cuda, then mps, then cpu)."""
    run_dir = path_arg(run_dir, "run_dir", "rnnlab.load('runs/my-run')")
    device = dist.select_device(str(device))  # an unknown or absent device is not a corrupt checkpoint
    # On the CPU first: only the model goes to the device (the permutation stays with the images
    # it reorders, and the optimizer state and best weights a checkpoint holds stay off the GPU).
    tensors, meta = ckpt.load_checkpoint(run_dir, map_location="cpu")
    config = from_dict(meta["config"], source=str(run_dir / ckpt.CHECKPOINT_JSON))
    model = build_from_state(config, tensors["model"], input_shape=meta.get("input"),
                             source=run_dir / ckpt.CHECKPOINT_JSON)
    model.to(device).eval()
    return TrainedModel(run_dir, config, model, tensors.get("permutation"), meta)


def _as_trained(x: np.ndarray, trained: str | None) -> torch.Tensor:
    """Numbers ``(N, T, F)`` -> float32, read as training read the run's file (``trained``: its
    ``meta["input"]["dtype"]``, None in checkpoints from before it): uint8 are pixels, value / 255."""
    pixels = x.dtype == np.uint8
    if trained == "uint8" and x.dtype.kind in "iu" and not pixels:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(f"this run was trained on uint8 pixels (0-255, read as value / 255); integer sequences "
                            f"must hold values 0-255, got {low} to {high}; give pixels 0-255, or floats in [0, 1]")
        pixels = True  # the same pixels in a wider integer type: np.array([...]) of ints is int64
    elif pixels and trained == "float32":
        raise DataError("this run was trained on a file of float values, and uint8 sequences are read as "
                        "pixels, scaled to [0, 1]; to give these values as they are, pass x.astype(np.float32)")
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range: named below, not numpy's warning
        values = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: the caller's array is left alone
    if pixels:
        return values.div_(255.0)  # as training divides (data/sequences.py): bit for bit the same inputs
    if not torch.isfinite(values).all():
        if x.dtype.itemsize > 4 and np.isfinite(x).all():
            raise DataError(f"sequences hold values beyond float32's range (±{float(np.finfo(np.float32).max):.1e}, "
                            f"up to {float(np.abs(x).max()):.3g}), which rnnlab computes in; scale them as training "
                            "data was scaled")
        raise DataError("sequences hold NaN or infinite values; fill or drop them")
    low, high = float(values.min()), float(values.max())
    if trained == "uint8" and (low < 0 or high > 1):  # only floats get here: integers were pixels
        # The model saw value / 255: floats 0-255 would reach it 255 times too large.
        raise DataError(f"this run was trained on uint8 pixels, which it reads as value / 255 in [0, 1]; float "
                        f"sequences must be in [0, 1], got {low:g} to {high:g}; "
                        "pass the pixels as uint8 (x.astype(np.uint8)) or divide them by 255 (x / 255)")
    return values
