"""Aggregation of run folders into results.md/csv/json: fabricated runs, plus one real tiny run."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.atomic import atomic_write_json
from rnnlab.cli import main
from rnnlab.config import RunConfig, apply_overrides, save_toml
from rnnlab.errors import CheckpointError
from rnnlab.presets import get_preset
from rnnlab.report import (COLUMNS, aggregate, build_report, collect, report_groups, rounded, status_text,
                          sweep_series, write_figures)

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=8", "train.iterations=20", "train.eval_every=10", "train.threads=1", "data.val_size=0"]


def fake_run(run_dir: Path, config: RunConfig, *, status: str = "completed", acc: float | None = 95.0,
             seed: int = 0, iterations: int | None = None, diverge_at: int | None = None) -> Path:
    """A run folder as the engine writes it, without training (for its config's iterations, else 1000)."""
    config = apply_overrides(config, [f"seed={seed}"])
    iterations = iterations or config.train.iterations or 1000
    run_dir.mkdir(parents=True, exist_ok=True)
    save_toml(config, run_dir / "config.toml")
    key = "test_accuracy" if config.train.protocol == "tutorial" else "val_accuracy"
    last = diverge_at or iterations
    rows = [{"iteration": it, "epoch": it / 600, "train_loss": 2.0 / (1 + it / 100) + seed * 0.01,
             "train_accuracy": 50.0, "lr": 0.01, "samples_per_second": 1000.0, "elapsed_seconds": it / 10,
             key: (acc or 50.0) - 40.0 * math.exp(-it / 200) - seed * 0.1} for it in range(100, last + 1, 100)]
    ckpt.write_jsonl(run_dir / "metrics.jsonl", rows)
    summary: dict[str, Any] = {"status": status, "name": config.label, "preset": config.preset or None,
                               "seed": seed, "parameters": 14010, "iterations": last, "epochs": last / 600,
                               "train_seconds": 30.0 + seed, "samples_per_second": 3000.0 + seed}
    reference = rnnlab.presets.reference_for(config.preset)
    if reference:
        summary["reference"] = reference
    if status == "completed":
        summary["test_accuracy"] = acc
        summary["confusion_matrix"] = [[90 if i == j else 1 for j in range(10)] for i in range(10)]
    if status == "diverged":
        summary["message"] = f"loss became nan at iteration {last}"
    atomic_write_json(run_dir / "summary.json", summary)
    return run_dir


@pytest.fixture
def compare_dir(tmp_path: Path) -> Path:
    """A compare folder: dlw-rnn-a with 2 completed seeds and 1 diverged; dlw-lstm-a with 2 completed."""
    return fake_compare(tmp_path / "cmp")


def fake_compare(out: Path) -> Path:
    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    fake_run(out / "runs/dlw-rnn-a/seed0", rnn, acc=92.0, seed=0)
    fake_run(out / "runs/dlw-rnn-a/seed1", rnn, acc=94.0, seed=1)
    fake_run(out / "runs/dlw-rnn-a/seed2", rnn, status="diverged", acc=None, seed=2, diverge_at=400)
    fake_run(out / "runs/dlw-lstm-a/seed0", lstm, acc=97.0, seed=0)
    fake_run(out / "runs/dlw-lstm-a/seed1", lstm, acc=97.5, seed=1)
    return out


def test_aggregate_mean_std_and_diverged_seed_counted(compare_dir: Path) -> None:
    rows = {r["entry"]: r for r in aggregate(collect([compare_dir]))}
    rnn = rows["dlw-rnn-a"]
    assert rnn["seeds"] == 3 and rnn["completed"] == 2 and rnn["diverged"] == 1
    assert rnn["test_accuracy_mean"] == pytest.approx(93.0)
    assert rnn["test_accuracy_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 92, 94
    assert (rnn["test_accuracy_min"], rnn["test_accuracy_max"]) == (92.0, 94.0)
    assert rnn["status"] == "2/3 completed, 1 diverged"
    assert rnn["reported_test_accuracy"] == 92.48
    assert rnn["delta_vs_reported"] == pytest.approx(93.0 - 92.48)
    assert rnn["architecture"] == "rnn-relu-1x100" and rnn["parameters"] == 14010
    assert [run["status"] for run in rnn["runs"]] == ["completed", "completed", "diverged"]
    assert "nan" in rnn["runs"][2]["error"]
    assert rows["dlw-lstm-a"]["status"] == "2/2 completed"


def test_status_text_lists_every_kind() -> None:
    from collections import Counter

    assert status_text(Counter(completed=1, failed=1, unfinished=1), 3) == "1/3 completed, 1 failed, 1 unfinished"


def test_single_seed_has_no_std(tmp_path: Path) -> None:
    fake_run(tmp_path / "r", get_preset("dlw-lstm-b").config, acc=96.0)
    (row,) = aggregate(collect([tmp_path / "r"]))
    assert row["test_accuracy_mean"] == 96.0 and row["test_accuracy_std"] is None


def test_failed_and_unfinished_seeds_are_shown(tmp_path: Path) -> None:
    cfg = get_preset("dlw-rnn-b").config
    fake_run(tmp_path / "runs/x/seed0", cfg, acc=95.0)
    failed = tmp_path / "runs/x/seed1"
    failed.mkdir(parents=True)
    save_toml(apply_overrides(cfg, ["seed=1"]), failed / "config.toml")  # as a compare writes each seed's
    atomic_write_json(failed / "summary.json", {"status": "failed", "seed": 1, "error": "DataError: boom"})
    running = tmp_path / "runs/x/seed2"
    running.mkdir()
    save_toml(apply_overrides(cfg, ["seed=2"]), running / "config.toml")  # no summary yet
    (row,) = aggregate(collect([tmp_path]))
    assert row["status"] == "1/3 completed, 1 failed, 1 unfinished"
    assert row["failed"] == 1 and row["unfinished"] == 1 and row["test_accuracy_mean"] == 95.0
    build_report([tmp_path], tmp_path / "out", plots=False)
    md = (tmp_path / "out/results.md").read_text()
    assert "DataError: boom" in md and "**failed**" in md and "**unfinished**" in md


def test_csv_and_json_schema(compare_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report([compare_dir], out, plots=False)
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = {r["entry"]: r for r in reader}
    assert float(rows["dlw-rnn-a"]["test_accuracy_mean"]) == pytest.approx(93.0)
    assert rows["dlw-rnn-a"]["diverged"] == "1"
    data = json.loads((out / "results.json").read_text())
    assert data["columns"] == list(COLUMNS) and data["schema_version"] == 1
    for entry in data["entries"]:
        assert set(COLUMNS) <= set(entry)
        assert {"seed", "status", "dir", "test_accuracy", "error"} <= set(entry["runs"][0])
    md = (out / "results.md").read_text()
    assert "93.00 ± 1.41 (n=2)" in md and "2/3 completed, 1 diverged" in md and "92.48" in md


def test_loose_runs_group_by_label_and_real_run(tmp_path: Path) -> None:
    cfg = get_preset("dlw-rnn-a").config
    fake_run(tmp_path / "a1", cfg, acc=90.0, seed=0)
    fake_run(tmp_path / "nested/a2", cfg, acc=91.0, seed=1)
    real = rnnlab.train(apply_overrides(RunConfig(name="tiny-real"), TINY), tmp_path / "real", progress=False)
    assert real.status == "completed"
    with pytest.warns(RuntimeWarning, match="budgets differ"):  # 3,000 iterations and 20
        rows = {r["entry"]: r for r in build_report([tmp_path], tmp_path / "out", plots=False)}
    assert rows["dlw-rnn-a"]["seeds"] == 2 and rows["dlw-rnn-a"]["test_accuracy_mean"] == pytest.approx(90.5)
    assert rows["tiny-real"]["architecture"] == "lstm-1x8"
    assert rows["tiny-real"]["test_accuracy_mean"] == pytest.approx(real.test_accuracy)


def test_loose_runs_of_one_label_but_other_settings_are_separate_rows(tmp_path: Path) -> None:
    cfg = get_preset("dlw-rnn-a").config
    fake_run(tmp_path / "a0", cfg, acc=90.0, seed=0)
    fake_run(tmp_path / "a1", apply_overrides(cfg, ["train.threads=2", "train.backward=autograd"]), acc=92.0,
             seed=1)  # threads, and autograd instead of the step by hand: the same result up to rounding
    fake_run(tmp_path / "b0", apply_overrides(cfg, ["data.view=pixels", "train.lr=0.05"]), acc=20.0, seed=0)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path]))}
    assert sorted(rows) == ["dlw-rnn-a [data.view=pixels, train.lr=0.05]", "dlw-rnn-a [data.view=rows, train.lr=0.01]"]
    assert rows["dlw-rnn-a [data.view=rows, train.lr=0.01]"]["test_accuracy_mean"] == pytest.approx(91.0)
    assert rows["dlw-rnn-a [data.view=pixels, train.lr=0.05]"]["seeds"] == 1
    # Where shortened names would clash (two files of one name in two folders), the full ones are shown.
    for i, folder in enumerate(("exp1", "exp2")):
        on_file = apply_overrides(cfg, ["data.dataset=file", f"data.file={tmp_path / folder / 'data.npz'}"])
        fake_run(tmp_path / "files" / folder, on_file, acc=80.0 + i, seed=0)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "files"]))}
    assert sorted(rows) == [f"dlw-rnn-a [data.file={tmp_path / f / 'data.npz'}]" for f in ("exp1", "exp2")]


