"""Errors name a setting as the user gave it: the flag under the command line, the keyword from Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import rnnlab
from rnnlab.cli import main
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.errors import COMMAND_LINE, ConfigError, option, option_value
from rnnlab.pool import Task, run_tasks

TINY = ["train.device=cpu", "model.hidden=8", "train.iterations=10", "train.eval_every=10", "train.threads=1"]


@pytest.fixture
def command_line() -> Iterator[None]:
    """As under ``rnnlab.cli.main``, for this test only."""
    token = COMMAND_LINE.set(True)
    yield
    COMMAND_LINE.reset(token)


def test_python_spelling_by_default() -> None:
    assert option("--out", "out=") == "out="
    assert option_value("--out", "out", Path("runs") / "x") == "out='runs/x'"  # a path as its text
    assert option_value("--seeds", "seeds", 3) == "seeds=3"


def test_flags_under_the_command_line(command_line: None) -> None:
    assert option("--out", "out=") == "--out"
    assert option_value("--out", "out", Path("runs") / "x") == "--out runs/x"
    assert option_value("--seeds", "seeds", 3) == "--seeds 3"


def _compare_folder(tmp_path: Path) -> Path:
    """A folder a run must not train into, refused before any work: it holds a compare."""
    (tmp_path / "compare.json").write_text("{}")
    return tmp_path


def _refusal(folder: Path, another: str) -> str:
    return f"{folder} holds a compare (compare.json); a run writes a folder of its own: choose another {another}"


def test_from_python_an_error_names_the_keyword(tmp_path: Path) -> None:
    folder = _compare_folder(tmp_path)
    with pytest.raises(ConfigError) as exc:
        rnnlab.train(apply_overrides(RunConfig(), TINY), out=folder, progress=False)
    assert str(exc.value) == _refusal(folder, "folder (out=)")


def test_from_the_command_line_it_names_the_flag_and_only_for_that_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _compare_folder(tmp_path)
    assert main(["train", "--no-progress", "--out", str(folder), *TINY]) == 2
    assert capsys.readouterr().err == f"rnnlab: error: {_refusal(folder, '--out')}\n"
    # The command over, a library call in the same process names its keyword again.
    assert not COMMAND_LINE.get()
    with pytest.raises(ConfigError, match=r"^seeds=0 must be a whole number >= 1$"):
        rnnlab.compare.plan([], tmp_path, seeds=0)


@pytest.mark.slow  # rnnlab in another process
def test_the_installed_command_names_the_flag(tmp_path: Path) -> None:
    folder = _compare_folder(tmp_path)
    result = subprocess.run([sys.executable, "-m", "rnnlab", "train", "--no-progress", "--out", str(folder), *TINY],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"rnnlab: error: {_refusal(folder, '--out')}\n"


def naming_worker(task: Task) -> dict[str, Any]:
    """A compare worker that reports how an error in its process would name the output folder."""
    return {"entry": task.entry, "seed": task.seed, "run_dir": task.run_dir, "action": "failed",
            "status": "failed", "error": option("--out", "out_dir=")}


@pytest.mark.slow  # compare workers
def test_a_compare_worker_process_names_what_its_compare_would(tmp_path: Path, command_line: None) -> None:
    task = Task("e", 0, RunConfig(), str(tmp_path / "e" / "seed0"))
    # A context variable does not reach a spawned process: the pool passes the mode on.
    assert run_tasks([task], 1, worker=naming_worker)[0]["error"] == "--out"
    token = COMMAND_LINE.set(False)  # a compare called from Python
    try:
        assert run_tasks([task], 1, worker=naming_worker)[0]["error"] == "out_dir="
    finally:
        COMMAND_LINE.reset(token)
