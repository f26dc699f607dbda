"""Train many configs x seeds in parallel processes, then aggregate them into one report.

``compare(entries, out_dir, seeds=3, jobs=2)`` runs entry ``e`` with seed ``k`` in
``out_dir/runs/<e>/seed<k>/``. Rerunning the same compare skips finished seeds (completed or
diverged), resumes interrupted ones from their checkpoint, and retries failed ones; it may add
seeds and entries, but must name every entry the folder holds (see :func:`prepare`). A worker
that raises, or whose process dies, is recorded as ``failed`` with its error; the others go on
(the worker pool is :mod:`rnnlab.pool`).
"""

from __future__ import annotations

import numbers
import os
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from rnnlab import checkpoint as ckpt
from rnnlab.atomic import atomic_write_json
from rnnlab.config import RunConfig, load_toml, save_toml
from rnnlab.config_ignored import UnusedSettingWarning
from rnnlab.config_values import check_folder_name
from rnnlab.data.splits import data_identity, identity_differences, load_datasets
from rnnlab.checkpoint import CONFIG, CONFUSION, METRICS, SUMMARY
from rnnlab.compare_settings import refuse_changed_settings
from rnnlab.errors import CheckpointError, ConfigError, RnnlabError, describe, option, option_value
from rnnlab.entries import Entry
from rnnlab.locks import Busy, LockLost, check_held, exclusive
from rnnlab.out_folders import of_a_compare, refuse_other_files
from rnnlab.pool import Task, record_failure, run_tasks, task_record
from rnnlab.report import report_groups
from rnnlab.run_records import read_record, read_summary
from rnnlab.stats import check_baseline
from rnnlab.stopping import Interrupted

FINISHED = ("completed", "diverged")  # a rerun keeps these as they are
MAX_SEEDS = 1000  # more is a typo, and would plan (and print) for minutes


# --------------------------------------------------------------------------- planning


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def gpus_for(configs: list[RunConfig]) -> int:
    """How many CUDA GPUs compare's workers take in turn: all that are visible where a run trains
    on "the" GPU (``train.device`` auto or cuda), else none (cpu; mps; or ``cuda:N``, one GPU named)."""
    import torch

    if not any(c.train.device in ("auto", "cuda") for c in configs) or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def default_jobs(configs: list[RunConfig]) -> int:
    """Workers when --jobs is not given: one per GPU where the runs train on GPUs (runs sharing a
    GPU wait for each other, and every worker's CUDA context takes GPU memory), or per GPU the runs
    name (``cuda:N``); one on an Apple GPU (there is one); else one per core."""
    import torch

    gpus = gpus_for(configs)
    if gpus:
        return gpus
    named = {c.train.device for c in configs if c.train.device.startswith("cuda:")}  # each run on the GPU it names
    if named and torch.cuda.is_available():
        return len(named)
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if any(c.train.device == "mps" or (c.train.device == "auto" and mps) for c in configs):
        return 1
    return available_cores()


def busy_text(out: Path) -> str:
    """Why a compare into ``out`` is refused while another runs there."""
    return f"another rnnlab compare is running into {out}; wait for it to finish, or use another {_another_folder()}"


def _another_folder() -> str:
    """The compare's folder, in "use another ...": the flag typed, or compare's keyword."""
    return option("--out", "folder (out_dir=)")


def _check_counts(seeds: Any, jobs: Any) -> None:
    """Whole numbers (NumPy's too, as create_model takes them); the caller turns them into ints."""
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or seeds < 1:
        raise ConfigError(f"{option('--seeds', 'seeds')}={seeds!r} must be a whole number >= 1")
    if seeds > MAX_SEEDS:
        raise ConfigError(f"{option('--seeds', 'seeds')}={seeds} is too many: at most {MAX_SEEDS} per entry")
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or jobs < 1:
        raise ConfigError(f"{option('--jobs', 'jobs')}={jobs!r} must be a whole number >= 1")