def test_report_cli(compare_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(compare_dir), "--no-plot"]) == 0
    assert "2/3 completed, 1 diverged" in capsys.readouterr().out
    assert (compare_dir / "results.md").exists()


def test_report_of_missing_folder_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'nope'))}: no such folder; give run "
                                              "folders or compare folders$"):
        collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_read_jsonl_skips_lines_that_are_not_json_objects(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"iteration": 1}\n\xff\xfe{"iteration": 2}\n[1, 2]\n"text"\n{"iteration": 3}\n{"iter')
    assert ckpt.read_jsonl(path) == [{"iteration": 1}, {"iteration": 3}]


def test_damaged_summaries_and_metrics_fail_only_their_seed(compare_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rnn, lstm = compare_dir / "runs/dlw-rnn-a", compare_dir / "runs/dlw-lstm-a"
    (rnn / "seed0/summary.json").write_text("[]")
    (rnn / "seed1/summary.json").write_bytes(b"\xff\xfe{}")
    (lstm / "seed1/summary.json").write_text('{"status": "completed", "test_accuracy": "abc"}')
    nan_seed = fake_run(compare_dir / "runs/dlw-lstm-a/seed2", get_preset("dlw-lstm-a").config, acc=97.0, seed=2)
    (nan_seed / "summary.json").write_text('{"status": "completed", "seed": 2, "test_accuracy": NaN}')
    with open(lstm / "seed0/metrics.jsonl", "ab") as handle:  # still completed: its bad rows are skipped
        handle.write(b'\xff\xfe\n[1, 2]\n{"iteration": "x", "test_accuracy": "abc"}\n{"test_accuracy": 5}\n')
    assert main(["report", str(compare_dir)]) == 1  # with figures: the curves read those rows
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "rnnlab: some seeds failed or did not finish (dlw-lstm-a, dlw-rnn-a)" in captured.err
    md = (compare_dir / "results.md").read_text()
    assert "summary.json is corrupt: it holds an array, not an object" in md
    assert "summary.json is corrupt: it is not UTF-8 text" in md
    assert "summary.json is corrupt: its test_accuracy is \"abc\", not a number" in md
    rows = {r["entry"]: r for r in json.loads((compare_dir / "results.json").read_text())["entries"]}
    assert rows["dlw-rnn-a"]["status"] == "0/3 completed, 1 diverged, 2 failed"
    assert rows["dlw-lstm-a"]["status"] == "1/3 completed, 2 failed"
    assert "summary.json is corrupt: its test_accuracy is nan, not a finite number" in md
    assert rows["dlw-lstm-a"]["test_accuracy_mean"] == 97.0


def test_report_out_or_path_that_is_a_file(compare_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["report", str(compare_dir), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"rnnlab: error: --out {afile} is a file; give a folder\n"
    assert main(["report", str(compare_dir), "--out", str(afile / "sub")]) == 2
    assert f"--out {afile / 'sub'} is inside a file ({afile}); give a folder" in capsys.readouterr().err
    assert main(["report", str(afile)]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: {afile} is a file, not a run folder or compare folder; "
                                       "give run folders, compare folders or a results.json\n")
    assert afile.read_text() == "" and not (compare_dir / "results.md").exists()


def test_differences_from_the_best_entry_paired_by_seed(compare_dir: Path, tmp_path: Path) -> None:
    rows = {r["entry"]: r for r in aggregate(collect([compare_dir]))}
    best, rnn = rows["dlw-lstm-a"], rows["dlw-rnn-a"]
    assert best["baseline"] == "dlw-lstm-a" and best["delta_vs_baseline"] is None  # the baseline: best mean, 97.25
    # dlw-rnn-a's completed seeds 0 and 1 against dlw-lstm-a's: 92 - 97 and 94 - 97.5 (seed 2 diverged).
    # Mean -4.25, sd 1.5/sqrt(2), standard error 0.75; t(0.975, 1) = 12.706.
    assert rnn["baseline"] == "dlw-lstm-a" and (rnn["delta_method"], rnn["delta_seeds"]) == ("paired", 2)
    assert rnn["delta_vs_baseline"] == pytest.approx(-4.25)
    assert rnn["delta_ci95_low"] == pytest.approx(-4.25 - 12.706 * 0.75, abs=1e-3)
    assert rnn["delta_ci95_high"] == pytest.approx(-4.25 + 12.706 * 0.75, abs=1e-3)
    assert rnn["delta_verdict"] == "within noise"
    build_report([compare_dir], tmp_path / "out", plots=False)
    md = (tmp_path / "out/results.md").read_text()
    assert "## Differences from `dlw-lstm-a`" in md
    assert "| `dlw-rnn-a` | -4.25 | -13.78 to +5.28 | paired, n=2 | within noise |" in md
    with open(tmp_path / "out/results.csv", newline="") as handle:
        csv_rows = {r["entry"]: r for r in csv.DictReader(handle)}
    assert csv_rows["dlw-rnn-a"]["delta_verdict"] == "within noise" and csv_rows["dlw-lstm-a"]["baseline"] == "dlw-lstm-a"
    assert csv_rows["dlw-rnn-a"]["delta_seeds"] == csv_rows["dlw-rnn-a"]["baseline_seeds"] == "2"


def test_differences_from_a_chosen_baseline_and_an_unknown_one(compare_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(compare_dir), "--no-plot", "--out", str(tmp_path / "out"),
                 "--baseline", "dlw-rnn-a"]) == 0
    printed = capsys.readouterr().out
    assert "| `dlw-lstm-a` | +4.25 | -5.28 to +13.78 | paired, n=2 | within noise |" in printed
    assert main(["report", str(compare_dir), "--no-plot", "--out", str(tmp_path / "other"),
                 "--baseline", "dlw-gru"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'dlw-gru' is not an entry here" in err and "dlw-rnn-a" in err and "dlw-lstm-a" in err
    assert not (tmp_path / "other").exists()


def test_differences_unpaired_seeds_and_single_seeds(tmp_path: Path) -> None:
    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    # Loose runs: seeds 0 and 5 against 0 and 1 share one seed, too few to pair: Welch's interval is used.
    fake_run(tmp_path / "a/r0", rnn, acc=92.0, seed=0)
    fake_run(tmp_path / "a/r5", rnn, acc=93.0, seed=5)
    fake_run(tmp_path / "a/l0", lstm, acc=97.0, seed=0)
    fake_run(tmp_path / "a/l1", lstm, acc=98.0, seed=1)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "a"]))}
    assert rows["dlw-rnn-a"]["delta_method"] == "welch" and rows["dlw-rnn-a"]["delta_vs_baseline"] == -5.0
    # One seed each: the difference of the means, but no interval and no verdict.
    fake_run(tmp_path / "b/r0", rnn, acc=92.0, seed=0)
    fake_run(tmp_path / "b/l0", lstm, acc=97.0, seed=0)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "b"]))}
    assert rows["dlw-rnn-a"]["delta_vs_baseline"] == -5.0
    assert rows["dlw-rnn-a"]["delta_ci95_low"] is None and rows["dlw-rnn-a"]["delta_verdict"] is None
    build_report([tmp_path / "b"], tmp_path / "out", plots=False)
    assert "| `dlw-rnn-a` | -5.00 | – | a side has one seed: no interval |  |" in (tmp_path / "out/results.md").read_text()
    # A single entry: nothing to compare with, no section.
    fake_run(tmp_path / "c/r0", rnn, acc=92.0, seed=0)
    build_report([tmp_path / "c"], tmp_path / "out-c", plots=False)
    assert "Differences" not in (tmp_path / "out-c/results.md").read_text()


