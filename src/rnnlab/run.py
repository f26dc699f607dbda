"""The library's front door for training: ``train(config) -> Run``, ``resume(run_dir)``, ``read_run``
(loading a trained model for inference is :mod:`rnnlab.trained`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any


from rnnlab import checkpoint as ckpt
from rnnlab import distributed as dist
from rnnlab import seeding
from rnnlab.allocator import allocator_tuned
from rnnlab.denormals import denormal_mode_kept
from rnnlab.config import RunConfig, check_cell, from_dict, load_toml, settings_of_the_run, to_dict
from rnnlab.config_ignored import UnusedSettingWarning, unused_settings
from rnnlab.checkpoint import CONFIG, METRICS, SUMMARY
from rnnlab.engine import Trainer
from rnnlab.errors import CheckpointError, ConfigError, describe, option, option_value, warn_caller
from rnnlab.locks import LOCK_FILE, Busy, exclusive, still_held
from rnnlab.out_folders import of_a_run, refuse_other_files
from rnnlab.stopping import Interrupted, Terminated


@dataclass
class Run:
    """A finished (or diverged, or interrupted) training run and its folder."""

    dir: Path
    config: RunConfig
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)  # Run("runs/x", ...) from a script: its methods join paths

    def __repr__(self) -> str:  # not the whole summary (a confusion matrix, ...)
        accuracy = f", test accuracy {self.test_accuracy:.2f}%" if isinstance(self.test_accuracy, (int, float)) else ""
        return f"Run({str(self.dir)!r}, {self.summary.get('status', '?')}{accuracy})"

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def test_accuracy(self) -> float | None:
        return self.summary.get("test_accuracy")

    def metrics(self) -> list[dict[str, Any]]:
        return ckpt.read_jsonl(self.dir / METRICS)


def _check_options(progress: Any, stop_after: Any) -> None:
    if not isinstance(progress, bool):  # "no" is true
        raise ConfigError(f"progress must be True or False, not {describe(progress)}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ConfigError(f"stop_after={stop_after!r} must be a whole number of iterations >= 1, or None (the whole budget)")


def train(config: RunConfig, out: str | Path | None = None, *, progress: bool = True,
          stop_after: int | None = None) -> Run:
    """Train a model as ``config`` says, writing a run folder (default ``runs/<label>-<time>``).

    ``stop_after`` ends the run early, resumable, after that many iterations in all (status
    ``stopped``). A Ctrl-C stops it after the step under way, saved and its test set evaluated,
    then raises :class:`~rnnlab.stopping.Interrupted` (a KeyboardInterrupt, whose ``.run`` is the run
    as it stopped): a script, or a loop of runs, stops there. A SIGTERM saves the step, then ends the
    process by the signal."""
    return _train(config, out, progress=progress, stop_after=stop_after)


def _train(config: RunConfig, out: str | Path | None = None, *, progress: bool = True,
           stop_after: int | None = None, eval_limit: int | None = None) -> Run:
    """:func:`train`, and ``rnnlab train --dry-run``: ``eval_limit`` evaluates only the first that many
    samples of each split (the summary says so), a check that evaluation runs, not a figure."""
    _check_options(progress, stop_after)
    if not isinstance(config, RunConfig):
        hint = "use rnnlab.get_preset(name).config, rnnlab.RunConfig(), or rnnlab.apply_overrides(config, [...])"
        if isinstance(getattr(config, "config", None), RunConfig):  # a Preset
            hint = f"pass the preset's .config: rnnlab.get_preset({getattr(config, 'name', 'name')!r}).config"
        elif isinstance(config, dict):
            hint += "; for a dict of settings, rnnlab.config.from_dict(settings)"
        raise ConfigError(f"train needs a RunConfig, not {describe(config)}; {hint}")
    check_cell(config.model.cell)  # a config made where a model of one's own was registered, used where it is not
    if out is not None:
        out = ckpt.check_out_dir(path_arg(out, "out", "rnnlab.train(config, out='runs/my-run')"), " for the run")
    dist.init_process_group(config.train.device)  # under torchrun: all processes share one folder
    if dist.is_main_process():
        _warn_of_unused_settings(config)
    run_dir = out if out is not None else dist.broadcast_object(default_run_dir(config))
    another = option("--out", "folder (out=)")  # "choose another ...": the flag typed, or train's keyword
    if (run_dir / "compare.json").exists():
        raise ConfigError(f"{run_dir} holds a compare (compare.json); a run writes a folder of its own: "
                          f"choose another {another}")
    held = _runs_inside(run_dir)
    if held:  # a folder of runs (runs/): its files would make it one run, and `rnnlab report` would see no other
        raise ConfigError(f"{run_dir} holds other runs or compares ({', '.join(held[:3])}{', ...' * (len(held) > 3)}); "
                          "a run writes a folder of its own: choose a new one, e.g. "
                          f"{option_value('--out', 'out', run_dir / config.label)}")
    # Before the lock: its file would be the first of the run's written among the user's
    refuse_other_files(run_dir, of_a_run, keyword="out", kind="a run",
                       example=run_dir / config.label)
    with _training_into(run_dir):
        if (run_dir / ckpt.CHECKPOINT_JSON).exists():
            resume_it = option(f"`rnnlab train --resume {run_dir}`", f"rnnlab.resume({str(run_dir)!r})")
            raise CheckpointError(f"{run_dir} already holds a run; resume it with {resume_it} "
                                  f"or choose another {another}")
        if (run_dir / SUMMARY).exists():  # e.g. a run that diverged before its first checkpoint: keep its record
            raise CheckpointError(f"{run_dir} already holds a run without a checkpoint (see its {SUMMARY}); "
                                  f"choose another {another}, or delete that folder to train into it again")
        if (run_dir / METRICS).exists():  # killed before its first checkpoint: its rows would mix with these
            raise CheckpointError(f"{run_dir} holds the {METRICS} of a run that stopped before its first checkpoint; "
                                  f"choose another {another}, or delete that folder to train into it again")
        if (run_dir / CONFIG).exists() and _other_config(run_dir / CONFIG, config):
            held_config = run_dir / CONFIG
            raise CheckpointError(f"{run_dir} holds a {CONFIG} of other settings, which this run would write over; "
                                  f"choose another {another}, or train that config: "
                                  + option(f"--config {held_config}", f"rnnlab.config.load_toml({str(held_config)!r})"))
        with _a_run_of_its_own(), _naming_the_checkpoint(run_dir):
            trainer = Trainer(config, run_dir, progress=progress, eval_limit=eval_limit)
            summary = trainer.fit(stop_after=stop_after)
    return _ended(Run(run_dir, config, summary), trainer.ctrl_c)


def _warn_of_unused_settings(config: RunConfig) -> None:
    """An override is refused a setting the rest of the config leaves unused; a config built in Python
    (or loaded) is warned of one it sets away from its preset's, or from the defaults."""
    from rnnlab.presets import get_preset, list_presets  # late: presets import this module's neighbours

    start = get_preset(config.preset).config if config.preset in list_presets() else RunConfig()
    for problem in unused_settings(to_dict(config), to_dict(start)):
        warn_caller(f"this config holds a setting the run leaves unused: {problem}", UnusedSettingWarning)


