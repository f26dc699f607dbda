"""Damaged run folders and odd sequences give one clear error line, never a traceback."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.cli import main
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.errors import CheckpointError, DataError

pytest_plugins = ["_fixtures_runs"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run_dir(untrained_run: Callable[..., Path]) -> Path:
    """A run folder (untrained LSTM, hidden 8) whose checkpoint.json also has the "input" entry training writes."""
    path = untrained_run(["model.hidden=8"])
    edit_meta(path, lambda meta: meta.update(input={"steps": 28, "features": 28, "classes": 10,
                                                    "variable_lengths": False, "class_names": None}))
    return path


def edit_meta(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads((path / ckpt.CHECKPOINT_JSON).read_text())
    change(meta)
    (path / ckpt.CHECKPOINT_JSON).write_text(json.dumps(meta))


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI in this process; it must fail with exit status 2 and one ``rnnlab: error:`` line."""
    assert main(list(args)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnlab: error: "), lines
    return lines[0]


@pytest.mark.parametrize("command", [["eval", "RUN"], ["predict", "RUN", "RUN/config.toml"],
                                     ["export", "--format", "torchscript", "RUN"], ["gradients", "--run", "RUN"],
                                     ["serve", "RUN"]])
def test_an_empty_checkpoint_is_a_corrupt_checkpoint(run_dir: Path, command: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / ckpt.CHECKPOINT_PT).write_bytes(b"")
    line = cli_error(capsys, *(arg.replace("RUN", str(run_dir)) for arg in command))  # loading fails first
    assert line == (f"rnnlab: error: {run_dir / ckpt.CHECKPOINT_PT} is empty (a save or a copy cut short): the "
                    "checkpoint is corrupt; restore it from a copy or train the run again")


def test_an_empty_checkpoint_cannot_be_resumed_so_compare_retrains(run_dir: Path) -> None:
    edit_meta(run_dir, lambda meta: meta.update(train_seconds=1.0, running={}))  # as training writes it
    (run_dir / ckpt.CHECKPOINT_PT).write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint.pt is empty"):  # compare catches this and retrains
        rnnlab.resume(run_dir, progress=False)


def test_a_truncated_checkpoint_says_so_in_whole_sentences(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cut short anywhere, the file is called truncated and what to do is said; of torch's paragraph
    (cut mid-sentence before) its first sentence, and not its bare errno ([Errno 22] Invalid argument)."""
    pt = run_dir / ckpt.CHECKPOINT_PT
    whole = pt.read_bytes()
    cut = f"{pt} is truncated (cut short: the end of the archive is missing, as after a copy or a save that stopped"
    after = "): the checkpoint is corrupt; restore it from a copy or train the run again"
    pt.write_bytes(whole[:100])
    assert cli_error(capsys, "eval", str(run_dir)) == (
        f"rnnlab: error: {cut}; torch says: PytorchStreamReader failed reading zip archive: failed finding central "
        f"directory{after}")
    for size in (10, len(whole) // 2, len(whole) - 10):
        pt.write_bytes(whole[:size])
        with pytest.raises(CheckpointError) as refused:
            rnnlab.load(run_dir)
        assert str(refused.value).startswith(cut) and str(refused.value).endswith(after)
        assert "If you are seeing" not in str(refused.value) and "Errno" not in str(refused.value)
    damaged = bytearray(whole)  # a byte of the pickle flipped: torch cannot read it, and its CRC no longer matches
    damaged[data_offset(whole, "data.pkl") + 40] ^= 0xFF
    pt.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(pt))} is damaged \(its entry \S+ fails its "
                                              rf"checksum(; torch says: [^;]+)?\): the checkpoint is corrupt; "):
        rnnlab.load(run_dir)
    pt.write_bytes(b"not a zip archive")  # whole, but not torch.save's: as before
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely \(\w+.*\); the file is corrupt or was not "
                                              r"written by rnnlab"):
        rnnlab.load(run_dir)
    assert ckpt.error_line(EOFError()) == "EOFError"
    assert ckpt.first_sentence(EOFError()) is None
    assert ckpt.first_sentence(RuntimeError("A failed: x.y. This is why. More.")) == "A failed: x.y"
    assert ckpt.error_line(RuntimeError("\n  \nsecond line")) == "RuntimeError: second line"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda meta: meta.pop("config"), "missing 'config'"),
    (lambda meta: meta.update(config=[1, 2]), "'config' is not a table of settings"),
    (lambda meta: meta.update(input={"steps": 28}), "missing 'input.features'"),
    (lambda meta: meta.update(input={"steps": 28, "features": "28", "classes": 10}),
     "'input.features' is '28', a positive integer was expected"),
    (lambda meta: meta["input"].update(class_names=["a"]), "'input.class_names' must be null or 10 strings"),
    (lambda meta: meta["input"].update(dtype="int8"), "'input.dtype' is not uint8 or float32"),
    (lambda meta: meta.update(iteration="3"), "'iteration' is str"),
    (lambda meta: meta.pop("schema_version"), "missing 'schema_version'"),
])
def test_damaged_metadata_names_the_key(run_dir: Path, change: Callable, problem: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    edit_meta(run_dir, change)
    line = cli_error(capsys, "eval", str(run_dir))
    assert f"{run_dir / ckpt.CHECKPOINT_JSON}: corrupt checkpoint metadata ({problem}" in line, line
    assert "restore it from a copy or train the run again" in line


def test_metadata_that_is_not_an_object(run_dir: Path) -> None:
    (run_dir / ckpt.CHECKPOINT_JSON).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint metadata \(a JSON object was expected, got list"):
        rnnlab.load(run_dir)


def test_resume_needs_the_training_state(run_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="missing 'train_seconds', which resuming needs"):
        rnnlab.resume(run_dir, progress=False)


@pytest.mark.parametrize(("model", "held"), [("x", "a str"), ({"rnn.weight_ih_l0": [1.0]}, "a dict holding other")])
def test_a_model_entry_that_is_not_a_state_dict(run_dir: Path, model: Any, held: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"model": model}, run_dir / ckpt.CHECKPOINT_PT)
    line = cli_error(capsys, "eval", str(run_dir))
    assert f"{run_dir / ckpt.CHECKPOINT_PT}: not an rnnlab checkpoint (its 'model' entry is {held}" in line
    assert "a dict of tensors, a state_dict, was expected" in line


def test_a_permutation_that_is_not_one(run_dir: Path) -> None:
    tensors = torch.load(run_dir / ckpt.CHECKPOINT_PT, weights_only=True)
    torch.save({**tensors, "permutation": torch.zeros(784, dtype=torch.long)}, run_dir / ckpt.CHECKPOINT_PT)
    with pytest.raises(CheckpointError, match="'permutation' is not a permutation"):
        rnnlab.load(run_dir)


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("hidden", 32, "rnn.weight_ih_l0 is (32, 28) in the checkpoint but (128, 28) for this config (and 4 more"),
    ("cell", "gru", "rnn.weight_ih_l0 is (32, 28) in the checkpoint but (24, 28) for this config (and 3 more"),
    ("layers", 2, "missing from the checkpoint: rnn.weight_ih_l1, rnn.weight_hh_l1, rnn.bias_ih_l1 ..."),
])
def test_a_config_that_does_not_fit_the_weights_names_the_tensors(run_dir: Path, setting: str, value: Any,
                                                                  named: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    edit_meta(run_dir, lambda meta: meta["config"]["model"].update({setting: value}))
    line = cli_error(capsys, "eval", str(run_dir))
    assert f"{run_dir / ckpt.CHECKPOINT_JSON}: the config's model does not match the checkpoint's weights" in line
    assert named in line and "back to those the run was trained with" in line, line


def test_weights_from_a_different_model_are_unexpected(run_dir: Path) -> None:
    tensors = torch.load(run_dir / ckpt.CHECKPOINT_PT, weights_only=True)
    tensors["model"]["extra.weight"] = torch.zeros(2)
    torch.save(tensors, run_dir / ckpt.CHECKPOINT_PT)
    with pytest.raises(CheckpointError, match=r"not in this config's model: extra\.weight\)"):
        rnnlab.load(run_dir)


@pytest.mark.parametrize("message", ["loss became nan at iteration 1 (lr=1e+08); lower the learning rate", None])
def test_a_run_that_diverged_before_its_first_checkpoint(run_dir: Path, message: str | None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for name in (ckpt.CHECKPOINT_PT, ckpt.CHECKPOINT_JSON):
        (run_dir / name).unlink()
    summary = {"status": "diverged"} | ({"message": message} if message else {})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    line = cli_error(capsys, "eval", str(run_dir))
    assert f"{run_dir}: no weights to load: the run diverged before its first checkpoint; " in line
    assert (message or "train it again with a lower learning rate (train.lr) or clipped gradients") in line
    assert "is this a run folder" not in line


def test_a_corrupt_summary_is_a_user_error(run_dir: Path) -> None:
    (run_dir / "summary.json").write_text("{")
    with pytest.raises(CheckpointError, match="summary.json: corrupt run summary"):
        rnnlab.read_run(run_dir)


def test_a_run_without_a_summary_is_running_only_while_a_process_trains_there(run_dir: Path) -> None:
    import threading

    from rnnlab.locks import exclusive

    assert not (run_dir / "summary.json").exists()  # as a run killed before its end leaves it
    assert rnnlab.read_run(run_dir).status == "unfinished"
    held, done = threading.Event(), threading.Event()

    def hold() -> None:  # what a training process holds (another thread: the holder's own may take it again)
        with exclusive(run_dir, "busy"):
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10) and rnnlab.read_run(run_dir).status == "running"
    finally:
        done.set()
        holder.join()


# ------------------------------------------------------------------ a run trained on a sequence file
@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on an int8 sequence file: 6 steps of 3 features, 3 classes."""
    root = tmp_path_factory.mktemp("int8-run")
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 5, (50, 6, 3)).astype(np.int8)
    y = rng.integers(0, 3, 50)
    np.savez(root / "data.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={root / 'data.npz'}",
                                           "data.val_size=0", "model.hidden=8", "train.iterations=2",
                                           "train.threads=1"])
    return rnnlab.train(config, root / "run", progress=False).dir


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.uint32])
def test_integer_sequences_are_read_as_training_reads_them(int8_run: Path, dtype: type) -> None:
    trained = rnnlab.load(int8_run)
    x = np.arange(-9, 9).reshape(1, 6, 3)
    x = x - x.min() if np.issubdtype(dtype, np.unsignedinteger) else x
    got, lengths = trained.sequences_in(x.astype(dtype))
    assert lengths is None and got.dtype == torch.float32 and torch.equal(got, torch.tensor(x, dtype=torch.float32))