def _sweep_groups(root: Path, accuracies: dict[float, list[float]]) -> dict[str, list]:
    """A compare's --sweep train.lr over dlw-rnn-a: one entry per rate, a run per seed."""
    from rnnlab.run_records import read_record

    groups = {}
    for lr, accs in accuracies.items():
        entry = f"dlw-rnn-a+lr{lr:g}"
        config = apply_overrides(get_preset("dlw-rnn-a").config, [f"train.lr={lr}", f"name={entry}"])
        groups[entry] = [read_record(fake_run(root / entry / f"seed{seed}", config, acc=acc, seed=seed), entry=entry)
                         for seed, acc in enumerate(accs)]
    return groups


def test_a_sweep_is_drawn_against_its_setting(tmp_path: Path) -> None:
    groups = _sweep_groups(tmp_path, {0.1: [90.0, 92.0], 0.001: [80.0, 84.0], 0.01: [95.0, 95.0]})
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "train.lr" and list(lines) == ["dlw-rnn-a"]  # one line, named by what the entries share
    points = lines["dlw-rnn-a"]
    assert [(p["x"], p["mean"], p["seeds"]) for p in points] == [
        (0.001, 82.0, [80.0, 84.0]), (0.01, 95.0, [95.0, 95.0]), (0.1, 91.0, [90.0, 92.0])]  # sorted by x
    assert points[0]["std"] == pytest.approx(math.sqrt(8.0))
    written = write_figures(groups, aggregate(groups), tmp_path / "out")
    assert "sweep.png" in written and (tmp_path / "out/sweep.png").stat().st_size > 5000


def test_no_sweep_figure_where_nothing_numeric_varies_along_a_line(tmp_path: Path, compare_dir: Path) -> None:
    # Two presets, one row each: they differ in many settings, and no line would have two points.
    groups = collect([compare_dir])
    assert sweep_series(groups, aggregate(groups)) is None
    assert "sweep.png" not in write_figures(groups, aggregate(groups), tmp_path / "out")
    # Loose runs that differ in the learning rate alone: one line, labelled as all entries.
    cfg = get_preset("dlw-rnn-a").config
    for i, lr in enumerate((0.01, 0.05)):
        fake_run(tmp_path / "loose" / f"r{i}", apply_overrides(cfg, [f"train.lr={lr}"]), acc=90.0 + i, seed=0)
    groups = collect([tmp_path / "loose"])
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "train.lr" and list(lines) == ["all entries"] and [p["x"] for p in lines["all entries"]] == [0.01, 0.05]


def test_repeated_seeds_count_once_and_the_default_baseline_has_seeds_to_compare(tmp_path: Path) -> None:
    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    # Loose runs whose seeds repeat on both sides, (0, 0, 1) and (0, 1, 1): a repeat is the same run
    # (the first is kept), so seeds 0 and 1 pair. (Seeds repeated in a results.json never pair: test_stats.)
    for i, (seed, acc) in enumerate([(0, 90.0), (0, 91.0), (1, 92.0)]):
        fake_run(tmp_path / "dup" / f"r{i}", rnn, acc=acc, seed=seed)
    for i, (seed, acc) in enumerate([(0, 97.0), (1, 97.5), (1, 98.0)]):
        fake_run(tmp_path / "dup" / f"l{i}", lstm, acc=acc, seed=seed)
    with pytest.warns(RuntimeWarning, match="counted once"):
        rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "dup"]))}
    assert (rows["dlw-rnn-a"]["delta_method"], rows["dlw-rnn-a"]["delta_seeds"]) == ("paired", 2)
    assert rows["dlw-rnn-a"]["delta_vs_baseline"] == pytest.approx(((90.0 - 97.0) + (92.0 - 97.5)) / 2)
    # One lucky seed of an entry whose other seeds diverged is not the default baseline: the best
    # mean among entries with two completed seeds is.
    gru = apply_overrides(rnn, ["model.cell=gru", "name=lucky"])
    fake_run(tmp_path / "lucky/s0", gru, acc=99.5, seed=0)
    for seed in (1, 2):
        fake_run(tmp_path / "lucky" / f"s{seed}", gru, status="diverged", acc=None, seed=seed, diverge_at=300)
    for seed in (0, 1):
        fake_run(tmp_path / "lucky" / f"r{seed}", rnn, acc=90.0 + seed, seed=seed)
        fake_run(tmp_path / "lucky" / f"l{seed}", lstm, acc=97.0 + seed, seed=seed)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "lucky"]))}
    assert rows["lucky"]["baseline"] == "dlw-lstm-a" and rows["dlw-rnn-a"]["delta_method"] == "paired"


