"""Training budgets in reports: the budget column, the tutorial's figure set against runs of its
own budget only, and a warning where entries set against each other trained for other budgets."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from rnnlab.budget import Budget, reported_note
from rnnlab.cli import main
from rnnlab.presets import get_preset, reference_budget
from rnnlab.report import aggregate, build_report, collect
from test_report import fake_run


def two_seeds(out: Path, preset: str, *, iterations: int | None = None,
              accs: tuple[float, float] = (90.0, 91.0)) -> None:
    """Two seeds of a preset in ``out/runs/<preset>/``, as a compare leaves them (without training)."""
    config = get_preset(preset).config
    for seed, acc in enumerate(accs):
        fake_run(out / f"runs/{preset}/seed{seed}", config, acc=acc, seed=seed, iterations=iterations)


def test_budgets_are_the_same_by_samples_or_by_epochs() -> None:
    tutorial = Budget(3000, 5.0, 100)
    assert tutorial.same_as(Budget(3000, 5.4545, 100))  # a -plus preset: the same samples, a smaller split
    assert not tutorial.same_as(Budget(3000, 2.5, 50)) and not tutorial.same_as(Budget(120, 0.2, 100))
    assert Budget(None, 3.0, 64).same_as(Budget(2578, 3.0, 64))  # a budget in epochs, whatever the split
    assert Budget(120, 0.2, 100).text() == "120 iterations (0.2 epochs) of batch 100"
    assert Budget(None, 3.0, 64).text() == "3 epochs of batch 64"
    # Each tutorial preset's reference records the budget its figure came after.
    assert get_preset("dlw-rnn-a").reference()["budget"] == {"iterations": 3000, "batch_size": 100}
    assert get_preset("rnn-allsteps").reference()["budget"] == {"epochs": 3, "batch_size": 64}


def test_the_table_has_a_budget_column_and_withholds_the_difference_from_a_figure_of_another_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two_seeds(tmp_path / "cmp", "dlw-rnn-a", iterations=120, accs=(10.3, 11.5))
    assert main(["report", str(tmp_path / "cmp"), "--no-plot"]) == 0
    out = capsys.readouterr().out  # the table printed says it too
    (row,) = json.loads((tmp_path / "cmp/results.json").read_text())["entries"]
    assert row["reported_test_accuracy"] == 92.48 and row["delta_vs_reported"] is None
    assert row["reported_note"] == "trained 120 of the reference's 3,000 iterations"
    assert row["reference_budget"] == {"iterations": 3000, "batch_size": 100}
    md = (tmp_path / "cmp/results.md").read_text()
    for text in (md, out):
        assert "| budget |" in text and "| 120 it (0.2 ep) |" in text
        assert "| 92.48 | —† |" in text and "-81.58" not in text
        assert "- `dlw-rnn-a`: trained 120 of the reference's 3,000 iterations" in text
    assert "reported after 3,000 iterations of batch 100" in md  # in its Sources line
    with open(tmp_path / "cmp/results.csv", newline="") as handle:
        (line,) = csv.DictReader(handle)
    assert line["delta_vs_reported"] == "" and line["reported_note"].startswith("trained 120 of")
    assert line["iterations"] == "120"


def test_the_difference_from_the_figure_is_given_where_the_budget_is_the_references(tmp_path: Path) -> None:
    two_seeds(tmp_path / "cmp", "dlw-rnn-a", accs=(92.0, 94.0))  # 3,000 iterations, as the preset
    two_seeds(tmp_path / "cmp", "rnn-allsteps", iterations=2814, accs=(97.0, 97.2))  # 3 epochs of batch 64
    for run in (tmp_path / "cmp/runs/rnn-allsteps").iterdir():
        summary = json.loads((run / "summary.json").read_text())
        del summary["reference"]["budget"]  # as summaries written before references recorded it
        (run / "summary.json").write_text(json.dumps({**summary, "epochs": 3.0}))
    with pytest.warns(RuntimeWarning, match="budgets differ"):  # 3,000 iterations of 100 and 3 epochs of 64
        rows = {r["entry"]: r for r in build_report([tmp_path / "cmp"], tmp_path / "cmp", plots=False)}
    assert rows["dlw-rnn-a"]["delta_vs_reported"] == pytest.approx(93.0 - 92.48)
    assert rows["dlw-rnn-a"]["reported_note"] is None
    assert rows["rnn-allsteps"]["reference_budget"] == {"epochs": 3, "batch_size": 64}  # from its preset
    assert rows["rnn-allsteps"]["delta_vs_reported"] == pytest.approx(97.1 - 97.48)
    md = (tmp_path / "cmp/results.md").read_text()
    assert "| 3,000 it (5 ep) |" in md and "| +0.52 |" in md and "†" not in md
    assert reference_budget({"source": "elsewhere", "reported_test_accuracy": 50.0}) is None


def test_entries_of_other_budgets_are_compared_with_a_warning(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    two_seeds(tmp_path / "a", "dlw-lstm-a", iterations=120, accs=(11.0, 12.0))
    two_seeds(tmp_path / "b", "dlw-lstm-a-plus", iterations=200, accs=(94.0, 94.4))
    # on stderr, where the command line prints rnnlab's warnings as one line
    with pytest.warns(RuntimeWarning, match="^budgets differ: the baseline dlw-lstm-a-plus trained 200 it"):
        assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--no-plot", "--out",
                     str(tmp_path / "rep")]) == 0
    captured = capsys.readouterr()
    md = (tmp_path / "rep/results.md").read_text()
    for text in (md, captured.out):
        assert "| paired, n=2 | lower; other budget ‡ |" in text
        assert "‡ Budgets differ: the baseline `dlw-lstm-a-plus` trained 200 it (0.333 ep), `dlw-lstm-a` 120 it " \
               "(0.2 ep); a difference between entries trained for different budgets mixes" in text
    (row,) = [r for r in json.loads((tmp_path / "rep/results.json").read_text())["entries"]
              if r["entry"] == "dlw-lstm-a"]
    assert row["delta_budget_note"] == "120 it (0.2 ep) vs the baseline's 200 it (0.333 ep)"
    assert row["delta_vs_baseline"] == pytest.approx(-82.7)  # the difference itself is kept

    # A report rebuilt from the results.json alone says the same.
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "rep/results.json"]))}
    assert rows["dlw-lstm-a"]["delta_budget_note"] == row["delta_budget_note"]
    assert rows["dlw-lstm-a"]["reported_note"] == "trained 120 of the reference's 3,000 iterations"


def test_entries_of_one_budget_are_compared_without_a_warning(tmp_path: Path) -> None:
    two_seeds(tmp_path / "cmp", "dlw-lstm-a", iterations=120, accs=(11.0, 12.0))
    two_seeds(tmp_path / "cmp", "dlw-lstm-a-plus", iterations=120, accs=(90.0, 91.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = {r["entry"]: r for r in build_report([tmp_path / "cmp"], tmp_path / "cmp", plots=False)}
    assert rows["dlw-lstm-a"]["delta_budget_note"] is None and rows["dlw-lstm-a"]["delta_vs_baseline"] is not None
    assert "‡" not in (tmp_path / "cmp/results.md").read_text()


def test_a_seed_that_stopped_early_counts_at_the_budget_it_was_given(tmp_path: Path) -> None:
    config = get_preset("dlw-rnn-a").config
    run = fake_run(tmp_path / "r", config, acc=93.0, iterations=2500)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stopped_early": {"iteration": 2500, "patience": 3}}))
    (row,) = aggregate(collect([run]))
    assert row["reported_note"] is None and row["delta_vs_reported"] == pytest.approx(93.0 - 92.48)
    assert reported_note({**row, "runs": [{**row["runs"][0], "stopped_early": None}]}) == \
        "trained 2,500 of the reference's 3,000 iterations"


def test_a_seed_of_an_old_results_file_short_of_its_budget_under_a_patience_stopped_early(tmp_path: Path) -> None:
    """A results.json from before runs recorded ``stopped_early``: a completed seed short of its
    config's budget stopped early if the config had a patience, and not otherwise (found by review)."""
    config = get_preset("dlw-rnn-a").config
    (row,) = aggregate(collect([fake_run(tmp_path / "r", config, acc=93.0, iterations=2500)]))
    old_run = {k: v for k, v in row["runs"][0].items() if k != "stopped_early"}
    train = row["config"]["train"]
    patient = {**row, "runs": [old_run], "config": {**row["config"], "train": {**train, "patience": 3}}}
    impatient = {**row, "runs": [old_run], "config": {**row["config"], "train": {**train, "patience": 0}}}
    assert reported_note(patient) is None
    assert reported_note(impatient) == "trained 2,500 of the reference's 3,000 iterations"