def test_predict_takes_int8_sequences_and_refuses_no_sequences(int8_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "int8.npy", np.ones((2, 6, 3), np.int8))
    assert main(["predict", str(int8_run), str(tmp_path / "int8.npy")]) == 0
    assert capsys.readouterr().out.count("int8.npy[") == 2
    np.save(tmp_path / "empty.npy", np.zeros((0, 6, 3), np.float32))
    line = cli_error(capsys, "predict", str(int8_run), str(tmp_path / "empty.npy"))
    assert "no sequences in the input (shape (0, 6, 3)); give at least one sequence" in line
    with pytest.raises(DataError, match=r"must hold numbers .* got bool"):
        rnnlab.load(int8_run).sequences_in(np.zeros((1, 6, 3), bool))



def test_a_file_given_as_the_run_folder_is_named_a_file(tmp_path: Path) -> None:
    not_a_run = tmp_path / "model.pt"
    not_a_run.write_bytes(b"weights")
    with pytest.raises(CheckpointError, match=r"model.pt is a file, not a run folder.*checkpoint.pt"):
        ckpt.load_checkpoint(not_a_run)


@pytest.mark.parametrize("command", [["eval", "RUN", "--no-plot"], ["predict", "RUN", "IMAGE", "--json"],
                                     ["export", "--format", "torchscript", "RUN", "--out", "RUN/m.pt"]])