def test_a_baseline_without_a_completed_seed_says_so(compare_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lstm = get_preset("dlw-lstm-a").config
    for seed in (0, 1):  # dlw-lstm-a's seeds both diverged
        fake_run(compare_dir / f"runs/dlw-lstm-a/seed{seed}", lstm, status="diverged", acc=None, seed=seed,
                 diverge_at=300)
    assert main(["report", str(compare_dir), "--no-plot", "--out", str(tmp_path / "out"),
                 "--baseline", "dlw-lstm-a"]) == 0
    message = "`dlw-lstm-a` has no completed seed: there is nothing to compare the other entries with."
    assert message in capsys.readouterr().out and message in (tmp_path / "out/results.md").read_text()


def test_sweep_lines_have_short_names_and_never_join_two_entries_at_one_x(tmp_path: Path) -> None:
    cfg = get_preset("dlw-rnn-a").config
    # Two settings vary besides the learning rate: lines named by them, shortly.
    combos = [(lr, hidden, cell) for lr in (0.01, 0.03, 0.1) for hidden, cell in ((32, "rnn"), (64, "gru"))]
    for i, (lr, hidden, cell) in enumerate(combos):
        fake_run(tmp_path / "grid" / f"r{i}", apply_overrides(cfg, [f"train.lr={lr}", f"model.hidden={hidden}",
                                                                     f"model.cell={cell}"]), acc=90.0 + i, seed=0)
    groups = collect([tmp_path / "grid"])
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "train.lr" and sorted(lines) == ["cell=gru, hidden=64", "cell=rnn, hidden=32"]
    # Runs that differ only in a setting results ignore (threads) share an x: no line through both.
    fake_run(tmp_path / "same-x/a", cfg, acc=90.0, seed=0)
    fake_run(tmp_path / "same-x/b", apply_overrides(cfg, ["name=again", "train.threads=2"]), acc=95.0, seed=1)
    fake_run(tmp_path / "same-x/c", apply_overrides(cfg, ["train.lr=0.1"]), acc=91.0, seed=0)
    groups = collect([tmp_path / "same-x"])
    assert sweep_series(groups, aggregate(groups)) is None


def test_the_tutorial_suite_sweep_figure_names_its_lines_by_entry(tmp_path: Path) -> None:
    from rnnlab.presets import suite

    for name in suite("tutorials"):  # they differ in many settings: a label of them all would fill the figure
        fake_run(tmp_path / name, get_preset(name).config, acc=95.0, seed=0)
    groups = collect([tmp_path])
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "model.layers" and "dlw-lstm-a, dlw-lstm-b, dlw-lstm-c" in lines
    assert all(len(label) <= 60 for label in lines)


def test_a_sweep_over_two_presets_is_drawn_against_the_swept_setting(tmp_path: Path) -> None:
    """dlw-rnn-a and dlw-rnn-a-plus also differ in data.val_size (0 and 5000), which has as many
    values as the swept train.lr: the figure takes the setting that puts entries on lines."""
    from rnnlab.run_records import read_record

    groups = {}
    for preset in ("dlw-rnn-a-plus", "dlw-rnn-a"):
        for lr in (0.001, 0.01):
            entry = f"{preset}+lr{lr:g}"
            config = apply_overrides(get_preset(preset).config, [f"train.lr={lr}", f"name={entry}"])
            groups[entry] = [read_record(fake_run(tmp_path / entry, config, acc=90.0 + 100 * lr), entry=entry)]
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "train.lr" and sorted(lines) == ["dlw-rnn-a", "dlw-rnn-a-plus"]
    assert [p["x"] for p in lines["dlw-rnn-a"]] == [0.001, 0.01]


def test_the_default_baseline_is_chosen_by_validation_accuracy_where_there_is_one(tmp_path: Path) -> None:
    """Choosing the baseline by test accuracy would let the test set pick the entry it then scores."""
    val_of = {("dlw-rnn-a-plus", 0): 99.0, ("dlw-rnn-a-plus", 1): 98.8, ("dlw-lstm-a-plus", 0): 98.0,
              ("dlw-lstm-a-plus", 1): 98.2}
    for preset, accs in (("dlw-rnn-a-plus", (97.0, 97.2)), ("dlw-lstm-a-plus", (98.5, 98.9))):
        for seed, acc in enumerate(accs):
            run = fake_run(tmp_path / preset / f"s{seed}", get_preset(preset).config, acc=acc, seed=seed)
            summary = json.loads((run / "summary.json").read_text())
            atomic_write_json(run / "summary.json", summary | {"val_accuracy": val_of[preset, seed]})
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path]))}
    # dlw-lstm-a-plus has the better test mean, dlw-rnn-a-plus the better validation mean: the baseline.
    assert rows["dlw-lstm-a-plus"]["baseline"] == "dlw-rnn-a-plus"
    assert rows["dlw-lstm-a-plus"]["delta_vs_baseline"] == pytest.approx(1.6)


# --------------------------------------------------------------------------- a report rebuilt from results.json

_ROW_KEYS = ("entry", "architecture", "parameters", "seeds", "completed", "diverged", "status", "test_accuracy_mean",
             "test_accuracy_std", "reported_test_accuracy", "delta_vs_reported", "batch_size", "optimizer", "protocol",
             "baseline", "delta_vs_baseline", "delta_ci95_low", "delta_ci95_high", "delta_verdict")