def _check_entries(entries: Any) -> None:
    """Entries built by hand are held to what resolve_entries makes: RunConfigs, one folder name each."""
    how = "rnnlab.entries.resolve_entries(['dlw-rnn-a', ...])"
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, Entry) for e in entries):
        raise ConfigError(f"compare takes entries from {how}, not {describe(entries)}")
    if not entries:
        raise ConfigError(f"no entries to compare; give at least one, e.g. from {how}")
    names = [e.name for e in entries]
    for entry in entries:
        if not isinstance(entry.config, RunConfig):
            raise ConfigError(f"entry {entry.name!r} has {describe(entry.config)} as its config, not a RunConfig")
        check_folder_name("an entry's name", str(entry.name))  # it names the folder of its runs
        if names.count(entry.name) > 1:
            raise ConfigError(f"two entries are named {entry.name!r}; each needs a name of its own (its runs' folder)")


def plan(entries: list[Entry], out_dir: str | Path, *, seeds: int = 3, jobs: int = 1,
         threads: int | None = None) -> list[Task]:
    """One task per entry and seed 0..seeds-1. ``threads`` per worker defaults to cores // jobs,
    so that ``jobs`` workers together use the machine without oversubscribing it."""
    _check_counts(seeds, jobs)
    seeds, jobs = int(seeds), int(jobs)
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


def task_state(task: Task, identities: dict[Any, dict[str, Any]] | None = None) -> str:
    """What a (re)run does with this task's folder: ``skip``, ``resume`` or ``train``.

    Raises ConfigError when the folder holds a run of a different config (see
    :mod:`rnnlab.compare_settings`), or of other data where the entry names its data elsewhere,
    which a rerun must not mix into the same entry. The data is checked with ``identities`` (the
    identities of data already read, by location; ``None``: not checked, as a worker does after
    :func:`prepare`, and a resume checks it again).
    """
    run_dir = Path(task.run_dir)
    refuse_changed_settings([task])  # prepare() checked every seed; a worker checks its own again
    existing = load_toml(run_dir / CONFIG) if (run_dir / CONFIG).exists() else None
    state = "train"
    if read_summary(run_dir).get("status") in FINISHED:  # a corrupt summary reads as failed: retrained
        state = "skip"
    elif (run_dir / ckpt.CHECKPOINT_JSON).exists() and (run_dir / ckpt.CHECKPOINT_PT).exists():
        state = "resume"
    if state != "train" and existing is not None and identities is not None and (
            _location(existing) != _location(task.config)):
        _check_moved_data(run_dir, existing, task.config, identities)
    return state


def _location(config: RunConfig) -> tuple[str | None, str | None]:
    return config.data.data_dir, config.data.file


def _check_moved_data(run_dir: Path, existing: RunConfig, config: RunConfig,
                      identities: dict[Any, dict[str, Any]]) -> None:
    """A rerun whose entry names the data elsewhere (a moved sequence file, another data folder)
    keeps or resumes a seed only if the data there is what the seed trained on, as ``--resume``
    checks it: otherwise the results would report one data set under another's name. The data at
    one place is read once for all its seeds (its identity does not depend on the seed)."""
    then = existing.data.file or existing.data.data_dir or "the default place"
    now = config.data.file or config.data.data_dir or "the default place"
    try:  # as a resume reads it: a garbled checkpoint.json is stood in for by the .pt's own copy
        recorded = ckpt.load_checkpoint(run_dir, quiet=True)[1].get("data")
    except CheckpointError:  # no checkpoint (diverged at once), or a damaged one
        recorded = None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{run_dir} trained on the data at {then}, and this compare names {now}; the run keeps no "
                          "record of its data to tell whether they are the same: point the entry at the run's own "
                          f"data, use another {_another_folder()}, or delete that folder to run it again")
    key = (config.data, config.train.protocol)  # what the splits' sizes and contents depend on
    if key not in identities:
        identities[key] = data_identity(load_datasets(config))
    differs = identity_differences(recorded, identities[key])
    if differs:
        raise ConfigError(f"{run_dir} trained on the data at {then}, and {now} holds other data "
                          f"({'; '.join(differs)}): point the entry at the run's own data, use another "
                          f"{_another_folder()}, or delete that folder to run it again")


