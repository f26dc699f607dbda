"""The training loop on real MNIST with tiny models: schedules, the NaN guard, run folders, resume."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from _signals import assert_resume_matches, signal_after_update
from rnnlab.config import RunConfig, apply_overrides, load_toml
from rnnlab import checkpoint as ckpt
from rnnlab.data import SequenceData
from rnnlab.engine import Trainer, learning_rate, make_optimizer
from rnnlab.evaluation import NAN_CHECK_EVERY, RunningTotals, evaluate
from rnnlab.errors import CheckpointError, ConfigError, ResourceError

pytest_plugins = ["_fixtures_runs"]

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=16", "train.batch_size=50", "train.iterations=40", "train.eval_every=20",
        "train.eval_batch_size=2000", "data.val_size=1000", "train.threads=1"]


def tiny(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), TINY + list(extra))


def test_learning_rate_schedules() -> None:
    cosine = tiny("train.schedule=cosine", "train.lr=0.1", "train.warmup=10")
    assert learning_rate(cosine, 0, 110) == pytest.approx(0.01)  # warm-up starts at lr/warmup
    assert learning_rate(cosine, 10, 110) == pytest.approx(0.1)
    assert learning_rate(cosine, 60, 110) == pytest.approx(0.05)
    assert learning_rate(cosine, 110, 110) == pytest.approx(0.0)
    step = tiny("train.schedule=step", "train.lr=1.0", "train.step_size=10", "train.gamma=0.5")
    assert [learning_rate(step, i, 100) for i in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert learning_rate(tiny("train.schedule=none", "train.lr=0.3"), 50, 100) == 0.3


def _twin_models() -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """Two small equal networks: one for rnnlab's optimizer, one for torch's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    twin.load_state_dict(model.state_dict())
    return model, twin


def _step_both(pairs: tuple, steps: int, *, drop_bias_grad_at: int | None = None,
               after_step: Callable[[int], None] | None = None) -> None:
    """Train each (network, optimizer) pair on the same batches; the last layer's bias gets no
    gradient in step ``drop_bias_grad_at``."""
    for step in range(steps):
        x = torch.randn(11, 7)
        for net, opt in pairs:
            opt.zero_grad()
            net(x).square().mean().backward()
            if step == drop_bias_grad_at:
                net[2].bias.grad = None
            opt.step()
        if after_step is not None:
            after_step(step)


@pytest.mark.parametrize("overrides", [[], ["train.momentum=0.9"], ["train.weight_decay=0.1"]])
def test_sgd_steps_bitwise_as_torch_does(overrides: list[str]) -> None:
    """rnnlab's SGD takes a shortcut only for plain SGD; either way the weights and the optimizer
    state equal torch.optim.SGD's exactly, also when a parameter has no gradient in a step."""
    model, twin = _twin_models()
    cfg = tiny("train.optimizer=sgd", "train.lr=0.1", *overrides)
    ours = make_optimizer(cfg, model)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    _step_both(((model, ours), (twin, reference)), 5, drop_bias_grad_at=2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert str(ours.state_dict()) == str(reference.state_dict())


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torch's note on building a sparse tensor
def test_sgd_with_a_sparse_gradient_in_a_later_group_steps_each_group_once() -> None:
    from rnnlab.optim import SGD

    def step(cls: type) -> list[torch.Tensor]:
        dense, table = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4, 2))
        optimizer = cls([{"params": [dense]}, {"params": [table]}], lr=0.5)
        dense.grad = torch.ones(3)
        table.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2))
        optimizer.step()
        return [dense.detach(), table.detach()]

    for ours, torchs in zip(step(SGD), step(torch.optim.SGD), strict=True):
        assert torch.equal(ours, torchs)


@pytest.mark.parametrize("overrides", [[], ["train.momentum=0.9"]])
def test_sgd_runs_step_hooks_once(overrides: list[str]) -> None:
    """Optimizer step hooks (a profiler's, a logger's) run once per step, whichever path the step
    takes, also once torch's own SGD.step has been wrapped for its hooks (any torch SGD made)."""
    torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = make_optimizer(tiny("train.optimizer=sgd", "train.lr=0.1", *overrides), model)
    param = model.weight
    torch.nn.init.ones_(param)
    calls: list[str] = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    param.grad = torch.ones(1, 3)
    optimizer.step()
    assert calls == ["pre", "post"]
    assert torch.equal(param.detach(), torch.full((1, 3), 0.9))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_uses_the_fused_kernel_with_the_same_math(name: str) -> None:
    model, twin = _twin_models()
    cfg = tiny(f"train.optimizer={name}", "train.lr=0.01", "train.weight_decay=0.1")
    fused = make_optimizer(cfg, model)
    assert fused.defaults["fused"] is True
    reference = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(
        twin.parameters(), lr=0.01, weight_decay=0.1, fused=False)
    _step_both(((model, fused), (twin, reference)), 5)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [[], ["train.momentum=0.9"], ["train.weight_decay=0.1"]])
def test_rmsprop_steps_as_torch_rmsprop_with_the_same_settings(overrides: list[str]) -> None:
    model, twin = _twin_models()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = tiny("train.optimizer=rmsprop", "train.lr=0.01", *overrides)
    ours = make_optimizer(cfg, model)
    reference = torch.optim.RMSprop(twin.parameters(), lr=0.01, momentum=cfg.train.momentum,
                                    weight_decay=cfg.train.weight_decay)

    def first_step_moves_every_weight(step: int) -> None:
        if step == 0:
            assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))

    _step_both(((model, ours), (twin, reference)), 3, after_step=first_step_moves_every_weight)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert str(ours.state_dict()) == str(reference.state_dict())