def resume(run_dir: str | Path | Run, *, progress: bool = True, stop_after: int | None = None,
           data_dir: str | Path | None = None) -> Run:
    """Continue an interrupted run from its last checkpoint, to the end of its budget. ``data_dir``
    points it at its data moved elsewhere: the IDX folder, or for a sequence-file run the file.
    ``stop_after`` and a Ctrl-C as for :func:`train`: ``stop_after`` counts the run's iterations from
    its start, so it must be beyond those the checkpoint holds."""
    _check_options(progress, stop_after)
    run_dir = path_arg(run_dir, "run_dir", "rnnlab.resume('runs/my-run')")
    _, meta = ckpt.load_checkpoint(run_dir, training_state=True)  # refuse a damaged one before training
    config = from_dict(meta["config"], source=str(run_dir / ckpt.CHECKPOINT_JSON))
    dist.init_process_group(config.train.device)  # under torchrun: rank 0 holds the folder for all
    with _training_into(run_dir, resuming=True):
        config = _check_resumable(run_dir, config, meta)
        done = meta["iteration"]
        if stop_after is not None and stop_after <= done < meta.get("total_iterations", done + 1):  # no step to take
            raise ConfigError(f"stop_after={stop_after} counts the run's iterations from its start, and {run_dir} "
                              f"has done {done}: give more than {done}")
        if data_dir is not None:
            config = relocated(config, path_arg(data_dir, "data_dir", "rnnlab.resume(run, data_dir='data/mnist')"))
        with _a_run_of_its_own(), _naming_the_checkpoint(run_dir):
            trainer = Trainer(config, run_dir, progress=progress)
            trainer.restore()
            summary = trainer.fit(stop_after=stop_after)
    return _ended(Run(run_dir, config, summary), trainer.ctrl_c)