def prepare(entries: list[Entry], out_dir: str | Path, *, seeds: int,
            jobs: int) -> tuple[list[Task], dict[tuple[str, int], str]]:
    """Check ``out_dir`` and plan: the tasks, and what a run does with each (:func:`task_state`).

    Raises ConfigError, before anything is written, when ``out_dir`` is a file, holds runs of a
    different config, or holds entries this compare leaves out: its results.md would silently
    drop them while their runs stay in the folder (``rnnlab report`` would show them again).
    """
    out = Path(out_dir)
    ckpt.check_out_dir(out, keyword="out_dir")
    if any((out / name).is_file() for name in (CONFIG, SUMMARY, ckpt.CHECKPOINT_JSON)):
        raise ConfigError(f"{option_value('--out', 'out_dir', out)} is a run folder (it holds {CONFIG}); a compare "
                          f"writes a folder of its own runs and results: give another {_another_folder()}")
    refuse_other_files(out, of_a_compare, keyword="out_dir", kind="a compare", example=out / "compare")
    tasks = plan(entries, out, seeds=seeds, jobs=min(jobs, len(entries) * seeds))
    refuse_changed_settings(tasks)  # every setting changed, over all seeds, in one message
    identities: dict[Any, dict[str, Any]] = {}  # the data at each place moved to, read once
    states = {t.key: task_state(t, identities) for t in tasks}
    runs = [run for run in (out / "runs").glob("*/*") if ckpt.holds(run, CONFIG, SUMMARY)]
    held = sorted({run.parent.name for run in runs})
    left_out = [name for name in held if name not in {e.name for e in entries}]
    if left_out:
        which = "" if left_out == held else f" (this command leaves out {', '.join(left_out)})"
        raise ConfigError(f"{out} holds a compare of {', '.join(held)}{which}: list all of its entries to rerun "
                          f"or extend it, or use another {_another_folder()}")
    # The same for seeds: the results would be of fewer seeds than the folder holds, silently.
    seeds_held = [int(run.name[4:]) for run in runs if run.name.startswith("seed") and run.name[4:].isdigit()]
    if seeds_held and max(seeds_held) >= seeds:
        raise ConfigError(f"{out} holds seeds up to {max(seeds_held)}, and {option_value('--seeds', 'seeds', seeds)} "
                          "would leave out "
                          f"{', '.join(f'seed{s}' for s in sorted(set(s for s in seeds_held if s >= seeds)))}: "
                          f"rerun with {option_value('--seeds', 'seeds', max(seeds_held) + 1)} (or more), or use "
                          f"another {_another_folder()}")
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
    except (Busy, LockLost) as exc:  # not ours to write into (any more): no failed summary over a live run
        return task_record(task, {"status": "failed", "error": str(exc)}, "not run")
    except OSError as exc:  # the folder cannot be made: nothing to record into
        return task_record(task, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, "not run")


