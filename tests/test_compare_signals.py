"""Ctrl-C and SIGTERM to a compare at any moment: it ends promptly, with its status and one line,
never a traceback, never a hang (rnnlab.pool, rnnlab.pool_signals)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rnnlab import pool
from rnnlab import compare as cmp
from rnnlab.pool_signals import StopRequests, blocked_while_workers_start
from rnnlab.stopping import SAME_SIGNAL, Terminated, raise_terminated
from _signals import assert_stopped_with_the_resume_line, in_a_session

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, signals and /proc")

SHORT, LONG = "dlw-rnn-a+iterations20", "dlw-rnn-a+iterations100000"
SETTINGS = ["train.device=cpu", "model.hidden=16", "train.batch_size=20", "train.threads=1", "data.val_size=0",
            "train.eval_every=100000", "train.checkpoint_every=50"]


def test_signals_are_noted_while_the_pool_runs_and_told_apart(handlers: None) -> None:
    """The first stops the workers; its second delivery is ignored; SIGTERM just after a Ctrl-C is
    passed on too; a signal later than that is a second one, which ends the pool at once."""
    signal.signal(signal.SIGTERM, raise_terminated)  # as under the command line
    with StopRequests() as stop:
        assert not stop.requested and stop.take() == []
        signal.raise_signal(signal.SIGINT)  # noted: no KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        assert stop.take() == [signal.SIGINT] and not stop.at_once and not stop.terminated
        signal.raise_signal(signal.SIGTERM)
        assert stop.take() == [signal.SIGTERM] and stop.terminated and not stop.at_once
        assert isinstance(stop.exception(), Terminated)
        stop._noted.append((signal.SIGINT, time.monotonic() + SAME_SIGNAL + 0.1))  # a second Ctrl-C, later
        assert stop.take() == [] and stop.at_once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is raise_terminated


def test_handlers_of_ones_own_are_left_alone(handlers: None) -> None:
    """Only handlers that would raise are taken over: not SIG_IGN, nor SIGTERM's default action."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopRequests():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with StopRequests() as stop:
        assert isinstance(stop.exception(), KeyboardInterrupt) and not isinstance(stop.exception(), Terminated)


@pytest.mark.slow  # a worker process
def test_a_worker_starts_with_ctrl_c_and_sigterm_blocked_until_its_handlers_are_set() -> None:
    """A Ctrl-C to the process group while a worker imports would end it with a traceback."""
    with ProcessPoolExecutor(max_workers=1, mp_context=pool._context()) as workers:
        with blocked_while_workers_start():
            blocked = workers.submit(signal.pthread_sigmask, signal.SIG_BLOCK, [])
        assert {signal.SIGINT, signal.SIGTERM} <= blocked.result(timeout=60)
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])  # here: as it was


def _spawned_workers(pid: int) -> list[int]:
    """The compare's worker processes started so far."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
    return found


def _group_gone(pgid: int, within: float) -> bool:
    """Whether every process of the group has exited (a zombie has) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [stat for stat in Path("/proc").glob("[0-9]*/stat") if _in_group(stat, pgid)]:
            return True
        time.sleep(0.1)
    return False


def _in_group(stat: Path, pgid: int) -> bool:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
    except (OSError, IndexError):
        return False
    return int(fields[2]) == pgid and fields[0] != "Z"


def _moment_reached(moment: str, job: subprocess.Popen, out: Path) -> bool:
    if moment == "workers starting":  # spawned, importing: no initializer has run yet, most likely
        return bool(_spawned_workers(job.pid))
    if moment == "results coming back":  # a short seed has finished; the worker takes the next
        return any((out / "runs" / SHORT / f"seed{s}/summary.json").exists() for s in (0, 1))
    return (out / "runs" / LONG / "seed0/checkpoint.json").exists()  # training