def test_an_unreadable_checkpoint_json_is_stood_in_for_by_the_pts_own_copy(
        run_dir: Path, command: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """checkpoint.pt carries its metadata (README): read-only commands go by it, with a warning, where
    garbled bytes make checkpoint.json unreadable; JSON that parses but says wrong things stays refused."""
    from PIL import Image, ImageDraw

    image = tmp_path / "one.png"
    drawn = Image.new("L", (28, 28))
    ImageDraw.Draw(drawn).line([(14, 4), (14, 24)], fill=255, width=3)
    drawn.save(image)
    js = run_dir / ckpt.CHECKPOINT_JSON
    js.write_text('{"schema_version": 1, "con')  # cut short
    with pytest.warns(RuntimeWarning) as warned:  # the command line prints it as "rnnlab: warning: ..."
        assert main([arg.replace("RUN", str(run_dir)).replace("IMAGE", str(image)) for arg in command]) == 0
    said = [str(w.message) for w in warned if "unreadable" in str(w.message)]
    assert said == [f"{js} is unreadable (Unterminated string starting at: line 1 column 23 (char 22)); going by the "
                    f"copy of its metadata that {run_dir / ckpt.CHECKPOINT_PT} carries (iteration 0)"], said


def data_offset(archive_bytes: bytes, name_part: str) -> int:
    """Where the bytes of the first zip entry whose name holds ``name_part`` begin (past torch's padding,
    which is in the local header's extra field, not the central directory's)."""
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        info = next(info for info in archive.infolist() if name_part in info.filename)
    start = info.header_offset
    name_length, extra_length = int.from_bytes(archive_bytes[start + 26:start + 28], "little"), int.from_bytes(
        archive_bytes[start + 28:start + 30], "little")
    return start + 30 + name_length + extra_length


def test_the_pts_copy_stands_in_only_where_it_is_whole(run_dir: Path) -> None:
    js, pt = run_dir / ckpt.CHECKPOINT_JSON, run_dir / ckpt.CHECKPOINT_PT
    js.write_bytes(b"\xff\xfe garbled")  # not UTF-8
    with pytest.warns(RuntimeWarning, match="checkpoint.json is unreadable"):
        assert rnnlab.load(run_dir).config.model.hidden == 8
    tensors = torch.load(pt, weights_only=True)
    torch.save({key: value for key, value in tensors.items() if key != "meta_json"}, pt)  # a .pt without its copy
    with pytest.raises(CheckpointError, match=r"checkpoint.json: corrupt checkpoint metadata \(.*\); restore it"):
        rnnlab.load(run_dir)
    torch.save(tensors, pt)
    whole = pt.read_bytes()
    damaged = bytearray(whole)  # a byte of a tensor flipped: torch.load takes it as it is
    damaged[data_offset(whole, "/data/")] ^= 0xFF
    pt.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: corrupt checkpoint metadata"):
        rnnlab.load(run_dir)


def test_a_flipped_byte_in_a_weight_is_a_damaged_checkpoint_not_a_wrong_weight(run_dir: Path) -> None:
    """torch.load takes a tensor's bytes as they are; the archive's checksums tell (found by QA)."""
    pt = run_dir / ckpt.CHECKPOINT_PT
    damaged = bytearray(whole := pt.read_bytes())
    damaged[data_offset(whole, "/data/")] ^= 0xFF
    pt.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is damaged \(its entry .*/data/.* fails its checksum\): "
                                              r"the checkpoint is corrupt; restore it"):
        rnnlab.load(run_dir)