def test_a_report_rebuilt_from_results_json_equals_one_from_the_runs(compare_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    build_report([compare_dir], compare_dir)
    (compare_dir / "results.md").write_text("stale")
    shutil.rmtree(compare_dir / "runs")  # another machine: only the report's files
    assert main(["report", str(compare_dir / "results.json"), "--baseline", "dlw-rnn-a"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    rebuilt = {r["entry"]: r for r in json.loads((compare_dir / "results.json").read_text())["entries"]}
    # the same numbers as a report made from the same run folders with that baseline, as written
    direct = {r["entry"]: rounded(r) for r in aggregate(collect([fake_compare(tmp_path / "again")]),
                                                         baseline="dlw-rnn-a")}
    for entry, row in direct.items():
        assert {k: rebuilt[entry][k] for k in _ROW_KEYS} == {k: row[k] for k in _ROW_KEYS}
        assert [(r["seed"], r["status"], r["test_accuracy"]) for r in rebuilt[entry]["runs"]] == \
            [(r["seed"], r["status"], r["test_accuracy"]) for r in row["runs"]]
    assert rebuilt["dlw-lstm-a"]["delta_vs_baseline"] == pytest.approx(4.25)
    assert rebuilt["dlw-rnn-a"]["config"]["model"]["hidden"] == 100
    md = (compare_dir / "results.md").read_text()
    assert "## Differences from `dlw-rnn-a`" in md and "- rebuilt from: " in md
    # the learning curves cannot be redrawn without the runs: the one already there is kept and listed
    assert "![learning_curves](learning_curves.png)" in md and "![accuracy](accuracy.png)" in md
    assert "**diverged**: loss became nan at iteration 400" in md


def test_results_files_round_the_derived_figures_and_a_rebuild_needs_no_more_digits(tmp_path: Path) -> None:
    from rnnlab.report import DECIMALS

    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    for seed, (a, b) in enumerate([(91.53, 97.71), (91.61, 97.8), (91.47, 97.66)]):
        fake_run(tmp_path / f"cmp/runs/dlw-rnn-a/seed{seed}", rnn, acc=a, seed=seed)
        fake_run(tmp_path / f"cmp/runs/dlw-lstm-a/seed{seed}", lstm, acc=b, seed=seed)
    rows = {r["entry"]: r for r in build_report([tmp_path / "cmp"], tmp_path / "direct", plots=False,
                                                baseline="dlw-lstm-a")}
    # The rows returned keep every digit of the arithmetic; the files hold what a reader can read.
    assert rows["dlw-rnn-a"]["delta_vs_baseline"] == pytest.approx(-6.18666666666666)
    assert rows["dlw-rnn-a"]["delta_vs_baseline"] != -6.1867
    written = {r["entry"]: r for r in json.loads((tmp_path / "direct/results.json").read_text())["entries"]}
    row = written["dlw-rnn-a"]
    assert row["delta_vs_baseline"] == -6.1867 and row["test_accuracy_mean"] == 91.5367
    assert row["delta_vs_reported"] == -0.9433 and row["test_accuracy_std"] == 0.0702
    assert row["delta_ci95_low"] < row["delta_vs_baseline"] < row["delta_ci95_high"]
    for entry in written.values():
        for key, decimals in DECIMALS.items():
            assert entry[key] is None or entry[key] == round(entry[key], decimals), (key, entry[key])
    # The runs' own figures are written as measured.
    assert [run["test_accuracy"] for run in row["runs"]] == [91.53, 91.61, 91.47]
    with open(tmp_path / "direct/results.csv", newline="") as handle:
        csv_row = next(r for r in csv.DictReader(handle) if r["entry"] == "dlw-rnn-a")
    assert csv_row["delta_vs_baseline"] == "-6.1867" and csv_row["test_accuracy_mean"] == "91.5367"
    # Rebuilt from the results.json alone, the report is the one made from the runs: nothing it
    # reads back was rounded.
    shutil.copy(tmp_path / "direct/results.json", tmp_path / "copy.json")
    build_report([tmp_path / "copy.json"], tmp_path / "rebuilt", plots=False, baseline="dlw-lstm-a")
    again = {r["entry"]: r for r in json.loads((tmp_path / "rebuilt/results.json").read_text())["entries"]}
    assert {e: {k: v for k, v in r.items() if k != "runs"} for e, r in again.items()} == \
        {e: {k: v for k, v in r.items() if k != "runs"} for e, r in written.items()}
    assert (tmp_path / "rebuilt/results.csv").read_text() == (tmp_path / "direct/results.csv").read_text()
    assert (tmp_path / "rebuilt/results.md").read_text().split("## Differences")[1] == \
        (tmp_path / "direct/results.md").read_text().split("## Differences")[1]


def test_a_results_json_without_configs_still_names_the_architecture(compare_dir: Path, tmp_path: Path) -> None:
    build_report([compare_dir], compare_dir, plots=False)
    data = json.loads((compare_dir / "results.json").read_text())
    for row in data["entries"]:  # as reports written before results.json carried each entry's config
        del row["config"]
    old = tmp_path / "old/results.json"
    old.parent.mkdir()
    old.write_text(json.dumps(data))
    rows = {r["entry"]: r for r in aggregate(collect([old]))}
    assert rows["dlw-rnn-a"]["architecture"] == "rnn-relu-1x100" and rows["dlw-rnn-a"]["optimizer"] == "sgd"
    assert rows["dlw-rnn-a"]["status"] == "2/3 completed, 1 diverged" and rows["dlw-rnn-a"]["epochs"] > 0
    assert rows["dlw-rnn-a"]["reported_test_accuracy"] == 92.48 and rows["dlw-rnn-a"]["config"] is None
    assert sweep_series(collect([old]), list(rows.values())) is None and write_figures(collect([old]), list(
        rows.values()), tmp_path / "figs") == ["accuracy.png"]


def test_entries_of_two_reports_and_of_runs_with_one_name_are_told_apart(compare_dir: Path, tmp_path: Path) -> None:
    build_report([compare_dir], tmp_path / "torch", plots=False)
    build_report([compare_dir], tmp_path / "fast", plots=False)
    groups = collect([tmp_path / "torch/results.json", tmp_path / "fast/results.json", compare_dir])
    assert list(groups) == ["dlw-lstm-a [torch]", "dlw-rnn-a [torch]", "dlw-lstm-a [fast]", "dlw-rnn-a [fast]",
                            "dlw-lstm-a", "dlw-rnn-a"]  # in the order given
    assert [r.summary["test_accuracy"] for r in groups["dlw-lstm-a [fast]"]] == [97.0, 97.5]
    assert collect([tmp_path / "torch/results.json"]).keys() == {"dlw-rnn-a", "dlw-lstm-a"}
    with pytest.raises(CheckpointError, match="given twice"):
        collect([tmp_path / "torch/results.json", tmp_path / "torch/results.json"])
    (tmp_path / "other/torch").mkdir(parents=True)
    shutil.copy(tmp_path / "torch/results.json", tmp_path / "other/torch/results.json")
    same_folder_name = collect([tmp_path / "torch/results.json", tmp_path / "other/torch/results.json"])
    assert f"dlw-rnn-a [{tmp_path / 'other/torch/results.json'}]" in same_folder_name
    with pytest.raises(CheckpointError, match=r"no run folders found .*give its .*results\.json"):
        collect([tmp_path / "torch"])


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe{", "cannot be read as JSON"),
    (b"{\"entries\": [", "cannot be read as JSON"),
    (b"[1, 2]", "is not a results.json of rnnlab"),
    (b'{"schema_version": 2, "entries": []}', "has results schema 2; this rnnlab reads schema 1 (a newer rnnlab"),
    (b'{"schema_version": 1, "entries": [{"entry": "a"}]}', "entry 1 (a) has no runs; it is not a results.json"),
    (b'{"schema_version": 1, "entries": [{"entry": "a", "runs": [{"status": "completed", "test_accuracy": "97"}]}]}',
     'entry 1 (a) has a run whose test_accuracy "97", not a number'),
    (b'{"schema_version": 1, "entries": [{"entry": "a", "runs": [{"status": "completed", "test_accuracy": NaN}]}]}',
     "entry 1 (a) has a run whose test_accuracy NaN, not a number"),
    (b'{"schema_version": 1, "entries": [{"entry": "a", "runs": [{"seed": 0}]}]}', "has a run whose no status"),
    (b'{"schema_version": 1, "entries": [{"entry": "a", "runs": []}, {"entry": "a", "runs": []}]}',
     "lists the entry \'a\' twice"),
])
def test_a_damaged_results_json_is_refused_with_the_reason(tmp_path: Path, content: bytes, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content)
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnlab: error: {path}") and message in err and "Traceback" not in err
    assert path.read_bytes() == content and not (tmp_path / "out").exists()


def test_a_sweep_is_drawn_again_from_its_results_json(tmp_path: Path) -> None:
    groups = _sweep_groups(tmp_path / "runs", {0.1: [90.0, 92.0], 0.001: [80.0, 84.0], 0.01: [95.0, 95.0]})
    report_groups(groups, tmp_path / "first", plots=False)
    again = collect([tmp_path / "first/results.json"])  # each entry's config came along in the file
    key, lines = sweep_series(again, aggregate(again))
    assert key == "train.lr" and [(p["x"], p["seeds"]) for p in lines["dlw-rnn-a"]] == [
        (0.001, [80.0, 84.0]), (0.01, [95.0, 95.0]), (0.1, [90.0, 92.0])]


def test_a_report_of_a_compare_folder_keeps_how_the_compare_ran(compare_dir: Path) -> None:
    (compare_dir / "compare.json").write_text(json.dumps({
        "entries": [{"name": "dlw-rnn-a"}], "seeds": 3, "jobs": 2, "command": "rnnlab compare dlw-rnn-a --seeds 3"}))
    assert main(["report", str(compare_dir), "--no-plot"]) == 0
    md = (compare_dir / "results.md").read_text()
    assert "- seeds: 3\n- jobs: 2\n- command: rnnlab compare dlw-rnn-a --seeds 3\n- runs from: " in md
    (compare_dir / "compare.json").write_text("[broken")  # unreadable: the report still comes
    assert main(["report", str(compare_dir), "--no-plot"]) == 0


def test_a_run_whose_config_cannot_be_read_says_so(compare_dir: Path) -> None:
    seed = compare_dir / "runs/dlw-rnn-a/seed2"
    (seed / "config.toml").write_text("[model\\n")
    rows = {r["entry"]: r for r in aggregate(collect([compare_dir]))}
    run = next(r for r in rows["dlw-rnn-a"]["runs"] if r["seed"] == 2)
    assert run["status"] == "diverged" and "loss became nan" in run["error"]  # its own reason stays
    atomic_write_json(seed / "summary.json", {"status": "stopped", "seed": 2})
    rows = {r["entry"]: r for r in aggregate(collect([compare_dir]))}
    run = next(r for r in rows["dlw-rnn-a"]["runs"] if r["seed"] == 2)
    assert run["status"] == "stopped" and "its config.toml cannot be read" in run["error"]


def test_a_run_of_too_many_classes_for_a_plot_still_gets_its_results(compare_dir: Path, tmp_path: Path) -> None:
    """A sequence file may have 1000 classes: its confusion matrix is not drawn (it would take 36 GiB),
    one warning says where and where the matrix is, and the other runs' plots and the results are written."""
    many = compare_dir / "runs/dlw-lstm-a/seed0"
    summary = json.loads((many / "summary.json").read_text())
    summary["confusion_matrix"] = [[5 if i == j else 0 for j in range(1000)] for i in range(1000)]
    atomic_write_json(many / "summary.json", summary)
    with pytest.warns(RuntimeWarning) as caught:
        build_report([compare_dir], tmp_path / "out")
    assert [str(w.message) for w in caught] == [
        f"confusion.png not drawn in {many}: more than 40 classes are too many to read in a plot; "
        "`rnnlab eval RUN --json` gives the confusion matrix"]
    assert not (many / "confusion.png").exists()
    assert (compare_dir / "runs/dlw-lstm-a/seed1/confusion.png").stat().st_size > 5000
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.md", "results.csv", "results.json",
                                                              "learning_curves.png", "accuracy.png"}


def test_figures_that_fail_are_warnings_and_the_results_are_still_written(compare_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab import plots

    def fail(error: Exception):
        def draw(*args: Any, **kwargs: Any) -> None:
            raise error
        return draw

    monkeypatch.setattr(plots, "learning_curves_png", fail(MemoryError("Unable to allocate 36.0 GiB")))
    monkeypatch.setattr(plots, "accuracy_bars_png", fail(MemoryError()))  # numpy's may say nothing
    monkeypatch.setattr(plots, "confusion_matrix_png", fail(PermissionError(13, "Permission denied")))
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning) as caught:
        rows = build_report([compare_dir], out)
    assert {str(w.message) for w in caught} == {
        f"{out / 'learning_curves.png'} not drawn: Unable to allocate 36.0 GiB",
        f"{out / 'accuracy.png'} not drawn: MemoryError",
        *(f"{compare_dir}/runs/{run}/confusion.png not drawn: [Errno 13] Permission denied"
          for run in ("dlw-lstm-a/seed0", "dlw-lstm-a/seed1", "dlw-rnn-a/seed0", "dlw-rnn-a/seed1"))}
    assert len(caught) == 6
    assert {p.name for p in out.iterdir()} == {"results.md", "results.csv", "results.json"}
    assert len(rows) == 2 and "## Figures" not in (out / "results.md").read_text()  # no link to a missing figure


def test_a_rebuild_in_place_beside_new_runs_keeps_the_learning_curves(compare_dir: Path, tmp_path: Path) -> None:
    build_report([compare_dir], compare_dir)
    curves = (compare_dir / "learning_curves.png").read_bytes()
    shutil.rmtree(compare_dir / "runs")
    new_runs = tmp_path / "new"
    fake_run(new_runs / "r0", get_preset("dlw-lstm-b").config, acc=96.0, seed=0)
    with pytest.warns(RuntimeWarning, match="learning_curves.png kept as it was: the entries of a results.json"):
        build_report([compare_dir / "results.json", new_runs], compare_dir)
    assert (compare_dir / "learning_curves.png").read_bytes() == curves  # not redrawn from the new run alone
    assert "![learning_curves](learning_curves.png)" in (compare_dir / "results.md").read_text()
    build_report([compare_dir / "results.json"], compare_dir, plots=False)  # --no-plot: no figures listed
    assert "## Figures" not in (compare_dir / "results.md").read_text()


def test_a_config_this_rnnlab_cannot_read_is_kept_as_it_was(compare_dir: Path) -> None:
    build_report([compare_dir], compare_dir, plots=False)
    data = json.loads((compare_dir / "results.json").read_text())
    data["entries"][0]["config"]["model"]["attention"] = "yes"  # a key of a newer rnnlab
    (compare_dir / "results.json").write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=r"unknown key\(s\) model.attention.*kept as it was"):
        build_report([compare_dir / "results.json"], compare_dir, plots=False)
    again = json.loads((compare_dir / "results.json").read_text())
    assert again["entries"][0]["config"] == data["entries"][0]["config"]
    assert again["entries"][0]["architecture"] == data["entries"][0]["architecture"]


