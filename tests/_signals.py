"""Signals delivered at exact points of a Trainer's run, for the stop-and-resume tests."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def signal_after_update(trainer: Any, step: int, *signums: int) -> None:
    """Raise ``signums`` right after the optimizer's update of the ``step``-th step, before the
    loop counts it: the worst moment, where a stop could tear the step in two."""
    update, calls = trainer.optimizer.step, []

    def update_then_signal(*args: object, **kwargs: object) -> object:
        result = update(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            for signum in signums:
                signal.raise_signal(signum)
        return result

    trainer.optimizer.step = update_then_signal


def signal_before_save(trainer: Any, iteration: int, signum: int) -> None:
    """Raise ``signum`` as the run starts to save its checkpoint at ``iteration`` (the save on the way out)."""
    save = trainer.save

    def signal_then_save() -> None:
        if trainer.iteration == iteration:
            signal.raise_signal(signum)
        save()

    trainer.save = signal_then_save


def assert_resume_matches(whole_dir: Path, part_dir: Path) -> None:
    """Resume the stopped run in ``part_dir`` to its end: its weights must equal, bit for bit,
    those of the same run never stopped (``whole_dir``)."""
    import rnnlab

    resumed = rnnlab.resume(part_dir, progress=False)
    assert resumed.status == "completed"
    a = torch.load(whole_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


@contextlib.contextmanager
def in_a_session(args: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """``args`` started in a process group of its own (as a terminal starts a command), its stderr
    piped as text; the whole group killed on the way out, whatever the test found."""
    job = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)
    try:
        yield job
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)


def assert_stopped_with_the_resume_line(job: subprocess.Popen, err: str, signum: int) -> None:
    """Exit 130 after Ctrl-C (143 after SIGTERM), and the compare's resume line last on stderr."""
    sigterm = signum == signal.SIGTERM
    assert job.returncode == (143 if sigterm else 130), err
    last = (f"rnnlab: {'terminated (SIGTERM)' if sigterm else 'interrupted'}; rerun the same command to resume: "
            f"{shlex.join(['rnnlab', *job.args[3:]])}")
    assert err.strip().splitlines()[-1] == last, err  # nothing after it: no warning from multiprocessing
