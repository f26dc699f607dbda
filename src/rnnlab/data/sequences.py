"""Turning images into sequences, splitting, and deterministic batching.

Data stays uint8 in memory (60000x784 bytes for MNIST) and is scaled to float per batch, never
per sample. Shuffling is a pure function of ``(seed, epoch)`` so a run resumed at iteration k
sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.data.sources import DatasetSpec, get_dataset, load_split
from rnnlab.errors import ConfigError, DataError

__all__ = [
    "VIEWS",
    "SequenceData",
    "images_to_sequences",
    "load_sequences",
    "make_permutation",
    "train_val_split",
    "view_shape",
]

VIEWS: tuple[str, ...] = ("rows", "pixels", "permuted-pixels")


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ConfigError(f"unknown view {view!r}; valid views are: {', '.join(VIEWS)}.")


def _generator(seed: int) -> torch.Generator:
    # torch seeds are unsigned 64-bit; wrap so negative or huge seeds are still accepted.
    return torch.Generator().manual_seed(int(seed) % 2**64)


def view_shape(view: str, image_shape: tuple[int, int] = (28, 28)) -> tuple[int, int]:
    """Sequence shape ``(T, F)`` that ``view`` gives for images of ``image_shape`` ``(H, W)``."""
    _check_view(view)
    h, w = image_shape
    return (h, w) if view == "rows" else (h * w, 1)


def make_permutation(seed: int, length: int) -> torch.Tensor:
    """A seeded random permutation of ``range(length)`` (LongTensor), for permuted-pixels."""
    return torch.randperm(length, generator=_generator(seed))


def images_to_sequences(
    images: torch.Tensor, view: str, permutation: torch.Tensor | None = None
) -> torch.Tensor:
    """Map uint8 images ``(N, H, W)`` to uint8 sequences ``(N, T, F)``.

    rows: ``(N, H, W)``, one row per step; pixels: ``(N, H*W, 1)``; permuted-pixels: pixels in
    the order given by ``permutation``. rows/pixels are views of ``images`` (no copy).
    """
    _check_view(view)
    if images.dim() != 3:
        raise DataError(f"images must have shape (N, H, W), got {tuple(images.shape)}.")
    n, h, w = images.shape
    if view == "rows":
        return images  # (N, T=H, F=W)
    pixels = images.reshape(n, h * w, 1)  # (N, T=H*W, F=1)
    if view == "pixels":
        return pixels
    if permutation is None:
        raise _missing_permutation(h * w)
    perm = torch.as_tensor(permutation, dtype=torch.long).flatten()
    if perm.numel() != h * w or not torch.equal(perm.sort().values, torch.arange(h * w)):
        raise ConfigError(
            f"the permutation must be a reordering of 0..{h * w - 1} ({h * w} pixels), got "
            f"{perm.numel()} values that are not. Make one with make_permutation(seed, {h * w})."
        )
    return pixels.index_select(1, perm)  # (N, T, 1)


def _missing_permutation(length: int) -> ConfigError:
    return ConfigError(
        "view 'permuted-pixels' needs a permutation; make one with make_permutation(seed, "
        f"{length}) (or set the permutation seed in the config)."
    )


def train_val_split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint ``(train_idx, val_idx)`` over ``range(n)``, each sorted ascending."""
    if val_size < 0 or val_size >= n:
        raise ConfigError(
            f"val_size must be between 0 and {n - 1} for {n} training examples, got {val_size}. "
            "Lower val_size."
        )
    perm = torch.randperm(n, generator=_generator(seed))
    # Sorting keeps memory access sequential; order within a split does not matter here.
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def lengths_problem(lengths: np.ndarray, count: int, steps: int) -> str | None:
    """Why ``lengths`` are not one length per sequence of ``count`` padded to ``steps``, each from 1
    to ``steps``; None if they are (the words of every place that takes padded sequences)."""
    if lengths.shape != (count,):
        return f"lengths must have shape (N,) = ({count},), one per sequence; got {lengths.shape}"
    if lengths.min() < 1 or lengths.max() > steps:
        return (f"each length must be from 1 to the padded length T = {steps}; got lengths from "
                f"{lengths.min()} to {lengths.max()}")
    return None