def test_an_entry_without_a_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema_version": 1, "entries": [{"entry": "a", "runs": []},
                                                                  {"entry": "", "runs": []}]}))
    with pytest.raises(CheckpointError, match=r"entry 2 \(\) has no entry"):
        collect([path])


def test_paths_given_as_one_string_are_refused_not_walked(tmp_path: Path) -> None:
    """A string is read letter by letter: "/" first, and the whole disk walked for run folders."""
    from rnnlab.compare import compare
    from rnnlab.entries import resolve_entries
    from rnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"give a list of run folders, .*, not a str.*: \['runs/x'\]"):
        build_report("runs/x", tmp_path / "out")
    with pytest.raises(ConfigError, match="not a PosixPath"):
        collect(tmp_path)
    with pytest.raises(ConfigError, match="no run folders, compare folders or results.json files given"):
        collect([])
    with pytest.raises(ConfigError, match=r"specs must be a list of strings, not a str.*\['dlw-lstm-a'\]"):
        resolve_entries("dlw-lstm-a")
    with pytest.raises(ConfigError, match="compare takes entries from rnnlab.entries.resolve_entries"):
        compare("dlw-lstm-a", tmp_path / "cmp")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cmp").exists()


def test_a_seeds_confusion_matrix_is_drawn_with_its_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.plots as plots

    run = fake_run(tmp_path / "fashion", get_preset("dlw-lstm-a").config)
    summary = json.loads((run / "summary.json").read_text())
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    atomic_write_json(run / "summary.json", {**summary, "data": {"class_names": names}})
    fake_run(tmp_path / "digits", get_preset("dlw-rnn-a").config)
    drawn: dict[str, Any] = {}
    monkeypatch.setattr(plots, "confusion_matrix_png",
                        lambda matrix, path, title, labels=None: drawn.setdefault(Path(path).parent.name, labels) or path)
    build_report([tmp_path / "fashion", tmp_path / "digits"], tmp_path / "out")
    assert drawn == {"fashion": [f"{i} {name}" for i, name in enumerate(names)], "digits": None}  # as `eval` draws them


def test_differences_from_a_baseline_are_simultaneous_intervals_over_the_entries(tmp_path: Path) -> None:
    """Two entries against a baseline: Bonferroni, each interval at 97.5%, so that both hold with 95%."""
    for name, accs in (("dlw-lstm-a", (97.0, 97.5, 97.2)), ("dlw-rnn-a", (92.0, 94.0, 93.0)),
                       ("dlw-lstm-b", (96.0, 97.0, 96.2))):
        for seed, acc in enumerate(accs):
            fake_run(tmp_path / f"cmp/runs/{name}/seed{seed}", get_preset(name).config, acc=acc, seed=seed)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path / "cmp"]))}
    rnn = rows["dlw-rnn-a"]
    assert rnn["baseline"] == "dlw-lstm-a" and rnn["delta_comparisons"] == 2 and rnn["delta_level"] == 0.975
    # differences -5, -3.5, -4.2: mean -4.2333, sd 0.7506, se 0.4333; t(1 - 0.025 / 2, 2) = 6.2053 (tables)
    assert rnn["delta_ci95_low"] == pytest.approx(-4.2333 - 6.2053 * 0.43333, abs=2e-3)
    assert rnn["delta_ci95_high"] == pytest.approx(-4.2333 + 6.2053 * 0.43333, abs=2e-3)
    build_report([tmp_path / "cmp"], tmp_path / "out", plots=False)
    md = (tmp_path / "out/results.md").read_text()
    assert "95% simultaneous intervals: all 2 hold together with 95% probability (Bonferroni: each is a 97.5% " \
           "interval)" in md and "| entry | Δ test acc (points) | 95% simultaneous interval | seeds | verdict |" in md


