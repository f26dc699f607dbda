"""Image-to-sequence views, splits and deterministic batching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sequence_files import synthetic

import rnnlab
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.data import (
    VIEWS,
    SequenceData,
    images_to_sequences,
    load_sequences,
    make_permutation,
    train_val_split,
    view_shape,
)
from rnnlab.engine import Trainer
from rnnlab.errors import ConfigError, DataError


def images(n: int = 5, h: int = 4, w: int = 3) -> torch.Tensor:
    return torch.arange(n * h * w, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(n, h, w)


def data(n: int = 10, t: int = 3, f: int = 2) -> SequenceData:
    x = torch.arange(n * t * f).remainder(256).to(torch.uint8).reshape(n, t, f)
    return SequenceData(x, torch.arange(n) % 10)


def test_view_shapes() -> None:
    assert VIEWS == ("rows", "pixels", "permuted-pixels")
    assert view_shape("rows", (28, 28)) == (28, 28)
    assert view_shape("pixels", (28, 28)) == (784, 1)
    assert view_shape("permuted-pixels", (4, 3)) == (12, 1)
    msg = "unknown view 'cols'; valid views are: rows, pixels, permuted-pixels"
    with pytest.raises(ConfigError, match=msg):
        view_shape("cols", (28, 28))


def test_rows_and_pixels_are_views() -> None:
    imgs = images()
    rows = images_to_sequences(imgs, "rows")
    pix = images_to_sequences(imgs, "pixels")
    assert rows.shape == (5, 4, 3) and pix.shape == (5, 12, 1)
    assert rows.data_ptr() == imgs.data_ptr() == pix.data_ptr()
    assert torch.equal(pix[2, :, 0], imgs[2].flatten())


def test_permuted_pixels() -> None:
    imgs = images()
    perm = make_permutation(3, 12)
    seq = images_to_sequences(imgs, "permuted-pixels", perm)
    assert seq.shape == (5, 12, 1) and seq.dtype == torch.uint8
    assert torch.equal(seq[1, :, 0], imgs[1].flatten()[perm])
    assert torch.equal(make_permutation(3, 12), perm)
    assert not torch.equal(make_permutation(4, 12), perm)
    assert torch.equal(perm.sort().values, torch.arange(12))


def test_permuted_pixels_needs_a_valid_permutation() -> None:
    with pytest.raises(ConfigError, match=r"needs a permutation; make one with make_permutation\(seed, 12\)"):
        images_to_sequences(images(), "permuted-pixels")
    with pytest.raises(ConfigError, match="must be a reordering of 0..11"):
        images_to_sequences(images(), "permuted-pixels", torch.zeros(12, dtype=torch.long))
    with pytest.raises(ConfigError, match="must be a reordering"):
        images_to_sequences(images(), "permuted-pixels", make_permutation(0, 11))


def test_train_val_split() -> None:
    tr, va = train_val_split(100, 20, seed=1)
    assert len(tr) == 80 and len(va) == 20
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(100))
    tr2, va2 = train_val_split(100, 20, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(100, 20, seed=2)[1])
    tr0, va0 = train_val_split(7, 0, seed=0)
    assert torch.equal(tr0, torch.arange(7)) and va0.numel() == 0
    for bad in (100, 101, -1):
        with pytest.raises(ConfigError, match="val_size must be between 0 and 99"):
            train_val_split(100, bad, seed=0)


def test_sequence_data_validates() -> None:
    for bad in (torch.zeros(2, 3, 1, dtype=torch.float64), torch.zeros(2, 3), torch.zeros(2, 3, 1, dtype=torch.int32)):
        with pytest.raises(DataError, match="x must be uint8 or float32"):
            SequenceData(bad, torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="y must be int64"):
        SequenceData(torch.zeros(2, 3, 1, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(DataError, match="x has 2 sequences but y has 3 labels"):
        SequenceData(torch.zeros(2, 3, 1, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(("n", "b", "expected"), [(10, 3, 4), (10, 5, 2), (10, 20, 1), (1, 1, 1)])
def test_num_batches_keeps_partial(n: int, b: int, expected: int) -> None:
    assert data(n).num_batches(b) == expected == math.ceil(n / b)


def test_batch_scales_to_unit_range() -> None:
    d = SequenceData(torch.tensor([[[0], [255]], [[51], [102]]], dtype=torch.uint8), torch.tensor([3, 4]))
    x, y = d.batch(torch.tensor([1, 0]))
    assert x.dtype == torch.float32 and x.shape == (2, 2, 1)
    assert torch.allclose(x[:, :, 0], torch.tensor([[0.2, 0.4], [0.0, 1.0]]))
    assert y.tolist() == [4, 3]
    assert d.x[0, 1, 0] == 255  # the stored uint8 data is untouched


def test_to_a_device_moves_everything_and_batches_follow() -> None:
    x = torch.randint(0, 256, (6, 3, 2), dtype=torch.uint8)
    data = SequenceData(x, torch.arange(6), torch.tensor([3, 1, 2, 3, 3, 1]))
    assert data.to("cpu") is data  # already there: no copy
    moved = data.to("meta")  # a device without storage: placement is all that is checked
    assert {t.device.type for t in (moved.x, moved.y, moved.lengths)} == {"meta"}
    xb, yb = moved.batch(torch.tensor([4, 0]))  # CPU indices are taken to the data's device
    assert xb.device.type == yb.device.type == moved.batch_lengths(torch.tensor([1])).device.type == "meta"
    assert xb.shape == (2, 3, 2) and xb.dtype == torch.float32


def test_epoch_order_is_pure_function_of_seed_and_epoch() -> None:
    d = data(50)
    o = d.epoch_order(3, seed=7)
    assert torch.equal(o.sort().values, torch.arange(50))
    assert torch.equal(o, data(50).epoch_order(3, seed=7))
    assert not torch.equal(o, d.epoch_order(4, seed=7))
    assert not torch.equal(o, d.epoch_order(3, seed=8))


def test_training_cuts_each_epochs_order_into_batches_and_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loop's batches: epoch e is ``epoch_order(e, seed)`` in batch_size slices, the
    partial one kept; a run stopped and resumed draws the batches of one never stopped."""
    (x, y), (x_test, y_test) = synthetic(10, 0), synthetic(4, 1)
    path = tmp_path / "ten.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={path}", "data.val_size=0", "seed=3",
                                           "model.hidden=4", "train.batch_size=4", "train.epochs=3",
                                           "train.threads=1"])
    drawn: list[list[int]] = []
    forward = Trainer._forward

    def recording(self: Trainer, batch_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append(batch_idx.tolist())
        return forward(self, batch_idx)

    monkeypatch.setattr(Trainer, "_forward", recording)
    rnnlab.train(config, tmp_path / "whole", progress=False)
    whole = list(drawn)
    assert [len(b) for b in whole] == [4, 4, 2] * 3
    for epoch in range(3):  # the order depends on the number of rows only, not on their values
        assert sum(whole[3 * epoch:3 * epoch + 3], []) == data(10).epoch_order(epoch, seed=3).tolist()
    drawn.clear()
    rnnlab.train(config, tmp_path / "part", progress=False, stop_after=5)  # stopped inside epoch 1
    rnnlab.resume(tmp_path / "part", progress=False)
    assert drawn == whole


def test_iterate_once_in_order() -> None:
    d = data(7)
    batches = list(d.iterate_once(3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([x for x, _ in batches]), d.x.float() / 255)
    # One process's share under torchrun: rows [start, stop), stop capped at the end.
    assert [y.tolist() for _, y in d.iterate_once(2, start=2, stop=6)] == [[2, 3], [4, 5]]
    assert [y.tolist() for _, y in d.iterate_once(3, start=5, stop=100)] == [[5, 6]]


def test_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        data().num_batches(0)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        next(data().iterate_once(0))


def test_pixel_stats_exact() -> None:
    x = torch.tensor([0, 255, 255, 51], dtype=torch.uint8).reshape(2, 2, 1)
    mean, std = SequenceData(x, torch.zeros(2, dtype=torch.long)).pixel_stats()
    ref = x.double() / 255
    assert mean == pytest.approx(float(ref.mean())) and std == pytest.approx(float(ref.std(unbiased=False)))


def test_load_sequences_real_mnist() -> None:
    rows = load_sequences("mnist", "test", "rows")
    assert rows.x.shape == (10000, 28, 28) and len(rows) == 10000
    pix = load_sequences("mnist", "test", "pixels")
    perm = make_permutation(0, 784)
    permuted = load_sequences("mnist", "test", "permuted-pixels", permutation=perm)
    assert permuted.x.shape == (10000, 784, 1)
    assert torch.equal(permuted.x[:, :, 0], pix.x[:, perm, 0])
    mean, std = rows.pixel_stats()
    assert mean == pytest.approx(0.1325, abs=1e-3) and std == pytest.approx(0.3105, abs=1e-3)
    with pytest.raises(ConfigError, match="needs a permutation"):
        load_sequences("mnist", "test", "permuted-pixels")
    with pytest.raises(ConfigError, match="unknown view"):
        load_sequences("mnist", "test", "diagonal")