def zero_padding(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A copy of ``x`` ``(N, T, ...)`` with the steps past each sequence's length set to zero: the
    padding is never read, and may hold anything (NaN too), so that checks look at the steps that count."""
    x = np.array(x)
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0  # (N, T) mask over steps
    return x


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) well, so nearby seeds/epochs give unrelated orders.
    state = np.random.SeedSequence([int(seed) % 2**64, int(epoch)]).generate_state(1, np.uint64)
    return int(state[0])


def _as_float(x: torch.Tensor, *, copy: bool = True) -> torch.Tensor:
    """Model input from stored sequences: uint8 pixels scaled to [0, 1]; float32 values as they are
    (a new tensor, never a view of the stored data, unless ``copy=False`` says x is one already)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.clone() if copy else x


@dataclass
class SequenceData:
    """A labelled set of sequences: ``x (N, T, F)`` uint8 (pixels, scaled to [0, 1] per batch)
    or float32 (a user's own values, used as they are), and ``y (N,)`` int64."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor | None = None  # (N,) int64 in 1..T for padded sequences of varying length

    def __post_init__(self) -> None:
        if self.x.dim() != 3 or self.x.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"x must be uint8 or float32 of shape (N, T, F), got {self.x.dtype} {tuple(self.x.shape)}.")
        if self.y.dim() != 1 or self.y.dtype != torch.int64:
            raise DataError(f"y must be int64 of shape (N,), got {self.y.dtype} {tuple(self.y.shape)}.")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x has {self.x.shape[0]} sequences but y has {self.y.shape[0]} labels.")
        if self.lengths is not None:
            lengths, steps = self.lengths, self.x.shape[1]
            if lengths.shape != self.y.shape or lengths.dtype != torch.int64:
                raise DataError(f"lengths must be int64 of shape ({len(self.y)},), got {lengths.dtype} "
                                f"{tuple(lengths.shape)}.")
            if len(lengths) and (lengths.min() < 1 or lengths.max() > steps):
                raise DataError(f"lengths must be between 1 and {steps} (the padded length), got "
                                f"{int(lengths.min())} to {int(lengths.max())}.")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def seq_shape(self) -> tuple[int, int]:
        """``(T, F)``."""
        return int(self.x.shape[1]), int(self.x.shape[2])

    def subset(self, indices: torch.Tensor) -> SequenceData:
        """A new SequenceData with the rows at ``indices`` (copied)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = None if self.lengths is None else self.lengths.index_select(0, idx)
        return SequenceData(self.x.index_select(0, idx), self.y.index_select(0, idx), lengths)

    def to(self, device: torch.device | str) -> SequenceData:
        """The same sequences on ``device`` (``self`` if they are there already)."""
        device = torch.device(device)
        if self.x.device == device:
            return self
        moved = copy.copy(self)  # validated already: no second pass over the data (a GPU sync)
        moved.x, moved.y = self.x.to(device), self.y.to(device)
        moved.lengths = None if self.lengths is None else self.lengths.to(device)
        return moved

    def _index(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(indices, dtype=torch.long, device=self.x.device)

    def batch_lengths(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The lengths ``(B,)`` of the rows at ``indices``, or None if every sequence is full length."""
        if self.lengths is None:
            return None
        return self.lengths.index_select(0, self._index(indices))

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch, keeping the last partial one: ``ceil(N / batch_size)``."""
        _check_batch_size(batch_size)
        return -(-len(self) // batch_size)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x float32 (B, T, F), y int64 (B,))`` for the given row indices (pixels in [0, 1])."""
        idx = self._index(indices)
        x = _as_float(self.x.index_select(0, idx), copy=False)  # (B, T, F): index_select copied
        return x, self.y.index_select(0, idx)

    def epoch_order(self, epoch: int, seed: int) -> torch.Tensor:
        """Shuffled row order for ``epoch``, which training cuts into batches: a pure function of
        ``(seed, epoch)``, so a resumed run draws the batches an uninterrupted one would."""
        return torch.randperm(len(self), generator=_generator(_epoch_seed(seed, epoch)))

    def iterate_once(self, batch_size: int, start: int = 0,
                     stop: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in order over rows ``[start, stop)``, no shuffling (for evaluation):
        yields ``(x, y)``."""
        _check_batch_size(batch_size)
        stop = len(self) if stop is None else min(stop, len(self))
        for first in range(start, stop, batch_size):
            last = min(first + batch_size, stop)
            # Slices are views; the float conversion is the only copy.
            yield _as_float(self.x[first:last]), self.y[first:last]  # (B, T, F), (B,)

    def pixel_stats(self) -> tuple[float, float]:
        """``(mean, std)`` of all pixels scaled to [0, 1] (population std)."""
        if self.x.numel() == 0:
            raise DataError("cannot compute pixel statistics of an empty dataset.")
        if self.x.dtype != torch.uint8:
            raise DataError("pixel statistics need uint8 pixels; use feature_stats() for float sequences.")
        # A 256-bin histogram is exact and avoids a float copy of the whole set.
        counts = torch.bincount(self.x.flatten(), minlength=256).to(torch.float64)
        values = torch.arange(256, dtype=torch.float64) / 255.0
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        return float(mean), float(var.sqrt())

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature ``(mean (F,), std (F,))`` over all sequences and their steps, padding left out
        (population std; pixels scaled to [0, 1]), accumulated in float64 over chunks of rows."""
        if self.x.numel() == 0:
            raise DataError("cannot compute feature statistics of an empty dataset.")
        scale = 1 / 255.0 if self.x.dtype == torch.uint8 else 1.0
        steps = torch.arange(self.x.shape[1])

        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            """(values (n, T, F) float64, weights (n, T, 1): 1 on real steps, 0 on padding)."""
            for first in range(0, len(self), 4096):
                x = self.x[first:first + 4096].double() * scale
                if self.lengths is None:
                    weight = torch.ones(x.shape[0], x.shape[1], 1, dtype=torch.float64)
                else:
                    weight = (steps[None, :] < self.lengths[first:first + 4096, None]).double()[..., None]
                yield x, weight

        count = float(self.lengths.sum()) if self.lengths is not None else self.x.shape[0] * self.x.shape[1]
        mean = sum((x * weight).sum((0, 1)) for x, weight in chunks()) / count  # (F,)
        squares = sum((((x - mean) ** 2) * weight).sum((0, 1)) for x, weight in chunks())
        return mean.float(), (squares / count).sqrt().float()


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")


def load_sequences(
    dataset: str | DatasetSpec,
    split: str,
    view: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    permutation: torch.Tensor | None = None,
    download: bool = False,
) -> SequenceData:
    """Load a split and turn it into sequences under ``view``."""
    # Fail on config mistakes before spending time decoding files.
    _check_view(view)
    spec = get_dataset(dataset)
    if view == "permuted-pixels" and permutation is None:
        raise _missing_permutation(spec.image_shape[0] * spec.image_shape[1])
    images, labels = load_split(spec, split, data_dir, download=download)  # (N, H, W), (N,)
    return SequenceData(images_to_sequences(images, view, permutation), labels)
