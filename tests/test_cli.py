"""The command line: user mistakes end in exit status 2 and one clear line, never a traceback."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlab.cli import main

# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=8", "train.iterations=10", "train.eval_every=10", "data.val_size=500", "train.threads=1",
        "train.eval_batch_size=2000"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnlab", *args], capture_output=True, text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnlab: error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--preset", "dlw-rnn-z"], "unknown preset 'dlw-rnn-z'; valid presets: dlw-rnn-a"),
        (["train", "model.hidden=-3"], "model.hidden=-3 is out of range"),
        (["train", "model.cell=transformer"], "choose one of: rnn, lstm, gru"),
        (["train", "train.lr=abc"], "train.lr='abc': expected a number"),
        (["train", "nonsense.key=1"], "unknown key 'nonsense.key'"),
        (["inspect", "--preset", "nope"], "unknown preset 'nope'"),
        # Refused before torch tries to allocate (its raw RuntimeError before).
        (["inspect", "--hidden", "100000", "--layers", "50"], "the model would have 4.0e12 parameters (14,752 GiB"),
        (["train", "--dry-run", "--hidden", "2000000"], "lower model.hidden or model.layers"),
    ],
)
def test_config_mistakes(args: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    # In-process: the same handler as the console script, but fast.
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rnnlab: error: ") and fragment in err and err.count("\n") == 1


@pytest.mark.slow  # rnnlab in other processes
def test_missing_and_corrupt_data_files(tmp_path: Path, mnist_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("train", "--data-dir", str(empty), *TINY), "train-images")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(mnist_dir, corrupt)
    raw = gzip.decompress((corrupt / "t10k-images-idx3-ubyte.gz").read_bytes())
    (corrupt / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))  # truncated
    assert_user_error(run_cli("train", "--data-dir", str(corrupt), *TINY), "t10k-images")


@pytest.mark.slow  # rnnlab in another process
def test_an_output_path_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert_user_error(run_cli("gradients", "--preset", "dlw-rnn-a", "--images", "4", "--plot",
                              str(blocker / "g.png")), str(blocker))


@pytest.mark.slow  # rnnlab in other processes
def test_resume_of_a_folder_without_checkpoint(tmp_path: Path) -> None:
    assert_user_error(run_cli("train", "--resume", str(tmp_path)), "no checkpoint here")
    # Settings of any kind next to --resume are refused, not silently ignored.
    assert_user_error(run_cli("train", "--resume", str(tmp_path), "--hidden", "32", "train.lr=0.1"),
                      "drop the other settings (--hidden train.lr=0.1)")
    assert_user_error(run_cli("eval", str(tmp_path / "nope")), "no such run folder")


def test_train_then_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", "--no-progress", "--out", str(out), "--model", "gru", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed and "samples/s" in printed
    assert main(["eval", str(out), "--json", "--no-plot"]) == 0  # the plot: tests/test_evaluation.py
    report = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert report["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-3)
    assert len(report["per_class_accuracy"]) == 10 and sum(map(sum, report["confusion_matrix"])) == 10_000
    assert main(["eval", str(out), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "per-class accuracy" in text and "confusion matrix" in text


def test_inspect_prints_tutorial_shapes(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--preset", "dlw-lstm-a"]) == 0
    out = capsys.readouterr().out
    assert "[400, 28]" in out and "[400, 100]" in out and "FLOPs per sample" in out and "53,010" in out


def test_inspect_counts_a_pixel_lstm_and_a_row_gru_as_by_hand(capsys: pytest.CaptureFixture) -> None:
    """Per step is the recurrence's 2*G*H*(I+H) per layer, as a hand count gives it: the head was
    spread over the steps (132,099 per step for an LSTM of 128 on 784 pixels, not 132,096)."""
    assert main(["inspect", "--model", "lstm", "--hidden", "128", "--view", "pixels"]) == 0
    out = capsys.readouterr().out
    assert "parameters         68,362\n" in out  # 4*128*(1+128+2) + 10*(128+1)
    assert ("FLOPs per sample   103,565,824 forward (132,096 per step of the recurrence, 2,560 for the head), "
            "~310,697,472 training") in out
    assert main(["inspect", "--model", "gru", "--layers", "2", "--hidden", "64"]) == 0
    out = capsys.readouterr().out
    assert "parameters         43,658\n" in out  # 3*64*(28+64+2) + 3*64*(64+64+2) + 10*(64+1)
    assert "2,366,720 forward (84,480 per step of the recurrence, 1,280 for the head)" in out


def test_presets_and_models_listing(capsys: pytest.CaptureFixture) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "dlw-lstm-c" in out and "91.22" in out and "rnn-allsteps" in out
    # Each preset names its source by number, and each number is listed once under "sources:".
    rows, sources = out.split("\nsources:\n")
    cited = {line.rsplit(" ", 1)[1] for line in rows.splitlines()[1:]}
    listed = [line.split()[0] for line in sources.splitlines()]
    assert sorted(cited) == sorted(listed) == [f"[{k}]" for k in range(1, len(listed) + 1)]
    lstm_b = next(line for line in rows.splitlines() if line.startswith("dlw-lstm-b "))
    assert "pytorch_lstm_neuralnetwork" in next(line for line in sources.splitlines() if lstm_b.endswith(line.split()[0]))
    assert main(["models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    from rnnlab.models import list_models

    assert sorted(listed) == list_models() == ["gru", "lstm", "rnn"]  # what a run can use is what is built


def test_dry_run_keeps_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dry-run", "--no-progress", *TINY]) == 0
    out = capsys.readouterr().out
    assert "dry run ok" in out and "[model]" in out and not (tmp_path / "runs").exists()
    assert main(["train", "--dry-run", "--hidden", "2000000"]) == 2  # refused: the error alone, no config
    assert capsys.readouterr().out == ""
    assert main(["train", "--dry-run", *TINY]) == 0  # its bar counts the 2 steps it trains, not the budget
    err = capsys.readouterr().err
    assert "2/2 [" in err and "/10 [" not in err  # TINY: 10 iterations
    # A config that diverges fails its dry run as it would fail the run; one step is one step; --out is refused
    assert main(["train", "--dry-run", "--no-progress", *TINY, "train.lr=1e308"]) == 1
    assert "rnnlab: dry run diverged: loss became nan at iteration 1" in capsys.readouterr().err
    assert main(["train", "--dry-run", "--no-progress", *TINY, "train.iterations=1"]) == 0
    assert "dry run ok: 1 iteration, loss and evaluation ran" in capsys.readouterr().out
    assert main(["train", "--dry-run", "--no-progress", *TINY, "--out", str(tmp_path / "x")]) == 2
    assert "--dry-run trains in a temporary folder and keeps nothing; drop --out" in capsys.readouterr().err


def test_dry_run_evaluates_a_few_samples_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run checks the wiring in seconds: its periodic and final evaluations measure the first
    few samples of each split (the whole sets over 784 steps took minutes), marked as not a result."""
    import rnnlab
    from rnnlab import engine, run_summary
    from rnnlab.cli.train import DRY_RUN_EVAL_SAMPLES

    measured: list[int] = []

    def counting(evaluate):  # the sizes of the splits evaluated, periodic and final
        def wrapped(model, data, **kw):
            measured.append(len(data))
            return evaluate(model, data, **kw)
        return wrapped

    monkeypatch.setattr(engine, "evaluate", counting(engine.evaluate))
    monkeypatch.setattr(run_summary, "evaluate", counting(run_summary.evaluate))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dry-run", "--no-progress", *TINY, "train.eval_every=1"]) == 0
    out = capsys.readouterr().out
    assert measured == [DRY_RUN_EVAL_SAMPLES] * 4  # val after iterations 1 and 2, then test and val
    assert (f"dry run ok: 2 iterations, loss and evaluation ran (test accuracy " in out
            and f"% on the first {DRY_RUN_EVAL_SAMPLES} of 10,000 test samples: a check, not a result)" in out)
    # The summary (of the folder the dry run deletes, and the Run returned) marks its figures as a dry run's
    from rnnlab.run import _train

    result = _train(rnnlab.apply_overrides(rnnlab.RunConfig(), TINY), tmp_path / "run", progress=False,
                    stop_after=2, eval_limit=40)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written == result.summary and written["evaluation_subset"] == {
        "val": 40, "test": 40, "note": "dry run: evaluated on the first 40 samples of each split only "
                                       "(40 val, 40 test); not a result"}
    assert sum(map(sum, written["confusion_matrix"])) == 40 and written["data"]["test"] == 10_000
    assert "evaluation_subset" not in rnnlab.train(rnnlab.apply_overrides(rnnlab.RunConfig(), TINY), tmp_path / "full",
                                                   progress=False, stop_after=1).summary