def test_json_nested_past_pythons_stack_is_unreadable_metadata_not_a_traceback(run_dir: Path) -> None:
    """json.loads raises RecursionError, not a ValueError, on a crafted '[[[[...' (found by review)."""
    (run_dir / ckpt.CHECKPOINT_JSON).write_text("[" * 100_000)
    with pytest.warns(RuntimeWarning, match="checkpoint.json is unreadable"):
        assert rnnlab.load(run_dir).config.model.hidden == 8


def test_a_resume_goes_by_the_pts_copy_and_writes_checkpoint_json_anew(tmp_path: Path) -> None:
    config = apply_overrides(RunConfig(), ["train.device=cpu", "model.hidden=8", "train.batch_size=50",
                                           "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3",
                                           "data.val_size=40", "train.threads=1"])
    part = rnnlab.train(config, tmp_path / "run", progress=False, stop_after=3)
    js = part.dir / ckpt.CHECKPOINT_JSON
    js.write_text('{"schema_version": 1, "iter')
    with pytest.warns(RuntimeWarning) as warned:
        resumed = rnnlab.resume(part.dir, progress=False)
    said = [str(w.message) for w in warned if "unreadable" in str(w.message)]
    assert said == [f"{js} is unreadable (Unterminated string starting at: line 1 column 23 (char 22)); going by the "
                    f"copy of its metadata that {part.dir / ckpt.CHECKPOINT_PT} carries (iteration 3); the resume's "
                    "next save writes it anew"]
    assert resumed.status == "completed" and json.loads(js.read_text())["iteration"] == 6