def test_accuracies_that_rnnlab_cannot_have_written_are_damage(compare_dir: Path, tmp_path: Path) -> None:
    rnn = compare_dir / "runs/dlw-rnn-a"
    summary = json.loads((rnn / "seed0/summary.json").read_text())
    (rnn / "seed0/summary.json").write_text(json.dumps({**summary, "test_accuracy": 1234.5}))
    del summary["test_accuracy"]  # completed, yet no accuracy: the mean would skip it, n would count it
    (rnn / "seed1/summary.json").write_text(json.dumps(summary))
    rows = {r["entry"]: r for r in build_report([compare_dir], tmp_path / "out", plots=False)}
    assert rows["dlw-rnn-a"]["status"] == "0/3 completed, 1 diverged, 2 failed"
    md = (tmp_path / "out/results.md").read_text()
    assert "summary.json is corrupt: its test_accuracy is 1234.5, not a percentage from 0 to 100" in md
    assert "summary.json is corrupt: its status is completed, but it has no test_accuracy" in md
    results = json.loads((tmp_path / "out/results.json").read_text())
    results["entries"][0]["runs"][0].update(status="completed", test_accuracy=150.0)
    (tmp_path / "edited.json").write_text(json.dumps(results))
    with pytest.raises(CheckpointError, match=r"entry 1 \(.*\) has a run whose test_accuracy is 150.0, not a "
                                              r"percentage from 0 to 100; it is not a results.json rnnlab wrote"):
        build_report([tmp_path / "edited.json"], tmp_path / "again", plots=False)


def test_the_same_run_twice_counts_once(compare_dir: Path, tmp_path: Path) -> None:
    # a loose run of the compare's own config and seed 0: not a fourth sample of dlw-rnn-a
    fake_run(tmp_path / "loose/again", get_preset("dlw-rnn-a").config, acc=92.0, seed=0)
    with pytest.warns(RuntimeWarning, match=r"again is the same run as .*seed0 \(the same settings and seed 0\): "
                                            r"counted once in dlw-rnn-a") as warned:
        groups = collect([compare_dir, tmp_path / "loose"])
    assert sorted(r.seed for r in groups["dlw-rnn-a"]) == [0, 1, 2]
    assert [w.filename for w in warned] == [__file__]  # the caller's line, however deep in rnnlab it arose
    with pytest.warns(RuntimeWarning, match="counted once") as warned:
        build_report([compare_dir, tmp_path / "loose"], tmp_path / "report", plots=False)
    assert [w.filename for w in warned] == [__file__]
    fake_run(tmp_path / "other/seed3", get_preset("dlw-rnn-a").config, acc=93.0, seed=3)  # a new seed: counted
    assert sorted(r.seed for r in collect([compare_dir, tmp_path / "other"])["dlw-rnn-a"]) == [0, 1, 2, 3]


def test_a_run_started_again_instead_of_resumed_counts_once(tmp_path: Path) -> None:
    """Two attempts at one run (the same settings and seed) are one seed: the completed one stands
    for an interrupted one, and of two interrupted ones, the one that got further."""
    config = get_preset("dlw-rnn-a").config
    fake_run(tmp_path / "a/first", config, status="interrupted", acc=None, iterations=300)
    fake_run(tmp_path / "a/again", config, acc=91.0)
    with pytest.warns(RuntimeWarning, match=r"first is an attempt \(interrupted\) at the same run as .*again \(the "
                                            r"same settings and seed 0\): counted once in dlw-rnn-a"):
        rows = aggregate(collect([tmp_path / "a"]))
    assert [(r["seeds"], r["completed"], r["unfinished"]) for r in rows] == [(1, 1, 0)]
    fake_run(tmp_path / "b/short", config, status="interrupted", acc=None, iterations=200)
    fake_run(tmp_path / "b/long", config, status="interrupted", acc=None, iterations=500)
    with pytest.warns(RuntimeWarning, match=r"short is an attempt \(interrupted\) at the same run as .*long "):
        (records,) = collect([tmp_path / "b"]).values()
    assert [r.dir.name for r in records] == ["long"]


def test_an_entry_whose_seeds_all_diverged_is_listed_among_the_differences(compare_dir: Path, tmp_path: Path) -> None:
    for seed in (0, 1):
        fake_run(compare_dir / f"runs/dlw-rnn-b/seed{seed}", get_preset("dlw-rnn-b").config, status="diverged",
                 acc=None, seed=seed, diverge_at=300)
    build_report([compare_dir], tmp_path / "out", plots=False)
    md = (tmp_path / "out/results.md").read_text()
    assert "| `dlw-rnn-b` | – | – | no completed seed (0/2 completed, 2 diverged) | |" in md


def test_the_tutorials_figure_is_not_set_against_a_changed_model(tmp_path: Path) -> None:
    rnn = get_preset("dlw-rnn-a").config
    fake_run(tmp_path / "same/seed0", apply_overrides(rnn, ["train.lr=0.05", "model.impl=torch"]), acc=90.0)
    fake_run(tmp_path / "small/seed0", apply_overrides(rnn, ["model.hidden=4", "name=small"]), acc=30.0)
    rows = {r["entry"]: r for r in aggregate(collect([tmp_path]))}
    assert rows["dlw-rnn-a"]["reported_test_accuracy"] == 92.48  # another recipe, the same model
    assert rows["small"]["reported_test_accuracy"] is None and rows["small"]["delta_vs_reported"] is None
    tiny = ["train.device=cpu", "train.iterations=2", "train.eval_every=2", "train.threads=1"]
    changed = rnnlab.train(apply_overrides(rnn, [*tiny, "model.hidden=8"]), tmp_path / "trained", progress=False)
    assert "reference" not in changed.summary  # the engine leaves it out too
    kept = rnnlab.train(apply_overrides(rnn, tiny), tmp_path / "trained-same", progress=False)
    assert kept.summary["reference"]["reported_test_accuracy"] == 92.48


def test_a_sweep_value_whose_seeds_diverged_is_marked_not_dropped(tmp_path: Path) -> None:
    from rnnlab.plots import sweep_png
    from rnnlab.run_records import read_record

    groups = _sweep_groups(tmp_path, {0.01: [95.0, 94.0], 0.1: [90.0, 92.0]})
    for lr, statuses in ((1e9, ("diverged", "diverged")), (0.1, ("completed", "diverged"))):
        entry = f"dlw-rnn-a+lr{'1e9' if lr == 1e9 else lr}"  # as a --sweep names it: the value as written
        config = apply_overrides(get_preset("dlw-rnn-a").config, [f"train.lr={lr}", f"name={entry}"])
        groups[entry] = [read_record(fake_run(tmp_path / entry / f"seed{seed}", config, status=status,
                                              acc=91.0 if status == "completed" else None, seed=seed,
                                              diverge_at=300 if status == "diverged" else None), entry=entry)
                         for seed, status in enumerate(statuses)]
    key, lines = sweep_series(groups, aggregate(groups))
    assert key == "train.lr"
    assert [(p["x"], p["mean"], p["completed"], p["runs"]) for p in lines["dlw-rnn-a"]] == [
        (0.01, 94.5, 2, 2), (0.1, 91.0, 1, 2), (1e9, None, 0, 2)]
    assert sweep_png(key, lines, tmp_path / "sweep.png") == tmp_path / "sweep.png"


