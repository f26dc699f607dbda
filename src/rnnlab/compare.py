"""Train many configs x seeds in parallel processes, then aggregate them into one report.

``compare(entries, out_dir, seeds=3, jobs=2)`` runs entry ``e`` with seed ``k`` in
``out_dir/runs/<e>/seed<k>/``. Rerunning the same compare skips finished seeds (completed or
diverged), resumes interrupted ones from their checkpoint, and retries failed ones; it may add
seeds and entries, but must name every entry the folder holds (see :func:`prepare`). A worker
that raises, or whose process dies, is recorded as ``failed`` with its error; the others go on.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rnnlab import checkpoint as ckpt
from rnnlab.atomic import atomic_write_json
from rnnlab.config import DATA_LOCATION, RunConfig, load_toml, save_toml
from rnnlab.checkpoint import CONFIG, CONFUSION, METRICS, SUMMARY
from rnnlab.errors import CheckpointError, ConfigError
from rnnlab.entries import Entry
from rnnlab.locks import Busy, exclusive
from rnnlab.report import report_groups
from rnnlab.run_records import read_record, read_summary, result_settings
from rnnlab.stats import check_baseline
from rnnlab.stopping import Terminated, heed_once

FINISHED = ("completed", "diverged")  # a rerun keeps these as they are
MAX_SEEDS = 1000  # more is a typo, and would plan (and print) for minutes


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


# --------------------------------------------------------------------------- planning


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def plan(entries: list[Entry], out_dir: str | Path, *, seeds: int = 3, jobs: int = 1,
         threads: int | None = None) -> list[Task]:
    """One task per entry and seed 0..seeds-1. ``threads`` per worker defaults to cores // jobs,
    so that ``jobs`` workers together use the machine without oversubscribing it."""
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1")
    if seeds > MAX_SEEDS:
        raise ConfigError(f"--seeds={seeds} is too many: at most {MAX_SEEDS} per entry")
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    per_worker = threads if threads is not None else max(1, available_cores() // jobs)
    tasks = []
    for entry in entries:
        for seed in range(seeds):
            config = replace(entry.config, seed=seed)
            if config.train.threads == 0:  # an explicit train.threads override wins
                config = replace(config, train=replace(config.train, threads=per_worker))
            run_dir = Path(out_dir) / "runs" / entry.name / f"seed{seed}"
            tasks.append(Task(entry.name, seed, config, str(run_dir)))
    return tasks


def task_state(task: Task) -> str:
    """What a (re)run does with this task's folder: ``skip``, ``resume`` or ``train``.

    Raises ConfigError when the folder holds a run of a different config, which a rerun
    must not mix into the same entry.
    """
    run_dir = Path(task.run_dir)
    if (run_dir / CONFIG).exists():
        existing = load_toml(run_dir / CONFIG)

        def same_run(config: RunConfig) -> dict[str, Any]:  # a sequence file may have moved: the same run
            return {k: v for k, v in result_settings(config).items() if k not in DATA_LOCATION}

        if same_run(existing) != same_run(task.config):
            raise ConfigError(f"{run_dir} holds a run of a different config (changed settings or overrides?); "
                              "use another --out, or delete that folder to run it again")
    if read_summary(run_dir).get("status") in FINISHED:  # a corrupt summary reads as failed: retrained
        return "skip"
    if (run_dir / ckpt.CHECKPOINT_JSON).exists() and (run_dir / ckpt.CHECKPOINT_PT).exists():
        return "resume"
    return "train"


def prepare(entries: list[Entry], out_dir: str | Path, *, seeds: int,
            jobs: int) -> tuple[list[Task], dict[tuple[str, int], str]]:
    """Check ``out_dir`` and plan: the tasks, and what a run does with each (:func:`task_state`).

    Raises ConfigError, before anything is written, when ``out_dir`` is a file, holds runs of a
    different config, or holds entries this compare leaves out: its results.md would silently
    drop them while their runs stay in the folder (``rnnlab report`` would show them again).
    """
    out = Path(out_dir)
    ckpt.check_out_dir(out)
    if any((out / name).is_file() for name in (CONFIG, SUMMARY, ckpt.CHECKPOINT_JSON)):
        raise ConfigError(f"--out {out} is a run folder (it holds {CONFIG}); a compare writes a folder of its own "
                          "runs and results: give another --out")
    tasks = plan(entries, out, seeds=seeds, jobs=min(jobs, len(entries) * seeds))
    states = {t.key: task_state(t) for t in tasks}
    held = sorted({run.parent.name for run in (out / "runs").glob("*/*")
                   if (run / CONFIG).exists() or (run / SUMMARY).exists()})
    left_out = [name for name in held if name not in {e.name for e in entries}]
    if left_out:
        which = "" if left_out == held else f" (this command leaves out {', '.join(left_out)})"
        raise ConfigError(f"{out} holds a compare of {', '.join(held)}{which}: list all of its entries to rerun "
                          "or extend it, or use another --out")
    return tasks, states


# --------------------------------------------------------------------------- the worker


def run_task(task: Task) -> dict[str, Any]:
    """Run one task in this process; never raises (an error becomes status ``failed``)."""
    run_dir = Path(task.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Held from before the folder is looked at or cleared: a worker of a compare killed a moment
        # ago may still be training it (rnnlab.train takes the same lock again, as its holder).
        with exclusive(run_dir, f"another rnnlab process is training {run_dir}; rerun once it has stopped"):
            return _run_task(task, run_dir)
    except Busy as exc:  # not ours to write into: no failed summary over a live run
        return _record(task, {"status": "failed", "error": str(exc)}, "not run")
    except OSError as exc:  # the folder cannot be made: nothing to record into
        return _record(task, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, "not run")


def _run_task(task: Task, run_dir: Path) -> dict[str, Any]:
    import torch

    try:
        if task.config.train.threads > 0:
            torch.set_num_threads(task.config.train.threads)
        state = task_state(task)
        if state == "skip":
            return _record(task, read_summary(run_dir), "skipped")
        import rnnlab

        action = "trained"
        if state == "resume":
            try:
                data = task.config.data  # where this compare reads the data now: it may have moved
                moved_to = (data.file or data.data_dir) or None
                return _record(task, rnnlab.resume(run_dir, progress=False, data_dir=moved_to).summary, "resumed")
            except CheckpointError as exc:  # unreadable: start this seed again rather than fail forever
                action = f"trained again (its checkpoint could not be resumed: {exc})"
        _clear(run_dir)
        save_toml(task.config, run_dir / CONFIG)  # now `rnnlab report` sees this seed even if it fails
        return _record(task, rnnlab.train(task.config, run_dir, progress=False).summary, action)
    except Exception as exc:  # noqa: BLE001 - any error of one seed must not end the compare
        return record_failure(task, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _clear(run_dir: Path) -> None:
    """Remove what a previous attempt without a checkpoint left behind (its rows would repeat)."""
    for name in (SUMMARY, METRICS, ckpt.CHECKPOINT_JSON, ckpt.CHECKPOINT_PT, CONFUSION):
        (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _record(task: Task, summary: dict[str, Any], action: str) -> dict[str, Any]:
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
    return _record(task, summary, "failed")


# --------------------------------------------------------------------------- the scheduler


def _context() -> multiprocessing.context.BaseContext:
    """spawn: safe with torch's threads (unlike fork), and each worker sees the current
    environment (a forkserver keeps the one it started with, e.g. RNNLAB_DATA_DIR)."""
    return multiprocessing.get_context("spawn")


_STOP = "STOP"  # in a round's marker folder: the compare was interrupted, start nothing more


def _worker_setup(parent: int, marker_dir: str) -> None:
    """Pool initializer. An idle worker ignores Ctrl-C (one dying in the pool's queue would break
    the pool, and the pool would then kill the others mid-stop), and the worker's life is tied to
    the parent's: if the compare process is killed, its workers exit within half a second instead
    of training on for no one, into folders that a rerun then trains into as well, and then waiting
    for work forever. For SIGTERM see :func:`_idle_sigterm` and :func:`_started`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, functools.partial(_idle_sigterm, marker_dir))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rnnlab-parent-watch", daemon=True).start()


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
    the run while it saves its checkpoint and summary, nor stop it at once in its step. Once a run
    that SIGTERM stopped is saved, the worker stays for the compare to end the pool if the compare
    is stopping; otherwise (the pool is broken, or this worker alone was told to go) it ends, by
    that signal: a worker that waited for more work in a broken pool would wait forever."""
    if (Path(marker_dir) / _STOP).exists():
        return _record(task, {"status": "interrupted"}, "not started")
    (Path(marker_dir) / f"{task.entry}.seed{task.seed}").touch()
    busy = Path(marker_dir) / f"{os.getpid()}.pid"  # while it exists, the parent passes a signal on
    busy.touch()
    idle = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, heed_once)  # which stopping.StopBetweenSteps takes over
    signal.signal(signal.SIGTERM, heed_once)
    try:
        return worker(task)
    except Terminated:  # SIGTERM outside the training loop; what the run folder holds stands
        return _record(task, read_summary(Path(task.run_dir)) or {"status": "interrupted"}, "interrupted")
    finally:
        terminated = signal.signal(signal.SIGTERM, signal.SIG_DFL) == signal.SIG_IGN  # one came
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        busy.unlink(missing_ok=True)
        if terminated and not _compare_stopping(marker_dir):
            signal.raise_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, idle)


def _round(batch: list[Task], workers: int, worker: Callable[[Task], dict[str, Any]], marker_dir: str,
           done: Callable[[Task, dict[str, Any]], None]) -> None:
    """Run a batch in one pool; tasks lost to a broken pool are simply left without a result."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_setup,
                             initargs=(os.getpid(), marker_dir)) as pool:
        futures: dict[Future, Task] = {pool.submit(_started, marker_dir, worker, t): t for t in batch}
        try:
            for future in as_completed(futures):
                try:
                    done(futures[future], future.result())
                except BrokenProcessPool:
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                    done(futures[future], record_failure(futures[future], f"{type(exc).__name__}: {exc}"))
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM under the command line (stopping.Terminated)
            # Queued tasks must not start, and running ones stop between two steps, resumable (a
            # Ctrl-C in a terminal reached them already; a signal to this process alone did not).
            (Path(marker_dir) / _STOP).touch()
            for future in futures:
                future.cancel()
            # The signal that came, so that a run stopped by SIGTERM skips its test evaluation (the
            # process is to end soon). A second delivery of the same signal is ignored by the run
            # (_started): SIGINT from a terminal, SIGTERM from a scheduler that signals the whole
            # process group. On Windows os.kill would end the process outright.
            passed_on = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
            for pid_file in Path(marker_dir).glob("*.pid") if os.name != "nt" else []:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.stem), passed_on)
            raise


