"""The worker pool of a compare: tasks (one seed of one entry) run in spawned processes, with
Ctrl-C and SIGTERM passed on so that running seeds stop between two steps, and with a pool broken
by a worker's death retried so that only the seed that died is recorded as failed. In the
compare's process the signals are noted, not raised, while the pool runs (:mod:`rnnlab.pool_signals`
says why), and the pool is always shut down here, with a bound on the wait for its workers.

:func:`run_tasks` takes the function a worker runs; :func:`rnnlab.compare.execute` gives it the
one that trains a seed.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rnnlab.atomic import atomic_write_json
from rnnlab.checkpoint import CONFIG, SUMMARY
from rnnlab.config import RunConfig, save_toml
from rnnlab.errors import COMMAND_LINE, DataWarning
from rnnlab.pool_signals import StopRequests, blocked_while_workers_start, unblock_in_worker
from rnnlab.run_records import read_summary
from rnnlab.stopping import heed_once


@dataclass(frozen=True)
class Task:
    """One seed of one entry, ready to run in a worker process."""

    entry: str
    seed: int
    config: RunConfig
    run_dir: str

    @property
    def key(self) -> tuple[str, int]:
        return self.entry, self.seed


def task_record(task: Task, summary: dict[str, Any], action: str) -> dict[str, Any]:
    """What a task came to (the progress line's and ``execute``'s record), from its summary."""
    return {"entry": task.entry, "seed": task.seed, "run_dir": task.run_dir, "action": action,
            "status": summary.get("status", "failed"), "test_accuracy": summary.get("test_accuracy"),
            "train_seconds": summary.get("train_seconds"), "error": summary.get("error") or summary.get("message")}


def record_failure(task: Task, error: str, details: str = "") -> dict[str, Any]:
    """Write a ``failed`` summary into the task's folder (a rerun retries it) and return its record."""
    run_dir = Path(task.run_dir)
    summary = {"status": "failed", "name": task.entry, "preset": task.config.preset or None, "seed": task.seed,
               "error": error, "traceback": details[-4000:]}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONFIG).exists():
            save_toml(task.config, run_dir / CONFIG)
        atomic_write_json(run_dir / SUMMARY, summary)
    except OSError:
        pass  # the failure is still reported in the returned record
    return task_record(task, summary, "failed")


# --------------------------------------------------------------------------- the scheduler


def _context() -> multiprocessing.context.BaseContext:
    """spawn: safe with torch's threads (unlike fork), and each worker sees the current
    environment (a forkserver keeps the one it started with, e.g. RNNLAB_DATA_DIR)."""
    return multiprocessing.get_context("spawn")


_STOP = "STOP"  # in a round's marker folder: the compare was interrupted, start nothing more


def _worker_setup(parent: int, marker_dir: str, gpu_counter: Any, gpus: int, imports: list[str],
                  command_line: bool) -> None:
    """Pool initializer. An idle worker ignores Ctrl-C (one dying in the pool's queue would break
    the pool, and the pool would then kill the others mid-stop), and the worker's life is tied to
    the parent's: if the compare process is killed, its workers exit within half a second instead
    of training on for no one, into folders that a rerun then trains into as well, and then waiting
    for work forever. For SIGTERM see :func:`_idle_sigterm` and :func:`_started`. The worker starts
    with both signals blocked (:func:`pool_signals.blocked_while_workers_start`) until its own
    handlers are set here. With ``gpus``, the worker takes the next GPU as its own
    (:func:`_take_gpu`). ``imports``: the modules that registered models of one's own in the
    compare's process (``--import``), imported here too. ``command_line``: whether the compare runs under the command line, whose errors name flags
    (:func:`rnnlab.errors.option`); a context variable does not reach another process."""
    COMMAND_LINE.set(command_line)  # in this thread's context, where the pool then runs every task
    if command_line:  # rnnlab's warnings in one line, as the command's own process shows them
        from rnnlab.cli import _one_line_warning

        warnings.formatwarning = _one_line_warning
    if gpus:
        _take_gpu(gpu_counter, gpus)
    # The compare read each data file once and said what it had to say of it: not once per seed here.
    warnings.simplefilter("ignore", DataWarning)
    if imports:
        from rnnlab.models.own import import_models

        for source in imports:
            import_models(source, say_if_none=False)  # the compare's process said it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, functools.partial(_idle_sigterm, marker_dir))
    unblock_in_worker()  # the compare started this process with both blocked, until now

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rnnlab-parent-watch", daemon=True).start()


def _imported_models() -> list[str]:
    own = sys.modules.get("rnnlab.models.own")  # not imported: no model of one's own was
    return own.imported_models() if own is not None else []


def _take_gpu(counter: Any, gpus: int) -> None:
    """Make GPU ``counter % gpus`` this worker's current device, and count on: a run on ``cuda``
    (or ``auto``) then trains there, so that as many workers as GPUs train one on each, instead
    of all on the first."""
    import torch

    with counter.get_lock():
        index = counter.value % gpus
        counter.value += 1
    torch.cuda.set_device(index)


