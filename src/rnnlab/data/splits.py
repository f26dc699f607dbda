"""The train/validation/test splits of a run, from its config: image datasets read through a
view, or a user's sequence file; the validation split is carved from training, never from test."""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rnnlab.config import RunConfig
from rnnlab.data.files import load_sequence_file, sequence_file_shape
from rnnlab.data.sequences import SequenceData, load_sequences, make_permutation, train_val_split, view_shape
from rnnlab.data.sources import DATASETS
from rnnlab.errors import ConfigError, DataWarning, warn_caller

__all__ = ["Datasets", "config_input_shape", "describe_datasets", "input_shape", "load_datasets"]


@dataclass
class Datasets:
    train: SequenceData
    val: SequenceData | None
    test: SequenceData
    permutation: torch.Tensor | None
    num_classes: int
    class_names: list[str] | None = None  # e.g. fashion-mnist's, or a sequence file's own
    content: str = ""  # a digest of the data before the validation split (see content_digest)
    test_set: str = ""  # which test sequences a run is scored on (see test_set_of): equal ones pair up in a report


def load_datasets(cfg: RunConfig, *, needs_validation: bool = True) -> Datasets:
    """Train/val/test sequences for a config; the validation split never touches the test set.

    ``needs_validation=False`` is for a caller that never reads the validation split (``rnnlab
    gradients``): a training split too small to give up ``data.val_size`` sequences is then kept
    whole instead of refused. One large enough is carved as for training, so the training split,
    and the standardisation statistics a model takes from it, are those training would use.
    """
    data = cfg.data
    permutation, class_names = None, None
    if data.dataset == "file":  # the user's own sequences
        full, test, num_classes, class_names = load_sequence_file(data.file)
    else:
        spec = DATASETS[data.dataset]
        if data.view == "permuted-pixels":
            permutation = make_permutation(data.permutation_seed, spec.image_shape[0] * spec.image_shape[1])
        kwargs = dict(view=data.view, data_dir=data.data_dir or None, permutation=permutation,
                      download=data.download)
        full = load_sequences(data.dataset, "train", **kwargs)
        test = load_sequences(data.dataset, "test", **kwargs)
        num_classes = spec.num_classes
        class_names = list(spec.class_names) if spec.class_names else None
    val = None
    train = full
    if data.val_size > 0 and cfg.train.protocol == "standard":
        if data.val_size < len(full):
            train_idx, val_idx = train_val_split(len(full), data.val_size, cfg.seed)
            train, val = full.subset(train_idx), full.subset(val_idx)
            if needs_validation:
                _check_carved_classes(full.y, train.y, data.val_size, cfg.seed)
        elif needs_validation:
            # A tenth of fewer than 10 sequences is 0: then only "no validation split" is left to suggest.
            tenth, count = len(full) // 10, f"{len(full)} sequence{'s' if len(full) != 1 else ''}"
            fix = (f"set data.val_size={tenth} (a tenth) or 0 for no validation split" if tenth else
                   "set data.val_size=0 (no validation split; too few sequences to carve one from)")
            raise ConfigError(f"data.val_size={data.val_size} would leave no training data: the training split "
                              f"has {count}; {fix}")
    return Datasets(train, val, test, permutation, num_classes, class_names, content_digest(full, test),
                    test_set_of(data.dataset, test))


def test_set_of(dataset: str, test: SequenceData) -> str:
    """The identity of a test split, as a report compares entries' test sets: a dataset's name (its
    test images are fixed by their checksums, whatever the view or permutation reads of them: row and
    pixel MNIST are scored on the same images), or a digest of a sequence file's test split."""
    return dataset if dataset != "file" else f"file {content_digest(test)}"


