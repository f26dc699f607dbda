"""Gradient flow through time: the unrolled rerun is the model, and its gradients are autograd's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_sequence_files import synthetic

from rnnlab.cli import main
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.data.splits import load_datasets
from rnnlab.errors import ConfigError
from rnnlab.gradients import format_flow, gradient_flow, unrolled_states
from rnnlab.models import create_model


def model_for(*overrides: str, impl: str = "auto"):
    cfg = apply_overrides(RunConfig(), ["model.hidden=6", f"model.impl={impl}", *overrides])
    torch.manual_seed(0)
    return create_model(cfg.model, input_size=5, seq_len=7, num_classes=3, input_mean=0.2, input_std=0.5)


CASES = [
    ["model.cell=rnn", "model.nonlinearity=tanh"],
    ["model.cell=rnn", "model.nonlinearity=relu", "model.layers=2", "model.readout=all"],
    ["model.cell=lstm", "model.bidirectional=true"],
    ["model.cell=gru", "model.layers=2", "model.readout=mean", "model.dropout=0.5"],
]


@pytest.mark.parametrize("overrides", CASES)
def test_unrolled_states_are_the_models_own(overrides: list[str]) -> None:
    model = model_for(*overrides)
    x, y = torch.rand(4, 7, 5), torch.tensor([0, 1, 2, 1])
    flow = gradient_flow(model, x, y)
    layers = 2 if "model.layers=2" in overrides else 1
    directions = 2 if "model.bidirectional=true" in overrides else 1
    assert flow.norms.shape == (layers, directions, 7)
    assert flow.state_difference < 1e-5  # the step-by-step rerun equals the model's fused run
    assert torch.isfinite(flow.norms).all() and (flow.norms > 0).all()
    assert all(p.grad is None for p in model.parameters())  # parameters untouched
    assert model.training  # mode restored
    with torch.no_grad():
        assert flow.loss == pytest.approx(F.cross_entropy(model.eval()(x), y).item(), rel=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_norms_equal_the_gradient_of_a_restarted_torch_nn_run(cell: str) -> None:
    """dL/dh_t (and an LSTM's dL/dc_t) is the gradient w.r.t. the initial state of torch.nn's
    own run of steps t+1..T started from (h_t, c_t): an independent way to get the same numbers."""
    model = model_for(f"model.cell={cell}", impl="torch").eval()
    x, y = torch.rand(4, 7, 5), torch.tensor([2, 0, 1, 1])
    flow = gradient_flow(model, x, y)
    assert (flow.cell_norms is not None) == (cell == "lstm")
    with torch.no_grad():
        _, states, cells = unrolled_states(model, x)
    t = 2
    h = states[0][0][t].detach().clone()[None].requires_grad_()  # (1, B, H)
    rest = model.standardize(x[:, t + 1:])  # (B, T - t - 1, F)
    if cell == "lstm":
        c = cells[0][0][t].detach().clone()[None].requires_grad_()
        out, _ = model.rnn(rest, (h, c))
    else:
        out, _ = model.rnn(rest, h)
    loss = F.cross_entropy(model.head(model.features(out)), y, reduction="sum")
    grads = torch.autograd.grad(loss, [h, c] if cell == "lstm" else [h])
    assert flow.norms[0, 0, t].item() == pytest.approx(grads[0][0].norm(dim=1).mean().item(), rel=1e-4)
    if cell == "lstm":
        # The total dL/dc_t also flows through h_t = o_t * tanh(c_t), which the restarted run
        # takes as a separate input: add that path, with o_t from step t's gates (order i, f, g, o).
        inputs = model.standardize(x[:, t])
        gates = inputs @ model.rnn.weight_ih_l0.T + model.rnn.bias_ih_l0 \
            + states[0][0][t - 1] @ model.rnn.weight_hh_l0.T + model.rnn.bias_hh_l0  # (B, 4H)
        o = torch.sigmoid(gates[:, 3 * model.config.hidden:])
        total = grads[1][0] + grads[0][0] * o * (1 - torch.tanh(cells[0][0][t]) ** 2)
        assert flow.cell_norms[0, 0, t].item() == pytest.approx(total.norm(dim=1).mean().item(), rel=1e-4)
        assert "layer 1 c" in format_flow(flow, "lstm")


def test_a_relu_rnn_at_default_init_vanishes_and_the_table_says_so() -> None:
    model = model_for("model.cell=rnn", "model.nonlinearity=relu")
    flow = gradient_flow(model, torch.rand(8, 7, 5), torch.arange(8) % 3)
    text = format_flow(flow, "relu rnn", rows=4)
    assert text.splitlines()[0] == "relu rnn" and "step read first / step read last" in text
    assert len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == 4  # 4 of 7 steps shown


def test_cli_fresh_and_trained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = ["model.hidden=8", "train.iterations=5", "train.eval_every=5", "data.val_size=500", "train.threads=1"]
    assert main(["gradients", "--preset", "dlw-rnn-c", "--images", "16", "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "dlw-rnn-c: at initialisation" in out and "layer 2" in out and (tmp_path / "g.png").stat().st_size > 1000
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--out", str(run), "--model", "lstm", *tiny]) == 0
    capsys.readouterr()
    assert main(["gradients", "--run", str(run), "--images", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 8 and len(report["norms"][0][0]) == 28 and report["state_difference"] < 1e-5


def small_file(tmp_path: Path, n: int = 300) -> Path:
    """A sequence file of ``n`` training sequences (12 steps, 2 features): fewer than data.val_size's 5000."""
    (x_train, y_train), (x_test, y_test) = synthetic(n, 0), synthetic(40, 1)
    path = tmp_path / "small.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def test_cli_fresh_model_on_a_file_smaller_than_the_validation_split(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    # Training refuses this file with the default data.val_size=5000; gradients never validates.
    assert main(["gradients", "--data-file", str(small_file(tmp_path)), "--hidden", "8", "--images", "16",
                 "--json"]) == 0
    flow = json.loads(capsys.readouterr().out)
    assert flow["samples"] == 16 and len(flow["norms"][0][0]) == 12


def test_a_split_that_fits_is_carved_as_training_carves_it(tmp_path: Path) -> None:
    """Without a validation split to read, the training split (where standardisation statistics
    come from) is still training's own whenever training could run."""
    config = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={small_file(tmp_path)}"])
    with pytest.raises(ConfigError, match="would leave no training data"):
        load_datasets(config)
    whole = load_datasets(config, needs_validation=False)
    assert len(whole.train) == 300 and whole.val is None
    fits = apply_overrides(config, ["data.val_size=100"])
    carved, trained = load_datasets(fits, needs_validation=False), load_datasets(fits)
    assert torch.equal(carved.train.x, trained.train.x) and torch.equal(carved.val.x, trained.val.x)


@pytest.mark.parametrize(("args", "fragment"), [
    (["gradients", "--images", "0"], "--images=0 must be >= 1"),
    (["gradients", "--run", "x", "--preset", "dlw-rnn-a"], "drop the other settings (--preset)"),
    # Flags and overrides too: the run's saved config decides the model, so they would be ignored.
    (["gradients", "--run", "x", "--hidden", "32"],
     "--run uses a trained run with its own saved config; drop the other settings (--hidden)"),
    (["gradients", "--run", "x", "model.hidden=32", "--seed", "3"], "drop the other settings (--seed model.hidden=32)"),
    (["gradients", "--plot", "g.txt"], "--plot g.txt has an unsupported extension .txt; use one of: "),
    (["gradients", "--plot", "g"], "--plot g has no extension; use one of: "),
    (["gradients", "--preset", "nope"], "unknown preset 'nope'"),
])
def test_cli_mistakes(args: list[str], fragment: str, capsys: pytest.CaptureFixture, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a mistake that slipped through would write its plot here
    assert main(args) == 2 and fragment in capsys.readouterr().err


def test_cli_plot_formats_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["gradients", "--plot", "g.txt"]) == 2
    err = capsys.readouterr().err
    assert "png, ps" in err and "svg" in err and "pdf" in err and "(e.g. g.png)" in err and err.count("\n") == 1
    folder = tmp_path / "d"
    folder.mkdir()
    assert main(["gradients", "--images", "4", "--plot", str(folder)]) == 2  # savefig would write d.png
    assert capsys.readouterr().err == (f"rnnlab: error: --plot {folder} is a directory; "
                                       f"give a file name such as {folder}/plot.png\n")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list(folder.iterdir()) == []
    assert main(["gradients", "--preset", "dlw-rnn-a", "--images", "4", "--plot", str(tmp_path / "g.SVG")]) == 0
    assert f"plot: {tmp_path / 'g.SVG'}" in capsys.readouterr().out and (tmp_path / "g.SVG").read_text().count("<svg")
