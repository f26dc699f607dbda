"""What a run ends with: its ``summary.json``, and the texts of the failures that end it.

Apart from :mod:`rnnlab.engine` so the loop stays a loop: these functions read a
:class:`~rnnlab.engine.Trainer`'s state and change none of it.
"""

from __future__ import annotations

import errno
import platform
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch

from rnnlab import __version__ as rnnlab_version
from rnnlab import checkpoint as ckpt
from rnnlab import distributed as dist
from rnnlab.atomic import atomic_write_json
from rnnlab.checkpoint import SUMMARY
from rnnlab.data.splits import describe_datasets
from rnnlab.errors import ResourceError, option
from rnnlab.evaluation import confusion_matrix, evaluate
from rnnlab.locks import check_held
from rnnlab.models import parameter_count

if TYPE_CHECKING:
    from rnnlab.engine import Trainer


def finish(trainer: Trainer, status: str) -> dict[str, Any]:
    """Test the model (where the status calls for it) and write the run's ``summary.json``."""
    cfg = trainer.cfg
    iterations, samples, seconds = trainer.iteration, trainer.samples, trainer.train_seconds
    best_iteration, best_accuracy = trainer.best.iteration, trainer.best.accuracy
    if status == "interrupted" and trainer.saved_at is not None and trainer.saved_at != iterations:
        # Stopped past its last checkpoint (under torchrun, or by a second signal): the steps since are
        # not kept, and a resume trains them again. The summary counts what the run folder keeps.
        iterations, (samples, seconds, best_iteration, best_accuracy) = trainer.saved_at, trainer.saved_progress
    summary: dict[str, Any] = {
        "schema_version": ckpt.SCHEMA_VERSION,
        "status": status,
        "name": cfg.label,
        "preset": cfg.preset or None,
        "seed": cfg.seed,
        "model": cfg.model.cell,
        "parameters": parameter_count(trainer.model),
        "protocol": cfg.train.protocol,
        "iterations": iterations,
        "epochs": round(iterations / trainer.batches_per_epoch, 4),
        "train_seconds": round(seconds, 3),
        "samples": samples,
        "samples_per_second": round(samples / max(seconds, 1e-9), 1),
        **trainer.resolved(),  # device, amp and backward as train.*=auto resolved them here
        "processes": trainer.world,  # > 1 under torchrun: samples/s is over all of them
        "threads": torch.get_num_threads(),  # per process: samples/s depends on it
        "data": describe_datasets(trainer.data, trainer.cfg.data.file or trainer.cfg.data.dataset),
        "torch_version": torch.__version__, "rnnlab_version": rnnlab_version,
        "python_version": platform.python_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg.train.protocol == "tutorial":
        summary["protocol_note"] = ("tutorial protocol, as the tutorials did: no validation split, test accuracy "
                                    f"measured during training (here every {cfg.train.eval_every} iterations)")
    from rnnlab.presets import reference_for  # late import: presets import config only

    reference = reference_for(cfg.preset, cfg)  # None where this run changed the preset's model
    if reference:
        summary["reference"] = reference
    kept = f"the checkpoint of iteration {trainer.saved_at}" if trainer.saved_at is not None else "no checkpoint"
    if best_iteration is not None:
        summary["best_val"] = {"iteration": best_iteration, "val_accuracy": round(best_accuracy, 4),
                               "weights": "best" if status == "completed" and cfg.train.keep_best else "last"}
    if trainer.stopped_early:
        summary["stopped_early"] = {"iteration": trainer.iteration, "patience": cfg.train.patience}
    if status == "interrupted" and trainer.world > 1:  # the processes stopped apart: nothing collective
        summary["message"] = ("interrupted under torchrun, each process at its own step: the run folder keeps "
                              + (f"{kept}; continue with torchrun ... rnnlab train --resume {trainer.run_dir}"
                                 if trainer.saved_at is not None else "no checkpoint: nothing to resume"))
    elif status == "interrupted" and trainer.saved_at != trainer.iteration:
        # A second Ctrl-C inside a step: its update may be half done, so no test evaluation of those
        # weights (and none of the time a second Ctrl-C asks not to spend); the checkpoint stands.
        summary["message"] = ("stopped inside a step by a second Ctrl-C: the run folder keeps "
                              + (f"{kept}; continue with rnnlab train --resume {trainer.run_dir}"
                                 if trainer.saved_at is not None else "no checkpoint: nothing to resume"))
    elif status == "interrupted" and trainer.terminated:
        # No test evaluation: SIGTERM means the process is to end soon (a scheduler kills it some
        # seconds later), and the kept checkpoint is what matters.
        summary["message"] = (f"stopped by {trainer.stopped_by}: the run folder keeps {kept}; continue with "
                              f"rnnlab train --resume {trainer.run_dir}")
    elif status == "diverged":
        assert trainer.diverged_at is not None  # status "diverged" comes only from _diverged
        iteration, value, lr = trainer.diverged_at
        summary["diverged_at"] = iteration
        summary["message"] = (
            f"loss became {value} at iteration {iteration} (lr={lr:g}); lower the learning rate "
            f"(e.g. train.lr={cfg.train.lr / 10:g}) or clip gradients (train.clip=1.0)"
        )
    else:
        # float32, whatever the training precision: the figures `rnnlab eval`, predict, export and
        # serve reproduce (bf16 autocast moved a test accuracy by 0.15 points on 10k images).
        t = cfg.train
        tested = trainer._evaluated("test")
        test = evaluate(trainer.model, tested, batch_size=t.eval_batch_size, device=trainer.device,
                        amp="off", sharded=True)
        summary["test_accuracy"], summary["test_loss"] = round(test.accuracy, 4), round(test.loss, 6)
        if trainer.data.val is not None:
            val = evaluate(trainer.model, trainer._evaluated("val"), batch_size=t.eval_batch_size,
                           device=trainer.device, amp="off", sharded=True)
            summary["val_accuracy"], summary["val_loss"] = round(val.accuracy, 4), round(val.loss, 6)
        summary["confusion_matrix"] = confusion_matrix(tested.y.cpu(), test.predictions, trainer.data.num_classes)
    # Which test sequences the figures are of: a report pairs and compares entries only on the same ones.
    limit = trainer.eval_limit
    cut = limit is not None and limit < len(trainer.data.test)
    summary["test_set"] = trainer.data.test_set + (f" (its first {limit})" if cut else "")
    if trainer.eval_limit is not None:  # a dry run: its figures check that evaluation runs, they measure nothing
        sizes = trainer.evaluated_sizes()
        summary["evaluation_subset"] = {
            **sizes, "note": f"dry run: evaluated on the first {trainer.eval_limit} samples of each split only "
                             f"({', '.join(f'{n:,} {name}' for name, n in sizes.items())}); not a result"}
    if dist.is_main_process():
        check_held(trainer.run_dir)  # not over a folder deleted or replaced since it was locked
        atomic_write_json(trainer.run_dir / SUMMARY, summary)
    return summary


def out_of_memory_error(trainer: Trainer, exc: BaseException) -> ResourceError:
    """What ran out, what the run folder still holds, and which setting to lower."""
    t = trainer.cfg.train
    where, kept = where_and_kept(trainer)
    if trainer.saved_at == trainer.total:
        kept += f"; `rnnlab eval {trainer.run_dir} --batch-size {max(1, t.eval_batch_size // 4)}` tests them"
    lower = (f"train.batch_size (now {t.batch_size})" if trainer.mid_step
             else f"train.eval_batch_size (now {t.eval_batch_size})")
    # torch's first line, less the C++ assertion prefix ("[enforce fail at alloc_cpu.cpp:127] err == 0.")
    detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", (str(exc) or type(exc).__name__)
                    .splitlines()[0])[:160]
    return ResourceError(f"out of memory on {trainer.device} {where} ({detail}); {kept}; lower {lower} or "
                         "model.hidden and start the run again")

