"""``rnnlab compare``: planning, parallel tiny runs, skip/resume on rerun, failed workers."""

from __future__ import annotations

import hashlib
import json
import re
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _signals import assert_stopped_with_the_resume_line, in_a_session
import rnnlab
from rnnlab import compare as cmp
from rnnlab.entries import Entry, default_out_dir, resolve_entries
from rnnlab.cli import main
from rnnlab.config import save_toml
from rnnlab.locks import LOCK_FILE
from rnnlab.errors import ConfigError

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=8", "train.iterations=20", "train.eval_every=10", "train.checkpoint_every=10",
        "data.val_size=0"]


def test_resolve_entries_suite_files_and_overrides(tmp_path: Path) -> None:
    entries = resolve_entries([], suite="tutorials", overrides=["train.iterations=7"])
    assert [e.name for e in entries] == ["dlw-rnn-a", "dlw-rnn-b", "dlw-rnn-c", "dlw-lstm-a", "dlw-lstm-b",
                                         "dlw-lstm-c", "rnn-allsteps"]
    assert all(e.config.train.iterations == 7 and e.config.train.epochs == 0 for e in entries)
    save_toml(rnnlab.RunConfig(), tmp_path / "mine.toml")
    (entry,) = resolve_entries([str(tmp_path / "mine.toml")])
    assert entry.name == "mine" and entry.config.label == "mine"
    with pytest.raises(ConfigError, match=r"^'dlw-rnn-a' is given twice; name each entry once$"):
        resolve_entries(["dlw-rnn-a", "dlw-rnn-a"])
    with pytest.raises(ConfigError, match=r"^'dlw-rnn-a' is given twice \(the suite has it\)"):
        resolve_entries(["dlw-rnn-a"], suite="tutorials")
    (tmp_path / "other").mkdir()
    save_toml(rnnlab.RunConfig(), tmp_path / "other" / "mine.toml")  # another file of the same name
    with pytest.raises(ConfigError, match="is named 'mine' like an earlier entry"):
        resolve_entries([str(tmp_path / "mine.toml"), str(tmp_path / "other" / "mine.toml")])
    with pytest.raises(ConfigError, match="nothing to compare"):
        resolve_entries([])
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_entries(["no-such-preset"])
    save_toml(rnnlab.RunConfig(), tmp_path / "my run.toml")  # the file name cannot name a folder
    with pytest.raises(ConfigError, match=r"my run.toml: the entry is named after the file.*set `name`"):
        resolve_entries([str(tmp_path / "my run.toml")])


def test_sweeps_expand_each_entry_over_a_grid() -> None:
    entries = resolve_entries(["dlw-rnn-a", "dlw-lstm-a"], overrides=["train.iterations=7"],
                              sweeps=["train.lr=0.001,0.01", "model.hidden=32,64"])
    assert [e.name for e in entries][:4] == ["dlw-rnn-a+lr0.001+hidden32", "dlw-rnn-a+lr0.001+hidden64",
                                             "dlw-rnn-a+lr0.01+hidden32", "dlw-rnn-a+lr0.01+hidden64"]
    assert len(entries) == 8 and entries[5].name == "dlw-lstm-a+lr0.001+hidden64"
    rnn = entries[2].config
    assert (rnn.train.lr, rnn.model.hidden, rnn.train.iterations, rnn.name) == (0.01, 32, 7, entries[2].name)
    assert rnn.preset == "dlw-rnn-a" and rnn.model.cell == "rnn"  # the rest of the entry is as it was
    both = resolve_entries(["dlw-rnn-b"], sweeps=["model.dropout=0,0.1", "train.weight_decay=0,0.1"])
    assert both[1].name == "dlw-rnn-b+dropout0+weight_decay0.1"
    a, b = (default_out_dir(entries, None, [], sweeps=s) for s in (["model.hidden=32,64"], ["model.hidden=32"]))
    assert a != b and default_out_dir(resolve_entries([], suite="tutorials", sweeps=["train.lr=0.1,0.2"]), "tutorials",
                                      [], sweeps=["train.lr=0.1,0.2"]).name.startswith("compare-tutorials-")
    grid = ["train.lr=0.001,0.003,0.01", "model.hidden=64,128"]  # named after the entry swept, not its 6 variants
    assert default_out_dir(resolve_entries(["dlw-rnn-a-plus"], sweeps=grid), None, [], sweeps=grid).name.startswith(
        "compare-dlw-rnn-a-plus-")


