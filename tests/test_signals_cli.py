"""What the command line says when a signal stops it: how to continue, on every path."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from rnnlab.cli import main

TINY = ["train.device=cpu", "model.hidden=8", "train.iterations=10", "train.eval_every=10", "data.val_size=500",
        "train.threads=1", "train.eval_batch_size=2000", "--no-progress"]


def _ctrl_c_then_again_in_the_test_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C in the first step, and a second one, "more than a second later", as the test
    evaluation starts (the run's first evaluation: eval_every is its whole budget)."""
    from rnnlab import engine, run_summary, stopping

    monkeypatch.setattr(stopping, "SAME_SIGNAL", -1.0)  # as if a second had passed between the two
    learning_rate, evaluate = engine.learning_rate, engine.evaluate

    def ctrl_c_in_the_first_step(cfg: Any, iteration: int, total: int) -> float:
        if iteration == 0:
            signal.raise_signal(signal.SIGINT)
        return learning_rate(cfg, iteration, total)

    def ctrl_c_again(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "learning_rate", ctrl_c_in_the_first_step)
    for module in (engine, run_summary):  # the evaluations in the loop, the test one at the end
        monkeypatch.setattr(module, "evaluate", ctrl_c_again)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_ctrl_c_in_the_test_evaluation_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """The first Ctrl-C saved a checkpoint of its step; the second stops the test evaluation at once,
    and the command says, as the other stops do, how to continue from that checkpoint."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patched:
        _ctrl_c_then_again_in_the_test_evaluation(patched)
        assert main(["train", "--out", str(run_dir), *TINY]) == 130
    assert capsys.readouterr().err == f"rnnlab: interrupted; continue with: rnnlab train --resume {run_dir}\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert json.loads((run_dir / "checkpoint.json").read_text())["iteration"] == 1  # the first Ctrl-C's step
    summary = json.loads((run_dir / "summary.json").read_text())  # says so, as a second SIGTERM's does
    assert summary["status"] == "interrupted" and "test_accuracy" not in summary
    assert summary["message"] == ("stopped by a second Ctrl-C: the run folder keeps the checkpoint of iteration 1; "
                                  f"continue with rnnlab train --resume {run_dir}")
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0  # and the hint is right
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_ctrl_c_in_a_dry_run_names_no_folder(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The dry run's folder is removed on the way out: there is nothing to resume."""
    with monkeypatch.context() as patched:
        _ctrl_c_then_again_in_the_test_evaluation(patched)
        assert main(["train", "--dry-run", *TINY]) == 130
    assert capsys.readouterr().err == "rnnlab: interrupted\n"


def test_a_compare_stopped_by_a_signal_says_to_rerun_the_same_command(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from rnnlab import compare
    from rnnlab.stopping import Terminated

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise stop

    monkeypatch.setattr(compare, "compare", stopped)
    command = ["compare", "dlw-rnn-a", "train.lr=0.05", "--seeds", "1", "--out", str(tmp_path / "my cmp")]
    for stop, code, what in ((Terminated(), 143, "terminated (SIGTERM)"), (KeyboardInterrupt(), 130, "interrupted")):
        assert main(command) == code
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"rnnlab: {what}; rerun the same command to resume: rnnlab compare dlw-rnn-a train.lr=0.05 --seeds 1 "
            f"--out '{tmp_path / 'my cmp'}'")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_ctrl_c_in_the_test_evaluation_of_a_finished_run_still_ends_with_130(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The run completes and is saved (its steps were all done), but the command ends as Ctrl-C asked,
    with 130 and a line saying so: a shell loop of runs stops there."""
    from rnnlab import engine, run_summary

    evaluate, calls = engine.evaluate, []

    def ctrl_c_in_the_test_evaluation(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the first is the periodic evaluation at the budget's end, the second the test set
            signal.raise_signal(signal.SIGINT)
        return evaluate(*args, **kwargs)

    for module in (engine, run_summary):  # the evaluations in the loop, the test one at the end
        monkeypatch.setattr(module, "evaluate", ctrl_c_in_the_test_evaluation)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 130
    assert capsys.readouterr().err == "rnnlab: interrupted as the run ended: it is completed and saved\n"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_an_interrupted_run_without_a_checkpoint_says_there_is_nothing_to_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under torchrun a Ctrl-C before the first periodic save leaves no checkpoint (the processes
    stopped apart cannot save together): no --resume line that would fail."""
    from rnnlab.cli.train import _report
    from rnnlab.run import read_run

    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 0
    for name in ("checkpoint.pt", "checkpoint.json"):
        (tmp_path / "run" / name).unlink()
    run = read_run(tmp_path / "run")
    summary = {**run.summary, "status": "interrupted"}
    capsys.readouterr()
    assert _report(type(run)(run.dir, run.config, summary), False) == 130
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: interrupted before its first checkpoint: nothing to resume") and "--resume" not in err
