"""Stopping a run by signal, in one process: stopping.heed_once (a compare's workers), and a
SIGTERM outside the training loop (the test evaluation of a finished run)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from _signals import signal_after_update, signal_before_save
from rnnlab import engine, run_summary, stopping
from rnnlab.models import native
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.engine import Trainer
from rnnlab.stopping import StopBetweenSteps, Terminated, heed_once, pass_on_sigterm

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=16", "train.batch_size=50", "train.iterations=40", "train.eval_every=20",
        "train.eval_batch_size=2000", "data.val_size=1000", "train.threads=1", "train.checkpoint_every=10"]


def tiny(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), TINY + list(extra))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_heed_once_outside_training_raises_once_then_ignores(signum: int, handlers: None) -> None:
    signal.signal(signum, heed_once)
    with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
        signal.raise_signal(signum)
    assert signal.getsignal(signum) == signal.SIG_IGN
    signal.raise_signal(signum)  # ignored: a second delivery, or the pool ending its workers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_run_heeds_the_first_signal_and_ignores_later_ones(signum: int, handlers: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under heed_once a second signal, however late, does not stop the run at once, and after the
    loop the signal stays ignored, while the run saves; pass_on_sigterm then leaves the process be."""
    monkeypatch.setattr(stopping, "SAME_SIGNAL", -1.0)  # every signal counts as a new one
    signal.signal(signal.SIGINT, heed_once)
    signal.signal(signal.SIGTERM, heed_once)
    stop = StopBetweenSteps()
    signal.raise_signal(signum)
    signal.raise_signal(signum)  # no KeyboardInterrupt, no Terminated
    assert stop.requested and stop.terminated == (signum == signal.SIGTERM)
    stop.restore()
    assert signal.getsignal(signum) == signal.SIG_IGN
    other = signal.SIGINT if signum == signal.SIGTERM else signal.SIGTERM
    assert signal.getsignal(other) is heed_once  # not received: still heeded once
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pass_on_sigterm(Path("run"))  # returns: the caller ends the process