def _runs_inside(folder: Path) -> list[str]:
    """Names of the run and compare folders directly inside ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir()
                  if child.is_dir() and ckpt.holds(child, CONFIG, SUMMARY, "compare.json"))


def _ended(run: Run, ctrl_c: bool) -> Run:
    """The run, or :class:`Interrupted` raised with it after a Ctrl-C: one that stopped it, or one
    that came as it ended (its last step, the final save or test evaluation) and stops the caller."""
    if run.status == "interrupted" or ctrl_c:
        raise Interrupted(run)
    return run


def relocated(config: RunConfig, data_path: Path) -> RunConfig:
    """``config`` reading its data from ``data_path``: the IDX folder, or a sequence file itself."""
    key = "file" if config.data.dataset == "file" else "data_dir"
    return replace(config, data=replace(config.data, **{key: str(data_path)}))


@contextmanager
def _training_into(run_dir: Path, *, resuming: bool = False) -> Iterator[None]:
    """Hold a lock on ``run_dir`` while training: a second process training the same folder (a
    resume of a run still running) would interleave its metrics and overwrite its checkpoint.
    ``resuming``: the refusal says how to resume it, not to choose another folder (a resume has none).
    Under torchrun rank 0 holds it for all, and tells the others whether it got it (so that they
    do not wait for it at the first collective). Folders made here for a run that then fails to
    start (a bad data file) are removed again, while the lock still keeps others out."""
    if not dist.is_main_process():
        refusal = dist.broadcast_object(None)
        if refusal:
            raise Busy(str(refusal))
        yield
        return
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            busy = f"another rnnlab process is training {run_dir}; " + (
                "wait for it to finish, or stop it (Ctrl-C or SIGTERM save it) and resume it then" if resuming else
                f"wait for it to finish (or stop it), or choose another {option('--out', 'folder (out=)')}")
            held.enter_context(exclusive(run_dir, busy))
        except Busy as busy:
            dist.broadcast_object(str(busy))
            raise
        dist.broadcast_object(None)
        try:
            yield
        finally:
            # Nothing of a run was written; and the lock file is still ours, not that of another process
            # which locked the folder made again after this one was deleted.
            if made and still_held(run_dir) and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
                for folder in made:
                    with contextlib.suppress(OSError):  # only if still empty
                        folder.rmdir()


# Runs in one process train one at a time: they seed and restore torch's global random generators
# (two threads at once drew from each other's streams and trained other weights than their seed's).
_ONE_RUN_AT_A_TIME = threading.RLock()


@contextmanager
def _a_run_of_its_own() -> Iterator[None]:
    """What the caller set around ``train`` does not reach the run, and the caller gets its own
    state back: random generators and threads (``callers_state_kept``), and the grad mode (inside
    ``inference_mode`` a run could not train), autocast (a caller's bf16 would train a float32 run
    in bf16, unrecorded), the default dtype (float64 would build float64 layers for float32 data)
    and device (after ``torch.set_default_device``, the run made its tensors there, whatever ``train.device``),
    glibc's allocator settings (``allocator_tuned``) and the CPU's denormal mode
    (``train.flush_denormals``)."""
    import torch

    dtype = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_ONE_RUN_AT_A_TIME)
        if torch.get_default_device().type != "cpu":  # a caller's set_default_device("cuda"), say: the run
            stack.enter_context(torch.device("cpu"))  # places its tensors itself (a mode only then: each op pays it)
        stack.enter_context(seeding.callers_state_kept())
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(dist.autocast_off())
        stack.enter_context(allocator_tuned())
        stack.enter_context(denormal_mode_kept())
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)


@contextmanager
def _naming_the_checkpoint(run_dir: Path) -> Iterator[None]:
    """A SIGTERM that stops the command outside the training loop (loading the data, the last save,
    the test evaluation of a finished run) leaves the run folder's checkpoint as it was: the
    :class:`~rnnlab.stopping.Terminated` then names the folder, so that the command line says how
    to continue, as it does when the loop stopped. It names it only if ``--resume`` would take it:
    a run that the signal let end completed or diverged has nothing to continue. A second Ctrl-C,
    which stops the run at once (in the test evaluation, say), gets the folder as ``run_dir`` too."""
    try:
        yield
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        status = (ckpt.read_summary_file(run_dir)[0] or {}).get("status")
        resumable = (run_dir / ckpt.CHECKPOINT_JSON).is_file() and status not in ("completed", "diverged")
        where = run_dir if resumable else None
        if not isinstance(stop, Terminated):
            stop.run_dir = where  # type: ignore[attr-defined]  # read by the command line, as Terminated's
            raise
        if stop.run_dir != where:
            raise Terminated(where) from None
        raise


def path_arg(value: Any, name: str, example: str) -> Path:
    """A folder argument as a Path (a Run stands for its folder); ConfigError for anything else."""
    if isinstance(value, Run):
        return value.dir
    if not isinstance(value, (str, Path)) and not hasattr(value, "__fspath__"):
        raise ConfigError(f"{name} must be a folder path (str or Path), not {describe(value)}; e.g. {example}")
    if not str(value).strip():  # Path("") is ".": an unset $OUTDIR would train into the current folder
        raise ConfigError(f"{name} is empty; give a folder path, e.g. {example}")
    return Path(value)


def _other_config(path: Path, config: RunConfig) -> bool:
    """Whether ``path`` holds other settings than ``config`` (unreadable counts as other)."""
    try:
        return settings_of_the_run(load_toml(path)) != settings_of_the_run(config)
    except ConfigError:
        return True


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<name, preset or model>-<local time>``, with ``-2``, ``-3``, ... where runs started
    within the same second (a loop of quick runs) would share it."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, number = Path(root) / f"{cfg.label}-{stamp}", 1
    while path.exists():
        number += 1
        path = Path(root) / f"{cfg.label}-{stamp}-{number}"
    return path


def _check_resumable(run_dir: Path, config: RunConfig, meta: dict[str, Any]) -> RunConfig:
    """Refuse to resume a run that has ended, or whose config.toml was edited since it started
    (resuming would train with the old settings and write them over the edit). Returns the config
    to resume with: the checkpoint's, reading its data where config.toml now says it is."""
    summary, problem = ckpt.read_summary_file(run_dir)
    if problem is not None and dist.is_main_process():  # the checkpoint is whole: resuming rebuilds the summary
        warn_caller(f"{run_dir / SUMMARY} is unreadable ({problem}); resuming by the checkpoint, at iteration "
                    f"{meta['iteration']} of {meta.get('total_iterations', '?')}", RuntimeWarning)
    status = (summary or {}).get("status")
    if status == "completed":
        accuracy = summary.get("test_accuracy")
        reached = f" (test accuracy {accuracy:.2f}%)" if isinstance(accuracy, (int, float)) else ""
        early = summary.get("stopped_early")
        iterations = summary.get("iterations")
        iterations = iterations if isinstance(iterations, int) else meta["iteration"]  # a damaged summary: the checkpoint's
        ended = (f"stopped early at iteration {iterations} (no better val accuracy in "
                 f"{early.get('patience', '')} evaluations, train.patience)" if isinstance(early, dict)
                 else f"finished all {iterations} iterations")
        raise CheckpointError(
            f"{run_dir} {ended}{reached}; there is nothing to resume. To train longer, start a new run from its "
            f"config with a larger budget: {_new_run_from(run_dir / CONFIG, 'train.iterations=N')}")
    if status == "diverged":  # the same seed and settings would diverge again at the same step
        raise CheckpointError(f"{run_dir} diverged ({summary.get('message', 'non-finite loss')}); resuming would "
                              f"repeat it: start a new run with the change, {_new_run_from(run_dir / CONFIG, '...')}")
    if not (run_dir / CONFIG).exists():
        return config
    on_disk = load_toml(run_dir / CONFIG)
    started, edited = settings_of_the_run(config), settings_of_the_run(on_disk)
    if started != edited:
        changes = [f"{key}: {started.get(key)!r} when it started, {edited.get(key)!r} now"
                   for key in sorted(started.keys() | edited.keys()) if started.get(key) != edited.get(key)]
        raise CheckpointError(
            f"{run_dir / CONFIG} was edited after the run started ({'; '.join(changes[:3])}); "
            f"{option('--resume', 'rnnlab.resume')} continues "
            f"the run with the settings it started with. Undo the edit, or start a new run with the change: "
            f"{_new_run_from(run_dir / CONFIG)}")
    return replace(config, data=on_disk.data)  # the same but for where the data is: config.toml says where