_STOPPING_WAIT = 2.0  # seconds a worker that SIGTERM reached waits for the compare to say it is stopping


def _compare_stopping(marker_dir: str) -> bool:
    """Whether the compare is stopping (its STOP marker appears within :data:`_STOPPING_WAIT`):
    then it ends its pool itself, once every busy worker has saved its run. A SIGTERM to the
    whole process group (a scheduler's) reaches the compare at the same moment as its workers."""
    deadline = time.monotonic() + _STOPPING_WAIT
    while not (Path(marker_dir) / _STOP).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _idle_sigterm(marker_dir: str, signum: int, frame: Any) -> None:
    """SIGTERM to an idle worker: nothing to do if the compare is stopping, for a worker that died
    now would break the pool, and a broken pool sends SIGTERM to every worker, busy ones included.
    Otherwise the pool is broken and ends its workers, or this worker alone was told to go: it
    ends, by SystemExit, which (unlike a death by the signal) lets go of the pool's queue on the
    way out, so that no other worker waits on it forever."""
    if not _compare_stopping(marker_dir):
        raise SystemExit(128 + signum)


def _started(marker_dir: str, worker: Callable[[Task], dict[str, Any]], task: Task) -> dict[str, Any]:
    """Run ``worker(task)`` after leaving a marker, so that after a pool breaks the parent knows
    which tasks were running (suspects) and which had not started (innocent). After a Ctrl-C
    the pool may still hand out tasks it had queued: those return at once, unstarted.

    While it runs, Ctrl-C or SIGTERM stops the run between two steps. Each is heeded once
    (:func:`stopping.heed_once`): a later one (the compare passing on the Ctrl-C that the terminal
    sent to every process already; the SIGTERM a broken pool sends to every worker) must not stop
    the run while it saves its checkpoint and summary, nor stop it at once in its step. One that
    comes outside the training loop ends the task with what its run folder holds. Once a run
    that SIGTERM stopped is saved, the worker stays for the compare to end the pool if the compare
    is stopping; otherwise (the pool is broken, or this worker alone was told to go) it ends, by
    that signal: a worker that waited for more work in a broken pool would wait forever."""
    busy = Path(marker_dir) / f"{os.getpid()}.pid"  # while it exists, the parent passes a signal on
    idle = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, heed_once)  # which stopping.StopBetweenSteps takes over
        signal.signal(signal.SIGTERM, heed_once)
        # Busy, then the STOP marker looked for: the compare leaves that marker, then signals the
        # busy workers; so either this task sees it, or the compare sees this worker and signals it.
        busy.touch()
        if (Path(marker_dir) / _STOP).exists():
            return task_record(task, {"status": "interrupted"}, "not started")
        (Path(marker_dir) / f"{task.entry}.seed{task.seed}").touch()
        return worker(task)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the training loop; what the run folder holds stands
        summary = read_summary(Path(task.run_dir))
        return task_record(task, summary or {"status": "interrupted"}, "interrupted" if summary else "not started")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        terminated = signal.signal(signal.SIGTERM, signal.SIG_DFL) == signal.SIG_IGN  # one came
        busy.unlink(missing_ok=True)
        if terminated and not _compare_stopping(marker_dir):
            signal.raise_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, idle)


_POLL = 0.1  # seconds between two looks at the signals noted while waiting for results
_EXIT_WAIT = 10.0  # seconds a pool's workers get to exit once it is shut down, before they are killed


def _round(batch: list[Task], workers: int, worker: Callable[[Task], dict[str, Any]], marker_dir: str,
           done: Callable[[Task, dict[str, Any]], None], stop: StopRequests, gpus: int = 0) -> None:
    """Run a batch in one pool; tasks lost to a broken pool are simply left without a result.

    After a first Ctrl-C or SIGTERM (``stop``) no task starts, the running ones stop between two
    steps and save, and the pool ends once they have returned; after a second, at once. However
    it ends, the pool is shut down here, its workers given :data:`_EXIT_WAIT` seconds to exit and
    then killed: never waited for without end."""
    gpu_counter = _context().Value("i", 0)  # the next GPU a starting worker takes
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_setup,
                               initargs=(os.getpid(), marker_dir, gpu_counter, gpus, _imported_models(),
                                         COMMAND_LINE.get()))
    try:
        with blocked_while_workers_start():  # the workers start in submit
            futures: dict[Future, Task] = {pool.submit(_started, marker_dir, worker, t): t for t in batch}
        pending = set(futures)
        while pending and not stop.at_once:
            finished, pending = wait(pending, timeout=_POLL, return_when=FIRST_COMPLETED)
            for future in finished:
                _settle(future, futures[future], done, stopping=stop.requested)
            _heed(stop, marker_dir)
    except BaseException:  # e.g. on_result raised: the running seeds stop, resumable, as on a Ctrl-C
        _stop_workers(marker_dir, signal.SIGINT)
        raise
    finally:
        spawned = [p for p in multiprocessing.active_children() if p not in before]
        _end_pool(pool, spawned, stop, marker_dir)