def execute(tasks: list[Task], jobs: int, *, worker: Callable[[Task], dict[str, Any]] = run_task,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run tasks in ``jobs`` processes; return one record per task, in task order.

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
    with tempfile.TemporaryDirectory(prefix="rnnlab-compare-") as markers:
        for attempt in range(10 * len(tasks) + 10):  # bounded, though each round settles at least one task
            if not queue and not alone:
                break
            isolated = bool(alone)
            batch = alone if isolated else queue
            marker_dir = Path(markers) / str(attempt)
            marker_dir.mkdir()
            _round(batch, 1 if isolated else min(jobs, len(batch)), worker, str(marker_dir), done)
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
    for task in tasks:  # unreachable in practice: every round settles or isolates a task
        if task.key not in results:
            done(task, record_failure(task, "not run: the worker pool kept breaking"))
    return [results[t.key] for t in tasks]


# --------------------------------------------------------------------------- the front door


def compare(entries: list[Entry], out_dir: str | Path, *, seeds: int = 3, jobs: int = 1,
            plots: bool = True, on_result: Callable[[dict[str, Any]], None] | None = None,
            context: dict[str, Any] | None = None, baseline: str | None = None) -> list[dict[str, Any]]:
    """Train every entry for ``seeds`` seeds, then write results.md/csv/json (and figures) in ``out_dir``,
    with each entry's difference from ``baseline`` (default: see :func:`rnnlab.stats.compare_with`).

    Finished seeds are skipped without starting a process. Returns the aggregated rows
    (see :func:`rnnlab.report.aggregate`) of exactly the planned seeds. Workers are spawned,
    so a script that calls this must do so under ``if __name__ == "__main__":``.
    """
    out = Path(out_dir)
    check_baseline(baseline, [e.name for e in entries])  # before hours of training, not after
    tasks, states = prepare(entries, out, seeds=seeds, jobs=jobs)  # refuses a mismatching folder up front
    out.mkdir(parents=True, exist_ok=True)
    # A second compare into the same folder would train the same seeds into the same run folders at once.
    busy = f"another rnnlab compare is running into {out}; wait for it to finish, or use another --out"
    with exclusive(out, busy):
        return _compare(entries, out, tasks, states, seeds=seeds, jobs=jobs, plots=plots, on_result=on_result,
                        context=context, baseline=baseline)


def _compare(entries: list[Entry], out: Path, tasks: list[Task], states: dict[tuple[str, int], str], *,
             seeds: int, jobs: int, plots: bool, on_result: Callable[[dict[str, Any]], None] | None,
             context: dict[str, Any] | None, baseline: str | None) -> list[dict[str, Any]]:
    info = {"seeds": seeds, "jobs": jobs, "threads per worker": tasks[0].config.train.threads, **(context or {})}
    atomic_write_json(out / "compare.json", {
        "entries": [{"name": e.name, "preset": e.config.preset or None} for e in entries], **info})
    for task in tasks:
        if states[task.key] == "skip" and on_result:
            on_result(_record(task, read_summary(Path(task.run_dir)), "skipped"))
    records = execute([t for t in tasks if states[t.key] != "skip"], jobs, on_result=on_result)
    # A seed not run (its folder busy, or not makeable) wrote nothing there: its reason goes in the table.
    not_run = {(r["entry"], r["seed"]): r["error"] for r in records if r["action"] == "not run"}
    groups: dict[str, list[Any]] = {}
    for task in tasks:
        record = read_record(Path(task.run_dir), entry=task.entry)
        if task.key in not_run and record.status != "completed":
            record = replace(record, seed=task.seed, summary={**record.summary, "error": not_run[task.key]})
        groups.setdefault(task.entry, []).append(record)
    return report_groups(groups, out, plots=plots, title="rnnlab compare", context=info, baseline=baseline)