def test_a_folder_or_file_given_as_an_override_says_which_option_takes_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """``rnnlab inspect runs/lstm-a-plus``: not "'runs/lstm-a-plus' is not KEY=VALUE" but the option for it."""
    from rnnlab.config import RunConfig, save_toml

    run = tmp_path / "lstm-a-plus"
    run.mkdir()
    save_toml(RunConfig(), run / "config.toml")
    cmp = tmp_path / "cmp1"
    for entry in ("dlw-rnn-a", "dlw-rnn-a-plus"):
        (cmp / "runs" / entry / "seed0").mkdir(parents=True)
        save_toml(RunConfig(), cmp / "runs" / entry / "seed0" / "config.toml")
    (cmp / "compare.json").write_text("{}")

    def error(*args: str) -> str:
        assert main(list(args)) == 2
        return capsys.readouterr().err

    settings = f"rnnlab: error: {run} is a run folder, not a KEY=VALUE override: to start from its settings give " \
               f"--config {run / 'config.toml'}"
    assert error("inspect", str(run)) == settings + "\n"
    assert error("train", str(run), "model.hidden=8") == f"{settings}; to continue it, --resume {run}\n"
    assert error("gradients", str(run)) == f"{settings}; for its trained weights, --run {run}\n"
    assert error("inspect", str(cmp)) == (
        f"rnnlab: error: {cmp} is a compare folder, not a KEY=VALUE override: to start from the settings of one of "
        f"its runs give --config {cmp / 'runs/dlw-rnn-a/seed0/config.toml'} or --config "
        f"{cmp / 'runs/dlw-rnn-a-plus/seed0/config.toml'}\n")
    assert error("inspect", str(run / "config.toml")) == (
        f"rnnlab: error: {run / 'config.toml'} is a config file, not a KEY=VALUE override: give --config "
        f"{run / 'config.toml'}\n")
    assert error("train", "dlw-rnn-a") == ("rnnlab: error: dlw-rnn-a is a preset, not a KEY=VALUE override: give "
                                           "--preset dlw-rnn-a\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error("inspect", str(empty)) == (f"rnnlab: error: override {str(empty)!r} is not KEY=VALUE "
                                            "(e.g. model.hidden=256)\n")