@pytest.mark.slow  # rnnlab compare and its workers: about 10 s each
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("moment", ["workers starting", "results coming back", "training"])
def test_a_signal_ends_a_compare_promptly_at_any_moment(tmp_path: Path, moment: str, signum: int) -> None:
    """Sent as ``timeout`` sends it, to the compare and then to its process group: the compare gets
    it twice, its workers once from the group and once from the compare. Before, the second delivery
    could land inside the pool's shutdown and leave the command waiting forever, and one landing
    inside concurrent.futures' locks ended it with a traceback; a worker still starting died of it."""
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "rnnlab", "compare", "dlw-rnn-a", "--sweep", "train.iterations=20,100000",
               "--seeds", "2", "--jobs", "2", *SETTINGS, "--out", str(out), "--no-plot"]
    with in_a_session(command, stdout=subprocess.PIPE) as job:
        deadline = time.monotonic() + 180
        while not _moment_reached(moment, job, out):
            assert time.monotonic() < deadline and job.poll() is None, f"never reached: {moment}"
            time.sleep(0.02)
        os.kill(job.pid, signum)
        os.killpg(job.pid, signum)
        sent = time.monotonic()
        _, err = job.communicate(timeout=60)
        took = time.monotonic() - sent
    assert_stopped_with_the_resume_line(job, err, signum)
    assert "Traceback" not in err and "leaked" not in err, err
    assert took < 20, f"{took:.1f} s from the signal to the exit"
    assert _group_gone(job.pid, 5), "a worker outlived its compare"
    if moment == "workers starting":  # no seed started once the compare was told to stop
        assert not list(out.glob("runs/*/seed*")), list(out.glob("runs/*/seed*"))
    if moment == "training":  # the running seed stopped between two steps, saved, resumable
        summary = json.loads((out / "runs" / LONG / "seed0/summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["iterations"] > 0, summary


def stubborn_worker(task: cmp.Task) -> dict[str, Any]:
    """A seed that heeds the first Ctrl-C and then takes its time (a long test evaluation, say):
    later signals are ignored in a worker (stopping.heed_once), as they may be the same one again."""
    Path(task.run_dir + ".started").parent.mkdir(parents=True, exist_ok=True)
    Path(task.run_dir + ".started").write_text(str(os.getpid()))
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        Path(task.run_dir + ".stopped").touch()
        time.sleep(60)
    return {"entry": task.entry, "seed": task.seed, "run_dir": task.run_dir, "action": "trained",
            "status": "completed", "test_accuracy": 50.0, "train_seconds": 60.0, "error": None}


@pytest.mark.slow  # a compare process and its workers
def test_a_second_ctrl_c_ends_the_compare_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C waits for the running seeds to save; a second, more than a second later,
    ends the workers and the compare at once, without a traceback."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from rnnlab import compare as cmp\nfrom rnnlab.entries import resolve_entries\n"
              "import test_compare_signals as t\n"
              "tasks = cmp.plan(resolve_entries(['dlw-rnn-a']), sys.argv[1], seeds=8, jobs=2)\n"
              "try:\n    cmp.execute(tasks, 2, worker=t.stubborn_worker)\n"
              "except KeyboardInterrupt:\n    sys.exit(130)\n")
    with in_a_session([sys.executable, "-c", script, str(tmp_path)]) as job:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("runs/dlw-rnn-a/*.started"))) < 2:
            assert time.monotonic() < deadline and job.poll() is None, "the workers did not start"
            time.sleep(0.1)
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C in a terminal: to the whole group
        while len(list(tmp_path.glob("runs/dlw-rnn-a/*.stopped"))) < 2:
            assert time.monotonic() < deadline and job.poll() is None, "the workers were not told"
            time.sleep(0.1)
        time.sleep(SAME_SIGNAL + 0.5)
        assert job.poll() is None  # waiting for its seeds
        os.killpg(job.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = job.communicate(timeout=30)
        took = time.monotonic() - sent
    assert job.returncode == 130, err
    assert took < 5, f"{took:.1f} s from the second Ctrl-C to the exit"
    assert "Traceback" not in err, err
    assert _group_gone(job.pid, 5), "a worker outlived its compare"
    assert len(list(tmp_path.glob("runs/dlw-rnn-a/*.started"))) == 2  # the queued seeds never started