def _run_task(task: Task, run_dir: Path) -> dict[str, Any]:
    import torch

    try:
        if task.config.train.threads > 0:
            torch.set_num_threads(task.config.train.threads)
        state = task_state(task)
        if state == "skip":
            return task_record(task, read_summary(run_dir), "skipped")
        import rnnlab

        action = "trained"
        if state == "resume":
            try:
                data = task.config.data  # where this compare reads the data now: it may have moved
                moved_to = (data.file or data.data_dir) or None
                action = "resumed"
                return task_record(task, rnnlab.resume(run_dir, progress=False, data_dir=moved_to).summary, action)
            except CheckpointError as exc:  # unreadable: start this seed again rather than fail forever
                action = f"trained again (its checkpoint could not be resumed: {exc})"
        _clear(run_dir)
        save_toml(task.config, run_dir / CONFIG)  # now `rnnlab report` sees this seed even if it fails
        with warnings.catch_warnings():  # shared overrides some entries use and others not: not refused either
            warnings.simplefilter("ignore", UnusedSettingWarning)
            return task_record(task, rnnlab.train(task.config, run_dir, progress=False).summary, action)
    except Interrupted as stop:  # the compare's Ctrl-C or SIGTERM: this seed saved, resumable
        return task_record(task, stop.run.summary, action)
    except LockLost:  # its folder was replaced: a failed summary there would be written over another's run
        raise
    except Exception as exc:  # noqa: BLE001 - any error of one seed must not end the compare
        return record_failure(task, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _clear(run_dir: Path) -> None:
    """Remove what a previous attempt without a checkpoint left behind (its rows would repeat)."""
    for name in (SUMMARY, METRICS, ckpt.CHECKPOINT_JSON, ckpt.CHECKPOINT_PT, CONFUSION):
        (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def execute(tasks: list[Task], jobs: int, *, worker: Callable[[Task], dict[str, Any]] = run_task,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run tasks in ``jobs`` worker processes (by default each trains its seed), the workers
    taking the GPUs in turn where the runs train on GPUs; one record per task, in task order. See
    :func:`rnnlab.pool.run_tasks`."""
    from rnnlab.models.own import unshareable_models

    lost = sorted({task.config.model.cell for task in tasks} & set(unshareable_models()))
    if lost:
        raise ConfigError(f"model {lost[0]!r} is registered in this interactive session's __main__ (a notebook, "
                          "python -c), which a compare's worker processes cannot import: move its builder to a "
                          "file and import that (on the command line, rnnlab --import FILE)")
    return run_tasks(tasks, jobs, worker=worker, on_result=on_result, gpus=gpus_for([t.config for t in tasks]))


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
    _check_entries(entries)
    _check_counts(seeds, jobs)
    seeds, jobs = int(seeds), int(jobs)  # NumPy's integers: JSON-serialisable in compare.json
    out = Path(out_dir)
    check_baseline(baseline, [e.name for e in entries])  # before hours of training, not after
    _say_of_the_data(entries)
    tasks, states = prepare(entries, out, seeds=seeds, jobs=jobs)  # refuses a mismatching folder up front
    out.mkdir(parents=True, exist_ok=True)
    # A second compare into the same folder would train the same seeds into the same run folders at once.
    with exclusive(out, busy_text(out)):
        return _compare(entries, out, tasks, states, seeds=seeds, jobs=jobs, plots=plots, on_result=on_result,
                        context=context, baseline=baseline)


def _say_of_the_data(entries: list[Entry]) -> None:
    """Each sequence file read once here, so that what it warns of is said once, not by every seed's
    worker (which leave it unsaid); a file that cannot be read is left for each seed to report."""
    from rnnlab.data.files import load_sequence_file

    for file in sorted({e.config.data.file for e in entries if e.config.data.dataset == "file"}):
        try:
            load_sequence_file(file)
        except RnnlabError:
            pass


def _compare(entries: list[Entry], out: Path, tasks: list[Task], states: dict[tuple[str, int], str], *,
             seeds: int, jobs: int, plots: bool, on_result: Callable[[dict[str, Any]], None] | None,
             context: dict[str, Any] | None, baseline: str | None) -> list[dict[str, Any]]:
    info = {"seeds": seeds, "jobs": jobs, "threads per worker": tasks[0].config.train.threads, **(context or {})}
    atomic_write_json(out / "compare.json", {
        "entries": [{"name": e.name, "preset": e.config.preset or None} for e in entries], **info})
    for task in tasks:
        if states[task.key] == "skip" and on_result:
            on_result(task_record(task, read_summary(Path(task.run_dir)), "skipped"))
    records = execute([t for t in tasks if states[t.key] != "skip"], jobs, on_result=on_result)
    # A seed not run (its folder busy, or not makeable, or replaced as it trained) wrote nothing (more) there:
    # its reason goes in the table.
    not_run = {(r["entry"], r["seed"]): r["error"] for r in records if r["action"] == "not run"}
    groups: dict[str, list[Any]] = {}
    for task in tasks:
        record = read_record(Path(task.run_dir), entry=task.entry)
        if task.key in not_run and record.status != "completed":
            record = replace(record, seed=task.seed, summary={**record.summary, "error": not_run[task.key]})
        groups.setdefault(task.entry, []).append(record)
    check_held(out)  # the results go into the folder this compare locked, not one made again since
    return report_groups(groups, out, plots=plots, title="rnnlab compare", context=info, baseline=baseline)