@pytest.mark.parametrize("command", [["eval", "DIR"], ["predict", "DIR", "DIR/x.png"],
                                     ["export", "--format", "torchscript", "DIR"], ["gradients", "--run", "DIR"],
                                     ["serve", "DIR"], ["train", "--resume", "DIR"]])
def test_a_compare_folder_or_a_folder_of_runs_names_runs_to_give(run_dir: Path, command: list[str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that loads a run says what it was given instead (one loader: the same words), and
    names one or two of the runs inside (the first seed of each entry of a compare)."""
    import shutil

    cmp = tmp_path / "cmp1"
    for entry in ("dlw-rnn-a", "dlw-rnn-a-plus"):
        for seed in ("seed1", "seed0"):
            shutil.copytree(run_dir, cmp / "runs" / entry / seed)
    (cmp / "compare.json").write_text("{}")
    line = cli_error(capsys, *(arg.replace("DIR", str(cmp)) for arg in command))
    assert line == (f"rnnlab: error: {cmp} is a compare folder, not a run folder: give one of its runs, e.g. "
                    f"{cmp / 'runs/dlw-rnn-a/seed0'} or {cmp / 'runs/dlw-rnn-a-plus/seed0'} (`rnnlab report {cmp}` "
                    "tabulates them all)")
    runs = cmp / "runs"
    line = cli_error(capsys, *(arg.replace("DIR", str(runs / "dlw-rnn-a")) for arg in command))
    assert line == (f"rnnlab: error: {runs / 'dlw-rnn-a'} holds run folders, not a run's checkpoint: give one of "
                    f"them, e.g. {runs / 'dlw-rnn-a/seed0'} or {runs / 'dlw-rnn-a/seed1'}")
    started = tmp_path / "started"  # a compare whose runs have not saved yet
    (started / "runs/dlw-rnn-a/seed0").mkdir(parents=True)
    assert "none of its runs has a checkpoint yet" in cli_error(
        capsys, *(arg.replace("DIR", str(started)) for arg in command))
    assert "no checkpoint here (expected checkpoint.pt" in cli_error(
        capsys, *(arg.replace("DIR", str(started / "runs/dlw-rnn-a/seed0")) for arg in command))


def test_a_checkpoint_holding_a_numpy_value_says_so_and_how_to_go_on(run_dir: Path) -> None:
    """rnnlab before 2026-12-02 kept a setting given as a NumPy number, which the optimizer's state
    pickled: the archive is whole, and it is not corrupt, but a safe load refuses NumPy objects."""
    pt = run_dir / ckpt.CHECKPOINT_PT
    tensors = torch.load(pt, weights_only=True)
    tensors["lr_as_given"] = np.float64(0.01)
    torch.save(tensors, pt)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: holds a NumPy value \(numpy\S*scalar\), which rnnlab "
                                              r"does not load .*; train the run again") as refused:
        rnnlab.load(run_dir)
    assert "corrupt" not in str(refused.value)
