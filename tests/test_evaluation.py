"""evaluate(): the loss and accuracy of one plain pass over a split, in batches, on any device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _fixtures_runs import save_untrained_run

from rnnlab.cli import main
from rnnlab.config import ModelConfig
from rnnlab.data import SequenceData
from rnnlab.evaluation import confusion_matrix, evaluate
from rnnlab.models import create_model


def split(lengths: bool, count: int = 23, steps: int = 6, features: int = 3) -> SequenceData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (count, steps, features), dtype=torch.uint8, generator=generator)
    if not lengths:
        return SequenceData(x, torch.randint(0, 4, (count,), generator=generator))
    sizes = torch.randint(1, steps + 1, (count,), generator=generator)
    x[torch.arange(steps)[None, :] >= sizes[:, None]] = 0  # zero padding past each end
    return SequenceData(x, torch.randint(0, 4, (count,), generator=generator), sizes)


def model_for(data: SequenceData, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(cell="gru", hidden=8, **options)  # type: ignore[arg-type]
    return create_model(config, input_size=data.seq_shape[1], seq_len=data.seq_shape[0], num_classes=4)


@pytest.mark.parametrize(("lengths", "options"), [(False, {}), (False, {"readout": "all"}),
                                                   (True, {"readout": "mean"}),
                                                   (True, {"bidirectional": True})])
def test_evaluation_in_batches_equals_one_pass_over_the_split(lengths: bool, options: dict) -> None:
    data = split(lengths)
    model = model_for(data, **options)
    with torch.no_grad():
        logits = model(data.x.float() / 255, data.lengths)  # (N, C), the whole split at once
    expected_loss = F.cross_entropy(logits, data.y).item()
    expected_accuracy = 100.0 * (logits.argmax(1) == data.y).float().mean().item()
    result = evaluate(model, data, batch_size=5)  # 23 = 4 x 5 + 3: a last partial batch
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(expected_accuracy)
    assert torch.equal(result.predictions, logits.argmax(1))
    assert model.training  # evaluate() restores the mode it found


def test_confusion_matrix_counts_true_classes_by_row() -> None:
    matrix = confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3)
    assert matrix == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    # Mistakes on both sides of the diagonal, and the last class right.
    assert confusion_matrix(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]), 3) == \
        [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{"readout": "mean"}, {"bidirectional": True}, {}])
def test_a_gpu_evaluation_equals_the_cpu_one_and_takes_lengths_from_either_device(options: dict) -> None:
    data = split(True)
    model = model_for(data, **options)
    on_cpu = evaluate(model, data, batch_size=5)
    model.cuda()
    on_gpu = evaluate(model, data, batch_size=5, device="cuda")  # the split goes over in one copy
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-4)
    assert torch.equal(on_gpu.predictions, on_cpu.predictions)
    x = data.x.float().cuda() / 255
    with torch.no_grad():  # lengths on the CPU or on the GPU, the same logits
        assert torch.allclose(model(x, data.lengths), model(x, data.lengths.cuda()))


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    """A run folder with fresh weights of a tiny LSTM on MNIST rows (no training)."""
    return save_untrained_run(tmp_path / "run", ["model.hidden=8"])


def test_cli_eval_draws_the_confusion_matrix_into_the_run(small_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(small_run)]) == 0
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out  # and says where the figure went, on stderr (stdout may be --json's)
    assert captured.err == f"wrote {small_run / 'confusion.png'} (--no-plot skips it)\n"
    png = (small_run / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000  # a drawn figure, not an empty image


def test_cli_eval_of_a_run_still_training_says_which_checkpoint_it_evaluates(small_run: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    from _locks import held_by_another

    iteration = json.loads((small_run / "checkpoint.json").read_text())["iteration"]
    with held_by_another(small_run):
        assert main(["eval", str(small_run), "--no-plot", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"rnnlab: note: a run is still training in {small_run}; this evaluates its checkpoint "
                            f"of iteration {iteration}\n")
    assert json.loads(captured.out)["test_accuracy"] >= 0  # stdout stays one JSON document


def test_cli_eval_batch_size_changes_the_batches_not_the_figures(small_run: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.evaluation

    sizes: list[int] = []
    real_evaluate = rnnlab.evaluation.evaluate
    monkeypatch.setattr(rnnlab.evaluation, "evaluate",
                        lambda *args, **kwargs: sizes.append(kwargs["batch_size"]) or real_evaluate(*args, **kwargs))
    reports = []
    for extra in ([], ["--batch-size", "3000"]):  # 10,000 = 3 x 3000 + a last batch of 1000
        assert main(["eval", str(small_run), "--json", "--no-plot", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    default, batched = reports
    assert sizes == [1000, 3000]
    assert batched["samples"] == default["samples"] == 10_000
    assert batched["test_accuracy"] == default["test_accuracy"]
    assert batched["confusion_matrix"] == default["confusion_matrix"]
    assert batched["test_loss"] == pytest.approx(default["test_loss"], rel=1e-5)
    assert main(["eval", str(small_run), "--batch-size", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "rnnlab: error: --batch-size=0 must be >= 1\n"


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_eval_prints_its_figures_when_the_plot_cannot_be_written(
        small_run: Path, as_json: bool, capsys: pytest.CaptureFixture) -> None:
    """A folder where confusion.png goes: the evaluation is printed all the same, exit 0, and one
    warning line on stderr names the path, the reason and --no-plot."""
    assert main(["eval", str(small_run), "--no-plot", *(["--json"] if as_json else [])]) == 0
    expected = capsys.readouterr()
    assert expected.err == ""
    blocker = small_run / "confusion.png"
    assert not blocker.exists()  # --no-plot draws nothing
    blocker.mkdir()
    assert main(["eval", str(small_run), *(["--json"] if as_json else [])]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected.out  # the figures, unchanged: the same text or the same JSON
    if as_json:
        report = json.loads(captured.out)
        assert report["samples"] == 10_000 and sum(map(sum, report["confusion_matrix"])) == 10_000
    else:
        assert "test accuracy" in captured.out and "confusion matrix" in captured.out
    assert captured.err == (f"rnnlab: warning: could not write the confusion-matrix plot {blocker}: Is a directory "
                            "(the evaluation above is complete; --no-plot skips the plot)\n")
    # Nothing written into the folder in the way, and no temporary file left beside it.
    assert list(blocker.iterdir()) == []
    assert sorted(p.name for p in small_run.iterdir()) == ["checkpoint.json", "checkpoint.pt", "config.toml",
                                                           "confusion.png"]


def test_the_confusion_plot_names_the_classes_where_they_have_names(tmp_path, monkeypatch) -> None:
    from rnnlab import plots
    from rnnlab.cli.evaluate import write_confusion_plot

    drawn = []
    monkeypatch.setattr(plots, "confusion_matrix_png", lambda matrix, path, title, labels=None: drawn.append(labels))
    assert write_confusion_plot({"confusion_matrix": [[1, 0], [0, 1]], "class_names": ["up", "down"]}, str(tmp_path))
    assert write_confusion_plot({"confusion_matrix": [[1, 0], [0, 1]], "class_names": None}, str(tmp_path))
    assert drawn == [["0 up", "1 down"], None]  # MNIST's digits are their own names


def test_cli_eval_of_many_classes_lists_the_lowest_and_draws_no_plot(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """1000 classes (a sequence file may declare that many): the text gives the 10 lowest classes and
    no matrix (a 5 MB one), the plot (36 GiB to render) is skipped with one note, and --json has all."""
    import numpy as np

    generator = np.random.default_rng(0)
    x, y = generator.normal(size=(40, 4, 2)).astype(np.float32), generator.integers(0, 1000, 40)
    np.savez(tmp_path / "many.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20], num_classes=np.array(1000))
    run_dir = tmp_path / "run"
    assert main(["train", "--data-file", str(tmp_path / "many.npz"), "--hidden", "8", "--iterations", "2",
                 "data.val_size=0", "--out", str(run_dir), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json", "--no-plot"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["confusion_matrix"]) == len(report["per_class_accuracy"]) == 1000
    tested = sorted((a, c) for c, a in enumerate(report["per_class_accuracy"]) if a is not None)
    assert main(["eval", str(run_dir)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[2] == (f"per-class accuracy, the 10 lowest of 1000 classes; {1000 - len(tested)} have no test "
                        "samples (--json lists all):")
    assert [int(line.split(":")[0]) for line in lines[3:13]] == [c for _, c in tested[:10]]
    assert lines[13:] == ["", "confusion matrix: 1000 x 1000, too large to print (--json gives it)"]
    assert captured.err == (f"rnnlab: note: {run_dir / 'confusion.png'} not drawn: 1000 classes are more than a "
                            "plot can show (at most 40); --json gives the confusion matrix\n")
    assert not (run_dir / "confusion.png").exists()


def test_a_report_at_the_limit_of_classes_is_printed_in_full() -> None:
    from rnnlab.cli.evaluate import format_report

    def report(n: int) -> dict:
        return {"test_accuracy": 50.0, "samples": 2 * n, "test_loss": 1.0, "class_names": None,
                "per_class_accuracy": [100.0 * (c % 2) for c in range(n)],
                "confusion_matrix": [[2 * (c % 2) if c == j else 0 for j in range(n)] for c in range(n)]}

    text = format_report(report(40)).splitlines()
    assert text[2] == "per-class accuracy:" and len(text) == 3 + 40 + 3 + 40  # every class; the matrix's rows
    text = format_report(report(41)).splitlines()
    assert text[2] == "per-class accuracy, the 10 lowest of 41 classes (--json lists all):"
    assert [line.split(":")[0].strip() for line in text[3:13]] == [str(c) for c in range(0, 20, 2)]  # 0%, by class
    assert text[13:] == ["", "confusion matrix: 41 x 41, too large to print (--json gives it)"]


def test_an_evaluation_in_float32_is_float32_inside_a_callers_autocast() -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(cell="lstm", hidden=16), input_size=3, seq_len=6, num_classes=4)
    data = split(lengths=False)
    plain = evaluate(model, data).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's: not the run's precision
        assert evaluate(model, data).loss == plain
        assert evaluate(model, data, amp="bf16").loss != plain  # where asked for, it is used