def _settle(future: Future, task: Task, done: Callable[[Task, dict[str, Any]], None], *, stopping: bool) -> None:
    """Report what a finished future came to, if anything: when ``stopping``, not a task that the
    stop left unstarted (a rerun starts it)."""
    if future.cancelled():
        return
    try:
        record = future.result()
    except (BrokenProcessPool, KeyboardInterrupt):  # lost with the pool; stopped before it could say so
        return
    except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
        record = record_failure(task, f"{type(exc).__name__}: {exc}")
    if not (stopping and record.get("action") == "not started"):
        done(task, record)


def _heed(stop: StopRequests, marker_dir: str) -> None:
    """Act on the signals noted since the last look: the first stops the workers (see :func:`_round`)."""
    for signum in stop.take():
        _stop_workers(marker_dir, signum)


def _stop_workers(marker_dir: str, signum: int) -> None:
    """Queued tasks must not start, and running ones stop between two steps, resumable (a Ctrl-C
    in a terminal reached them already; a signal to this process alone did not). ``signum``, so
    that a run stopped by SIGTERM skips its test evaluation (the process is to end soon); a second
    delivery of the same signal is ignored by the run (:func:`_started`). On Windows os.kill would
    end the process outright.

    The queued tasks are not cancelled here: they return at once, unstarted, from a worker. On
    Python 3.11 a pool that breaks meanwhile fails on a future cancelled from outside its manager
    thread (InvalidStateError, with a traceback); ``shutdown(cancel_futures=True)`` cancels there."""
    (Path(marker_dir) / _STOP).touch()
    for pid_file in Path(marker_dir).glob("*.pid") if os.name != "nt" else []:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.stem), signum)


def _end_pool(pool: ProcessPoolExecutor, workers: list[multiprocessing.process.BaseProcess], stop: StopRequests,
              marker_dir: str) -> None:
    """Shut the pool down, and see its workers gone: those not exited within :data:`_EXIT_WAIT`
    seconds (or at once, after a second signal) are killed. A signal that comes meanwhile is
    heeded as in :func:`_round`."""
    manager = getattr(pool, "_executor_manager_thread", None)  # private, and dropped by shutdown
    pool.shutdown(wait=False, cancel_futures=True)  # its manager thread tells the idle workers to exit
    left = {p.sentinel: p for p in workers}
    deadline = time.monotonic() + _EXIT_WAIT
    while left and not stop.at_once and time.monotonic() < deadline:
        for sentinel in multiprocessing.connection.wait(list(left), timeout=_POLL):
            left.pop(sentinel)
        _heed(stop, marker_dir)
    for process in left.values():
        process.kill()
    if manager is not None:  # it ends once its workers are gone: nothing of the pool outlives the round
        manager.join(timeout=_EXIT_WAIT)


def run_tasks(tasks: list[Task], jobs: int, *, worker: Callable[[Task], dict[str, Any]],
              on_result: Callable[[dict[str, Any]], None] | None = None, gpus: int = 0) -> list[dict[str, Any]]:
    """Run tasks in ``jobs`` processes; return one record per task, in task order. With ``gpus``,
    the workers take GPUs 0..gpus-1 in turn as their current device.

    If a worker process dies (a hard crash, the OOM killer), the pool breaks and loses every
    task in it. The tasks that had started are then retried one at a time in a one-worker
    pool, where a death can only be that task's: it is recorded as ``failed``. The tasks that
    had not started go back to the parallel queue.
    """
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def done(task: Task, record: dict[str, Any]) -> None:
        results[task.key] = record
        if on_result:
            on_result(record)

    queue, alone = list(tasks), []
    with StopRequests() as stop, tempfile.TemporaryDirectory(prefix="rnnlab-compare-") as markers:
        for attempt in range(10 * len(tasks) + 10):  # bounded, though each round settles at least one task
            if (not queue and not alone) or stop.requested:
                break
            isolated = bool(alone)
            batch = alone if isolated else queue
            marker_dir = Path(markers) / str(attempt)
            marker_dir.mkdir()
            _round(batch, 1 if isolated else min(jobs, len(batch)), worker, str(marker_dir), done, stop, gpus)
            if stop.requested:  # the stopped seeds are saved; the others wait for a rerun
                break
            lost = [t for t in batch if t.key not in results]
            started = [t for t in lost if (marker_dir / f"{t.entry}.seed{t.seed}").exists()]
            if lost and (isolated or not started):
                # Alone, the task that was running is the one that died; with nothing started,
                # no worker could even start (e.g. a spawn problem): either way, retrying won't help.
                for task in started or lost:
                    done(task, record_failure(task, "the worker process died (crashed, or was killed, e.g. "
                                                    "out of memory) while running this seed"))
                lost = [t for t in lost if t.key not in results]
            if isolated:
                alone = lost
            else:
                alone, queue = started, [t for t in lost if t not in started]
    if stop.requested:  # Ctrl-C or SIGTERM: raised here, once the pool is gone (see pool_signals)
        stop.take()
        raise stop.exception()
    for task in tasks:  # unreachable in practice: every round settles or isolates a task
        if task.key not in results:
            done(task, record_failure(task, "not run: the worker pool kept breaking"))
    return [results[t.key] for t in tasks]
