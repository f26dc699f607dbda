"""Model selection on the validation split: train.keep_best and train.patience."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.engine import Trainer
from rnnlab.errors import CheckpointError, ConfigError
from rnnlab.selection import BestByValidation

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=16", "train.batch_size=50", "train.iterations=40", "train.eval_every=5",
        "train.eval_batch_size=2000", "data.val_size=1000", "train.threads=1", "train.checkpoint_every=1000"]
# Validation accuracy by iteration, imposed on the real evaluations: best at 10, then three worse.
SCRIPTED = {5: 50.0, 10: 70.0, 15: 60.0, 20: 70.0, 25: 55.0, 30: 80.0, 35: 10.0, 40: 10.0}


def tiny(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), TINY + list(extra))


def test_best_by_validation_counts_evaluations_without_a_better_accuracy() -> None:
    model = torch.nn.Linear(2, 1)
    best = BestByValidation(keep_weights=True, patience=2)
    assert not best.update(50.0, 5, model)
    with torch.no_grad():
        model.weight.add_(1.0)  # the copy is of the weights then, not a view that follows them
    assert not best.update(50.0, 10, model)  # a tie is not better: the earlier weights stay
    assert best.iteration == 5 and not torch.equal(best.weights["weight"], model.weight)
    assert best.update(40.0, 15, model)  # two evaluations without a better one
    restored = BestByValidation(keep_weights=True, patience=2)
    restored.load_state(json.loads(json.dumps(best.state())), best.weights)
    assert (restored.accuracy, restored.iteration, restored.evaluations_since) == (50.0, 5, 2)
    fresh = BestByValidation(keep_weights=False, patience=0)
    fresh.load_state(fresh.state(), None)  # nothing measured yet
    assert fresh.accuracy == -math.inf and not fresh.active


@pytest.mark.parametrize("overrides", [["data.val_size=0"], ["train.protocol=tutorial"]])
@pytest.mark.parametrize("setting", ["train.keep_best=true", "train.patience=3"])
def test_selection_needs_a_validation_split(overrides: list[str], setting: str) -> None:
    with pytest.raises(ConfigError, match="needs a validation split to measure progress on"):
        tiny(setting, *overrides)


def _scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Trainer._log_evaluation

    def log_evaluation(self: Trainer, *args: Any) -> dict[str, Any]:
        row = real(self, *args)
        row["val_accuracy"] = SCRIPTED[self.iteration]
        return row

    monkeypatch.setattr(Trainer, "_log_evaluation", log_evaluation)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_keep_best_and_patience_end_with_the_best_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at_best = rnnlab.train(tiny(), tmp_path / "at-best", progress=False, stop_after=10)  # the same run, to 10
    _scripted(monkeypatch)
    run = rnnlab.train(tiny("train.keep_best=true", "train.patience=3"), tmp_path / "run", progress=False)
    summary = run.summary
    assert summary["status"] == "completed" and summary["iterations"] == 25  # 15, 20, 25: none beat 70
    assert summary["stopped_early"] == {"iteration": 25, "patience": 3}
    assert summary["best_val"] == {"iteration": 10, "val_accuracy": 70.0, "weights": "best"}
    saved, expected = _weights(run.dir), _weights(at_best.dir)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    # The summary's test accuracy is that of the saved weights, as `rnnlab eval` measures it.
    assert rnnlab.load(run.dir).evaluate()["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-4)
    with pytest.raises(CheckpointError, match=r"stopped early at iteration 25 \(no better val accuracy in 3 "
                                              r"evaluations, train.patience\).*nothing to resume"):
        rnnlab.resume(run.dir, progress=False)


def test_patience_alone_keeps_the_last_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at_stop = rnnlab.train(tiny(), tmp_path / "at-stop", progress=False, stop_after=25)
    _scripted(monkeypatch)
    run = rnnlab.train(tiny("train.patience=3"), tmp_path / "run", progress=False)
    assert run.summary["best_val"]["weights"] == "last" and run.summary["iterations"] == 25
    saved, expected = _weights(run.dir), _weights(at_stop.dir)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_a_resumed_run_chooses_as_an_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch)
    cfg = tiny("train.keep_best=true", "train.patience=4")  # best at 30; 35 and 40 are too few to stop
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=33)  # after the best, at 30
    assert part.status == "stopped"
    assert json.loads((part.dir / "checkpoint.json").read_text())["best"]["iteration"] == 30
    resumed = rnnlab.resume(part.dir, progress=False)
    assert resumed.summary["best_val"] == whole.summary["best_val"] == {"iteration": 30, "val_accuracy": 80.0,
                                                                        "weights": "best"}
    assert "stopped_early" not in whole.summary
    a, b = _weights(whole.dir), _weights(resumed.dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_early_and_cut_in_its_test_evaluation_resumes_without_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patience ran out at 25, then a signal cut the final test evaluation: the checkpoint is of 25,
    and resuming must only finish the run, not train on past the early stop."""
    _scripted(monkeypatch)
    cfg = tiny("train.keep_best=true", "train.patience=3")
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    real = Trainer._finish

    def cut_in_the_test(self: Trainer, status: str) -> dict[str, Any]:
        if status == "completed":  # after the checkpoint is saved, in the test evaluation
            raise KeyboardInterrupt
        return real(self, status)

    monkeypatch.setattr(Trainer, "_finish", cut_in_the_test)
    with pytest.raises(KeyboardInterrupt):
        rnnlab.train(cfg, tmp_path / "cut", progress=False)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["iteration"] == 25
    monkeypatch.setattr(Trainer, "_finish", real)
    resumed = rnnlab.resume(tmp_path / "cut", progress=False)
    for key in ("iterations", "stopped_early", "best_val", "test_accuracy"):
        assert resumed.summary[key] == whole.summary[key], key
    a, b = _weights(whole.dir), _weights(resumed.dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