def test_overrides_may_come_before_and_after_options() -> None:
    from rnnlab.cli import build_parser
    from rnnlab.cli.common import config_from_args

    args = build_parser().parse_args(["train", "model.hidden=32", "--preset", "dlw-rnn-a", "--out", "x",
                                      "train.lr=0.5", "--seed", "3", "--amp", "auto"])
    config = config_from_args(args)
    assert (config.model.hidden, config.train.lr, config.seed, args.out) == (32, 0.5, 3, "x")
    assert config.train.amp == "auto"
    assert config.model.cell == "rnn"  # still the preset underneath


def test_rnnlab_warnings_are_one_line_for_users() -> None:
    from rnnlab.cli import _one_line_warning
    from rnnlab.models import recurrent

    text = _one_line_warning(RuntimeWarning("running it in fp32"), RuntimeWarning, recurrent.__file__, 94)
    assert text == "rnnlab: warning: running it in fp32\n"
    other = _one_line_warning(UserWarning("elsewhere"), UserWarning, "/tmp/somewhere.py", 3)
    assert "somewhere.py:3" in other and "UserWarning" in other


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CPU", "cuda:"])
def test_an_unknown_device_lists_the_valid_ones(device: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The device is checked before the run folder is read, so any folder will do.
    assert main(["eval", str(tmp_path), "--device", device]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: device {device!r} is not valid; choose one of: auto, cpu, "
                                       "cuda, cuda:N (N a GPU number, e.g. cuda:0) or mps\n")


def test_settings_given_names_every_kind_of_setting() -> None:
    from rnnlab.cli import build_parser
    from rnnlab.cli.common import settings_given

    args = build_parser().parse_args(["gradients", "--run", "r", "--hidden", "32", "train.lr=0.1", "--preset", "x"])
    assert settings_given(args) == ["--preset", "--hidden", "train.lr=0.1"]
    assert settings_given(build_parser().parse_args(["gradients", "--run", "r"])) == []


def test_a_gpu_number_beyond_the_machines_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rnnlab.distributed import select_device
    from rnnlab.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2' asked for, but this machine has 2 CUDA GPU\(s\), "
                                          r"cuda:0 to cuda:1"):
        select_device("cuda:2")
    assert select_device("cuda:1") == torch.device("cuda", 1)