def test_a_compare_folder_is_reported_in_the_order_its_compare_gave_the_entries(compare_dir: Path) -> None:
    assert [r["entry"] for r in aggregate(collect([compare_dir]))] == ["dlw-lstm-a", "dlw-rnn-a"]  # by name
    atomic_write_json(compare_dir / "compare.json", {"entries": [{"name": "dlw-rnn-a"}, {"name": "dlw-lstm-a"}]})
    assert [r["entry"] for r in aggregate(collect([compare_dir]))] == ["dlw-rnn-a", "dlw-lstm-a"]


def test_a_report_of_other_runs_into_a_compare_folder_is_refused(compare_dir: Path, tmp_path: Path) -> None:
    atomic_write_json(compare_dir / "compare.json", {"entries": [{"name": "dlw-rnn-a"}, {"name": "dlw-lstm-a"}]})
    fake_run(tmp_path / "loose/r0", get_preset("dlw-rnn-b").config)
    with pytest.raises(CheckpointError, match=r"is a compare folder, and its results files report its own runs; "
                                              r"give another folder \(out_dir=\) for a report of "):
        build_report([tmp_path / "loose"], compare_dir)
    assert not (compare_dir / "results.md").exists()
    build_report([compare_dir], compare_dir, plots=False)  # its own runs, in place: as compare writes them
    build_report([compare_dir / "results.json"], compare_dir, plots=False)  # rebuilt from its results.json


def _scored_on(run_dir: Path, test_set: str | None) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    if test_set is not None:
        summary["test_set"] = test_set
    atomic_write_json(run_dir / "summary.json", summary)


def test_entries_scored_on_other_test_sets_are_not_paired_and_are_named(tmp_path: Path) -> None:
    """A sweep over two sequence files: each entry scored on its own test set. Seeds do not pair
    across them, and the table and a warning say the difference is of data as much as of models."""
    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    for seed, (a, b) in enumerate([(90.0, 95.0), (91.0, 95.5), (92.0, 97.0)]):
        _scored_on(fake_run(tmp_path / f"cmp/runs/dlw-rnn-a/seed{seed}", rnn, acc=a, seed=seed), "file 1111")
        _scored_on(fake_run(tmp_path / f"cmp/runs/dlw-lstm-a/seed{seed}", lstm, acc=b, seed=seed), "file 2222")
    with pytest.warns(RuntimeWarning, match="^test sets differ: dlw-rnn-a \\(scored on other test sequences than "
                                            "the baseline dlw-lstm-a\\)"):
        rows = {r["entry"]: r for r in build_report([tmp_path / "cmp"], tmp_path / "cmp", plots=False)}
    row = rows["dlw-rnn-a"]
    assert row["delta_method"] == "welch" and row["delta_data_note"].startswith("scored on other test sequences")
    assert row["delta_vs_baseline"] == pytest.approx(-(95.0 + 95.5 + 97.0 - 90.0 - 91.0 - 92.0) / 3)
    md = (tmp_path / "cmp/results.md").read_text()
    assert "| welch, n=3 vs 3 | lower; other test set § |" in md
    assert "§ Test sets differ: `dlw-rnn-a` (scored on other test sequences than the baseline `dlw-lstm-a`)" in md
    # A report rebuilt from results.json alone says the same.
    rebuilt = {r["entry"]: r for r in aggregate(collect([tmp_path / "cmp/results.json"]))}
    assert rebuilt["dlw-rnn-a"]["delta_data_note"] == row["delta_data_note"]
    assert rebuilt["dlw-rnn-a"]["delta_method"] == "welch"


@pytest.mark.parametrize("test_sets", [("mnist", "mnist"), (None, None), ("mnist", None)])
def test_entries_on_one_test_set_or_unrecorded_ones_pair_by_seed(test_sets: tuple, tmp_path: Path) -> None:
    """The same test set (row and pixel MNIST alike are scored on MNIST's test images), or runs from
    before it was recorded: paired by seed, without a note."""
    rnn, lstm = get_preset("dlw-rnn-a").config, get_preset("dlw-lstm-a").config
    for seed, (a, b) in enumerate([(90.0, 95.0), (91.0, 95.5), (92.0, 97.0)]):
        _scored_on(fake_run(tmp_path / f"cmp/runs/dlw-rnn-a/seed{seed}", rnn, acc=a, seed=seed), test_sets[0])
        _scored_on(fake_run(tmp_path / f"cmp/runs/dlw-lstm-a/seed{seed}", lstm, acc=b, seed=seed), test_sets[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = {r["entry"]: r for r in build_report([tmp_path / "cmp"], tmp_path / "cmp", plots=False)}
    assert rows["dlw-rnn-a"]["delta_method"] == "paired" and rows["dlw-rnn-a"]["delta_data_note"] is None
    assert "§" not in (tmp_path / "cmp/results.md").read_text()


def test_a_report_of_a_compare_under_way_says_its_seeds_are_still_training(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A seed folder without a summary whose lock another process holds is training, not unfinished:
    the table says ``running`` and the command says to report again, not that seeds failed."""
    from _locks import held_by_another

    out = fake_compare(tmp_path / "cmp")
    training = out / "runs/dlw-lstm-a/seed2"
    training.mkdir()
    save_toml(apply_overrides(get_preset("dlw-lstm-a").config, ["seed=2"]), training / "config.toml")
    with held_by_another(training):  # a compare's worker training there
        assert main(["report", str(out), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "some seeds are still training (dlw-lstm-a (2/3 completed, 1 running)); report again when" in err
    assert "did not finish" not in err
    assert main(["report", str(out), "--no-plot"]) == 1  # nobody training there any more: unfinished
    err = capsys.readouterr().err
    assert "still training" not in err and "some seeds failed or did not finish (dlw-lstm-a)" in err


def test_a_seed_that_stopped_beside_one_still_training_is_still_said_not_to_have_finished(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An entry with a seed training now and another killed earlier (no summary, nobody training it):
    the one that will not finish by itself is named as such, not only counted among those training."""
    from _locks import held_by_another

    out = fake_compare(tmp_path / "cmp")
    training, stopped = out / "runs/dlw-lstm-a/seed2", out / "runs/dlw-lstm-a/seed3"
    for seed, folder in ((2, training), (3, stopped)):
        folder.mkdir()
        save_toml(apply_overrides(get_preset("dlw-lstm-a").config, [f"seed={seed}"]), folder / "config.toml")
    with held_by_another(training):
        assert main(["report", str(out), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "some seeds are still training (dlw-lstm-a (2/4 completed, 1 running, 1 unfinished))" in err
    assert "some seeds failed or did not finish (dlw-lstm-a)" in err


def test_reading_a_run_without_a_summary_writes_nothing_into_its_folder(tmp_path: Path) -> None:
    """Whether a process trains there is asked of the folder's lock: a folder never locked (a copy,
    another's runs) is unfinished without a lock file made in it by the look."""
    from rnnlab.run_records import read_record

    folder = tmp_path / "run"
    folder.mkdir()
    save_toml(get_preset("dlw-lstm-a").config, folder / "config.toml")
    assert read_record(folder).status == "unfinished"
    assert rnnlab.read_run(folder).status == "unfinished"
    assert sorted(p.name for p in folder.iterdir()) == ["config.toml"]
