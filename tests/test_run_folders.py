"""Run folders as users handle them: resumed after the data moved, trained by one process at a time,
kept apart from compare folders, and resumed through a damaged summary or a mismatched checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.cli import main
from rnnlab.config import DataConfig, RunConfig, apply_overrides, load_toml
from rnnlab.errors import CheckpointError, ConfigError, DataError

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.cell=gru", "model.hidden=8", "train.batch_size=50", "train.iterations=20", "train.eval_every=10",
        "train.checkpoint_every=5", "train.threads=1"]


def sequence_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = (rng.normal(0, 1, (300, 6, 2)) + y[:, None, None]).astype(np.float32)  # (N, T, F): class shifts the mean
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    return path


def interrupted(tmp_path: Path, *extra: str) -> rnnlab.Run:
    config = apply_overrides(RunConfig(), TINY + ["data.val_size=40", *extra])
    return rnnlab.train(config, tmp_path / "run", progress=False, stop_after=10)


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    return capsys.readouterr().err


def test_a_run_resumes_from_its_moved_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--data-dir is where the data is now, not a setting: --resume takes it (a sequence file's new
    path), and config.toml records the new place; an edit of config.toml's data location is honoured too."""
    data = sequence_file(tmp_path / "series.npz")
    part = interrupted(tmp_path, "data.dataset=file", f"data.file={data}")
    moved = data.rename(tmp_path / "moved.npz")
    assert main(["train", "--resume", str(part.dir)]) == 2
    assert "series.npz" in capsys.readouterr().err  # names the file it looked for
    assert main(["train", "--resume", str(part.dir), "--data-dir", str(moved), "--no-progress"]) == 0
    assert load_toml(part.dir / "config.toml").data.file == str(moved)
    summary = json.loads((part.dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 20

    again = interrupted(tmp_path / "2", "data.dataset=file", f"data.file={moved}")
    moved.rename(data)
    config_toml = again.dir / "config.toml"
    config_toml.write_text(config_toml.read_text().replace(str(moved), str(data)))  # moved by hand
    assert rnnlab.resume(again.dir, progress=False).status == "completed"


def test_resume_refuses_flags_it_would_ignore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = interrupted(tmp_path)
    before = (part.dir / ckpt.CHECKPOINT_JSON).read_bytes()
    assert "drop --dry-run" in cli_error(capsys, "train", "--resume", str(part.dir), "--dry-run")
    assert "drop --out" in cli_error(capsys, "train", "--resume", str(part.dir), "--out", str(tmp_path / "x"))
    assert "drop the other settings (--hidden" in cli_error(capsys, "train", "--resume", str(part.dir), "--hidden", "9")
    assert (part.dir / ckpt.CHECKPOINT_JSON).read_bytes() == before and not (tmp_path / "x").exists()


def test_data_locations_are_saved_absolute_and_only_where_they_apply(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DataConfig(data_dir="idx").data_dir == str(tmp_path / "idx")  # found again from another folder
    with pytest.raises(ConfigError, match=r"a sequence file is read from data.file alone: drop data.data_dir"):
        apply_overrides(RunConfig(), ["data.dataset=file", "data.file=x.npz", "data.data_dir=idx"])
    # A run folder that an earlier version saved with both still loads: the folder meant nothing to it.
    assert DataConfig(dataset="file", file="x.npz", data_dir="idx").data_dir == ""
    with pytest.raises(ConfigError, match="out is empty; give a folder path"):
        rnnlab.train(RunConfig(), out="", progress=False)  # an unset $OUTDIR: not the current folder


def test_one_process_at_a_time_trains_a_run_folder(tmp_path: Path) -> None:
    """A resume of a run that is still training would interleave its metrics and overwrite its
    checkpoint: the second process is refused while the first holds the folder's lock."""
    fcntl = pytest.importorskip("fcntl")
    part = interrupted(tmp_path)
    fd = os.open(part.dir / ".rnnlab.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the training process holds it
        with pytest.raises(ConfigError) as busy:
            rnnlab.resume(part.dir, progress=False)
        # A resume has no folder to choose: it is told to wait, or stop the other and resume then
        assert str(busy.value) == (f"another rnnlab process is training {part.dir}; wait for it to finish, or stop "
                                   "it (Ctrl-C or SIGTERM save it) and resume it then")
    finally:
        os.close(fd)
    assert rnnlab.resume(part.dir, progress=False).status == "completed"  # released: it goes on


def test_a_run_that_fails_to_start_leaves_no_folder(tmp_path: Path) -> None:
    config = apply_overrides(RunConfig(), TINY + ["data.dataset=file", f"data.file={tmp_path / 'missing.npz'}"])
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'missing.npz'))}: no such sequence file; "
                                        "check data.file"):
        rnnlab.train(config, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_run_and_compare_folders_are_kept_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = interrupted(tmp_path)
    assert "is a run folder" in cli_error(capsys, "compare", "dlw-rnn-a", "--seeds", "1", "--out", str(part.dir))
    compare_dir = tmp_path / "cmp"
    compare_dir.mkdir()
    (compare_dir / "compare.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a compare"):
        rnnlab.train(RunConfig(), out=compare_dir, progress=False)


def test_a_damaged_summary_does_not_block_a_resume(tmp_path: Path) -> None:
    """The checkpoint is whole: the resume goes on by it, says so, and writes a new summary."""
    part = interrupted(tmp_path)
    (part.dir / "summary.json").write_text("{bad")
    with pytest.warns(RuntimeWarning, match=r"summary.json is unreadable .*resuming by the checkpoint, at iteration 10 of 20"):
        resumed = rnnlab.resume(part.dir, progress=False)
    assert resumed.status == "completed" and json.loads((part.dir / "summary.json").read_text())["iterations"] == 20


def test_a_checkpoint_of_another_run_is_refused_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = interrupted(tmp_path / "a")
    other = interrupted(tmp_path / "b", "model.hidden=12")
    shutil.copy(other.dir / ckpt.CHECKPOINT_PT, part.dir / ckpt.CHECKPOINT_PT)
    err = cli_error(capsys, "train", "--resume", str(part.dir))
    assert "checkpoint.pt does not fit the run its checkpoint.json describes" in err and "size mismatch" in err
    assert "Traceback" not in err
    tensors = torch.load(other.dir / ckpt.CHECKPOINT_PT, weights_only=True)
    tensors["rng"] = {"cpu": torch.zeros(3, 3)}  # damaged in place, same model
    torch.save(tensors, other.dir / ckpt.CHECKPOINT_PT)
    with pytest.raises(CheckpointError, match="does not fit the run"):
        rnnlab.resume(other.dir, progress=False)


def test_the_lock_is_a_file_any_machine_sees_and_goes_without_where_there_are_no_locks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file opened for writing (on NFS a flock on a folder is seen by one machine only); the
    thread that holds it may take it again, another open file may not; on a file system without
    locks (ENOSYS) training goes on unlocked rather than stop."""
    import errno
    import threading

    fcntl = pytest.importorskip("fcntl")
    from rnnlab.locks import LOCK_FILE, Busy, exclusive

    with exclusive(tmp_path, "busy"):
        with exclusive(tmp_path, "busy"):  # the same thread: a compare worker, then rnnlab.train
            pass
        other = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # another open file: as another process would see it
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        refused = []

        def second_thread() -> None:
            try:
                with exclusive(tmp_path, "busy"):
                    pass
            except Busy:
                refused.append(True)

        thread = threading.Thread(target=second_thread)
        thread.start()
        thread.join()
        assert refused == [True]

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "lustre").mkdir()
    with exclusive(tmp_path / "lustre", "busy"), exclusive(tmp_path / "lustre", "busy"):
        pass  # no lock to be had: it goes on


def test_a_resume_refuses_data_that_is_not_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = sequence_file(tmp_path / "series.npz")
    part = interrupted(tmp_path, "data.dataset=file", f"data.file={data}")
    rng = np.random.default_rng(1)
    other = tmp_path / "other.npz"
    np.savez(other, x_train=rng.normal(0, 1, (240, 6, 3)).astype(np.float32), y_train=rng.integers(0, 2, 240),
             x_test=rng.normal(0, 1, (60, 6, 3)).astype(np.float32), y_test=rng.integers(0, 2, 60))
    err = cli_error(capsys, "train", "--resume", str(part.dir), "--data-dir", str(other))
    assert f"the data at {other} is not the data this run began with (features 2 then, 3 now)" in err
    assert load_toml(part.dir / "config.toml").data.file == str(data)  # nothing was written
    # Of the same shape, but other sequences: more of them, or as many with other labels.
    with np.load(data) as arrays:
        mine = dict(arrays)
    more = tmp_path / "more.npz"
    np.savez(more, **{**mine, "x_train": np.concatenate([mine["x_train"]] * 2),
                      "y_train": np.concatenate([mine["y_train"]] * 2)})
    err = cli_error(capsys, "train", "--resume", str(part.dir), "--data-dir", str(more))
    train_now = 2 * len(mine["y_train"]) - load_toml(part.dir / "config.toml").data.val_size
    assert f"is not the data this run began with ({train_now} train sequences now, " in err
    relabelled = tmp_path / "relabelled.npz"
    np.savez(relabelled, **{**mine, "y_test": 1 - mine["y_test"]})
    err = cli_error(capsys, "train", "--resume", str(part.dir), "--data-dir", str(relabelled))
    assert "is not the data this run began with (other sequences, labels or lengths, as many per split)" in err
    last_changed = tmp_path / "last_changed.npz"  # every sequence counts, not only the first few
    np.savez(last_changed, **{**mine, "x_train": np.concatenate([mine["x_train"][:-1], -mine["x_train"][-1:]])})
    err = cli_error(capsys, "train", "--resume", str(part.dir), "--data-dir", str(last_changed))
    assert "(other sequences, labels or lengths, as many per split)" in err
    moved = tmp_path / "moved.npz"  # the same file elsewhere resumes
    moved.write_bytes(data.read_bytes())
    assert rnnlab.resume(part.dir, progress=False, data_dir=str(moved)).status == "completed"


def test_a_checkpoint_with_the_older_digest_resumes_with_its_split_sizes_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checkpoints written on 2026-12-01 before ``content`` hold an older ``digest``, which is not
    computed any more: their split sizes are still checked."""
    data = sequence_file(tmp_path / "series.npz")
    part = interrupted(tmp_path, "data.dataset=file", f"data.file={data}")
    meta = json.loads((part.dir / ckpt.CHECKPOINT_JSON).read_text())
    identity = meta["data"]
    identity["digest"] = identity.pop("content")[::-1]  # some older digest
    (part.dir / ckpt.CHECKPOINT_JSON).write_text(json.dumps(meta))
    with np.load(data) as arrays:
        more = tmp_path / "more.npz"
        np.savez(more, **{**dict(arrays), "x_test": np.concatenate([arrays["x_test"]] * 2),
                          "y_test": np.concatenate([arrays["y_test"]] * 2)})
    err = cli_error(capsys, "train", "--resume", str(part.dir), "--data-dir", str(more))
    assert "is not the data this run began with (120 test sequences now, 60 then)" in err
    assert rnnlab.resume(part.dir, progress=False).status == "completed"


def test_an_empty_run_folder_argument_is_refused_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset $RUN: not a new default run, nor a fresh model measured instead."""
    monkeypatch.chdir(tmp_path)
    assert "--resume is empty; give the run folder to resume" in cli_error(capsys, "train", "--resume", "")
    assert "--out is empty; give a path, or drop --out" in cli_error(capsys, "train", "--out", " ")
    assert "--data-dir is empty; give the folder of the IDX files" in cli_error(capsys, "train", "--data-dir", "")
    assert "--run is empty; give a run folder" in cli_error(capsys, "gradients", "--run", "")
    for command in ("eval", "export"):
        assert "RUN_DIR is empty; give a run folder" in cli_error(capsys, command, "")
    # every command's --out: an empty one is not the default folder (compare) nor the current one
    assert "--out is empty; give a path" in cli_error(capsys, "compare", "dlw-rnn-a", "--out", "", "--dry-run")
    assert list(tmp_path.iterdir()) == []


def test_a_forked_child_does_not_take_its_parents_folder_as_its_own(tmp_path: Path) -> None:
    """The child inherits the parent's record of held locks (and its main thread has the forking
    thread's id): without clearing it at fork, the child would train into the parent's folder."""
    pytest.importorskip("fcntl")
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    from rnnlab.locks import Busy, exclusive

    with exclusive(tmp_path, "busy"):
        pid = os.fork()
        if pid == 0:  # the child: exit status 3 if refused, as it must be; 4 if it took the folder
            try:
                with exclusive(tmp_path, "busy"):
                    os._exit(4)
            except Busy:
                os._exit(3)
            os._exit(5)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3


def test_a_folder_with_another_runs_leftovers_is_not_trained_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = apply_overrides(RunConfig(), TINY + ["data.val_size=40"])
    killed = tmp_path / "killed"  # a run killed before its first checkpoint left its metrics
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"iteration": 999, "val_accuracy": 99.9}\n')
    with pytest.raises(CheckpointError, match="holds the metrics.jsonl of a run that stopped before its first"):
        rnnlab.train(config, killed, progress=False)
    assert (killed / "metrics.jsonl").read_text().count("\n") == 1
    mine = tmp_path / "mine"  # a config.toml of other settings would be written over
    mine.mkdir()
    (mine / "config.toml").write_text("# my notes\n[model]\nhidden = 99\n")
    with pytest.raises(CheckpointError, match="holds a config.toml of other settings"):
        rnnlab.train(config, mine, progress=False)
    assert "# my notes" in (mine / "config.toml").read_text()
    same = tmp_path / "same"  # the same settings (as compare writes them first) train
    same.mkdir()
    rnnlab.config.save_toml(config, same / "config.toml")
    assert rnnlab.train(config, same, progress=False).status == "completed"
    monkeypatch.chdir(tmp_path)  # default folders of runs started within one second do not collide
    import datetime as real

    from rnnlab import run as run_module
    from rnnlab.run import default_run_dir

    class FrozenClock(real.datetime):  # both calls in the same second, even on a slow machine
        @classmethod
        def now(cls, tz: real.tzinfo | None = None) -> real.datetime:
            return real.datetime(2026, 12, 1, 14, 0, 0)

    monkeypatch.setattr(run_module, "datetime", FrozenClock)
    first = default_run_dir(config)
    first.mkdir(parents=True)
    second = default_run_dir(config)
    assert second == first.with_name(first.name + "-2") and not second.exists()


def test_loading_a_run_that_has_not_saved_its_first_checkpoint_says_it_is_training(tmp_path: Path) -> None:
    from _locks import held_by_another

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rnnlab.config.save_toml(RunConfig(), run_dir / "config.toml")
    with held_by_another(run_dir):  # another process training there
        with pytest.raises(CheckpointError, match="no checkpoint yet: a run is training there and has not saved"):
            rnnlab.load(run_dir)
    with pytest.raises(CheckpointError, match="no checkpoint here"):  # nobody training: not a run folder yet
        rnnlab.load(run_dir)


def test_a_run_is_not_trained_into_a_folder_of_runs(tmp_path: Path) -> None:
    """``--out runs`` would turn the folder of runs into one run, which `rnnlab report runs` then
    reads alone: refused before anything is written."""
    runs = tmp_path / "runs"
    for name, mark in (("lstm-a", "config.toml"), ("compare-x", "compare.json"), ("notes", "")):
        (runs / name).mkdir(parents=True)
        if mark:
            (runs / name / mark).write_text("")
    config = apply_overrides(RunConfig(), TINY)
    with pytest.raises(ConfigError, match=r"holds other runs or compares \(compare-x, lstm-a\); a run writes a "
                                          r"folder of its own: choose a new one, e.g. out='.*runs/"):
        rnnlab.train(config, runs, progress=False)
    assert sorted(p.name for p in runs.iterdir()) == ["compare-x", "lstm-a", "notes"]
    assert rnnlab.train(config, runs / "new", progress=False, stop_after=2).status == "stopped"


def test_a_resume_told_to_stop_before_where_it_is_says_so(tmp_path: Path) -> None:
    part = interrupted(tmp_path)  # stopped after 10 iterations
    with pytest.raises(ConfigError, match=r"^stop_after=10 counts the run's iterations from its start, and .* has "
                                          r"done 10: give more than 10$"):
        rnnlab.resume(part, progress=False, stop_after=10)
    resumed = rnnlab.resume(part, progress=False, stop_after=12)
    assert resumed.status == "stopped" and resumed.summary["iterations"] == 12


def test_a_folder_that_cannot_be_read_holds_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's 700 folder (or lost+found) beside runs: not a run, and no error (a test as root
    cannot make a folder unreadable, so the refusal is simulated)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.toml").write_text("")
    assert ckpt.holds(tmp_path / "mine", "config.toml")

    def refused(self: Path, *args: Any, **kwargs: Any) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    assert not ckpt.holds(tmp_path / "mine", "config.toml", "summary.json")


def test_a_lock_holds_only_while_its_own_file_is_in_the_folder(tmp_path: Path) -> None:
    """A folder moved away (or deleted) and made again under the same name holds another lock file:
    the holder's lock no longer keeps others out of it, and the holder is told so."""
    pytest.importorskip("fcntl")
    from rnnlab.locks import LockLost, check_held, exclusive, still_held

    folder = tmp_path / "run"
    folder.mkdir()
    assert still_held(folder)  # not held by this thread: nothing to compare, nothing to refuse
    with exclusive(folder, "busy"):
        check_held(folder)
        folder.rename(tmp_path / "moved")
        folder.mkdir()
        assert not still_held(folder)
        with pytest.raises(LockLost, match=r"run was deleted, moved or replaced while this process was writing"):
            check_held(folder)


@pytest.mark.parametrize("how", ["train", "compare worker"])
def test_a_run_whose_folder_is_deleted_and_made_again_writes_nothing_into_the_new_one(
        how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Process A trains DIR; DIR is deleted and made again, and process B locks the new one (its lock
    file is a new file, which A's lock does not cover). A stops at its next write rather than write its
    metrics, checkpoint, summary (or a compare's failed summary) into B's folder, and leaves B's lock be."""
    import threading

    pytest.importorskip("fcntl")
    from rnnlab import trainer_state
    from rnnlab.compare import run_task
    from rnnlab.locks import LOCK_FILE, Busy, LockLost, exclusive
    from rnnlab.pool import Task

    data = sequence_file(tmp_path / "series.npz")
    config = apply_overrides(RunConfig(), TINY + ["data.dataset=file", f"data.file={data}", "data.val_size=40"])
    run_dir = tmp_path / "run"
    b_holds, release = threading.Event(), threading.Event()

    def process_b() -> None:  # another process (a thread here, which the lock refuses alike)
        with exclusive(run_dir, "busy"):
            b_holds.set()
            release.wait(30)

    b = threading.Thread(target=process_b)
    save = trainer_state.save

    def save_then_replace(trainer: Any) -> None:  # after A's first checkpoint (iteration 5)
        save(trainer)
        if not b.is_alive():
            shutil.rmtree(run_dir)
            run_dir.mkdir()
            b.start()
            assert b_holds.wait(10)

    monkeypatch.setattr(trainer_state, "save", save_then_replace)
    try:
        if how == "train":
            with pytest.raises(LockLost, match=rf"^{re.escape(str(run_dir))} was deleted, moved or replaced while"):
                rnnlab.train(config, run_dir, progress=False)
        else:
            record = run_task(Task("e", 0, config, str(run_dir)))
            assert record["action"] == "not run" and "was deleted, moved or replaced" in record["error"], record
        assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # B's, which B still holds
        with pytest.raises(Busy), exclusive(run_dir, "busy"):
            pass
    finally:
        release.set()
        if b.is_alive():
            b.join()


def test_a_folder_of_other_files_is_not_written_into(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out img (one's PNGs): a run, a compare and a report each refuse it, in one line that says
    what is there and names a new folder, and write nothing in it; an empty folder, or one holding
    only rnnlab's lock file, is taken."""
    from rnnlab import compare as cmp
    from rnnlab.entries import resolve_entries
    from rnnlab.report import build_report

    img = tmp_path / "img"
    img.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (img / name).write_bytes(b"\x89PNG")
    (img / "sub").mkdir()
    config = apply_overrides(RunConfig(), TINY + ["data.val_size=40"])
    before = sorted(p.name for p in img.iterdir())
    with pytest.raises(ConfigError, match=re.escape(
            f"out={str(img)!r} is a folder of other files (5 entries: a.png, b.png, c.png, ...), not a run; a run "
            f"writes a folder of its own: choose a new one, e.g. out={str(img / config.label)!r}")):
        rnnlab.train(config, img, progress=False)
    err = cli_error(capsys, "train", "--out", str(img), *TINY)
    assert err == (f"rnnlab: error: --out {img} is a folder of other files (5 entries: a.png, b.png, c.png, ...), "
                   f"not a run; a run writes a folder of its own: choose a new one, e.g. --out {img / config.label}\n")
    assert f"--out {img} is a folder of other files" in cli_error(capsys, "compare", "dlw-rnn-a", "--seeds", "1",
                                                                   "--out", str(img), "--dry-run")
    assert "not a compare; a compare writes a folder of its own: choose a new one, e.g. out_dir=" in str(
        pytest.raises(ConfigError, cmp.prepare, resolve_entries(["dlw-rnn-a"]), img, seeds=1, jobs=1).value)
    run = rnnlab.train(config, tmp_path / "runs" / "a", progress=False, stop_after=2)
    assert f"--out {img} is a folder of other files (5 entries: a.png, b.png, c.png, ...), not a report; a report " \
           f"writes a folder of its own: choose a new one, e.g. --out {img / 'report'}" in cli_error(
               capsys, "report", str(run.dir), "--out", str(img))
    with pytest.raises(ConfigError, match=r"^out_dir=.* is a folder of other files \(5 entries"):
        build_report([run.dir], img, plots=False)
    assert sorted(p.name for p in img.iterdir()) == before  # not even a lock file
    # Taken: empty, or only the lock of a run that failed to start (or a file browser's .DS_Store)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / ".rnnlab.lock").write_text("")
    (lone / ".DS_Store").write_text("")
    assert rnnlab.train(config, lone, progress=False, stop_after=2).status == "stopped"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", "dlw-rnn-a", "--seeds", "1", "--out", str(empty), "--dry-run"]) == 0
    # 1, not 2: written, and saying that its one run stopped unfinished
    assert main(["report", str(run.dir), "--out", str(empty), "--no-plot"]) == 1
    assert (empty / "results.md").is_file()
    # Folders rnnlab wrote stay its own: a report into a folder of runs, or beside a run's own files
    assert main(["report", str(run.dir), "--out", str(tmp_path / "runs"), "--no-plot"]) == 1
    assert main(["report", str(run.dir), "--no-plot"]) == 1
    capsys.readouterr()


def test_a_report_is_written_beside_its_inputs_and_into_a_report_cut_short(tmp_path: Path) -> None:
    """By default a report goes where its inputs are: beside a results file of any name, and into a
    folder whose runs lie deeper than one level; a report cut short while drawing (its figures and
    nothing more) is written again; a folder kept in git by a .gitkeep takes a run (found by review)."""
    from rnnlab.report import build_report

    config = apply_overrides(RunConfig(), TINY + ["data.val_size=40"])
    exp = tmp_path / "exp"
    for seed, sweep in enumerate(("sweep-a", "sweep-b")):  # exp/sweep-a/r1: two levels down
        rnnlab.train(apply_overrides(config, [f"seed={seed}"]), exp / sweep / "r1", progress=False, stop_after=2)
    assert main(["report", str(exp), "--no-plot"]) == 1  # 1: its runs stopped unfinished
    renamed = tmp_path / "downloads" / "tutorials-fast.json"
    renamed.parent.mkdir()
    renamed.write_bytes((exp / "results.json").read_bytes())
    assert main(["report", str(renamed), "--no-plot"]) == 1
    assert (renamed.parent / "results.md").is_file()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "accuracy.png").write_bytes(b"\x89PNG")  # a report stopped after its first figure
    build_report([exp], cut, plots=False)
    assert (cut / "results.md").is_file()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / ".gitkeep").write_text("")
    assert rnnlab.train(config, kept, progress=False, stop_after=2).status == "stopped"