def test_run_folder_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bars: list[Any] = []  # progress=False makes no tqdm at all: even a disabled one starts a monitor thread
    monkeypatch.setattr("rnnlab.progress.tqdm", lambda *args, **kwargs: bars.append(kwargs))
    run = rnnlab.train(tiny(), tmp_path / "run", progress=False)
    assert bars == []
    assert run.status == "completed"
    files = {p.name for p in run.dir.iterdir()}
    assert {"config.toml", "metrics.jsonl", "checkpoint.pt", "checkpoint.json", "summary.json"} <= files
    assert load_toml(run.dir / "config.toml") == run.config
    summary = json.loads((run.dir / "summary.json").read_text())
    for key in ("status", "test_accuracy", "val_accuracy", "iterations", "epochs", "train_seconds",
                "samples_per_second"):
        assert key in summary, key
    assert summary["iterations"] == 40 and 0.0 <= summary["test_accuracy"] <= 100.0
    # What the figures depend on, for whoever compares runs later: versions and threads.
    assert summary["rnnlab_version"] == rnnlab.__version__ and summary["torch_version"] == torch.__version__
    assert summary["python_version"] == platform.python_version() and summary["threads"] == 1  # tiny(): 1 thread
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == [20, 40] and "val_accuracy" in rows[0] and "test_accuracy" not in rows[0]
    assert sum(map(sum, summary["confusion_matrix"])) == 10_000
    # The same folder cannot be trained into twice by accident.
    with pytest.raises(CheckpointError, match="already holds a run"):
        rnnlab.train(tiny(), run.dir, progress=False)
    # Nor resumed once finished: that would evaluate again and rewrite its summary.
    before = (run.dir / "summary.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"finished all 40 iterations.*nothing to resume.*load_toml"):
        rnnlab.resume(run.dir, progress=False)
    assert (run.dir / "summary.json").read_bytes() == before
    damaged = {**json.loads(before), "iterations": "forty"}  # the count then comes from the checkpoint
    (run.dir / "summary.json").write_text(json.dumps(damaged))
    with pytest.raises(CheckpointError, match=r"finished all 40 iterations"):
        rnnlab.resume(run.dir, progress=False)


def test_a_run_that_cannot_be_resumed_says_how_to_go_on_in_the_callers_terms(tmp_path: Path) -> None:
    """From Python the way on is a call to make, not a command line (before: `rnnlab train --config ...`
    to a script that called rnnlab.resume); under the command line, the command."""
    from rnnlab.errors import COMMAND_LINE

    run = rnnlab.train(tiny("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2"), tmp_path / "run",
                       progress=False, stop_after=2)
    config = str(run.dir / "config.toml")
    with pytest.raises(CheckpointError, match=re.escape(f"resume it with rnnlab.resume({str(run.dir)!r}) or")):
        rnnlab.train(run.config, run.dir, progress=False)
    text = (run.dir / "config.toml").read_text()
    (run.dir / "config.toml").write_text(text.replace("seed = 0", "seed = 1"))
    edited = f"with the change: rnnlab.train(rnnlab.config.load_toml({config!r}))"
    with pytest.raises(CheckpointError, match=re.escape(edited)):
        rnnlab.resume(run, progress=False)
    (run.dir / "config.toml").write_text(text)
    summary = json.loads((run.dir / "summary.json").read_text())
    (run.dir / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
    with pytest.raises(CheckpointError, match=re.escape(
            f"with the change, rnnlab.train(rnnlab.apply_overrides(rnnlab.config.load_toml({config!r}), [...]))")):
        rnnlab.resume(run, progress=False)
    (run.dir / "summary.json").write_text(json.dumps({**summary, "status": "completed"}))
    expected = f"rnnlab.train(rnnlab.apply_overrides(rnnlab.config.load_toml({config!r}), ['train.iterations=N']))"
    with pytest.raises(CheckpointError, match=re.escape(f"with a larger budget: {expected}")):
        rnnlab.resume(run, progress=False)
    token = COMMAND_LINE.set(True)
    try:
        with pytest.raises(CheckpointError, match=re.escape(f"with a larger budget: rnnlab train --config {config} "
                                                            "train.iterations=N")):
            rnnlab.resume(run, progress=False)
    finally:
        COMMAND_LINE.reset(token)


def test_a_run_of_a_numpy_learning_rate_loads_and_resumes(tmp_path: Path) -> None:
    """A sweep's np.float64 rate trained, but its checkpoint held a NumPy scalar, which loading with
    weights_only=True refused as "corrupt": neither rnnlab.load nor rnnlab.resume could read it."""
    from dataclasses import replace

    import numpy as np

    cfg = tiny("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2")
    cfg = replace(cfg, train=replace(cfg.train, lr=np.logspace(-3, -2, 3)[1]))
    part = rnnlab.train(cfg, tmp_path / "run", progress=False, stop_after=2)
    torch.load(part.dir / "checkpoint.pt", weights_only=True)
    assert rnnlab.resume(part, progress=False).status == "completed"
    assert rnnlab.load(part).evaluate()["test_accuracy"] == rnnlab.read_run(part).test_accuracy


def test_the_progress_bar_counts_iterations_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rnnlab.train(tiny("name=barred"), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "barred" in err and "40/40" in err and "samples/s=" in err


def test_resume_refuses_an_edited_config_and_keeps_the_edit(tmp_path: Path) -> None:
    part = rnnlab.train(tiny("train.checkpoint_every=5"), tmp_path / "run", progress=False, stop_after=5)
    path = part.dir / "config.toml"
    edited = path.read_text().replace("lr = 0.002", "lr = 0.5")
    assert edited != path.read_text()
    path.write_text(edited)
    with pytest.raises(CheckpointError, match=r"config.toml.*train.lr: 0.002 .* 0.5.*start a new run"):
        rnnlab.resume(part.dir, progress=False)
    assert path.read_text() == edited  # the user's edit is not lost


def test_tutorial_protocol_evaluates_test_without_a_split(tmp_path: Path) -> None:
    run = rnnlab.train(tiny("train.protocol=tutorial", "data.val_size=0"), tmp_path / "run", progress=False)
    assert "val_accuracy" not in run.summary and "protocol_note" in run.summary
    assert all("test_accuracy" in row for row in run.metrics())


def test_nan_guard_marks_the_run_diverged(tmp_path: Path) -> None:
    cfg = tiny("model.cell=rnn", "model.nonlinearity=relu", "model.init=identity", "train.optimizer=sgd",
               "train.lr=1e6", "train.clip=0", "train.schedule=none")
    run = rnnlab.train(cfg, tmp_path / "run", progress=False)
    assert run.status == "diverged"
    assert "lower the learning rate" in run.summary["message"] and "train.clip" in run.summary["message"]
    assert run.summary["iterations"] < 40
    assert json.loads((run.dir / "summary.json").read_text())["status"] == "diverged"
    assert not (run.dir / "checkpoint.json").exists()  # diverged before its first checkpoint
    with pytest.raises(CheckpointError, match="already holds a run"):  # its record stays
        rnnlab.train(tiny(), run.dir, progress=False)


@pytest.mark.parametrize("where", ["step", "evaluation", "final-evaluation"])
def test_out_of_memory_says_what_to_lower_and_keeps_the_last_checkpoint(tmp_path: Path, where: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny("train.checkpoint_every=10", "train.eval_every=20")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    forward, log = trainer._forward, trainer._log_evaluation

    def allocation_fails(*args: Any) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 9000000000 bytes. Error code 12 (Cannot allocate memory)")

    if where == "step":  # in step 15, between the checkpoints of 10 and 20
        monkeypatch.setattr(trainer, "_forward", lambda idx: allocation_fails() if trainer.iteration == 14
                            else forward(idx))
    elif where == "evaluation":
        monkeypatch.setattr(trainer, "_log_evaluation", lambda *a: allocation_fails() if trainer.iteration == 20
                            else log(*a))
    else:
        monkeypatch.setattr(rnnlab.run_summary, "evaluate", lambda *a, **k: allocation_fails())
        monkeypatch.setattr(trainer, "_log_evaluation", lambda *a: {})
    with pytest.raises(ResourceError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert message.startswith("out of memory on cpu ") and "(DefaultCPUAllocator: can't allocate memory: " in message
    assert caught.value.__context__ is None  # the failed step's tensors are not kept alive by the error
    saved = json.loads((tmp_path / "run/checkpoint.json").read_text())["iteration"]
    assert not (tmp_path / "run/summary.json").exists()
    if where == "step":
        assert "in training step 15" in message and "lower train.batch_size (now 50)" in message
        assert f"{tmp_path / 'run'} keeps its checkpoint of iteration 10" in message and saved == 10
    elif where == "evaluation":
        assert "evaluating after iteration 20" in message and "lower train.eval_batch_size (now 2000)" in message
        assert "keeps its checkpoint of iteration 10" in message and saved == 10
    else:  # the whole budget is saved: only the test is left to do
        assert f"the trained weights are saved in {tmp_path / 'run'}; `rnnlab eval {tmp_path / 'run'} --batch-size 500`" in message
        assert saved == 40


@pytest.mark.parametrize("file", ["checkpoint.pt", "metrics.jsonl"])
def test_a_full_disk_names_the_file_what_is_kept_and_how_to_go_on(tmp_path: Path, file: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills while the run trains: one error naming the file and the iteration, the last
    checkpoint kept whole, and the resume that continues once there is space (was the bare OS error,
    with no file named, or torch.save's "unexpected pos" RuntimeError with a traceback)."""
    cfg = tiny("train.checkpoint_every=10", "train.eval_every=10")
    run_dir = tmp_path / "run"
    save = torch.save
    full = {"now": False}

    def disk_full() -> None:
        full["now"] = True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write into a full disk: no file named

    def saving(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        if file == "checkpoint.pt" and json.loads(obj[ckpt._META_IN_PT])["iteration"] == 20:
            handle.write(b"PK\x03\x04 part of it")
            try:
                disk_full()
            finally:  # what torch's zip writer then raises as it closes
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20096 vs 19984")
        save(obj, handle, *args, **kwargs)

    class FillingHandle:  # metrics.jsonl's handle: part of the row written, then the disk is full
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> FillingHandle:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, text: str) -> None:
            if json.loads(text)["iteration"] == 20:
                self.handle.write(text[:15])
                disk_full()
            self.handle.write(text)

        def flush(self) -> None:
            self.handle.flush()

    monkeypatch.setattr(torch, "save", saving)
    if file == "metrics.jsonl":
        monkeypatch.setattr(ckpt, "open", lambda *a, **k: FillingHandle(open(*a, **k)), raising=False)
    with pytest.raises(ResourceError) as caught:
        rnnlab.train(cfg, run_dir, progress=False)
    assert full["now"]
    assert str(caught.value) == (
        f"could not write {run_dir / file} after iteration 20 (No space left on device); {run_dir} keeps its "
        f"checkpoint of iteration 10; free some space there (or make it writable), then continue with "
        f"rnnlab.resume({str(run_dir)!r})")
    assert json.loads((run_dir / "checkpoint.json").read_text())["iteration"] == 10
    assert not (run_dir / "summary.json").exists()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".checkpoint")) == []  # no temporary
    monkeypatch.undo()  # space again
    resumed = rnnlab.resume(run_dir, progress=False)
    assert resumed.status == "completed" and [row["iteration"] for row in resumed.metrics()] == [10, 20, 30, 40]


def _fit(cfg: RunConfig, run_dir: Path, check_every: int) -> tuple[dict, Trainer]:
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.check_every = check_every  # 1: a look at every step; the default looks every NAN_CHECK_EVERY
    return trainer.fit(), trainer


def test_nan_checks_every_few_steps_report_what_every_step_checks_report(tmp_path: Path) -> None:
    # lr=10 diverges after a dozen steps, between two checkpoints.
    diverging = tiny("model.cell=rnn", "model.nonlinearity=relu", "model.init=identity", "train.optimizer=sgd",
                     "train.lr=10", "train.clip=0", "train.schedule=none", "train.checkpoint_every=6")
    each, _ = _fit(diverging, tmp_path / "each", 1)
    sparse, trainer = _fit(diverging, tmp_path / "sparse", 1000)
    default = Trainer(diverging, tmp_path / "default", progress=False).fit()
    assert NAN_CHECK_EVERY > 1 and default["diverged_at"] == each["diverged_at"]
    assert each["status"] == sparse["status"] == "diverged" and each["diverged_at"] > 6
    assert sparse["diverged_at"] == each["diverged_at"] and sparse["message"] == each["message"]
    assert trainer.iteration > sparse["diverged_at"]  # it ran on past the NaN before it looked
    # Every checkpoint is looked at first: the last one holds finite weights from before the NaN.
    saved = torch.load(tmp_path / "sparse" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert json.loads((tmp_path / "sparse" / "checkpoint.json").read_text())["iteration"] <= each["diverged_at"]
    # Ctrl-C after the NaN but before a look: the run is diverged, not "interrupted" and saved.
    stopped = Trainer(diverging, tmp_path / "stopped", progress=False)
    stopped.check_every = 1000
    step = stopped.optimizer.step

    def interrupt_after_the_nan(*args: object, **kwargs: object) -> object:
        if stopped.iteration == each["diverged_at"] + 1:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    stopped.optimizer.step = interrupt_after_the_nan  # type: ignore[method-assign]
    summary = stopped.fit()
    assert summary["status"] == "diverged" and summary["diverged_at"] == each["diverged_at"]
    # A healthy run is the same run, metric for metric, however often it looks.
    healthy = tiny("train.iterations=30", "train.eval_every=10")
    a, _ = _fit(healthy, tmp_path / "a", 1)
    b, _ = _fit(healthy, tmp_path / "b", 7)
    rows = [ckpt.read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("a", "b")]
    drop = ("samples_per_second", "elapsed_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
    assert a["test_accuracy"] == b["test_accuracy"] and a["iterations"] == b["iterations"] == 30


def test_running_totals_stay_on_the_device_and_find_the_first_bad_loss() -> None:
    totals = RunningTotals(torch.device("cpu"))
    totals.add(torch.tensor([6.0, 3.0]), 10, iteration=0)
    assert totals.as_dict()["loss"] == 0.0  # summed over processes when looked at, not at each step
    assert totals.diverged() is None and totals.as_dict() == {"loss": 6.0, "correct": 3, "count": 10}
    totals.add(torch.tensor([float("nan"), 1.0]), 10, iteration=1)
    totals.add(torch.tensor([float("inf"), 1.0]), 10, iteration=2)
    iteration, loss = totals.diverged()
    assert iteration == 1 and math.isnan(loss)  # the first bad step, not the last
    assert totals.diverged() is None  # each step is looked at once
    again = RunningTotals(torch.device("cpu"))
    again.load({"loss": 6.0, "correct": 3, "count": 10})
    assert again.as_dict() == {"loss": 6.0, "correct": 3, "count": 10} and again.diverged() is None


@pytest.mark.parametrize("extra", [
    [],
    ["model.cell=gru", "model.layers=2", "model.dropout=0.3", "data.standardize=true", "train.optimizer=sgd",
     "train.momentum=0.9", "train.lr=0.05"],
])
def test_resume_equals_uninterrupted_bitwise(tmp_path: Path, extra: list[str]) -> None:
    cfg = tiny("train.checkpoint_every=10", *extra)
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=25)
    assert part.status == "stopped" and part.summary["iterations"] == 25
    resumed = rnnlab.resume(part.dir, progress=False)
    assert resumed.status == "completed" and resumed.summary["iterations"] == 40
    a = torch.load(whole.dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.summary["test_accuracy"] == whole.summary["test_accuracy"]
    # The metrics log is the same too (an evaluation is never logged twice).
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(resumed.metrics()) == strip(whole.metrics())


def test_loaded_model_predicts_like_evaluation(untrained_run) -> None:
    """rnnlab.load(run).predict on MNIST images answers as evaluate() does on the run's own test
    split: the same permutation, standardisation and weights, class for class."""
    # Fresh weights suffice to compare two paths. readout=mean: an untrained model's classes then
    # vary between images (readout=last puts nearly all in one), so a lost permutation would show.
    run_dir = untrained_run(["data.view=permuted-pixels", "model.cell=gru", "model.hidden=8", "model.readout=mean"])
    model = rnnlab.load(run_dir)
    assert model.permutation is not None and sorted(model.permutation.tolist()) == list(range(784))
    images, labels = rnnlab.data.load_split("mnist", "test")
    predicted = torch.tensor([p["class"] for p in model.predict(images[:200])])
    test = model.test_split()  # (10000, 784, 1), permuted as the run read it
    assert torch.equal(test.y[:200], labels[:200])  # the same images, in the same order
    expected = evaluate(model.model, SequenceData(test.x[:200], test.y[:200]), batch_size=64).predictions
    assert len(set(expected.tolist())) > 1
    assert torch.equal(predicted, expected)
    probs = model.step_probabilities(images[:3])
    assert probs.shape == (3, 784, 10)
    torch.testing.assert_close(probs[:, -1], model.probabilities(images[:3]))


def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.distributed import select_device
    from rnnlab.errors import ConfigError

    assert select_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without one, also on a GPU box
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use device 'cpu' or 'auto'$"):
        select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_the_cpu_loop_closely(tmp_path: Path) -> None:
    gpu = rnnlab.train(tiny("train.device=cuda"), tmp_path / "gpu", progress=False)
    cpu = rnnlab.train(tiny("train.device=cpu"), tmp_path / "cpu", progress=False)
    assert gpu.status == "completed" and abs(gpu.summary["test_accuracy"] - cpu.summary["test_accuracy"]) < 5.0
    trainer = Trainer(tiny("train.device=cuda"), tmp_path / "placed", progress=False)
    assert trainer.train_data.x.device.type == "cuda"  # MNIST fits: batches are gathered on the GPU
    assert trainer.check_every > 1
    assert rnnlab.load(gpu.dir).predict(torch.zeros(1, 28, 28, dtype=torch.uint8))[0]["class"] in range(10)
    on_gpu = rnnlab.load(gpu.dir, device="cuda")  # inputs follow the model to its device
    assert on_gpu.probabilities(torch.zeros(2, 28, 28, dtype=torch.uint8)).device.type == "cpu"
    assert on_gpu.step_probabilities(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape == (1, 28, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_resumes_and_a_permuted_run_predicts_on_the_gpu(tmp_path: Path) -> None:
    cfg = tiny("train.device=cuda", "train.checkpoint_every=10", "data.view=permuted-pixels", "model.hidden=8",
               "train.iterations=20")
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=10)
    resumed = rnnlab.resume(part.dir, progress=False)  # RNG states are read back on the CPU
    assert resumed.status == "completed" and resumed.summary["iterations"] == 20
    on_gpu = rnnlab.load(resumed.dir, device="cuda")  # the permutation stays with the images, on the CPU
    assert on_gpu.permutation.device.type == "cpu"
    assert on_gpu.probabilities(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 10)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_picks_bf16_only_where_it_was_measured_to_pay(monkeypatch: pytest.MonkeyPatch,
                                                               native: bool) -> None:
    from rnnlab import distributed as dist

    monkeypatch.setattr(dist, "native_bf16_cpu", lambda: native)
    cpu = torch.device("cpu")
    assert dist.resolve_amp("auto", cpu, "lstm", 28) == ("bf16" if native else "off")
    assert dist.resolve_amp("auto", cpu, "rnn", 28) == dist.resolve_amp("auto", cpu, "gru", 28) == "off"
    assert dist.resolve_amp("auto", cpu, "lstm", 784) == "off"  # faster, but its accuracy is unmeasured
    assert dist.resolve_amp("auto", torch.device("cuda"), "lstm", 28) == "off"  # unmeasured there
    for explicit in ("off", "bf16"):
        assert dist.resolve_amp(explicit, cpu, "lstm", 784) == explicit
    assert dist.resolve_amp("fp16", torch.device("cuda"), "lstm", 28) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        dist.resolve_amp("fp16", cpu, "lstm", 28)
    with pytest.raises(ValueError, match="resolve"):
        dist.autocast(cpu, "auto")


def test_amp_auto_trains_and_evaluates_in_the_resolved_precision(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from rnnlab import distributed as dist

    monkeypatch.setattr(dist, "native_bf16_cpu", lambda: True)
    used: list[str] = []
    real_autocast = dist.autocast
    monkeypatch.setattr(dist, "autocast", lambda device, amp: used.append(amp) or real_autocast(device, amp))
    config = tiny("model.cell=lstm", "train.amp=auto", "train.iterations=4", "train.eval_every=4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU without a bf16 LSTM kernel runs it in fp32
        run = rnnlab.train(config, tmp_path / "run", progress=False)
    assert run.status == "completed" and run.summary["amp"] == "bf16"
    # Training steps and the evaluation during training in bf16; the final test and val in float32,
    # so that summary.json holds what `rnnlab eval` reproduces.
    assert used[:5] == ["bf16"] * 5 and used[5:] == ["off", "off"]
    trained = rnnlab.load(run.dir)
    result = evaluate(trained.model, trained.test_split(), batch_size=1000, device=torch.device("cpu"))
    assert run.summary["test_accuracy"] == round(result.accuracy, 4)
    report = trained.evaluate(batch_size=3000)  # the library's `rnnlab eval`
    assert round(report["test_accuracy"], 4) == run.summary["test_accuracy"]
    assert report["confusion_matrix"] == run.summary["confusion_matrix"] and len(report["per_class_accuracy"]) == 10
    assert load_toml(run.dir / "config.toml").train.amp == "auto"  # the request is what is saved
    plain = rnnlab.train(tiny("train.iterations=2", "train.eval_every=2"), tmp_path / "plain", progress=False)
    assert plain.summary["amp"] == "off"


def test_fp16_on_a_cpu_is_refused_before_the_run_folder_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        rnnlab.train(tiny("train.amp=fp16", "train.device=cpu"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ctrl_c", ["once", "twice-at-once", "again-later"])
def test_ctrl_c_mid_step_keeps_the_checkpoint_whole(tmp_path: Path, ctrl_c: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C that lands after the optimizer's update but before the step is counted: the step is
    finished first, so the run resumes exactly. The same Ctrl-C delivered twice (by the terminal and
    by a launcher) counts once; a second Ctrl-C later stops at once and keeps the last periodic
    checkpoint instead of a torn one."""
    from rnnlab import stopping

    second_ctrl_c = ctrl_c != "once"
    # As if a second had passed between the two, or as if none had, however slow the machine.
    monkeypatch.setattr(stopping, "SAME_SIGNAL", -1.0 if ctrl_c == "again-later" else 3600.0)
    cfg = tiny("train.checkpoint_every=10")
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    trainer = Trainer(cfg, tmp_path / "part", progress=False)
    signal_after_update(trainer, 13, *[signal.SIGINT] * (2 if second_ctrl_c else 1))
    summary = trainer.fit()
    assert summary["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    saved = json.loads((tmp_path / "part" / "checkpoint.json").read_text())["iteration"]
    assert saved == (10 if ctrl_c == "again-later" else 13)
    assert_resume_matches(whole.dir, tmp_path / "part")


def test_sigterm_mid_step_saves_the_step_then_ends_the_process(tmp_path: Path) -> None:
    """SIGTERM (kill, a scheduler's time limit) under the command line's handler: the step under way
    finishes, the checkpoint holds it, no test evaluation is run, and then Terminated names the run
    folder; the resumed run ends with the weights of one never stopped."""
    from rnnlab.stopping import Terminated, raise_terminated, sigterm_raises

    cfg = tiny("train.checkpoint_every=10")
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    trainer = Trainer(cfg, tmp_path / "part", progress=False)
    signal_after_update(trainer, 13, signal.SIGTERM)
    with sigterm_raises(), pytest.raises(Terminated) as stopped:
        try:
            trainer.fit()
        finally:
            assert signal.getsignal(signal.SIGTERM) is raise_terminated  # the handler is given back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert stopped.value.run_dir == tmp_path / "part"
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "test_accuracy" not in summary
    assert "stopped by SIGTERM" in summary["message"] and "--resume" in summary["message"]
    assert json.loads((tmp_path / "part" / "checkpoint.json").read_text())["iteration"] == 13
    assert_resume_matches(whole.dir, tmp_path / "part")


def test_a_programs_own_sigterm_handler_is_left_alone() -> None:
    from rnnlab.stopping import StopBetweenSteps

    def own(signum: int, frame: object) -> None:
        pass

    for handler in (own, signal.SIG_IGN):
        previous = signal.signal(signal.SIGTERM, handler)
        try:
            stop = StopBetweenSteps()
            assert signal.getsignal(signal.SIGTERM) is handler
            assert signal.getsignal(signal.SIGINT) == stop._request  # Ctrl-C is still taken over
            stop.restore()
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        finally:
            signal.signal(signal.SIGTERM, previous)


_SIGTERM_IN_A_SCRIPT = """
import signal, sys
from pathlib import Path
import rnnlab
import rnnlab.stopping
from rnnlab.engine import Trainer
rnnlab.stopping.SAME_SIGNAL = 3600.0  # the two SIGTERMs are one, however slow the machine
cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), sys.argv[2:])
trainer = Trainer(cfg, Path(sys.argv[1]), progress=False)
update, calls = trainer.optimizer.step, []
def update_then_sigterm(*args, **kwargs):
    result = update(*args, **kwargs)
    calls.append(1)
    if len(calls) == 7:
        signal.raise_signal(signal.SIGTERM)
    return result
save = trainer.save
def sigterm_again_then_save():  # the same SIGTERM passed on by a wrapper, landing in the last save
    if trainer.iteration == 7:
        signal.raise_signal(signal.SIGTERM)
    save()
trainer.optimizer.step = update_then_sigterm
trainer.save = sigterm_again_then_save
trainer.fit()
print("the script carried on")
"""


@pytest.mark.slow  # a Python process of its own
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_in_a_python_program_saves_the_run_then_ends_it(tmp_path: Path) -> None:
    """Without the command line, SIGTERM keeps its meaning: the process ends, killed by the signal,
    but only after the step under way and a checkpoint of it; the same signal again, landing in the
    last save, does not cut it."""
    run = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_SCRIPT, str(tmp_path / "run"), *TINY],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGTERM, run.stderr[-2000:]
    assert "carried on" not in run.stdout
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["iteration"] == 7
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"


def test_a_resume_reads_the_checkpoint_on_the_cpu_and_warns_when_auto_resolves_differently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, torch takes RNG states only as CPU byte tensors: the checkpoint is read on the CPU
    and the state_dicts copy into the model and optimizer where they are. A run resumed on a
    machine where train.*=auto resolves otherwise (bf16 there, not here) says so."""
    import json
    import warnings

    part = rnnlab.train(tiny("train.checkpoint_every=10"), tmp_path / "part", progress=False, stop_after=20)
    meta_path = part.dir / ckpt.CHECKPOINT_JSON
    meta = json.loads(meta_path.read_text())
    has_mode = torch.set_flush_denormal(False)  # torch has a denormal mode on x86 and AArch64; IEEE is the default
    assert meta["resolved"] == {"device": "cpu", "amp": "off", "backward": "autograd",  # an LSTM
                                "denormals": "flushed" if has_mode else "kept"}
    locations = []
    real_load = ckpt.load_checkpoint
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda run_dir, map_location, **kw: locations.append(map_location)
                        or real_load(run_dir, map_location, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the same footing: no warning
        Trainer(part.config, part.dir, progress=False).restore()
    assert locations == ["cpu"]
    meta["resolved"] = {"device": "cuda:0", "amp": "bf16", "backward": "by hand"}  # and no "denormals": an older run
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(RuntimeWarning, match=r"device cuda:0 -> cpu, amp bf16 -> off\)"):
        Trainer(part.config, part.dir, progress=False).restore()
    if has_mode:  # begun on a CPU where torch has no denormal mode, resumed on this one
        meta["resolved"] = {"device": "cpu", "amp": "off", "backward": "autograd", "denormals": "kept"}
        meta_path.write_text(json.dumps(meta))
        with pytest.warns(RuntimeWarning, match=r"\(denormals kept -> flushed\)"):
            Trainer(part.config, part.dir, progress=False).restore()


def test_rng_states_keep_the_one_gpu_a_process_trains_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU run never touches CUDA's generators; a GPU run saves and restores its own GPU's only,
    also from a checkpoint of the older kind that kept every visible GPU's."""
    from rnnlab import seeding

    def untouched(*args, **kwargs):
        raise AssertionError("a CPU run must not initialise CUDA")

    monkeypatch.setattr(torch.cuda, "get_rng_state", untouched)
    monkeypatch.setattr(torch.cuda, "set_rng_state", untouched)
    state = seeding.rng_state(torch.device("cpu"))
    assert set(state) == {"cpu"}
    seeding.set_rng_state({**state, "cuda": [torch.zeros(4, dtype=torch.uint8)]}, torch.device("cpu"))

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: calls.append((new.tolist(), device)))
    gpu1 = torch.device("cuda", 1)
    assert seeding.rng_state(gpu1)["cuda"].tolist() == [1, 1, 1, 1]
    older = [torch.full((4,), i, dtype=torch.uint8) for i in range(2)]  # cuda:0's and cuda:1's
    seeding.set_rng_state({**state, "cuda": older}, gpu1)
    seeding.set_rng_state({**state, "cuda": older[:1]}, gpu1)  # written where one GPU was visible: nothing to take
    seeding.set_rng_state({**state, "cuda": older[0]}, gpu1)
    assert calls == [([1, 1, 1, 1], gpu1), ([0, 0, 0, 0], gpu1)]


def test_a_gpu_number_under_torchrun_means_each_process_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process on GPU N would collide: cuda:N is read as cuda (a run started on cuda:1 resumes there)."""
    from rnnlab.distributed import select_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.warns(RuntimeWarning, match=r"'cuda:0' under torchrun is read as 'cuda': each process takes the GPU"):
        assert select_device("cuda:0") == torch.device("cuda", 1)


def test_torchrun_with_fewer_gpus_than_processes_or_on_mps_is_told_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.distributed import select_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from rnnlab.distributed import init_process_group

    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index}) was called"))
    refusal = r"^torchrun started more processes on this machine than it has CUDA GPUs \(1\); " \
              r"use --nproc_per_node=1, or device 'cpu'$"
    for device in ("auto", "cuda"):  # before: torch.cuda.set_device(1) failing with "invalid device ordinal"
        with pytest.raises(ConfigError, match=refusal):
            select_device(device)
        with pytest.raises(ConfigError, match=refusal):  # which comes first, before the process group
            init_process_group(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("RANK", "0")
    with pytest.warns(RuntimeWarning, match="under torchrun the processes train on the CPU: Gloo cannot"):
        assert select_device("auto") == torch.device("cpu")  # Gloo cannot reduce tensors on an Apple GPU
    with pytest.raises(ConfigError, match="^torchrun trains on CUDA GPUs or on the CPU, not on MPS; use device 'cpu'$"):
        select_device("mps")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the Apple GPU is fine
    assert select_device("auto") == torch.device("mps")


def test_one_process_on_a_gpu_names_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compare worker made GPU 1 its current device: its runs train there, and their summary says so."""
    from rnnlab.distributed import select_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert select_device("auto") == select_device("cuda") == torch.device("cuda", 1)


def test_an_mps_run_keeps_its_random_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab import seeding

    mps_state = [torch.full((4,), 7, dtype=torch.uint8)]
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: mps_state[0].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda new: mps_state.__setitem__(0, new))
    saved = seeding.rng_state(torch.device("mps"))
    assert saved["mps"].tolist() == [7] * 4 and "cuda" not in saved
    mps_state[0] = torch.zeros(4, dtype=torch.uint8)
    seeding.set_rng_state(saved, torch.device("mps"))
    assert mps_state[0].tolist() == [7] * 4
    seeding.set_rng_state({"cpu": saved["cpu"]}, torch.device("mps"))  # a checkpoint from before: no MPS state
    assert mps_state[0].tolist() == [7] * 4


def test_train_gives_the_caller_its_threads_and_random_streams_back(tmp_path: Path) -> None:
    """A run sets torch's threads and seeds the global generators; what the program does after it
    must not depend on that, and training works inside the caller's torch.no_grad()."""
    import random

    import numpy as np

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        torch.manual_seed(5), random.seed(5), np.random.seed(5)
        expected = (torch.rand(3), random.random(), np.random.rand())
        torch.manual_seed(5), random.seed(5), np.random.seed(5)
        with torch.no_grad():  # an LSTM: trained by autograd
            run = rnnlab.train(tiny("train.iterations=4", "train.eval_every=4", "train.threads=1"), tmp_path / "r",
                               progress=False)
        assert run.status == "completed"
        assert torch.get_num_threads() == threads + 1
        after = (torch.rand(3), random.random(), np.random.rand())
        assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
        assert rnnlab.read_run(run).dir == run.dir  # a Run stands for its folder, as in load and resume
    finally:
        torch.set_num_threads(threads)


def test_what_the_caller_set_around_train_does_not_reach_the_run(tmp_path: Path) -> None:
    """A caller's autocast, inference mode or float64 default, or a second thread training at the
    same time, must not change what a run trains (before: bf16 unrecorded, raw errors, other weights)."""
    import threading

    cfg = tiny("model.cell=gru", "model.hidden=8", "train.iterations=6", "train.eval_every=6")

    def weights(run: rnnlab.Run) -> dict[str, torch.Tensor]:
        return torch.load(run.dir / "checkpoint.pt", weights_only=True)["model"]

    plain = weights(rnnlab.train(cfg, tmp_path / "plain", progress=False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = weights(rnnlab.train(cfg, tmp_path / "autocast", progress=False))
        assert torch.is_autocast_enabled("cpu")  # the caller's, given back
    with torch.inference_mode():
        in_inference = weights(rnnlab.train(cfg, tmp_path / "inference", progress=False))
    torch.set_default_dtype(torch.float64)
    try:
        with_float64 = weights(rnnlab.train(cfg, tmp_path / "float64", progress=False))
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    threaded: dict[int, dict[str, torch.Tensor]] = {}
    threads = [threading.Thread(target=lambda i=i: threaded.__setitem__(
        i, weights(rnnlab.train(cfg, tmp_path / f"thread{i}", progress=False)))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in (under_autocast, in_inference, with_float64, threaded[0], threaded[1]):
        assert all(torch.equal(plain[k], other[k]) for k in plain)


def test_a_default_device_the_caller_set_does_not_reach_the_run(tmp_path: Path) -> None:
    """After ``torch.set_default_device`` (here "meta", which any GPU machine's "cuda" stands for) a
    run, its resume and a loaded model place their tensors themselves (before: a raw RuntimeError)."""
    cfg = tiny("model.cell=gru", "model.hidden=8", "train.iterations=4", "train.eval_every=4",
               "train.checkpoint_every=2")
    plain = rnnlab.train(cfg, tmp_path / "plain", progress=False)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=2)
    torch.set_default_device("meta")
    try:
        run = rnnlab.train(cfg, tmp_path / "meta", progress=False)
        resumed = rnnlab.resume(part, progress=False)
        assert rnnlab.load(plain).evaluate()["test_accuracy"] == plain.test_accuracy
        assert torch.get_default_device().type == "meta"  # the caller's, given back
    finally:
        torch.set_default_device(None)
    weights = [torch.load(r.dir / "checkpoint.pt", weights_only=True)["model"] for r in (plain, run, resumed)]
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])


@pytest.mark.parametrize(("options", "message"), [
    ({"progress": "no"}, r"^progress must be True or False, not a str$"),
    ({"stop_after": -1}, r"^stop_after=-1 must be a whole number of iterations >= 1"),
    ({"stop_after": "3"}, r"^stop_after='3' must be a whole number"),
])
def test_train_and_resume_options_are_checked(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rnnlab.train(tiny(), tmp_path / "run", **options)
    with pytest.raises(ConfigError, match=message):
        rnnlab.resume(tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_a_run_made_in_a_script_takes_a_string_folder_and_has_a_short_repr(tmp_path: Path) -> None:
    run = rnnlab.train(tiny("train.iterations=2", "train.eval_every=2"), tmp_path / "run", progress=False)
    again = rnnlab.Run(str(run.dir), run.config, run.summary)
    assert again.metrics() == run.metrics() and rnnlab.load(again).predict(torch.zeros(1, 28, 28))
    assert repr(again) == f"Run({str(run.dir)!r}, completed, test accuracy {run.test_accuracy:.2f}%)"


@pytest.mark.parametrize("warmup, reach", [(1000, r"never reaches train.lr=\S+"),
                                           (40, r"reaches train.lr=\S+ only at the last step")])
def test_a_warmup_as_long_as_the_budget_is_warned_of(tmp_path: Path, warmup: int, reach: str) -> None:
    with pytest.warns(RuntimeWarning, match=rf"train.warmup={warmup} iterations is the whole budget \(40 iterations\) "
                                            rf"or more: the learning rate {reach}, and the "
                                            r"schedule never starts") as warned:
        run = rnnlab.train(tiny(f"train.warmup={warmup}"), tmp_path / "run", progress=False)
    assert [w.filename for w in warned] == [__file__]  # the caller's line, not one inside rnnlab
    last_lr = [row["lr"] for row in run.metrics() if "lr" in row][-1]
    assert (last_lr == pytest.approx(run.config.train.lr)) == (warmup == 40)


def test_a_save_cut_between_its_two_files_resumes_from_the_later_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint.pt is replaced, then checkpoint.json: a Ctrl-C under torchrun (or a crash) between the two
    leaves a new .pt beside the last save's .json. The .pt's own metadata wins, and the resumed run
    ends as one never stopped (before, it went by the .json and trained a step twice)."""
    from rnnlab import checkpoint as ckpt

    cfg = tiny("train.checkpoint_every=10")
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    real_write_json = ckpt.atomic_write_json

    def cut_at_iteration_20(path: Path, obj: Any) -> None:
        if path.name == ckpt.CHECKPOINT_JSON and obj["iteration"] == 20:
            raise KeyboardInterrupt  # as if the signal landed between the two files
        real_write_json(path, obj)

    monkeypatch.setattr(ckpt, "atomic_write_json", cut_at_iteration_20)
    with pytest.raises(KeyboardInterrupt):
        rnnlab.train(cfg, tmp_path / "part", progress=False)
    monkeypatch.undo()
    assert json.loads((tmp_path / "part" / "checkpoint.json").read_text())["iteration"] == 10  # the last save's
    assert ckpt.load_checkpoint(tmp_path / "part")[1]["iteration"] == 20  # the .pt's own
    assert_resume_matches(whole.dir, tmp_path / "part")


def test_train_warns_at_the_callers_line_of_a_setting_the_config_leaves_unused(tmp_path: Path) -> None:
    """An override that the rest of the config leaves unused is refused; a config built in Python
    cannot be, for its settings are not told apart from their defaults, so rnnlab.train warns."""
    from dataclasses import replace

    from rnnlab.config_ignored import UnusedSettingWarning

    cfg = tiny("train.iterations=2", "train.eval_every=2", "train.optimizer=adam")
    cfg = replace(cfg, train=replace(cfg.train, momentum=0.9))
    with pytest.warns(UnusedSettingWarning, match=r"^this config holds a setting the run leaves unused: "
                                                  r"train.momentum is SGD's and RMSprop's") as caught:
        rnnlab.train(cfg, tmp_path / "run", progress=False)
    assert [w.filename for w in caught if w.category is UnusedSettingWarning] == [__file__]
    switched = rnnlab.apply_overrides(rnnlab.get_preset("dlw-rnn-a").config, TINY[:-2] + ["model.cell=lstm"])
    with warnings.catch_warnings():  # the preset's nonlinearity, which the switch leaves behind, is not the user's
        warnings.simplefilter("error", UnusedSettingWarning)
        rnnlab.train(replace(switched, train=replace(switched.train, iterations=2, eval_every=2)), tmp_path / "lstm",
                     progress=False)