# What a run folder that can no longer be written raises: a full disk or quota, a file system
# remounted read-only (as Linux does on errors), permissions taken away while the run trains.
_STORAGE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EIO")
                            if hasattr(errno, name))


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a write into the run folder refused by the storage, not a bug."""
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS


def storage_error(trainer: Trainer, exc: OSError) -> ResourceError:
    """Which file could not be written and why, what the run folder keeps, and how to go on."""
    what = f"could not write {exc.filename}" if exc.filename else f"could not write into {trainer.run_dir}"
    where = (f"in training step {trainer.iteration + 1}" if trainer.mid_step
             else f"after iteration {trainer.iteration}")
    _, kept = where_and_kept(trainer)
    if trainer.saved_at is None:
        then = f"then start the run again into a new folder (or delete {trainer.run_dir} first)"
    else:
        command = f"rnnlab train --resume {trainer.run_dir}"
        if trainer.world > 1:
            command = "torchrun ... " + command
        then = "then continue with " + option(command, f"rnnlab.resume({str(trainer.run_dir)!r})")
    return ResourceError(f"{what} {where} ({exc.strerror or type(exc).__name__}); {kept}; "
                         f"free some space there (or make it writable), {then}")


def where_and_kept(trainer: Trainer) -> tuple[str, str]:
    """Where a failure came (a training step, or an evaluation) and what the run folder keeps."""
    where = (f"in training step {trainer.iteration + 1}" if trainer.mid_step
             else f"evaluating after iteration {trainer.iteration}")
    if trainer.saved_at is None:
        kept = "no checkpoint had been written"
    elif trainer.saved_at == trainer.total:
        kept = f"the trained weights are saved in {trainer.run_dir}"
    else:
        kept = f"{trainer.run_dir} keeps its checkpoint of iteration {trainer.saved_at}"
    return where, kept