def test_a_config_folder_points_to_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rnnlab.config import RunConfig, save_toml

    save_toml(RunConfig(), tmp_path / "config.toml")  # a run folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text("x = [\n")
    for folder, example in [(tmp_path, f"e.g. {tmp_path / 'config.toml'}"),
                            (tmp_path / "empty", "e.g. a run folder's config.toml")]:
        assert main(["train", "--dry-run", "--config", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err == f"rnnlab: error: --config {folder} is a folder; give a config file, {example}\n"
    assert main(["compare", "--dry-run", str(tmp_path / "bad.toml")]) == 2  # compare has no --config option
    err = capsys.readouterr().err
    assert "not valid TOML" in err and err.endswith("; fix the file\n") and "--config" not in err


@pytest.mark.parametrize(("sequences", "fix"), [
    (3, "has 3 sequences; set data.val_size=0 (no validation split; too few sequences to carve one from)"),
    (12, "has 12 sequences; set data.val_size=1 (a tenth) or 0 for no validation split"),
])
def test_val_size_advice_for_a_tiny_training_split(sequences: int, fix: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    np.savez(tmp_path / "s.npz", x_train=np.zeros((sequences, 5, 2), np.float32), y_train=np.arange(sequences) % 2,
             x_test=np.zeros((2, 5, 2), np.float32), y_test=np.array([1, 0]))
    assert main(["train", "--no-progress", "--out", str(tmp_path / "run"), "--data-file", str(tmp_path / "s.npz"),
                 f"data.val_size={sequences}"]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: data.val_size={sequences} would leave no training data: "
                                       f"the training split {fix}\n")


@pytest.mark.slow  # rnnlab in another process
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_training_between_steps_and_the_run_resumes(tmp_path: Path) -> None:
    """What a scheduler's time limit, `kill` or `docker stop` sends: the run keeps a checkpoint of
    its last whole step, the command says how to continue and exits 143, with no traceback."""
    run_dir = tmp_path / "run"
    args = [*TINY, "train.iterations=100000", "train.eval_every=100000", "train.checkpoint_every=25",
            "train.batch_size=20", "--out", str(run_dir), "--no-progress"]
    job = subprocess.Popen([sys.executable, "-m", "rnnlab", "train", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"rnnlab: terminated (SIGTERM); continue with: rnnlab train --resume {run_dir}"
    summary = json.loads((run_dir / "summary.json").read_text())
    saved = json.loads((run_dir / "checkpoint.json").read_text())["iteration"]
    assert summary["status"] == "interrupted" and summary["iterations"] == saved > 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_is_taken_over_only_once_the_arguments_are_parsed(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """argparse cannot be stopped midway (a Terminated inside parse_intermixed_args ends in an
    AttributeError of argparse's own, with a traceback): while it parses, SIGTERM keeps its default
    action and simply ends the process, as it does while Python starts."""
    import argparse

    from rnnlab import cli
    from rnnlab.stopping import Terminated, raise_terminated

    seen: dict[str, object] = {}

    def command(args: argparse.Namespace) -> int:
        seen["running"] = signal.getsignal(signal.SIGTERM)
        raise Terminated(Path("runs/x"))

    class Parser(argparse.ArgumentParser):
        def parse_args(self, *args: object, **kwargs: object) -> argparse.Namespace:  # type: ignore[override]
            seen["parsing"] = signal.getsignal(signal.SIGTERM)
            return argparse.Namespace(func=command)

    monkeypatch.setattr(cli, "build_parser", Parser)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train"]) == 143
    assert seen == {"parsing": signal.SIG_DFL, "running": raise_terminated}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert capsys.readouterr().err == "rnnlab: terminated (SIGTERM); continue with: rnnlab train --resume runs/x\n"
    # Under torchrun every process is told: rank 0 says it once, with the launcher to use.
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "rnnlab: terminated (SIGTERM); continue with: torchrun ... rnnlab train "
                                         "--resume runs/x\n")):
        monkeypatch.setenv("RANK", rank)
        assert main(["train"]) == 143
        assert capsys.readouterr().err == said


def test_sigterm_in_a_dry_run_names_no_folder_to_resume(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """The dry run's folder is deleted on the way out: there is nothing to continue."""
    from rnnlab import run
    from rnnlab.stopping import Terminated

    def terminated(config: object, folder: str, **kwargs: object) -> None:
        raise Terminated(Path(folder))

    monkeypatch.setattr(run, "_train", terminated)  # what the dry run trains with: train's, evaluating less
    monkeypatch.delenv("RANK", raising=False)
    assert main(["train", "--dry-run", "--no-progress", *TINY]) == 143
    assert capsys.readouterr().err == "rnnlab: terminated (SIGTERM)\n"


@pytest.mark.slow  # a Python process and head
def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`rnnlab models | head -1`: no "Broken pipe" error, the status a shell gives a tool the pipe closed."""
    import subprocess

    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    # The list is written again and again until a write finds the pipe closed (head has gone).
    code = ("import sys, time\nfrom rnnlab.cli import main\ntime.sleep(0.5)\n"
            "for _ in range(200):\n    status = main(['presets'])\n    if status:\n        sys.exit(status)\n")
    job = subprocess.run([sys.executable, "-c", code],
                         stdout=reader.stdin, stderr=subprocess.PIPE, text=True, timeout=120)
    reader.stdin.close()
    reader.wait()
    assert job.returncode == 141 and "Broken pipe" not in job.stderr and "Traceback" not in job.stderr, job.stderr


def command_help(command: str, capsys: pytest.CaptureFixture) -> str:
    """``rnnlab COMMAND --help``, its whitespace made single spaces (argparse wraps to the terminal)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


# The shortcut flags of training settings, which inspect refuses all of and gradients all but --device of.
TRAINING_FLAGS = ["--optimizer", "--lr", "--batch-size", "--epochs", "--iterations", "--device", "--amp"]


@pytest.mark.parametrize(("command", "refused", "extra"), [
    ("inspect", TRAINING_FLAGS, []),
    ("gradients", [flag for flag in TRAINING_FLAGS if flag != "--device"], ["--images", "2", "train.device=cpu"]),
])
def test_help_lists_no_flag_the_command_refuses_and_its_example_runs(
        command: str, refused: list[str], extra: list[str], capsys: pytest.CaptureFixture) -> None:
    import re

    from rnnlab.cli.gradients import TRAIN_KEYS_USED

    text = command_help(command, capsys)
    listed = set(re.findall(r"(--[a-z-]+)", text))
    assert not listed & set(refused), listed & set(refused)
    keys = set(re.findall(r"\[(train\.[a-z_]+)\]", text))  # the dotted key each shortcut sets
    assert keys <= set(TRAIN_KEYS_USED if command == "gradients" else ())
    example = re.search(r"dotted overrides, e\.g\. ((?:\S+=\S+ ?)+)", text).group(1).split()
    assert example and not any(item.startswith("train.") for item in example)
    assert main([command, *example, *extra]) == 0, capsys.readouterr().err
    # The refusal of a training setting given as an override stays, with its reason.
    assert main([command, "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: `rnnlab ") and "; drop train.lr=1e-3" in err, err
    # Its flag, though not in the help, gets the same refusal rather than argparse's "unrecognized arguments".
    assert main([command, "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: `rnnlab ") and "; drop --lr 1e-3" in err and err.count("\n") == 1, err


def test_predict_help_says_which_28x28_images_are_used_as_they_are(capsys: pytest.CaptureFixture) -> None:
    # Only an image already in MNIST's form passes through (imaging.prepare; test_imaging's redrawn digits):
    # a dim or coloured 28x28 light-on-dark image is prepared like any other, not "used as it is" (found by QA).
    text = command_help("predict", capsys)
    assert "28x28 light-on-dark images are used as they are" not in text
    assert ("An image already in that form (28x28, grey, light ink reaching full brightness on black) is used as "
            "it is; any other 28x28 image (dim, coloured, dark on light) is prepared like the rest.") in text


@pytest.mark.parametrize("command", ["eval", "train", "gradients"])
def test_device_help_says_auto_is_accepted_and_what_it_picks(command: str, capsys: pytest.CaptureFixture) -> None:
    text = command_help(command, capsys)
    default = "(default: cpu)" if command == "eval" else "(default: auto, unless the preset or config sets one)"
    assert (f"--device {'DEVICE' if command == 'eval' else 'X'} auto (the first available of cuda, mps, cpu), "
            f"cpu, cuda, cuda:N or mps {default}") in text


def test_a_missing_dataset_suggests_a_download_of_that_dataset(capsys: pytest.CaptureFixture) -> None:
    # The hermetic cache (conftest) is empty: fashion-mnist and kmnist are not there.
    for dataset in ("fashion-mnist", "kmnist"):
        assert main(["train", "--dry-run", "--no-progress", f"data.dataset={dataset}"]) == 2
        err = capsys.readouterr().err
        assert f"`rnnlab train data.dataset={dataset} data.download=true`" in err, err


@pytest.mark.parametrize("flag, value, wrong", [("--hidden", "abc", "model.hidden='abc': expected a whole number"),
                                                ("--epochs", "1.5", "train.epochs='1.5': expected a whole number"),
                                                ("--lr", "fast", "train.lr='fast'")])
def test_a_bad_shortcut_value_is_one_line_naming_the_flag(flag: str, value: str, wrong: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", flag, value, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnlab: error: {flag} {value}: {wrong}") and err.count("\n") == 1 and "usage" not in err