@pytest.mark.parametrize(("sweeps", "overrides", "fragment"), [
    (["train.lr"], [], "is not KEY=V1,V2"),
    (["train.lr=0.1,,0.2"], [], "is not KEY=V1,V2"),
    (["train.lr=0.1,0.1"], [], "lists a value twice"),
    (["train.lr=0.01,1e-2"], [], "the same config twice"),
    (["train.lr=0.1", "train.lr=0.2"], [], "is given twice"),
    (["train.lr=0.1,0.2"], ["train.lr=0.3"], "both an override and a sweep; give it once"),
    (["seed=1,2"], [], "sweep seed=... is what compare's seeds= does"),
    (["preset=dlw-rnn-a,dlw-lstm-a"], [], "name the presets as entries"),  # would train one config twice
    (["name=a,b"], [], "only labels a run"),
    (["model.cell=lstm,transformer"], [], "choose one of"),
    (["nonsense.key=1,2"], [], "unknown key"),
    # The tutorial protocol has no validation split: both entries would train the same config.
    (["data.val_size=100,5000"], [], "sweep gives dlw-rnn-a+val_size100 a setting it would ignore: train.protocol"),
    (["data.val_size=0,5000"], [], "sweep gives dlw-rnn-a+val_size5000 a setting it would ignore"),
    (["model.dropout=0,0.3"], [], "sweep gives dlw-rnn-a+dropout0.3 a setting it would ignore: model.dropout"),
    ([], ["data.val_size=100"], "every entry would ignore a setting given: train.protocol=tutorial"),
    (["model.hidden=8,16,32,64,128,256,512,1024,2048,4096,8192", "train.lr=" + ",".join(f"0.{i}" for i in range(1, 100))],
     [], "at most 1000"),
])
def test_sweep_mistakes_are_refused(sweeps: list[str], overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        resolve_entries(["dlw-rnn-a"], overrides=overrides, sweeps=sweeps)


def test_an_override_some_entries_use_is_given_to_all_but_a_sweep_must_be_used_by_each() -> None:
    entries = {e.name: e.config for e in resolve_entries(["dlw-rnn-a", "dlw-rnn-a-plus"],
                                                           overrides=["data.val_size=100"])}
    assert entries["dlw-rnn-a-plus"].data.val_size == 100 and entries["dlw-rnn-a"].train.protocol == "tutorial"
    # Swept, dlw-rnn-a+val_size100 and dlw-rnn-a+val_size200 would train one config twice.
    with pytest.raises(ConfigError, match=r"^sweep gives dlw-rnn-a\+val_size100 a setting it would ignore"):
        resolve_entries(["dlw-rnn-a", "dlw-rnn-a-plus"], sweeps=["data.val_size=100,200"])
    assert len(resolve_entries(["dlw-rnn-a-plus"], sweeps=["data.val_size=100,200"])) == 2



def test_on_gpus_compare_runs_one_worker_per_gpu_each_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import multiprocessing

    import torch

    from rnnlab import pool

    monkeypatch.setattr(cmp, "available_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    auto = [e.config for e in resolve_entries(["dlw-rnn-a", "dlw-lstm-a"])]
    assert cmp.gpus_for(auto) == cmp.default_jobs(auto) == 2  # not 8 workers on one GPU
    on_cpu = [replace(c, train=replace(c.train, device="cpu")) for c in auto]
    named = [replace(c, train=replace(c.train, device="cuda:1")) for c in auto]
    assert cmp.gpus_for(on_cpu) == cmp.gpus_for(named) == 0 and cmp.default_jobs(on_cpu) == 8
    assert cmp.default_jobs(named) == 1  # every run on cuda:1: one at a time, not 8 CUDA contexts there
    assert main(["compare", "dlw-rnn-a", "--seeds", "3", "--out", str(tmp_path / "c"), "--dry-run"]) == 0
    assert "2 workers x 4 threads, one GPU each" in capsys.readouterr().err
    assert main(["compare", "dlw-rnn-a", "--seeds", "3", "--jobs", "3", "--out", str(tmp_path / "c"), "--dry-run"]) == 0
    assert "3 workers x 2 threads, sharing 2 GPU(s)" in capsys.readouterr().err
    # Each starting worker takes the next GPU as its current device.
    taken: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", taken.append)
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    for _ in range(3):
        pool._take_gpu(counter, 2)
    assert taken == [0, 1, 0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert cmp.default_jobs(auto) == 1  # one Apple GPU



@pytest.mark.slow  # compare workers
@pytest.mark.skipif(not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
                    reason="needs two CUDA GPUs")
def test_compare_workers_train_on_different_gpus(tmp_path: Path) -> None:
    # long enough that the second worker is up before the first is done (both start at once)
    entries = resolve_entries(["dlw-rnn-a"], overrides=[*TINY, "train.device=auto", "train.iterations=1500"])
    rows = cmp.compare(entries, tmp_path / "c", seeds=2, jobs=2, plots=False)
    assert rows[0]["completed"] == 2
    devices = {json.loads((tmp_path / f"c/runs/dlw-rnn-a/seed{k}/summary.json").read_text())["device"] for k in (0, 1)}
    assert devices == {"cuda:0", "cuda:1"}


@pytest.mark.slow  # compare workers
def test_a_sweep_compare_trains_and_reports_each_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    args = ["compare", "dlw-rnn-a", *TINY, "--sweep", "train.lr=0.001,0.05", "--seeds", "1", "--jobs", "1",
            "--out", str(out), "--no-plot"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "dlw-rnn-a+lr0.001" in table and "dlw-rnn-a+lr0.05" in table
    results = json.loads((out / "results.json").read_text())
    assert [r["entry"] for r in results["entries"]] == ["dlw-rnn-a+lr0.001", "dlw-rnn-a+lr0.05"]
    assert results["context"]["sweeps"] == "train.lr=0.001,0.05"
    assert main(args) == 0  # rerun: both finished, nothing trained again
    assert "0 to run, 2 finished" in capsys.readouterr().err


def _two_sequence_files(folder: Path) -> list[Path]:
    """Two small sequence files of 6 steps x 3 features, 2 classes: the mean's sign, or a step's."""
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for name, label_of in (("signs", lambda x: x.mean((1, 2)) > 0), ("third", lambda x: x[:, 2, 0] > 0)):
        x = rng.normal(0, 1, (240, 6, 3)).astype(np.float32)
        y = label_of(x).astype(np.int64)
        paths.append(folder / name / "data.npz" if name == "third" else folder / f"{name}.npz")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        np.savez(paths[-1], x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    return paths


def test_a_sweep_over_sequence_files_names_entries_by_file(tmp_path: Path) -> None:
    signs, third = _two_sequence_files(tmp_path)
    entries = resolve_entries(["dlw-rnn-a"], overrides=["data.val_size=0"], sweeps=[f"data.file={signs},{third}"])
    assert [e.name for e in entries] == ["dlw-rnn-a+filesigns", "dlw-rnn-a+filedata"]  # data.dataset=file implied
    assert [(e.config.data.dataset, e.config.data.file) for e in entries] == [("file", str(signs)), ("file", str(third))]
    twin = tmp_path / "other" / "signs.npz"
    with pytest.raises(ConfigError, match="would both name their entries 'signs'; give the files distinct names"):
        resolve_entries(["dlw-rnn-a"], sweeps=[f"data.file={signs},{twin}"])
    with pytest.raises(ConfigError, match="unknown key 'model.hiddn'"):  # overrides are still checked
        resolve_entries(["dlw-rnn-a"], overrides=["model.hiddn=3"], sweeps=[f"data.file={signs},{third}"])
    # Refused before any seed trains: a missing file, and an IDX folder that no swept entry would read.
    with pytest.raises(ConfigError, match=r"^sweep data.file: .*missing.npz is not a file"):
        resolve_entries(["dlw-rnn-a"], sweeps=[f"data.file={signs},{tmp_path / 'missing.npz'}"])
    with pytest.raises(ConfigError, match="a swept data.file is read alone: drop data.data_dir"):
        resolve_entries(["dlw-rnn-a"], overrides=[f"data.data_dir={tmp_path}"], sweeps=[f"data.file={signs},{third}"])


def test_a_rerun_keeps_a_seed_on_moved_data_only_if_it_is_the_same_data(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import numpy as np

    signs, third = _two_sequence_files(tmp_path)

    def tasks_for(data: Path) -> list[cmp.Task]:
        entries = resolve_entries(["dlw-rnn-a"], overrides=TINY + ["data.val_size=0", "data.dataset=file",
                                                                   f"data.file={data}"])
        return cmp.plan(entries, tmp_path / "cmp", seeds=1, jobs=1)

    task, = tasks_for(signs)
    rnnlab.train(task.config, task.run_dir, progress=False)
    moved = tmp_path / "moved" / "signs.npz"
    moved.parent.mkdir()
    shutil.copyfile(signs, moved)
    assert [cmp.task_state(t, {}) for t in tasks_for(moved)] == ["skip"]  # the same data, elsewhere
    with pytest.raises(ConfigError, match=rf"trained on the data at {signs}, and {third} holds other data "
                                          r"\(other sequences, labels or lengths, as many per split\): point the "
                                          r"entry at the run's own data"):
        cmp.task_state(tasks_for(third)[0], {})
    assert cmp.task_state(tasks_for(third)[0]) == "skip"  # a worker's look, after prepare checked it
    # A garbled checkpoint.json: the record of the data comes from the .pt's own copy, as a resume takes it
    saved_json = Path(task.run_dir) / "checkpoint.json"
    kept_text = saved_json.read_text()
    saved_json.write_text("{garbled")
    assert [cmp.task_state(t, {}) for t in tasks_for(moved)] == ["skip"]
    with pytest.raises(ConfigError, match="holds other data"):
        cmp.task_state(tasks_for(third)[0], {})
    saved_json.write_text(kept_text)
    with np.load(signs) as arrays:  # the same bytes, read as other shapes, are other data
        np.savez(tmp_path / "reshaped.npz", **{**dict(arrays), "x_train": arrays["x_train"].reshape(200, 3, 6),
                                               "x_test": arrays["x_test"].reshape(40, 3, 6)})
    with pytest.raises(ConfigError, match="holds other data"):
        cmp.task_state(tasks_for(tmp_path / "reshaped.npz")[0], {})
    # The data at one place is read once for all the seeds that moved there
    reads = []
    real_load = cmp.load_datasets
    monkeypatch.setattr(cmp, "load_datasets", lambda config: reads.append(config.seed) or real_load(config))
    entries = resolve_entries(["dlw-rnn-a"], overrides=TINY + ["data.val_size=0", "data.dataset=file",
                                                               f"data.file={signs}"])
    for task in cmp.plan(entries, tmp_path / "cmp", seeds=3, jobs=1)[1:]:
        rnnlab.train(task.config, task.run_dir, progress=False)
    moved_entries = resolve_entries(["dlw-rnn-a"], overrides=TINY + ["data.val_size=0", "data.dataset=file",
                                                                     f"data.file={moved}"])
    assert cmp.prepare(moved_entries, tmp_path / "cmp", seeds=3, jobs=1)[1] == {("dlw-rnn-a", s): "skip" for s in
                                                                              range(3)}
    assert len(reads) == 1
    # A seed folder without its config.toml (removed by hand) is judged by its summary, as before
    (Path(task.run_dir) / "config.toml").unlink()
    assert cmp.task_state(task, {}) == "skip"


@pytest.mark.slow  # compare workers
def test_a_compare_over_two_sequence_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _two_sequence_files(tmp_path)
    out = tmp_path / "cmp"
    with pytest.warns(RuntimeWarning, match="^test sets differ: dlw-lstm-a\\+filesigns \\(scored on other test "
                                            "sequences than the baseline dlw-lstm-a\\+filedata\\)"):
        assert main(["compare", "dlw-lstm-a", *TINY, "--sweep", f"data.file={files[0]},{files[1]}", "--seeds", "1",
                     "--jobs", "1", "--out", str(out), "--no-plot"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["entries"][0]["delta_data_note"].startswith("scored on other test sequences")
    assert [(r["entry"], r["completed"]) for r in results["entries"]] == [("dlw-lstm-a+filesigns", 1),
                                                                        ("dlw-lstm-a+filedata", 1)]
    summary = json.loads((out / "runs/dlw-lstm-a+filesigns/seed0/summary.json").read_text())
    assert summary["status"] == "completed" and summary["test_accuracy"] is not None


def test_plan_seeds_threads_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmp, "available_cores", lambda: 8)
    entries = resolve_entries(["dlw-rnn-a", "dlw-lstm-a"])
    tasks = cmp.plan(entries, tmp_path, seeds=3, jobs=2, threads=None)
    assert [(t.entry, t.seed) for t in tasks][:4] == [("dlw-rnn-a", 0), ("dlw-rnn-a", 1), ("dlw-rnn-a", 2),
                                                      ("dlw-lstm-a", 0)]
    assert all(t.config.seed == t.seed for t in tasks)
    assert {t.config.train.threads for t in tasks} == {4}  # 8 cores shared by 2 workers
    assert cmp.plan(entries, tmp_path, seeds=1, jobs=3)[0].config.train.threads == 2  # 8 // 3
    assert cmp.plan(entries, tmp_path, seeds=1, jobs=2, threads=3)[0].config.train.threads == 3
    monkeypatch.setattr(cmp, "available_cores", lambda: 1)
    assert cmp.plan(entries, tmp_path, seeds=1, jobs=2)[0].config.train.threads == 1  # never 0
    assert tasks[4].run_dir == str(tmp_path / "runs" / "dlw-lstm-a" / "seed1")
    pinned = resolve_entries(["dlw-rnn-a"], overrides=["train.threads=3"])
    assert cmp.plan(pinned, tmp_path, seeds=1, jobs=2)[0].config.train.threads == 3
    a = default_out_dir(entries, None, ["train.lr=0.1"])
    assert a == default_out_dir(entries, None, ["train.lr=0.1"]) != default_out_dir(entries, None, [])


def test_the_default_compare_folder_follows_the_settings_not_their_spelling(tmp_path: Path) -> None:
    entries = resolve_entries(["dlw-rnn-a"])
    folder = default_out_dir(entries, None, ["train.lr=1e-3", "model.hidden=64"], root=str(tmp_path))
    for same in (["model.hidden=64", "train.lr=0.001"], [" train.lr = 0.0010", "model.hidden=064"],
                 ["train.lr=0.5", "model.hidden=64", "train.lr=1e-3"]):  # the last of a key wins
        assert default_out_dir(entries, None, same, root=str(tmp_path)) == folder
    assert default_out_dir(entries, None, ["train.lr=2e-3", "model.hidden=64"], root=str(tmp_path)) != folder
    # A folder an earlier version named from the overrides as spelled is still found by the same command.
    spelled = ["model.hidden=64", "train.lr=0.001"]
    legacy = tmp_path / f"compare-dlw-rnn-a-{hashlib.sha1(chr(10).join(spelled).encode()).hexdigest()[:8]}"
    legacy.mkdir()
    assert default_out_dir(entries, None, spelled, root=str(tmp_path)) == legacy
    assert default_out_dir(entries, None, ["train.lr=1e-3", "model.hidden=64"], root=str(tmp_path)) == folder


@pytest.mark.slow  # compare workers
def test_compare_runs_resumes_fails_and_skips(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    good = resolve_entries(["dlw-rnn-a"], overrides=TINY)
    bad = [Entry("broken", replace(good[0].config, preset="", name="broken",
                                       data=replace(good[0].config.data, data_dir=str(tmp_path / "missing"))))]
    entries = good + bad
    # seed 1 was interrupted earlier: it has a checkpoint at iteration 10 of 20, and must be resumed.
    tasks = cmp.plan(entries, out, seeds=2, jobs=2)
    stopped = rnnlab.train(tasks[1].config, tasks[1].run_dir, progress=False, stop_after=10)
    assert stopped.status == "stopped"

    records: list[dict[str, Any]] = []
    rows = {r["entry"]: r for r in cmp.compare(entries, out, seeds=2, jobs=1, plots=False,
                                               on_result=records.append)}
    actions = {(r["entry"], r["seed"]): (r["action"], r["status"]) for r in records}
    assert actions[("dlw-rnn-a", 0)] == ("trained", "completed")
    assert actions[("dlw-rnn-a", 1)] == ("resumed", "completed")
    assert actions[("broken", 0)][1] == actions[("broken", 1)][1] == "failed"
    assert rows["dlw-rnn-a"]["status"] == "2/2 completed"
    seeds = [json.loads((out / f"runs/dlw-rnn-a/seed{s}/summary.json").read_text())["test_accuracy"] for s in (0, 1)]
    assert rows["dlw-rnn-a"]["test_accuracy_mean"] == pytest.approx((seeds[0] + seeds[1]) / 2)
    assert rows["broken"]["status"] == "0/2 completed, 2 failed"
    failed = json.loads((out / "runs/broken/seed0/summary.json").read_text())
    assert failed["status"] == "failed" and "DataError" in failed["error"]
    summary = json.loads((out / "runs/dlw-rnn-a/seed1/summary.json").read_text())
    assert summary["iterations"] == 20
    for name in ("results.md", "results.csv", "results.json", "compare.json"):
        assert (out / name).exists()
    assert "2 failed" in (out / "results.md").read_text()

    # A rerun skips the finished seeds (no process, no change) and retries the failed ones.
    assert [cmp.task_state(t) for t in tasks] == ["skip", "skip", "train", "train"]
    before = (out / "runs/dlw-rnn-a/seed0/summary.json").stat().st_mtime_ns
    records.clear()
    rows = {r["entry"]: r for r in cmp.compare(entries, out, seeds=2, jobs=2, plots=False,
                                               on_result=records.append)}
    assert [(r["entry"], r["action"]) for r in records][:2] == [("dlw-rnn-a", "skipped")] * 2
    assert sorted(r["action"] for r in records[2:]) == ["failed", "failed"]
    assert (out / "runs/dlw-rnn-a/seed0/summary.json").stat().st_mtime_ns == before
    assert rows["dlw-rnn-a"]["status"] == "2/2 completed" and rows["broken"]["status"] == "0/2 completed, 2 failed"

    # The same folder with a different config is refused before anything runs.
    changed = resolve_entries(["dlw-rnn-a"], overrides=TINY + ["train.lr=0.5"])
    with pytest.raises(ConfigError, match="was made with other settings: train.lr 0.01 -> 0.5"):
        cmp.compare(changed + bad, out, seeds=2, jobs=1, plots=False)


def crashing_worker(task: cmp.Task) -> dict[str, Any]:
    """A worker whose process dies hard on seed 1 (as if killed), and succeeds otherwise."""
    if task.seed == 1:
        os._exit(3)
    return {"entry": task.entry, "seed": task.seed, "run_dir": task.run_dir, "action": "trained",
            "status": "completed", "test_accuracy": 50.0, "train_seconds": 0.0, "error": None}


@pytest.mark.slow  # compare workers
def test_a_dying_worker_fails_only_its_own_seed(tmp_path: Path) -> None:
    entries = resolve_entries(["dlw-rnn-a"], overrides=TINY)
    tasks = cmp.plan(entries, tmp_path, seeds=3, jobs=2)
    records = cmp.execute(tasks, 2, worker=crashing_worker)
    assert [r["status"] for r in records] == ["completed", "failed", "completed"]
    assert "worker process died" in records[1]["error"]
    assert json.loads((tmp_path / "runs/dlw-rnn-a/seed1/summary.json").read_text())["status"] == "failed"


def test_compare_cli_dry_run_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--suite", "tutorials", "--seeds", "3", "--out", str(tmp_path / "c"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("train ") == 21 and "7 entries x 3 seeds = 21 runs" in captured.err
    assert not (tmp_path / "c").exists()
    # Overrides may follow the options, as in `rnnlab compare A --seeds 3 --out D KEY=VALUE`.
    assert main(["compare", "dlw-rnn-a", "--seeds", "2", "--dry-run", "model.hidden=8"]) == 0
    assert "1 entries x 2 seeds" in capsys.readouterr().err
    assert main(["compare", "dlw-rnn-a", "--dry-run", "model.hiddn=3"]) == 2
    assert "unknown key 'model.hiddn'" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0", "dlw-rnn-a", "--dry-run"]) == 2
    assert capsys.readouterr().err == "rnnlab: error: --seeds=0 must be a whole number >= 1\n"
    # A baseline that is not an entry is refused before anything trains, and through the API too.
    assert main(["compare", "dlw-rnn-a", "dlw-lstm-a", "--dry-run", "--baseline", "dlw-lstm-a"]) == 0
    capsys.readouterr()
    assert main(["compare", "dlw-rnn-a", "dlw-lstm-a", "--dry-run", "--baseline", "dlw-lstm-b"]) == 2
    assert "entries are: dlw-rnn-a, dlw-lstm-a" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="^baseline='nope' is not an entry here"):
        cmp.compare(resolve_entries(["dlw-rnn-a"]), tmp_path / "d", seeds=1, baseline="nope")
    assert not (tmp_path / "d").exists()


def test_plus_presets_keep_architecture_and_budget() -> None:
    from rnnlab.presets import get_preset, suite

    for name in suite("tutorials"):
        old, new = get_preset(name).config, get_preset(f"{name}-plus").config
        for key in ("cell", "nonlinearity", "layers", "hidden", "readout", "bidirectional"):
            assert getattr(new.model, key) == getattr(old.model, key), (name, key)
        for key in ("batch_size", "iterations", "epochs"):
            assert getattr(new.train, key) == getattr(old.train, key), (name, key)
        assert new.train.protocol == "standard" and new.data.val_size == 5000 and new.data.standardize
        assert new.train.optimizer in ("adam", "adamw") and new.train.schedule == "cosine" and new.train.clip > 0
        assert new.preset == f"{name}-plus" and get_preset(f"{name}-plus").notes
    assert "row-best" in suite("plus") and get_preset("row-best").config.train.protocol == "standard"


def test_a_summary_that_is_not_an_object_is_retrained(tmp_path: Path) -> None:
    (task,) = cmp.plan(resolve_entries(["dlw-rnn-a"], overrides=TINY), tmp_path, seeds=1)
    Path(task.run_dir).mkdir(parents=True)
    save_toml(task.config, Path(task.run_dir) / "config.toml")
    for text in ("[1]", '{"status": "completed", "test_accuracy": "abc"}', "\udcff"):
        (Path(task.run_dir) / "summary.json").write_text(text, errors="surrogateescape")
        assert cmp.task_state(task) == "train"


def fake_compare(out: Path, names: list[str], seeds: int = 1) -> None:
    """A compare folder of these entries, as compare() leaves it (config files only, no training)."""
    entries = resolve_entries(names, overrides=TINY)
    for task in cmp.plan(entries, out, seeds=seeds):
        Path(task.run_dir).mkdir(parents=True)
        save_toml(task.config, Path(task.run_dir) / "config.toml")
    (out / "compare.json").write_text(json.dumps({"entries": [{"name": n} for n in names], "seeds": seeds}))


def test_compare_cli_refuses_a_bad_out_and_too_many_seeds(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["compare", "dlw-rnn-a", "--out", str(afile), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"rnnlab: error: --out {afile} is a file; give a folder\n"
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        cmp.compare(resolve_entries(["dlw-rnn-a"]), afile)
    assert main(["compare", "dlw-rnn-a", "--seeds", "1000000", "--dry-run"]) == 2
    assert capsys.readouterr().err == "rnnlab: error: --seeds=1000000 is too many: at most 1000 per entry\n"
    assert main(["compare", "dlw-rnn-a", "--seeds", "1000", "--dry-run", "--out", str(tmp_path / "c")]) == 0


def test_a_compare_folder_is_not_mixed_with_other_entries(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp1"
    fake_compare(out, ["dlw-rnn-a", "dlw-lstm-a"])
    for names, which in ((["dlw-rnn-b"], ""), (["dlw-rnn-a"], " (this command leaves out dlw-lstm-a)")):
        assert main(["compare", *names, *TINY, "--out", str(out), "--dry-run"]) == 2  # would drop entries
        assert capsys.readouterr().err == (f"rnnlab: error: {out} holds a compare of dlw-lstm-a, dlw-rnn-a{which}: "
                                           "list all of its entries to rerun or extend it, or use another --out\n")
        with pytest.raises(ConfigError, match="holds a compare of"):
            cmp.compare(resolve_entries(names, overrides=TINY), out, plots=False)
    assert not (out / "runs/dlw-rnn-b").exists() and not (out / "results.md").exists()
    # All of its entries, in any order, plus new ones or new seeds: skips what is there, adds the rest.
    assert main(["compare", "dlw-lstm-a", "dlw-rnn-b", "dlw-rnn-a", *TINY, "--seeds", "2", "--out", str(out),
                 "--dry-run"]) == 0
    assert "3 entries x 2 seeds = 6 runs (6 to run, 0 finished)" in capsys.readouterr().err
    # An entry folder that compare.json does not list (an older or damaged compare.json) counts too.
    (out / "compare.json").write_bytes(b"\xff[")
    assert main(["compare", "dlw-rnn-a", *TINY, "--out", str(out), "--dry-run"]) == 2
    assert "holds a compare of dlw-lstm-a, dlw-rnn-a" in capsys.readouterr().err


def test_a_rerun_with_other_settings_names_them_and_the_compare_folder(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Not one seed's folder to delete (its siblings would stay on the old settings): the compare's."""
    out = tmp_path / "cmp1"
    fake_compare(out, ["dlw-rnn-a", "dlw-rnn-a-plus"], seeds=2)  # TINY: train.iterations=20
    assert main(["compare", "dlw-rnn-a", "dlw-rnn-a-plus", "--seeds", "2", *TINY, "train.iterations=10",
                 "--out", str(out), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"rnnlab: error: the compare folder {out} was made with other settings: train.iterations 20 -> 10; its "
        "seeds would mix two configs: use another --out for these settings, or delete the whole compare folder "
        f"{out} to run the compare again with them\n")
    # From Python, the keyword; a change to some entries names them; one seed changed is enough to tell.
    entries = resolve_entries(["dlw-rnn-a", "dlw-rnn-a-plus"], overrides=TINY)
    entries[1] = replace(entries[1], config=rnnlab.apply_overrides(entries[1].config, ["train.lr=0.5"]))
    with pytest.raises(ConfigError, match=re.escape(
            "other settings: train.lr 0.001 -> 0.5 (dlw-rnn-a-plus); its seeds would mix two configs: use another "
            "folder (out_dir=) for these settings, or delete the whole compare folder")):
        cmp.compare(entries, out, seeds=2, plots=False)
    assert not (out / "results.md").exists()
    # The same settings (and more seeds) are a rerun as before.
    assert main(["compare", "dlw-rnn-a", "dlw-rnn-a-plus", "--seeds", "3", *TINY, "--out", str(out),
                 "--dry-run"]) == 0


def sleeping_worker(task: cmp.Task) -> dict[str, Any]:
    """A worker that says it started (its pid in ``<run_dir>.started``), then works for a minute."""
    Path(task.run_dir + ".started").parent.mkdir(parents=True, exist_ok=True)
    Path(task.run_dir + ".started").write_text(str(os.getpid()))
    try:
        time.sleep(60)
    except KeyboardInterrupt as stop:  # passed on by the compare process: a run would stop between two steps
        Path(task.run_dir + ".stopped").write_text(type(stop).__name__)  # Terminated for SIGTERM
        raise
    return {"entry": task.entry, "seed": task.seed, "run_dir": task.run_dir, "action": "trained",
            "status": "completed", "test_accuracy": 50.0, "train_seconds": 60.0, "error": None}


def _start_sleeping_compare(out: Path) -> subprocess.Popen:
    """``execute`` of 5 seeds on 2 workers running ``sleeping_worker``, in a process of its own."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from rnnlab import compare as cmp\nimport test_compare as tc\n"
              "tasks = cmp.plan(tc.resolve_entries(['dlw-rnn-a'], overrides=tc.TINY), sys.argv[1], seeds=5, jobs=2)\n"
              "from rnnlab.stopping import sigterm_raises\n"
              "with sigterm_raises():  # as under the command line\n"
              "    cmp.execute(tasks, 2, worker=tc.sleeping_worker)\n")
    return subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.DEVNULL)


def _started_pids(out: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = sorted(out.glob("runs/dlw-rnn-a/*.started"))
        if len(files) >= count and all(f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.2)
    raise AssertionError(f"the workers did not start: {list(out.rglob('*'))}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (here, maybe none) has not reaped it


@pytest.mark.slow  # a compare process and its workers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_compare_is_killed(tmp_path: Path) -> None:
    parent = _start_sleeping_compare(tmp_path)
    try:
        pids = _started_pids(tmp_path, 2)
        parent.kill()  # SIGKILL: no chance to clean up; the workers must notice by themselves
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "workers outlived their compare"
    finally:
        parent.kill()


@pytest.mark.slow  # a compare process and its workers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_to_the_compare_starts_no_queued_seed(tmp_path: Path, signum: int) -> None:
    parent = _start_sleeping_compare(tmp_path)
    try:
        _started_pids(tmp_path, 2)
        parent.send_signal(signum)  # the compare process alone, not its workers
        assert parent.wait(30) != 0  # the workers are told too, and the queued seeds never start
        assert len(list(tmp_path.glob("runs/dlw-rnn-a/*.started"))) == 2
        stopped = list(tmp_path.glob("runs/dlw-rnn-a/*.stopped"))
        assert len(stopped) == 2  # told, not orphaned
        # by the same signal: a run that SIGTERM stops skips its test evaluation, the process is to end
        assert {f.read_text() for f in stopped} == {"Terminated" if signum == signal.SIGTERM else "KeyboardInterrupt"}
    finally:
        parent.kill()


def test_a_second_compare_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    entries = resolve_entries(["dlw-rnn-a"], overrides=TINY)
    tmp_path.mkdir(exist_ok=True)
    held = os.open(tmp_path / ".rnnlab.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a compare running into it holds it
        with pytest.raises(ConfigError, match=f"another rnnlab compare is running into {tmp_path}"):
            cmp.compare(entries, tmp_path, seeds=1, jobs=1, plots=False)
    finally:
        os.close(held)
    assert not (tmp_path / "runs").exists()


def test_the_command_refuses_a_busy_folder_before_its_header(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One line, the refusal: not the plan's header ("compare: 1 entries x 1 seeds ... to run") first."""
    from _locks import held_by_another

    out = tmp_path / "cmp"
    out.mkdir()
    with held_by_another(out):
        assert main(["compare", "dlw-rnn-a", *TINY, "--seeds", "1", "--out", str(out), "--no-plot"]) == 2
        assert main(["compare", "dlw-rnn-a", *TINY, "--seeds", "1", "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines[0] == f"rnnlab: error: another rnnlab compare is running into {out}; wait for it to finish, or " \
                       "use another --out"
    assert lines[1].startswith("compare: 1 entries x 1 seeds")  # a dry run only reads: it plans all the same
    assert not (out / "runs").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and signals")
@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGTERM, False), (signal.SIGTERM, True),
                                                     (signal.SIGINT, True)],
                         ids=["sigterm-to-the-compare", "sigterm-to-the-group", "ctrl-c-in-a-terminal"])
@pytest.mark.slow  # rnnlab compare and its workers
def test_a_signal_stops_the_running_seeds_as_it_stops_a_run(tmp_path: Path, signum: int, whole_group: bool) -> None:
    """SIGTERM to the compare alone (kill), or to its whole process group (a scheduler's time limit,
    as Slurm sends it), or Ctrl-C in a terminal (SIGINT to the group): each running seed stops
    between two steps with a checkpoint of that step and its summary, as `rnnlab train` does (no
    test evaluation after SIGTERM); the queued seed never starts; the command exits 143 (130) with
    one line. In the group the workers are signalled by the terminal or scheduler, again by the
    compare, and after SIGTERM by the pool (which sends SIGTERM to every worker once one ends): none
    of that may stop a seed while it saves."""
    out = tmp_path / "cmp"
    settings = ["model.hidden=16", "train.batch_size=20", "train.threads=1", "data.val_size=0",
                "train.iterations=100000", "train.eval_every=100000", "train.checkpoint_every=50"]
    with in_a_session([sys.executable, "-m", "rnnlab", "compare", "dlw-rnn-a", "--seeds", "3", "--jobs", "2",
                       *settings, "--out", str(out), "--no-plot"], stdout=subprocess.PIPE) as job:
        deadline = time.monotonic() + 180
        while not all((out / f"runs/dlw-rnn-a/seed{s}/checkpoint.json").exists() for s in (0, 1)):
            assert time.monotonic() < deadline and job.poll() is None, "the seeds did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        if whole_group:
            os.killpg(job.pid, signum)
        else:
            job.send_signal(signum)
        _, err = job.communicate(timeout=60)
    assert_stopped_with_the_resume_line(job, err, signum)
    sigterm = signum == signal.SIGTERM
    assert "Traceback" not in err and "leaked" not in err, err
    for seed in (0, 1):
        run = out / f"runs/dlw-rnn-a/seed{seed}"
        summary = json.loads((run / "summary.json").read_text())
        saved = json.loads((run / "checkpoint.json").read_text())["iteration"]
        assert summary["status"] == "interrupted" and summary["iterations"] == saved > 0, summary
        assert ("test_accuracy" in summary) != sigterm
        assert ("stopped by SIGTERM" in summary.get("message", "")) == sigterm
        assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]  # no temp file
    assert not (out / "runs/dlw-rnn-a/seed2").exists()  # queued: never started


def test_overrides_some_entries_use_are_not_refused_for_the_others() -> None:
    """A compare gives its overrides to every entry: a tutorial preset ignores data.val_size, row-best uses it."""
    entries = resolve_entries(["dlw-lstm-a", "row-best"], overrides=["data.val_size=2000"])
    assert [e.config.data.val_size for e in entries] == [2000, 2000]
    assert entries[0].config.train.protocol == "tutorial"


@pytest.mark.slow  # compare workers
def test_a_seed_whose_folder_is_busy_is_reported_with_its_reason(tmp_path: Path) -> None:
    """Another process training a seed's folder: the compare leaves it alone, and results.md says why."""
    fcntl = pytest.importorskip("fcntl")
    entries = resolve_entries(["dlw-rnn-a"], overrides=TINY)
    busy_task = cmp.plan(entries, tmp_path, seeds=2)[0]
    Path(busy_task.run_dir).mkdir(parents=True)
    fd = os.open(Path(busy_task.run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a training process holds it
        rows = cmp.compare(entries, tmp_path, seeds=2, jobs=1, plots=False)
    finally:
        os.close(fd)
    runs = {run["seed"]: run for run in rows[0]["runs"]}
    # "running", as a report reads a folder that another process trains in (unfinished once it has stopped)
    assert runs[1]["status"] == "completed" and runs[0]["status"] == "running"
    assert "another rnnlab process is training" in runs[0]["error"]
    md = (tmp_path / "results.md").read_text()
    assert f"seed 0: **running**: another rnnlab process is training {busy_task.run_dir}" in md
    assert not (Path(busy_task.run_dir) / "summary.json").exists()  # nothing written over the live run


def test_plan_refuses_seeds_and_jobs_that_are_not_whole_numbers(tmp_path: Path) -> None:
    entries = resolve_entries(["dlw-rnn-a"])
    with pytest.raises(ConfigError, match=r"^seeds='2' must be a whole number >= 1$"):
        cmp.plan(entries, tmp_path, seeds="2")
    with pytest.raises(ConfigError, match=r"^jobs=1.5 must be a whole number >= 1$"):
        cmp.plan(entries, tmp_path, seeds=2, jobs=1.5)
    tasks = cmp.plan(entries, tmp_path, seeds=np.int64(2), jobs=np.int64(1))  # NumPy's integers are whole numbers
    assert [t.seed for t in tasks] == [0, 1] and all(type(t.seed) is int for t in tasks)


def test_two_overrides_each_used_by_another_entry_are_given(tmp_path: Path) -> None:
    """A sequence-file entry uses data.val_size and ignores data.data_dir; a tutorial preset the reverse."""
    seqs = rnnlab.apply_overrides(rnnlab.RunConfig(), ["data.dataset=file", f"data.file={tmp_path / 'x.npz'}",
                                                       "name=seqs"])
    save_toml(seqs, tmp_path / "seqs.toml")
    overrides = [f"data.data_dir={tmp_path}", "data.val_size=100"]
    entries = {e.name: e.config for e in resolve_entries([str(tmp_path / "seqs.toml"), "dlw-rnn-a"], overrides=overrides)}
    assert entries["seqs"].data.val_size == 100 and entries["dlw-rnn-a"].data.data_dir == str(tmp_path)
    with pytest.raises(ConfigError, match="every entry would ignore a setting given: data.data_dir"):
        resolve_entries([str(tmp_path / "seqs.toml")], overrides=overrides)


@pytest.mark.slow  # a compare worker
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_rerun_after_a_sigterm_in_the_report_writes_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """SIGTERM once every seed is done, while the results are written: the command says to rerun it,
    and the rerun, with nothing to train, writes the results from the runs."""
    out = tmp_path / "cmp"
    command = ["compare", "dlw-rnn-a", *TINY, "--seeds", "1", "--jobs", "1", "--out", str(out), "--no-plot"]

    def sigterm(*args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGTERM)  # the command line's handler raises Terminated

    with monkeypatch.context() as patched:
        patched.setattr(cmp, "report_groups", sigterm)
        assert main(command) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (f"rnnlab: terminated (SIGTERM); rerun the same command to "
                                                        f"resume: {shlex.join(['rnnlab', *command])}")
    assert not list(out.glob("results.*"))
    assert json.loads((out / "runs/dlw-rnn-a/seed0/summary.json").read_text())["status"] == "completed"
    assert main(command) == 0
    assert f"(0 to run, 1 finished) in {out}; nothing to train; the results are written from the finished runs" \
        in capsys.readouterr().err
    assert all((out / name).is_file() for name in ("results.md", "results.csv", "results.json"))
    assert [r["entry"] for r in json.loads((out / "results.json").read_text())["entries"]] == ["dlw-rnn-a"]


def test_a_rerun_with_fewer_seeds_than_the_folder_holds_is_refused(tmp_path: Path) -> None:
    entries = resolve_entries(["dlw-rnn-a"], overrides=TINY)
    task = cmp.plan(entries, tmp_path / "cmp", seeds=4, jobs=1)[3]  # seed 3, as a --seeds 4 compare left it
    Path(task.run_dir).mkdir(parents=True)
    save_toml(task.config, Path(task.run_dir) / "config.toml")
    with pytest.raises(ConfigError, match=r"holds seeds up to 3, and seeds=2 would leave out seed3: rerun with "
                                          r"seeds=4 \(or more\), or use another folder \(out_dir=\)$"):
        cmp.prepare(entries, tmp_path / "cmp", seeds=2, jobs=1)
    assert len(cmp.prepare(entries, tmp_path / "cmp", seeds=5, jobs=1)[0]) == 5  # more seeds: extended


def test_entries_built_by_hand_are_checked_before_anything_runs(tmp_path: Path) -> None:
    from rnnlab.entries import Entry

    config = resolve_entries(["dlw-rnn-a"], overrides=TINY)[0].config
    for entries, message in [([], "no entries to compare; give at least one"),
                             ([Entry("a", config), Entry("a", config)], "two entries are named 'a'"),
                             ([Entry("a/b", config)], r"an entry's name='a/b' cannot be a folder name"),
                             ([Entry("x", {})], "entry 'x' has a dict as its config, not a RunConfig")]:
        with pytest.raises(ConfigError, match=message):
            cmp.compare(entries, tmp_path / "out", seeds=1)
    for seeds, jobs in ((None, 1), (1, None)):
        with pytest.raises(ConfigError, match="must be a whole number >= 1"):
            cmp.compare([Entry("a", config)], tmp_path / "out", seeds=seeds, jobs=jobs)
    assert not (tmp_path / "out").exists()