@pytest.mark.parametrize("handler", ["heed_once", "command line"])
def test_a_sigterm_just_after_a_ctrl_c_still_skips_the_test_evaluation(handler: str, handlers: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a second of a Ctrl-C a SIGTERM does not stop the step at once, but it still says that
    the process is to end soon (no test evaluation, the process ends by it)."""
    from rnnlab import stopping
    from rnnlab.stopping import raise_terminated

    monkeypatch.setattr(stopping, "SAME_SIGNAL", 3600.0)  # within "a second", however slow the machine

    signal.signal(signal.SIGINT, heed_once if handler == "heed_once" else signal.default_int_handler)
    signal.signal(signal.SIGTERM, heed_once if handler == "heed_once" else raise_terminated)
    stop = StopBetweenSteps()
    signal.raise_signal(signal.SIGINT)
    assert stop.requested and not stop.terminated
    signal.raise_signal(signal.SIGTERM)
    assert stop.terminated
    stop.restore()


def test_a_sigterm_while_a_heed_once_run_saves_is_ignored(tmp_path: Path, handlers: None) -> None:
    """A compare's worker: the pool sends SIGTERM to every worker when one ends. One that lands
    while this run writes its last checkpoint must not stop it: the checkpoint of the step under
    way and the summary are written, and fit returns (the worker then ends the process)."""
    signal.signal(signal.SIGTERM, heed_once)
    trainer = Trainer(tiny(), tmp_path / "run", progress=False)
    signal_after_update(trainer, 13, signal.SIGTERM)
    signal_before_save(trainer, 13, signal.SIGTERM)  # the same SIGTERM again, in the save on the way out
    summary = trainer.fit()
    assert summary["status"] == "interrupted" and "test_accuracy" not in summary
    assert "stopped by SIGTERM" in summary["message"]
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["iteration"] == 13
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 13
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # says that one came


@pytest.mark.parametrize("where", ["cut-evaluation", "test-evaluation", "last-step"])
def test_a_sigterm_after_the_last_step_skips_the_test_evaluation(where: str, tmp_path: Path, handlers: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM that cuts a finished run's test evaluation (cut-evaluation: as a second one a while
    after the first, or one under torchrun, does), or a first one in that evaluation (tens of seconds
    on pixel MNIST) or in the last step, which skips the evaluation as it would during training: the
    kill comes soon. The final checkpoint is saved, the summary says interrupted, the command names
    the folder, and `--resume` measures the test set: the same figures and weights as a run never stopped."""
    from rnnlab.stopping import sigterm_raises

    real_evaluate, real_step, calls = engine.evaluate, Trainer._forward, []

    def sigterm_in_the_test_evaluation(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # validation at 20 and at 40, then the test set
            if where == "cut-evaluation":
                raise Terminated
            signal.raise_signal(signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    def sigterm_in_the_last_step(self: Trainer, batch: torch.Tensor) -> Any:
        if self.iteration == self.total - 1:
            signal.raise_signal(signal.SIGTERM)
        return real_step(self, batch)

    if where == "last-step":
        monkeypatch.setattr(Trainer, "_forward", sigterm_in_the_last_step)
    else:
        for module in (engine, run_summary):  # the evaluations in the loop, the test one at the end
            monkeypatch.setattr(module, "evaluate", sigterm_in_the_test_evaluation)
    with sigterm_raises(), pytest.raises(Terminated) as stopped:
        rnnlab.train(tiny(), tmp_path / "run", progress=False)
    assert stopped.value.run_dir == tmp_path / "run"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "stopped by SIGTERM" in summary["message"]
    assert "test_accuracy" not in summary
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["iteration"] == 40
    monkeypatch.undo()
    resumed = rnnlab.resume(tmp_path / "run", progress=False)
    whole = rnnlab.train(tiny(), tmp_path / "whole", progress=False)
    assert resumed.status == "completed" and resumed.test_accuracy == whole.test_accuracy
    a = torch.load(whole.dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("where", ["nan-step", "summary"])
def test_a_sigterm_as_the_loss_turns_nan_names_no_folder_to_resume(where: str, tmp_path: Path, handlers: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first SIGTERM lands in a step whose loss turns NaN, or while the diverged run's summary
    is made: the run still ends diverged, with its advice, the process then ends as the signal asked,
    but `--resume` would refuse that folder, so the command must not tell the user to run it."""
    from rnnlab.stopping import sigterm_raises

    real_step, real_describe, calls = Trainer._forward, run_summary.describe_datasets, []

    def sigterm_at_the_nan(self: Trainer, batch: torch.Tensor) -> Any:
        loss, totals = real_step(self, batch)
        if not torch.isfinite(loss) and not calls:  # the first non-finite loss
            calls.append(1)
            signal.raise_signal(signal.SIGTERM)
        return loss, totals

    def sigterm_in_the_summary(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGTERM)
        return real_describe(*args, **kwargs)

    if where == "nan-step":
        monkeypatch.setattr(Trainer, "_forward", sigterm_at_the_nan)
        monkeypatch.setattr(native, "ENABLED", False)  # the steps that look for NaN through _forward, not in C
    else:
        monkeypatch.setattr(run_summary, "describe_datasets", sigterm_in_the_summary)
    cfg = tiny("model.cell=rnn", "model.nonlinearity=relu", "model.init=identity", "train.optimizer=sgd",
               "train.lr=1e6", "train.clip=0", "train.schedule=none")
    with sigterm_raises(), pytest.raises(Terminated) as stopped:
        rnnlab.train(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "lower the learning rate" in summary["message"]
    assert stopped.value.run_dir is None


def test_sigterm_before_the_run_folder_exists_names_no_folder(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def terminated(*args: Any, **kwargs: Any) -> Any:
        raise Terminated

    monkeypatch.setattr(engine, "load_datasets", terminated)  # SIGTERM while the data loads
    with pytest.raises(Terminated) as stopped:
        rnnlab.train(tiny(), tmp_path / "run", progress=False)
    assert stopped.value.run_dir is None


@pytest.mark.parametrize("again", ["at-once", "a-second-later"])
def test_the_same_sigterm_twice_is_heeded_once_even_after_the_loop(tmp_path: Path, again: str, handlers: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler that signals every process of a job, and a wrapper that passes the signal on:
    the same SIGTERM twice, the second landing once the loop has ended, while the run saves. It
    is ignored: the checkpoint of the step and the summary are written. A second SIGTERM more
    than a second later stops at once (the last periodic checkpoint stands)."""
    from rnnlab import stopping
    from rnnlab.stopping import sigterm_raises

    # As if a second had passed between the two, or as if none had, however slow the machine.
    monkeypatch.setattr(stopping, "SAME_SIGNAL", -1.0 if again == "a-second-later" else 3600.0)
    trainer = Trainer(tiny(), tmp_path / "run", progress=False)
    signal_after_update(trainer, 13, signal.SIGTERM)
    signal_before_save(trainer, 13, signal.SIGTERM)  # the same SIGTERM again, in the save on the way out
    with sigterm_raises(), pytest.raises(Terminated) as stopped:
        trainer.fit()
    saved = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["iteration"]
    if again == "at-once":
        assert stopped.value.run_dir == tmp_path / "run" and saved == 13
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 13
    else:
        assert saved == 10 and not (tmp_path / "run" / "summary.json").exists()
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".") and p.name != ".rnnlab.lock"]


def test_a_ctrl_c_in_rnnlab_train_saves_the_run_then_stops_the_script(tmp_path: Path, handlers: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Called from Python, a Ctrl-C ends the run as on the command line (the step saved, the test set
    evaluated), then raises a KeyboardInterrupt that carries the run: a loop of runs stops there."""
    from rnnlab import run as run_module
    from rnnlab.stopping import Interrupted

    class CtrlCAtStep5(run_module.Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            signal_after_update(self, 5, signal.SIGINT)

    monkeypatch.setattr(run_module, "Trainer", CtrlCAtStep5)
    started = []
    with pytest.raises(KeyboardInterrupt) as stopped:
        for name in ("a", "b"):
            started.append(name)
            rnnlab.train(tiny(), tmp_path / name, progress=False)
    assert started == ["a"] and isinstance(stopped.value, Interrupted)
    run = stopped.value.run
    assert run.status == "interrupted" and run.dir == stopped.value.run_dir == tmp_path / "a"
    assert "test_accuracy" in run.summary and "rnnlab.resume(" in str(stopped.value)
    assert json.loads((tmp_path / "a" / "checkpoint.json").read_text())["iteration"] == 5
    monkeypatch.undo()
    assert rnnlab.resume(run, progress=False).status == "completed"


def test_a_ctrl_c_in_the_last_step_still_stops_the_script(tmp_path: Path, handlers: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands as the run ends (its last step, then the final save and test evaluation)
    lets the run complete, and still stops the caller: the run comes with the interrupt, completed."""
    import pickle

    from rnnlab import run as run_module
    from rnnlab.stopping import Interrupted

    class CtrlCInTheLastStep(run_module.Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            signal_after_update(self, self.total, signal.SIGINT)

    monkeypatch.setattr(run_module, "Trainer", CtrlCInTheLastStep)
    with pytest.raises(Interrupted) as stopped:
        rnnlab.train(tiny(), tmp_path / "a", progress=False)
    run = stopped.value.run
    assert run.status == "completed" and "test_accuracy" in run.summary
    assert str(stopped.value) == f"interrupted; the run had ended (completed), saved, in {tmp_path / 'a'}"
    again = pickle.loads(pickle.dumps(stopped.value))  # a process pool's worker sends it back
    assert type(again) is Interrupted and again.run.summary == run.summary and again.run_dir == run.dir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_a_checkpoint_is_written_waits_until_it_is_noted(signum: int, tmp_path: Path, handlers: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun nothing holds a Ctrl-C between steps: one that landed after checkpoint.json was
    written but before the trainer noted it left summary.json naming the checkpoint before (CI). The
    save now finishes and notes itself first; the signal then takes effect as it would have."""
    from rnnlab import checkpoint as ckpt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a torchrun worker
    signal.signal(signal.SIGTERM, stopping.raise_terminated)
    trainer = Trainer(tiny(), tmp_path / "run", progress=False)
    trainer.train_until(10)
    written = ckpt.save_checkpoint

    def write_then_signal(*args: Any) -> None:
        written(*args)
        signal.raise_signal(signum)  # after the last file, before the trainer notes it

    monkeypatch.setattr(ckpt, "save_checkpoint", write_then_signal)
    trainer.iteration = 12  # a later save than the one train_until made
    with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
        trainer.save()
    assert trainer.saved_at == 12 == json.loads((tmp_path / "run" / "checkpoint.json").read_text())["iteration"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back
    assert signal.getsignal(signal.SIGTERM) is stopping.raise_terminated


@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_stopped_past_its_last_checkpoint_is_summarised_as_that_checkpoint(processes: int, tmp_path: Path,
                                                                                 handlers: None) -> None:
    """A stop with no save on the way out (under torchrun each process at its own step; in one process,
    a second signal inside a step) leaves the last periodic checkpoint. summary.json said the iterations
    trained (13 here, 132 of a torchrun run whose checkpoint held 100), so it and the checkpoint disagreed
    and a report took the steps a resume trains again as done: it now counts what the folder keeps."""
    trainer = Trainer(tiny("train.checkpoint_every=10"), tmp_path / "run", progress=False)
    trainer.world = processes  # as under torchrun: no checkpoint nor evaluation after the stop
    update, calls = trainer.optimizer.step, []

    def update_then_stop(*args: object, **kwargs: object) -> object:
        result = update(*args, **kwargs)
        calls.append(1)
        if len(calls) == 14 - (processes == 1):  # one process: cut inside step 13, which is then not kept
            raise KeyboardInterrupt
        return result

    trainer.optimizer.step = update_then_stop
    summary = trainer.fit()
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and trainer.iteration == 12 + (processes == 2) and trainer.saved_at == 10
    assert written["iterations"] == checkpoint["iteration"] == 10 and written["epochs"] == round(checkpoint["epoch"], 4)
    assert written["samples"] == checkpoint["samples"] == 500
    assert written["train_seconds"] == round(checkpoint["train_seconds"], 3)
    # Not the torn step's weights tested: no test figures, and the message says what the folder keeps
    assert "test_accuracy" not in written and "keeps the checkpoint of iteration 10; continue with" in written["message"]


def test_a_run_stopped_past_its_last_checkpoint_names_the_checkpoints_best_validation(tmp_path: Path,
                                                                                      handlers: None) -> None:
    """train.keep_best: the best validation the summary names is the one the kept checkpoint holds (a
    resume goes on from it), not one measured after it in steps the resume trains again."""
    trainer = Trainer(tiny("train.checkpoint_every=10", "train.eval_every=4", "train.keep_best=true"),
                      tmp_path / "run", progress=False)
    trainer.world = 2  # as under torchrun: no checkpoint nor evaluation after the stop
    update, calls = trainer.optimizer.step, []

    def update_then_stop(*args: object, **kwargs: object) -> object:
        result = update(*args, **kwargs)
        calls.append(1)
        if len(calls) == 14:
            raise KeyboardInterrupt
        return result

    trainer.optimizer.step = update_then_stop
    trainer.best.update = lambda accuracy, iteration, model: setattr(trainer.best, "iteration", iteration) or \
        setattr(trainer.best, "accuracy", float(iteration)) or False  # each evaluation the best so far
    trainer.fit()
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert trainer.best.iteration == 12 and checkpoint["best"]["iteration"] == 8
    assert written["best_val"]["iteration"] == 8 and written["best_val"]["val_accuracy"] == 8.0
