"""A user's own sequences (data.dataset=file): the .npz reader's checks, and a run trained on one."""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab.cli import main
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.data.files import load_sequence_file, sequence_file_shape
from rnnlab.data.splits import content_digest, load_datasets
from rnnlab.errors import ConfigError, DataError
from rnnlab.export import ExportError, export_run
from rnnlab.serve import create_app


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 12-step, 2-feature series: a rising ramp, a falling ramp, a bump; with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.linspace(-1, 1, 12)
    shapes = np.stack([t, -t, 2 * np.exp(-8 * t**2) - 0.5])  # (3, T)
    x = shapes[y][:, :, None] * np.array([1.0, -0.5]) + rng.normal(0, 0.3, (n, 12, 2))  # (N, T, 2)
    return x.astype(np.float32), y


@pytest.fixture
def seq_file(tmp_path: Path) -> Path:
    (x_train, y_train), (x_test, y_test) = synthetic(600, 0), synthetic(200, 1)
    path = tmp_path / "series.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["rising", "falling", "bump"]))
    return path


def write(tmp_path: Path, **arrays: object) -> Path:
    base = {"x_train": np.zeros((4, 5, 2), np.float32), "y_train": np.array([0, 1, 0, 1]),
            "x_test": np.zeros((2, 5, 2), np.float32), "y_test": np.array([1, 0])}
    base.update(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_reads_splits_classes_and_dtypes(tmp_path: Path, seq_file: Path) -> None:
    train, test, classes, names = load_sequence_file(seq_file)
    assert (len(train), len(test), classes, train.seq_shape) == (600, 200, 3, (12, 2))
    assert names == ["rising", "falling", "bump"]
    x, y = train.batch(torch.tensor([3, 1]))  # float values are used as they are
    assert torch.equal(x, torch.from_numpy(synthetic(600, 0)[0][[3, 1]])) and y.dtype == torch.int64
    mean, std = train.feature_stats()  # per feature, over sequences and steps
    values = train.x.double().flatten(0, 1)  # (N*T, F)
    torch.testing.assert_close(mean, values.mean(0).float())
    torch.testing.assert_close(std, values.std(0, unbiased=False).float())
    assert sequence_file_shape(seq_file) == (12, 2, 3)

    # (N, T) is one feature per step; uint8 is scaled like pixels; num_classes may exceed the labels
    path = write(tmp_path, x_train=np.full((4, 5), 255, np.uint8), x_test=np.zeros((2, 5), np.uint8),
                 num_classes=np.array(4))
    train, test, classes, _ = load_sequence_file(path)
    assert train.seq_shape == (5, 1) and classes == 4
    assert torch.equal(train.batch(torch.arange(4))[0], torch.ones(4, 5, 1))


@pytest.mark.parametrize("arrays, message", [
    ({"y_test": None}, "missing y_test"),
    ({"x_train": np.zeros((4, 5, 2, 1))}, r"x_train has shape \(4, 5, 2, 1\)"),
    ({"x_train": np.zeros((4, 0, 2))}, "at least one sequence, step and feature"),
    ({"x_test": np.zeros((2, 6, 2))}, r"both splits need the same steps"),
    ({"x_test": np.zeros((2, 5, 2), np.uint8)}, "x_train is float32 but x_test is uint8; uint8 is read as pixels"),
    ({"x_train": np.array([[[np.nan, 0]] * 5] * 4)}, r"20 NaN or infinite values \(first in sequence 0\)"),
    # finite in float64 but not in float32: not called NaN or infinite (the file has none)
    ({"x_train": np.where(np.arange(40).reshape(4, 5, 2) == 13, 1e300, 0.5)},
     r"x_train holds 1 values beyond float32's range \(±3\.4e\+38; first in sequence 1\), which rnnlab computes in"),
    ({"x_train": np.array([[["a", "b"]] * 5] * 4)}, "must hold numbers"),
    ({"y_train": np.array([0.0, 1.0, 0.0, 1.0])}, r"must be \(N,\) integers"),
    ({"y_train": np.array([0, 1, -1, 1])}, "negative label"),
    ({"y_train": np.array([0, 1, 1])}, "3 labels for 4 sequences"),
    ({"y_train": np.zeros(4, int), "y_test": np.zeros(2, int)}, "at least two classes"),
    ({"num_classes": np.array(1)}, "num_classes must be one integer >= 2"),
    ({"class_names": np.array(["up", "down", "bump"])}, "class_names must be 2 strings"),
    ({"lenghts_train": np.array([5, 5, 5, 5])}, "unknown arrays lenghts_train; the optional ones are lengths_train"),
    ({"class_names": np.array([1, 2])}, "class_names must be 2 strings"),
    # One stray label or num_classes must not size a 32 GB output layer (MAX_CLASSES = 1000).
    ({"y_train": np.array([0, 1, 10**9, 1])}, r"y_train holds label 1000000000; labels must be 0 \.\. C-1 with "
                                               r"at most 1000 classes \(C is the largest label \+ 1, or num_classes\)"),
    ({"y_test": np.array([1, 200000])}, "y_test holds label 200000; .* at most 1000 classes"),
    ({"num_classes": np.array(10**9)}, r"num_classes is 1000000000; at most 1000 classes are supported "
                                       r"\(the labels need only 2"),
    ({"num_classes": np.array(2), "y_test": np.array([1, 4])}, "num_classes is 2 but y_test holds label 4; "
                                                               "num_classes must be one integer >= 5"),
    # above 2**63 a uint64 label would turn negative as int64: checked on the file's own dtype
    ({"y_train": np.array([0, 1, 2**63 + 5, 1], np.uint64)}, "y_train holds label 9223372036854775813; "),
    ({"y_train": np.full(4, 3), "y_test": np.array([3, 1])}, "every y_train label is 3; a classifier needs at least "
                                                             "two classes to learn"),
    ({"y_train": np.array([1, 2, 3, 1]), "y_test": np.array([2, 3]), "num_classes": np.array(3)},
     r"num_classes is 3 and the labels are 1 \.\. 3; labels count from 0 \(0 \.\. 2\): save y_train - 1 and y_test - 1"),
    ({"x_test": np.zeros((2, 4, 2)), "lengths_train": np.array([5, 3, 2, 5]), "lengths_test": np.array([4, 2])},
     r"x_train has \(T, F\) = \(5, 2\) but x_test has \(4, 2\); both splits need the same steps and features "
     r"\(pad both to 5 steps: the lengths mark where each sequence ends\)"),
    # float32, which rnnlab computes in, cannot resolve 0.01 around 1e7: the feature would be constant
    ({"x_train": 1e7 + np.arange(40.0).reshape(4, 5, 2) * 0.01},
     r"x_train feature 0 varies by 0\.115 \(standard deviation\) around 1e\+07; in float32, which rnnlab "
     r"computes in, it is constant \(2 features so\): subtract the offset before saving"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_sequence_file(write(tmp_path, **arrays))


def test_float64_values_float32_resolves_are_taken(tmp_path: Path) -> None:
    """The precision check refuses only what float32 loses: an offset it can carry, or padding that
    holds anything (it is never read), passes."""
    x = 1e3 + np.random.default_rng(0).normal(size=(4, 5, 2))  # float64, 7 significant digits are plenty
    train = load_sequence_file(write(tmp_path, x_train=x)).train
    torch.testing.assert_close(train.x, torch.from_numpy(x).float())
    padded = np.where(np.arange(5)[None, :, None] < np.array([5, 2, 3, 5])[:, None, None], x, 1e7 + 0.01)
    load_sequence_file(write(tmp_path, x_train=padded, lengths_train=np.array([5, 2, 3, 5]),
                             lengths_test=np.array([5, 5])))


def test_labels_training_never_shows_or_mostly_unused_outputs_are_warned_of(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"bad.npz: y_test holds labels 2, 3 that y_train never has \(2 test "
                                         r"sequences\): the model cannot learn them"):
        load_sequence_file(write(tmp_path, y_test=np.array([2, 3])))
    with pytest.warns(UserWarning, match=r"the labels use 2 of 31 classes \(C is the largest label \+ 1"):
        assert load_sequence_file(write(tmp_path, y_train=np.array([0, 30, 0, 30]), y_test=np.array([30, 0]))
                                  ).num_classes == 31
    with pytest.warns(UserWarning, match=r"bad.npz: the labels are 1 .. 2 and none is 0, so the model has an output "
                                         r"for a class 0 that no sequence has .*: labels count from 0, so save "
                                         r"y_train - 1 and y_test - 1"):  # as R or MATLAB number them
        assert load_sequence_file(write(tmp_path, y_train=np.array([1, 2, 1, 2]), y_test=np.array([2, 1]))
                                  ).num_classes == 3
    assert load_sequence_file(write(tmp_path, class_names=np.array([b"low", b"high"]))).class_names == ["low", "high"]
    with warnings.catch_warnings():  # num_classes says the unused outputs are meant
        warnings.simplefilter("error")
        load_sequence_file(write(tmp_path, y_train=np.array([0, 30, 0, 30]), y_test=np.array([30, 0]),
                                 num_classes=np.array(31)))


def test_unreadable_or_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such sequence file"):
        load_sequence_file(tmp_path / "missing.npz")
    # np.load takes any file that is not NumPy's for a pickle ("load it unsafely"): say what it is instead
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DataError, match="text.npz: not a NumPy .npz archive: it is text, starting 'x_train,y_train' "
                                        r"\(read it with np.loadtxt, then save the arrays\); write it with np.savez"):
        load_sequence_file(tmp_path / "text.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"not a NumPy .npz archive: it is empty \(0 bytes\); write it with"):
        load_sequence_file(tmp_path / "empty.npz")
    (tmp_path / "image.npz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DataError, match="not a NumPy .npz archive: it is a PNG image; write it with"):
        load_sequence_file(tmp_path / "image.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 3, 1)))
    with pytest.raises(DataError, match="single .npy array"):
        load_sequence_file(tmp_path / "one.npy")
    objects = np.empty(4, dtype=object)  # stored with pickle, which the reader refuses
    with pytest.raises(DataError, match="y_train holds Python objects .* cannot be read safely"):
        load_sequence_file(write(tmp_path, y_train=objects))


def test_an_archive_member_that_is_not_npy_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """np.load hands over a member without .npy's header as bytes: refused by name, in every command."""
    path = write(tmp_path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["x_train.npy"] = b"hello, not an array"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    message = ("x_train is not a NumPy array (the archive's x_train.npy holds 19 bytes of text, starting "
               "'hello, not an array', not .npy data); write it with np.savez")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sequence_file(path)
    assert main(["inspect", "--data-file", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_config_needs_the_file_and_only_with_dataset_file() -> None:
    with pytest.raises(ConfigError, match="needs data.file=PATH"):
        apply_overrides(RunConfig(), ["data.dataset=file"])
    with pytest.raises(ConfigError, match="add data.dataset=file"):
        apply_overrides(RunConfig(), ["data.file=x.npz"])
    with pytest.raises(ConfigError, match="data.view and data.download apply to the image datasets"):
        apply_overrides(RunConfig(), ["data.dataset=file", "data.file=x.npz", "data.view=pixels"])


def test_train_load_predict_eval_export_on_a_sequence_file(tmp_path: Path, seq_file: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", "--data-file", str(seq_file), "--model", "gru", "--hidden", "16", "--epochs", "6",
                 "--batch-size", "32", "data.val_size=100", "--out", str(run_dir), "--no-progress"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # Chance is 1/3; the three shapes are easy to tell apart through the noise (100% seen here).
    assert summary["status"] == "completed" and summary["test_accuracy"] > 90
    assert len(summary["confusion_matrix"]) == 3
    # The test split's own digest, as a report tells test sets apart: the whole file's would change
    # with its training split, and so would pair nothing across files that share their test split.
    datasets = load_datasets(rnnlab.load(run_dir).config)
    assert summary["test_set"] == f"file {content_digest(datasets.test)}" == datasets.test_set

    # Each feature is standardised on its own scale: the buffers are (F,), from the training split.
    model = rnnlab.load(run_dir).model
    assert model.input_mean.shape == model.input_std.shape == (2,)
    everything = torch.from_numpy(synthetic(600, 0)[0]).flatten(0, 1)  # (N*T, F), validation rows too
    torch.testing.assert_close(model.input_std, everything.std(0), rtol=0.05, atol=0)
    torch.testing.assert_close(model.input_mean, everything.mean(0), rtol=0, atol=0.05)

    seq_file.rename(tmp_path / "moved.npz")  # loading the model does not need the data
    trained = rnnlab.load(run_dir)
    assert trained.reads_sequences and trained.num_classes == 3 and trained.model.input_size == 2
    x_test, y_test = synthetic(200, 1)
    predicted = np.array([p["class"] for p in trained.predict(x_test)])
    assert (predicted == y_test).mean() * 100 == pytest.approx(summary["test_accuracy"])
    assert trained.predict(x_test[0])[0]["class"] == predicted[0]  # one (T, F) sequence
    with pytest.raises(DataError, match=r"must have shape \(N, T, 2\) or \(T, 2\) with T = 12 steps"):
        trained.predict(np.zeros((3, 12, 5), np.float32))
    with pytest.raises(DataError, match="NaN"):
        trained.predict(np.full((12, 2), np.nan, np.float32))
    with pytest.raises(DataError, match="one array of numbers .this run was trained on one length"):
        trained.predict([x_test[0], x_test[1, :5]])  # ragged, for a run of one length
    with pytest.raises(DataError, match=r"trained on a file of float values.*pass x.astype\(np.float32\)"):
        trained.predict(np.zeros((1, 12, 2), np.uint8))  # would be read as pixels, divided by 255
    with pytest.raises(DataError, match="trained on sequences from a file"):
        create_app(trained)

    np.save(tmp_path / "three.npy", x_test[:3])
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(tmp_path / "three.npy"), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["class"] for e in entries] == predicted[:3].tolist() and entries[2]["index"] == 2
    assert [e["name"] for e in entries] == [["rising", "falling", "bump"][c] for c in predicted[:3]]
    assert trained.predict(x_test[:1])[0]["name"] == entries[0]["name"]
    assert main(["predict", str(run_dir), str(tmp_path / "moved.npz")]) == 2  # an archive: one clear line
    assert "give a .npy array of sequences" in capsys.readouterr().err

    moved = str(tmp_path / "moved.npz")
    assert main(["eval", str(run_dir), "--data-dir", moved]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {summary['test_accuracy']:.2f}% on 200 sequences" in out
    assert "  1 falling: " in out  # per-class accuracy, by name
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--data-dir", moved, "--samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "check  50 test sequences" in out and "values in [0, 1]" not in out
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:  # the metadata travels with the model
        metadata = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("extra/rnnlab.json"))))
    assert metadata["class_names"] == ["rising", "falling", "bump"] and metadata["view"] == "sequence-file"
    assert metadata["input_range"] is None and (metadata["steps"], metadata["features"]) == (12, 2)


def test_a_relative_file_path_is_saved_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = apply_overrides(RunConfig(), ["data.dataset=file", "data.file=series.npz"])
    assert config.data.file == str(tmp_path.resolve() / "series.npz")


def test_a_validation_split_larger_than_the_file_says_what_to_set(tmp_path: Path, seq_file: Path) -> None:
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={seq_file}"])  # val_size 5000
    with pytest.raises(ConfigError, match=r"data.val_size=5000 would leave no training data: the training "
                                          r"split has 600 sequences; set data.val_size=60"):
        rnnlab.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_validation_split_that_takes_every_sequence_of_a_class_is_refused_or_warned_of(tmp_path: Path) -> None:
    from rnnlab.data.splits import load_datasets
    from rnnlab.data.sequences import train_val_split

    assert train_val_split(4, 1, 5)[1].tolist() == [3]  # seed 5 carves the last sequence off as validation
    config = apply_overrides(RunConfig(), ["data.dataset=file", "data.val_size=1", "seed=5",
                                           f"data.file={write(tmp_path, y_train=np.array([0, 0, 0, 1]))}"])
    with pytest.raises(ConfigError, match=r"^the validation split \(data.val_size=1\) leaves the training split only "
                                          r"class 0, .*; lower data.val_size \(now 1\), or set another seed \(now 5\)"):
        load_datasets(config)  # before: trained on class 0 alone, without a word
    assert len(load_datasets(config, needs_validation=False).train) == 3  # gradients train nothing: not refused
    config = apply_overrides(config, [f"data.file={write(tmp_path, y_train=np.array([0, 1, 0, 2]))}"])
    with pytest.warns(UserWarning, match=r"took every training sequence of class 2: the model cannot learn it"):
        assert load_datasets(config).train.y.tolist() == [0, 1, 0]


# ------------------------------------------------------------------ sequences of varying length


@pytest.mark.parametrize("cell, bidirectional, readout, impl", [
    ("rnn", False, "last", "fast"), ("gru", False, "mean", "fast"), ("lstm", False, "last", "torch"),
    ("lstm", True, "last", "torch"), ("gru", True, "mean", "torch"), ("rnn", True, "mean", "auto"),
])
def test_a_padded_batch_reads_each_sequence_to_its_own_end(cell: str, bidirectional: bool, readout: str,
                                                          impl: str) -> None:
    """Logits for a padded batch with lengths equal those of each sequence run alone, unpadded:
    the padding is never read, whatever it holds."""
    from rnnlab.config import ModelConfig
    from rnnlab.models import create_model

    torch.manual_seed(0)
    config = ModelConfig(cell=cell, hidden=6, layers=2, bidirectional=bidirectional, readout=readout, impl=impl)
    model = create_model(config, input_size=3, seq_len=9, num_classes=4).double()
    lengths = torch.tensor([9, 4, 1, 7])
    x = torch.randn(4, 9, 3, dtype=torch.double)
    padded = x.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = 1e3  # absurd padding: any effect would show
    batch = model(padded, lengths)  # (4, C)
    alone = torch.cat([model(x[i:i + 1, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, rtol=1e-9, atol=1e-9)
    # Step by step too: after step t, each sequence's logits are those of its first min(t, length) steps.
    steps = model.step_logits(padded, [1, 4, 9], lengths)  # (4, 3, C)
    for i, n in enumerate(lengths.tolist()):
        for p, t in enumerate([1, 4, 9]):
            torch.testing.assert_close(steps[i, p], model(x[i:i + 1, :min(t, n)])[0], rtol=1e-9, atol=1e-9)
    batch.sum().backward()  # and gradients flow (the fast layers' backward included)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_lengths_in_the_file(tmp_path: Path) -> None:
    x = np.full((4, 5, 2), np.nan, np.float32)  # padding may hold anything, NaN included
    for i, n in enumerate([5, 2, 1, 3]):
        x[i, :n] = i + 1
    path = write(tmp_path, x_train=x, lengths_train=np.array([5, 2, 1, 3]), lengths_test=np.array([5, 5]))
    train, test, _, _ = load_sequence_file(path)
    assert train.lengths.tolist() == [5, 2, 1, 3] and test.lengths.tolist() == [5, 5]
    assert torch.equal(train.x[1, :, 0], torch.tensor([2.0, 2, 0, 0, 0]))  # padding zeroed
    assert train.subset(torch.tensor([3, 0])).lengths.tolist() == [3, 5]
    real = torch.cat([train.x[i, :n] for i, n in enumerate([5, 2, 1, 3])])  # (11, F): the padding left out
    mean, std = train.feature_stats()
    torch.testing.assert_close(mean, real.mean(0))
    torch.testing.assert_close(std, real.std(0, unbiased=False))
    assert train.batch_lengths(torch.tensor([2])).tolist() == [1]
    with pytest.raises(DataError, match="NaN"):  # inside a sequence, still refused
        load_sequence_file(write(tmp_path, x_train=x, lengths_train=np.array([5, 3, 1, 3]),
                                 lengths_test=np.array([5, 5])))
    huge = np.where(np.isnan(x), np.finfo(np.float64).max, x)  # float64 padding beyond float32's range
    train, _, _, _ = load_sequence_file(write(tmp_path, x_train=huge, lengths_train=np.array([5, 2, 1, 3]),
                                              lengths_test=np.array([5, 5])))
    assert torch.equal(train.x[1, :, 0], torch.tensor([2.0, 2, 0, 0, 0]))
    with pytest.raises(DataError, match=r"x_train holds 2 values beyond float32's range \(.*first in sequence 1\)"):
        load_sequence_file(write(tmp_path, x_train=huge, lengths_train=np.array([5, 3, 1, 3]),
                                 lengths_test=np.array([5, 5])))
    for arrays, message in (({"lengths_train": np.array([5, 2, 1, 3])}, "not its partner"),
                            ({"lengths_train": np.array([5, 6, 1, 3]), "lengths_test": np.array([1, 1])},
                             "between 1 and 5"),
                            ({"lengths_train": np.array([5, 0, 1, 3]), "lengths_test": np.array([1, 1])},
                             "from 0 to 5"),
                            ({"lengths_train": np.array([5, 2, 1]), "lengths_test": np.array([1, 1])},
                             r"must be \(4,\) integers")):
        with pytest.raises(DataError, match=message):
            load_sequence_file(write(tmp_path, **arrays))


def varying(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes of 1-feature series, 3 to 16 steps, padded to 16: rising or falling, with noise."""
    rng = np.random.default_rng(seed)
    y, lengths = rng.integers(0, 2, n), rng.integers(3, 17, n)
    x = np.zeros((n, 16), np.float32)
    for i in range(n):
        ramp = np.linspace(0, 1, lengths[i]) * (1 if y[i] else -1)
        x[i, : lengths[i]] = ramp + rng.normal(0, 0.2, lengths[i])
    return x, y, lengths


def test_train_and_predict_sequences_of_varying_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (x, y, lengths), (xt, yt, lt) = varying(500, 0), varying(200, 1)
    path = tmp_path / "varying.npz"
    np.savez(path, x_train=x, y_train=y, lengths_train=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={path}", "data.val_size=50",
                                           "model.cell=gru", "model.hidden=16", "train.epochs=8",
                                           "train.batch_size=25"])
    with pytest.raises(ConfigError, match="readout=all .* needs sequences of one length"):
        rnnlab.train(apply_overrides(config, ["model.readout=all"]), tmp_path / "all", progress=False)
    run = rnnlab.train(config, tmp_path / "run", progress=False)
    assert run.summary["test_accuracy"] > 90  # chance is 50% (100% seen here)

    trained = rnnlab.load(run.dir)
    assert trained.variable_lengths
    ragged = [xt[i, : lt[i]] for i in range(20)]  # a list of sequences of their own lengths
    predicted = [p["class"] for p in trained.predict(ragged)]
    one_by_one = [trained.predict(s)[0]["class"] for s in ragged]
    assert predicted == one_by_one
    assert np.mean(np.array(predicted) == yt[:20]) >= 0.85
    with pytest.raises(DataError, match="T = 1 to 16 steps"):
        trained.predict(np.zeros((2, 17), np.float32))
    # Step by step, each sequence read to its own end: after it, its probabilities stay those of predict.
    points, steps = trained.reading(ragged[:6])
    assert points == list(range(1, max(len(s) for s in ragged[:6]) + 1))
    torch.testing.assert_close(steps[:, -1], trained.probabilities(ragged[:6]))
    for i, sequence in enumerate(ragged[:6]):
        torch.testing.assert_close(steps[i, len(sequence) - 1], trained.probabilities(sequence)[0])
    torch.testing.assert_close(trained.step_probabilities(ragged[:6]), steps)
    assert trained.predict([np.array([0.5])])[0]["class"] in (0, 1)  # one step, one feature: shape (1,)
    torch.testing.assert_close(trained.probabilities(np.array([0.5])), trained.probabilities(np.array([[[0.5]]])))
    # gradients read the test sequences of full length only
    assert main(["gradients", "--run", str(run.dir), "--json"]) == 0
    flow = json.loads(capsys.readouterr().out)
    assert flow["samples"] == int((lt == 16).sum()) and len(flow["norms"][0][0]) == 16


def test_predict_takes_a_padded_array_with_its_lengths(tmp_path: Path, small_run: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (x, y, lengths), (xt, yt, lt) = varying(60, 0), varying(30, 1)
    np.savez(tmp_path / "v.npz", x_train=x, y_train=y, lengths_train=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    assert main(["train", "--data-file", str(tmp_path / "v.npz"), "--model", "gru", "--hidden", "8", "--iterations",
                 "5", "data.val_size=0", "train.device=cpu", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    trained = rnnlab.load(tmp_path / "run")
    padded = xt[:8, :, None].copy()  # (8, 16, 1)
    expected = trained.probabilities([xt[i, : lt[i]] for i in range(8)])  # each sequence alone, unpadded
    torch.testing.assert_close(trained.probabilities(padded, lt[:8]), expected)
    zeros = padded.copy()
    zeros[np.arange(16)[None, :] >= lt[:8, None]] = 0
    zeros[0] = 1.0  # one sequence of all 16 steps: the others end in padding
    with pytest.warns(UserWarning, match=r"trained on sequences of varying length, and some of these end in a step "
                                         r"of zeros, as padding does: without lengths each is read whole"):
        trained.probabilities(zeros)  # the lengths forgotten
    padded[np.arange(16)[None, :] >= lt[:8, None]] = np.nan  # padding may hold anything: it is never read
    for given in (lt[:8], lt[:8].astype(np.int32), lt[:8].tolist(), torch.from_numpy(lt[:8])):
        torch.testing.assert_close(trained.probabilities(padded, given), expected)
    assert [p["class"] for p in trained.predict(padded, lt[:8])] == expected.argmax(1).tolist()
    for bad, message in [(lt[:7], r"lengths must have shape \(N,\) = \(8,\), one per sequence; got \(7,\)"),
                         (np.full(8, 17), "each length must be from 1 to the padded length T = 16; got lengths from 17"),
                         (np.zeros(8, int), "got lengths from 0 to 0"),
                         (lt[:8].astype(float), r"lengths must be integers of shape \(N,\), one per sequence; got "
                                                r"float64 \(8,\)")]:
        with pytest.raises(DataError, match=message):
            trained.predict(padded, bad)
    with pytest.raises(DataError, match=r"^sequences\[1\]: sequences must have shape \(N, T, 1\) .*got \(0,\)$"):
        trained.predict([xt[0, :5], np.zeros(0)])  # which one of a list is at fault
    with pytest.raises(DataError, match=r"^lengths go with one padded array of sequences, \(N, T, F\); a list of "
                                        r"sequences of different lengths needs none: pass the list alone"):
        trained.predict([xt[0, :5], xt[1, :7]], [5, 7])  # before: numpy's "inhomogeneous shape after 1 dimensions"
    one_row_each = [xt[i: i + 1, : lt[i]] for i in range(3)]  # (1, T_i): one sequence of one feature, as (N, T)
    torch.testing.assert_close(trained.probabilities(one_row_each), expected[:3])
    with pytest.raises(DataError, match="this run was trained on sequences of one length; give the sequences "
                                        "without lengths"):
        rnnlab.load(small_run).predict(np.zeros((2, 12, 2), np.float32), [12, 12])

    # The command line: one --lengths per .npy of sequences
    np.save(tmp_path / "x.npy", padded)
    np.save(tmp_path / "l.npy", lt[:8])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "l.npy"),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([e["probabilities"] for e in printed], expected.numpy(), atol=1e-6)
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "x.npy"), str(tmp_path / "x.npy"),
                 "--lengths", str(tmp_path / "l.npy")]) == 2
    assert "give one --lengths per .npy of sequences, in the same order: 2 sequence files, 1 --lengths" in \
        capsys.readouterr().err
    assert main(["predict", str(small_run), str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "l.npy")]) == 2
    assert "this run's sequences all have one length: leave out --lengths" in capsys.readouterr().err
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = xt[0, :5], xt[1, :7]
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "ragged.npy")]) == 2
    assert capsys.readouterr().err.endswith("for safety; pad them to one length and save their lengths beside them "
                                            "for --lengths\n")


def test_one_step_sequences_of_one_feature_are_n_sequences(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, xt = rng.normal(0, 1, (100, 1)).astype(np.float32), rng.normal(0, 1, (30, 1)).astype(np.float32)  # (N, T=1)
    np.savez(tmp_path / "t1.npz", x_train=x, y_train=(x[:, 0] > 0).astype(int), x_test=xt,
             y_test=(xt[:, 0] > 0).astype(int))
    assert main(["train", "--data-file", str(tmp_path / "t1.npz"), "--hidden", "8", "--iterations", "2",
                 "data.val_size=0", "train.device=cpu", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    trained = rnnlab.load(tmp_path / "run")
    torch.testing.assert_close(trained.probabilities(xt), trained.probabilities(xt[:, :, None]))  # (30, 1): 30 of them
    assert len(trained.predict(xt)) == 30
    with pytest.raises(DataError, match=r"with T = 1 steps, as in the run's training file; got \(30,\)"):
        trained.predict(xt[:, 0])  # (T,) is one sequence, as for any run: here one of 30 steps


def test_the_summary_says_what_the_run_read(tmp_path: Path, seq_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data-file", str(seq_file), "--hidden", "8", "--iterations", "2", "data.val_size=100",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data              500 train / 100 val / 200 test, 12 steps x 2 features, 3 classes" in out
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert (data["source"], data["lengths"]) == (str(seq_file), None)
    assert data["class_names"] == ["rising", "falling", "bump"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_exported_model_of_varying_lengths_takes_them_as_a_second_input(tmp_path: Path, fmt: str,
                                                                        bidirectional: bool,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    from rnnlab.export import export_run, load_exported

    (x, y, lengths), (xt, yt, lt) = varying(200, 0), varying(100, 1)
    path = tmp_path / "varying.npz"
    np.savez(path, x_train=x, y_train=y, lengths_train=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={path}", "data.val_size=0",
                                           "model.cell=lstm", "model.hidden=8", "train.iterations=20",
                                           "train.batch_size=20", "model.readout=mean",
                                           f"model.bidirectional={str(bidirectional).lower()}"])
    run = rnnlab.train(config, tmp_path / "run", progress=False)
    capfd.readouterr()
    report = export_run(run.dir, fmt, tmp_path / f"m.{fmt}", samples=60)
    assert "Warning" not in capfd.readouterr().err  # torch's C++ shape-inference notes on packing are held back
    assert report.lengths_input and report.samples == 60 and report.max_abs_diff <= 1e-4
    assert report.prefix_max_abs_diff is not None and report.prefix_max_abs_diff <= 1e-4

    exported = load_exported(report.path, fmt)
    trained = rnnlab.load(run.dir)
    ragged = [xt[i, : lt[i]] for i in range(12)]
    expected = np.array([p["probabilities"] for p in trained.predict(ragged)])  # (12, 2)
    padded = np.zeros((12, 16, 1), np.float32)  # (N, T, F): padded with zeros, as in the file
    for i, sequence in enumerate(ragged):
        padded[i, : len(sequence), 0] = sequence
    logits = exported(padded, lt[:12].astype(np.int64))  # (12, 2)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(1, keepdims=True), expected, atol=1e-5)
    # the same sequence alone, unpadded, gives the same answer
    alone = exported(padded[:1, : lt[0]], lt[:1].astype(np.int64))
    np.testing.assert_allclose(alone, logits[:1], atol=1e-5)
    nan_padded = np.where(np.arange(16)[None, :, None] < lt[:12, None, None], padded, np.nan)  # never read
    np.testing.assert_array_equal(exported(nan_padded.astype(np.float32), lt[:12].astype(np.int64)), logits)
    # The runner refuses a length outside 1..T, or not one per sequence, in the same words for both formats
    for bad, message in (([0, 3], "from 1 to the padded length T = 16; got lengths from 0 to 3"),
                         ([17, 3], "got lengths from 3 to 17"), ([3], "lengths must have shape (N,) = (2,)")):
        with pytest.raises(ExportError, match=re.escape(message)):
            exported(padded[:2], np.array(bad, np.int64))
    if fmt == "torchscript":  # the file itself refuses them too, for callers of torch.jit.load
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own "deprecated" note
            module = torch.jit.load(str(report.path))
        for bad, message in (([0, 3], "got lengths from 0 to 3"), ([3], "lengths must have shape (N,) = (2,)")):
            with pytest.raises(torch.jit.Error, match=r"ValueError: .*" + re.escape(message)):  # raised in the script
                module(torch.from_numpy(padded[:2]), torch.tensor(bad))
    else:  # an ONNX graph cannot raise: such a sequence's logits are NaN, and the others are as they were
        import onnxruntime

        session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])

        def exported(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:  # the graph alone, no runner
            return session.run(["logits"], {"sequences": x, "lengths": lengths})[0]

        for bad in (0, -2, 17):
            out = exported(padded[:2], np.array([bad, lt[1]], np.int64))  # (2, C)
            assert np.isnan(out[0]).all() and np.allclose(out[1], logits[1], atol=1e-5), bad
        wider = np.zeros((2, 20, 1), np.float32)  # T is not fixed in the graph: 17 is valid at T = 20
        wider[:, :16] = padded[:2]
        out = exported(wider, np.array([17, lt[1]], np.int64))
        assert np.isfinite(out[0]).all() and np.allclose(out[1], logits[1], atol=1e-5)


# ------------------------------------------------------------------ eval on another file than the run's


@pytest.fixture
def small_run(tmp_path: Path, seq_file: Path) -> Path:
    """A run of 2 iterations on ``seq_file``: 3 classes, 12 steps x 2 features, one length."""
    run_dir = tmp_path / "small-run"
    assert main(["train", "--data-file", str(seq_file), "--hidden", "8", "--iterations", "2", "data.val_size=0",
                 "--out", str(run_dir), "--no-progress"]) == 0
    return run_dir


# ------------------------------------------------------------------ predict reads values as training read the file


def pixels_of(x: np.ndarray) -> np.ndarray:
    """``synthetic`` series as uint8 pixels, 0 and 255 both present (clipped)."""
    return np.clip(x * 120 + 128, 0, 255).astype(np.uint8)


@pytest.fixture
def uint8_run(tmp_path: Path) -> Path:
    """A run of 2 iterations on a uint8 file: 3 classes, 12 steps x 2 features."""
    (x_train, y_train), (x_test, y_test) = synthetic(60, 0), synthetic(20, 1)
    path = tmp_path / "pixels.npz"
    np.savez(path, x_train=pixels_of(x_train), y_train=y_train, x_test=pixels_of(x_test), y_test=y_test)
    run_dir = tmp_path / "uint8-run"
    assert main(["train", "--data-file", str(path), "--hidden", "8", "--iterations", "2", "data.val_size=0",
                 "--out", str(run_dir), "--no-progress"]) == 0
    return run_dir


def test_a_uint8_run_reads_integers_0_255_as_pixels_and_floats_in_0_1(tmp_path: Path, uint8_run: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trained = rnnlab.load(uint8_run)
    assert trained.meta["input"]["dtype"] == "uint8"
    pixels = pixels_of(synthetic(5, 2)[0])  # (5, 12, 2)
    assert pixels.min() == 0 and pixels.max() == 255
    expected = trained.predict(pixels)
    # The same pixels in any integer type, or as floats in [0, 1], give the same predictions.
    for given in (pixels.astype(np.int64), pixels.tolist(), pixels.astype(np.uint16), pixels.astype(np.uint64),
                  torch.from_numpy(pixels).long(), pixels / 255, pixels.astype(np.float32) / 255):
        assert trained.predict(given) == expected
    assert trained.predict(pixels[0].astype(np.int32)) == expected[:1]  # one (T, F) sequence
    with pytest.raises(DataError, match=r"trained on uint8 pixels \(0-255, read as value / 255\); integer sequences "
                                        r"must hold values 0-255, got 0 to 510; give pixels 0-255, or floats"):
        trained.predict(pixels.astype(np.int64) * 2)
    with pytest.raises(DataError, match="got -5 to 250"):
        trained.predict(pixels.astype(np.int16) - 5)
    float_pixels = (r"this run was trained on uint8 pixels, which it reads as value / 255 in \[0, 1\]; float "
                    r"sequences must be in \[0, 1\], got 0 to 255; pass the pixels as uint8 \(x.astype\(np.uint8\)\) "
                    r"or divide them by 255 \(x / 255\)")
    for given in (pixels.astype(np.float32), pixels.astype(np.float64)):
        with pytest.raises(DataError, match=float_pixels):
            trained.predict(given)
    with pytest.raises(DataError, match=r"got -0.5 to 0.5"):
        trained.predict(pixels / 255 - 0.5)
    with pytest.raises(DataError, match="NaN"):  # NaN is said as NaN, not as out of range
        trained.predict(np.full((12, 2), np.nan))

    # The command line reads a .npy the same way.
    files = {name: tmp_path / f"{name}.npy" for name in ("uint8", "int64", "unit", "floats255")}
    for name, array in zip(files, (pixels, pixels.astype(np.int64), pixels / 255, pixels.astype(np.float32))):
        np.save(files[name], array)
    capsys.readouterr()
    assert main(["predict", str(uint8_run), *(str(files[n]) for n in ("uint8", "int64", "unit")), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    for name in ("uint8", "int64", "unit"):
        got = [e["probabilities"] for e in entries if e["file"] == str(files[name])]
        assert got == [e["probabilities"] for e in expected], name
    assert main(["predict", str(uint8_run), str(files["floats255"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.fullmatch(f"rnnlab: error: {re.escape(str(files['floats255']))}: "
                                               f"{float_pixels}\n", captured.err)

    # A checkpoint from before meta["input"]["dtype"]: as before, uint8 are pixels, the rest values as they are.
    del trained.meta["input"]["dtype"]
    assert trained.predict(pixels) == expected
    as_values = trained.probabilities(pixels.astype(np.float32))  # 0-255, not refused
    torch.testing.assert_close(trained.probabilities(pixels.astype(np.int64)), as_values, rtol=0, atol=0)
    assert not torch.equal(as_values, trained.probabilities(pixels))


def test_a_float_run_reads_integers_as_values_and_refuses_uint8(small_run: Path) -> None:
    trained = rnnlab.load(small_run)
    assert trained.meta["input"]["dtype"] == "float32"
    counts = np.random.default_rng(0).integers(-3, 300, (4, 12, 2))  # integers: values as they are, not pixels
    assert trained.predict(counts) == trained.predict(counts.astype(np.float32))
    floats = synthetic(4, 2)[0] * 100  # far outside [0, 1], as the file's were: not refused
    assert len(trained.predict(floats)) == 4
    with pytest.raises(DataError, match=r"trained on a file of float values.*pass x.astype\(np.float32\)"):
        trained.predict(pixels_of(floats))
    with warnings.catch_warnings():  # numpy's own overflow warning stays inside: the error names it
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"^sequences hold values beyond float32's range \(±3\.4e\+38, up to "
                                            r"1e\+300\), which rnnlab computes in"):
            trained.predict(np.where(floats > 0, 1e300, floats.astype(np.float64)))
    sequence_file = Path(trained.config.data.file)
    sequence_file.rename(sequence_file.with_suffix(".gone"))  # a run folder shared without its data
    with pytest.raises(DataError, match=r"^checking the export needs the run's test sequences: .*: no such sequence "
                                        r"file; .*; without them, check=False exports unchecked$"):
        export_run(small_run, "torchscript", small_run / "m.pt")
    assert export_run(small_run, "torchscript", small_run / "m.pt", check=False).samples == 0


def test_eval_refuses_a_file_that_does_not_fit_the_run(tmp_path: Path, small_run: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (x_train, y_train), (x_test, y_test) = synthetic(40, 0), synthetic(30, 1)
    cases = [  # (changed test split, what eval says)
        ({"y_test": np.where(np.arange(30) == 5, 4, y_test)},
         "y_test holds label 4, but the run was trained on 3 classes (0 .. 2); evaluate it on a file with the "
         "run's classes"),
        ({"x_test": np.pad(x_test, ((0, 0), (0, 2), (0, 0))), "x_train": np.pad(x_train, ((0, 0), (0, 2), (0, 0)))},
         "x_test has 14 steps but the run was trained on sequences of 12 steps (one length); give it "
         "(N, 12, 2) sequences like its training file"),
        ({"x_test": x_test[:, :, :1], "x_train": x_train[:, :, :1]},
         "x_test has 1 feature per step but the run was trained on 2; evaluate it on a file of (N, T, 2) sequences "
         "like its training file"),
        ({"lengths_train": np.full(40, 12), "lengths_test": np.where(np.arange(30) == 3, 7, 12)},
         "lengths_test holds lengths from 7, but the run was trained on sequences of one length (12 steps); "
         "give it full-length sequences"),
        ({"x_test": pixels_of(x_test), "x_train": pixels_of(x_train)},  # before: scored, on the wrong scale
         "x_test holds uint8 values, but the run was trained on float32 ones (read as they are); evaluate it on "
         "a file of float32 sequences like its training file"),
    ]
    for i, (changed, message) in enumerate(cases):
        path = tmp_path / f"other{i}.npz"
        np.savez(path, **({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test} | changed))
        capsys.readouterr()
        assert main(["eval", str(small_run), "--data-dir", str(path), "--no-plot"]) == 2, message
        assert capsys.readouterr().err == f"rnnlab: error: {path}: {message}\n"
    path = tmp_path / "fits.npz"  # another file of the same shapes and classes is evaluated
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert main(["eval", str(small_run), "--data-dir", str(path), "--no-plot"]) == 0
    assert "on 30 sequences" in capsys.readouterr().out


def test_eval_of_a_uint8_run_on_a_file_of_other_integers_names_no_type_the_file_lacks(
        tmp_path: Path, uint8_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (x_train, y_train), (x_test, y_test) = synthetic(40, 0), synthetic(30, 1)
    path = tmp_path / "int32.npz"  # pixels 0-255 as int32, which training reads as values, not pixels
    np.savez(path, x_train=pixels_of(x_train).astype(np.int32), y_train=y_train,
             x_test=pixels_of(x_test).astype(np.int32), y_test=y_test)
    capsys.readouterr()
    assert main(["eval", str(uint8_run), "--data-dir", str(path), "--no-plot"]) == 2
    assert capsys.readouterr().err == (  # before: "x_test holds float32 values", of a file of int32
        f"rnnlab: error: {path}: x_test holds values that are not uint8 (read as they are), but the run was trained "
        "on uint8 ones (0-255, read as value / 255); evaluate it on a file of uint8 sequences like its training file\n")


def test_eval_of_a_run_of_varying_lengths_takes_at_most_its_steps(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (x, y, lengths), (xt, yt, lt) = varying(60, 0), varying(30, 1)  # padded to 16 steps
    path = tmp_path / "varying.npz"
    np.savez(path, x_train=x, y_train=y, lengths_train=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    assert main(["train", "--data-file", str(path), "--hidden", "8", "--iterations", "2", "data.val_size=0",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    shorter = tmp_path / "shorter.npz"  # as predict: 1 to 16 steps
    np.savez(shorter, x_train=x[:, :10], y_train=y, lengths_train=np.minimum(lengths, 10), x_test=xt[:, :10],
             y_test=yt, lengths_test=np.minimum(lt, 10))
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(shorter), "--no-plot"]) == 0
    longer = tmp_path / "longer.npz"
    np.savez(longer, x_train=np.pad(x, ((0, 0), (0, 4))), y_train=y, lengths_train=lengths,
             x_test=np.pad(xt, ((0, 0), (0, 4))), y_test=yt, lengths_test=lt)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(longer), "--no-plot"]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: {longer}: x_test is padded to 20 steps but the run was "
                                       "trained on sequences of 1 to 16 steps; give it sequences of at most 16 "
                                       "steps (padded to at most 16)\n")


def test_serve_refuses_a_sequence_file_run_before_it_listens(small_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from rnnlab.cli import serve

    def no_server(*args: object) -> None:
        raise AssertionError("the refusal must come before a server is started")

    monkeypatch.setattr(serve, "listen_socket", no_server)
    assert main(["serve", str(small_run), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"rnnlab: error: {small_run} was trained on sequences from a file; `rnnlab serve` draws digit images. "
        "Classify sequences with `rnnlab predict RUN_DIR seqs.npy` or rnnlab.load(RUN_DIR).predict(sequences)\n")


def test_inspect_refuses_the_all_readout_for_varying_lengths_as_training_does(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    x = np.ones((4, 5, 2), np.float32)
    path = write(tmp_path, x_train=x, lengths_train=np.array([5, 2, 1, 3]), lengths_test=np.array([5, 5]))
    assert main(["inspect", "--data-file", str(path), "model.readout=all"]) == 2
    assert "model.readout=all reads every step" in capsys.readouterr().err
    assert main(["inspect", "--data-file", str(path), "model.readout=mean"]) == 0


def test_eval_json_is_strict_json_when_a_class_has_no_test_samples(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (x_train, y_train), (x_test, y_test) = synthetic(200, 0), synthetic(60, 1)
    path = tmp_path / "four.npz"  # a fourth class that no sequence has
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=np.array(4))
    assert main(["train", "--data-file", str(path), "--hidden", "8", "--iterations", "2", "data.val_size=0",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json", "--no-plot"]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert len(report["per_class_accuracy"]) == 4 and report["per_class_accuracy"][3] is None
    assert all(isinstance(a, float) for a in report["per_class_accuracy"][:3])
    assert main(["eval", str(tmp_path / "run"), "--no-plot"]) == 0
    assert "  3:    n/a (no test samples)" in capsys.readouterr().out


def test_samples_per_second_counts_the_partial_last_batch_of_each_epoch(tmp_path: Path) -> None:
    (x_train, y_train), (x_test, y_test) = synthetic(100, 0), synthetic(20, 1)
    path = tmp_path / "small.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    config = apply_overrides(RunConfig(), ["train.device=cpu", "data.dataset=file", f"data.file={path}", "data.val_size=0",
                                           "model.hidden=8", "train.batch_size=32", "train.epochs=2",
                                           "train.eval_every=3", "train.checkpoint_every=3"])
    run = rnnlab.train(config, tmp_path / "run", progress=False)  # 4 batches an epoch: 32, 32, 32, 4
    assert run.summary["iterations"] == 8 and run.summary["samples"] == 200  # not 8 x 32 = 256
    seconds = run.summary["train_seconds"]  # rounded to 1 ms, and samples/s to 0.1
    assert 200 / (seconds + 5e-4) - 0.05 <= run.summary["samples_per_second"] <= 200 / max(seconds - 5e-4, 1e-9) + 0.05
    part = rnnlab.train(config, tmp_path / "part", progress=False, stop_after=5)  # after 3 + 1 + 1 batches
    assert part.summary["samples"] == 132
    assert rnnlab.resume(part.dir, progress=False).summary["samples"] == 200


def test_no_sequences_and_the_repr_of_a_loaded_run(small_run: Path) -> None:
    trained = rnnlab.load(small_run)
    for empty in ([], ()):
        with pytest.raises(DataError, match=r"^no sequences given \(an empty (list|tuple)\); pass at least one$"):
            trained.predict(empty)
    assert repr(trained) == f"TrainedModel({str(small_run)!r}, {trained.config.label}, 3 classes from sequences, on cpu)"


def test_ragged_sequences_are_pointed_to_the_ways_that_take_them(small_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((12, 2)), np.zeros((5, 2))
    with pytest.raises(DataError, match=r"got Python objects \(object\) \(sequences of different lengths: pass "
                                        r"them as a list\)"):
        rnnlab.load(small_run).predict(ragged)
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    assert main(["predict", str(small_run), str(tmp_path / "ragged.npy")]) == 2
    assert capsys.readouterr().err == (  # before: pointed to --lengths, which a run of one length refuses
        f"rnnlab: error: {tmp_path / 'ragged.npy'}: an array of Python objects (sequences of different lengths?), "
        "which is not read, for safety; this run was trained on sequences of one length, so give it sequences of "
        "that length, as one array: save sequences with np.save(path, x), x of shape (N, 12, 2) or one (12, 2)\n")