def _check_carved_classes(full: torch.Tensor, train: torch.Tensor, val_size: int, seed: int) -> None:
    """Refuse a training split that the validation split left with one class, and warn of classes
    it took every example of: the file's own checks saw its whole training split, which had them
    (a rare class of a few sequences, or a tiny file, can end up in validation alone)."""
    from rnnlab.distributed import is_main_process  # late: torch's distributed package, only when training

    fix = f"lower data.val_size (now {val_size}), or set another seed (now {seed}), which carves another one"
    learned = torch.unique(train)
    if len(learned) < 2 <= len(torch.unique(full)):
        raise ConfigError(f"the validation split (data.val_size={val_size}) leaves the training split only class "
                          f"{int(learned[0])}, and a classifier needs at least two classes to learn; {fix}")
    lost = sorted(set(torch.unique(full).tolist()) - set(learned.tolist()))
    if lost and is_main_process():  # under torchrun every process carves the split: one says it
        shown = ", ".join(map(str, lost[:5])) + (", ..." if len(lost) > 5 else "")
        warn_caller(f"the validation split (data.val_size={val_size}) took every training sequence of class"
                    f"{'es' * (len(lost) > 1)} {shown}: the model cannot learn {'them' if len(lost) > 1 else 'it'}; "
                    f"{fix}", DataWarning)


def input_shape(datasets: Datasets) -> dict[str, Any]:
    """What a model trained on these datasets reads and predicts (kept in checkpoints, so that
    a run on a sequence file loads without the file)."""
    steps, features = datasets.train.seq_shape
    return {"steps": steps, "features": features, "classes": datasets.num_classes,
            "variable_lengths": datasets.train.lengths is not None, "class_names": datasets.class_names,
            # uint8 (pixels, read as value / 255) or float32 (values as they are)
            "dtype": str(datasets.train.x.dtype).removeprefix("torch.")}


def content_digest(*splits: SequenceData) -> str:
    """A digest of every sequence, label and length of ``splits``, with their shapes and dtypes (the
    same bytes read as other shapes are other data). Taken before the validation split, so that it
    does not depend on the seed that carves it. MNIST's 55 MB take about 0.1 s."""
    digest = hashlib.blake2b(digest_size=12)
    for split in splits:
        for tensor in (split.x, split.y, split.lengths):  # (N, T, F), (N,), (N,) or None
            if tensor is not None:
                digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
                digest.update(np.ascontiguousarray(tensor.cpu().numpy()))  # hashed in place, not copied
    return digest.hexdigest()


def data_identity(datasets: Datasets) -> dict[str, Any]:
    """What tells one data set from another of the same shape: the size of each split and the
    data's :func:`content_digest` (kept in checkpoints: a run resumed, or a compare rerun, on other
    data is refused)."""
    sizes = {name: len(split) if split is not None else 0
             for name, split in (("train", datasets.train), ("val", datasets.val), ("test", datasets.test))}
    return {**sizes, "content": datasets.content}


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How the data of identity ``current`` differs from the data a run ``recorded``, in words; [] if
    it is the same. (Checkpoints of 2026-12-01 hold an older ``digest`` instead of ``content``:
    their split sizes are checked.)"""
    differs = [f"{current[key]} {key} sequences now, {recorded[key]} then" for key in ("train", "val", "test")
               if key in recorded and recorded[key] != current[key]]
    if not differs and recorded.get("content") not in (None, current["content"]):
        differs = ["other sequences, labels or lengths, as many per split"]
    return differs


def config_input_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """``(steps, features, classes)`` a config's model reads, without loading the splits: from the
    dataset and view for images, from the file itself for a sequence file."""
    if cfg.data.dataset == "file":
        return sequence_file_shape(cfg.data.file)
    spec = DATASETS[cfg.data.dataset]
    steps, features = view_shape(cfg.data.view, spec.image_shape)
    return steps, features, spec.num_classes


def describe_datasets(datasets: Datasets, source: str) -> dict[str, Any]:
    """What a run trained on, for its summary: source, split sizes, shape, classes (and lengths, if they vary)."""
    lengths = datasets.train.lengths
    return {"source": source, "train": len(datasets.train),
            "val": len(datasets.val) if datasets.val is not None else 0, "test": len(datasets.test),
            **input_shape(datasets),
            "lengths": None if lengths is None else [int(lengths.min()), int(lengths.max())]}