def _new_run_from(config_path: Path, overrides: str = "") -> str:
    """How to train a new run from a run's config.toml with ``overrides`` (``...``: whatever the
    user changes), in the caller's terms: the command, or from Python the call."""
    command = f"rnnlab train --config {config_path}" + (f" {overrides}" if overrides else "")
    call = f"rnnlab.config.load_toml({str(config_path)!r})"
    if overrides:
        call = f"rnnlab.apply_overrides({call}, {'[...]' if overrides == '...' else [overrides]})"
    return option(command, f"rnnlab.train({call})")


def read_run(run_dir: str | Path | Run) -> Run:
    """A run folder's config and summary, without loading the model. A run without a summary is
    ``running`` while a process trains in its folder, else ``unfinished`` (killed: resume it)."""
    run_dir = path_arg(run_dir, "run_dir", "rnnlab.read_run('runs/my-run')")
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir}: not a run folder (no {CONFIG})")
    config = load_toml(run_dir / CONFIG)
    summary, problem = ckpt.read_summary_file(run_dir)
    if problem is None and summary is not None and not isinstance(summary.get("status"), str):
        problem = "no 'status'"
    if problem is not None:
        raise CheckpointError(f"{run_dir / SUMMARY}: corrupt run summary ({problem}); "
                              "restore it from a copy or train the run again")
    if summary is None:  # the folder's lock says whether a process is training there
        summary = {"status": "running" if ckpt.training_now(run_dir) else "unfinished"}
    return Run(run_dir, config, summary)
