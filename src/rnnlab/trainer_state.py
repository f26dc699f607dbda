"""What a checkpoint holds of a :class:`~rnnlab.engine.Trainer`, and taking it back on resume.

The tensors (weights, optimizer and scaler state, every process's RNG stream, the best weights)
go to ``checkpoint.pt``; counts, the config and what the ``auto`` settings became go to
``checkpoint.json``. A resume checks that the config, the data and the checkpoint file all
belong to the run before it takes anything back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed as dist
from rnnlab import seeding
from rnnlab.checkpoint import METRICS
from rnnlab.config import from_dict, settings_of_the_run, to_dict
from rnnlab.data.splits import identity_differences, input_shape
from rnnlab.errors import CheckpointError, DataError, option, warn_caller
from rnnlab.locks import check_held
from rnnlab.stopping import held_while_saving

if TYPE_CHECKING:
    from rnnlab.engine import Trainer


def save(trainer: Trainer) -> None:
    """Write a checkpoint (rank 0 writes; every process must call it, for the RNG states)."""
    rng_states = seeding.gather_rng_states(trainer.device)
    if not dist.is_main_process():
        _note_saved(trainer)
        return
    tensors = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
               "scaler": trainer.scaler.state_dict(), "rng": rng_states[0]}
    if len(rng_states) > 1:  # each process's own dropout stream, in rank order
        tensors["rng_processes"] = rng_states
    if trainer.data.permutation is not None:
        tensors["permutation"] = trainer.data.permutation
    meta = {"config": to_dict(trainer.cfg), "iteration": trainer.iteration, "total_iterations": trainer.total,
            "epoch": trainer.iteration / trainer.batches_per_epoch, "train_seconds": trainer.train_seconds,
            "samples": trainer.samples,
            "running": trainer.running.as_dict(), "torch_version": torch.__version__,
            "input": input_shape(trainer.data), "data": trainer.data_identity, "resolved": trainer.resolved()}
    if trainer.best.active:
        meta["best"] = trainer.best.state()
        if trainer.best.weights is not None:
            tensors["best_model"] = trainer.best.weights
    check_held(trainer.run_dir)  # not over a folder deleted or replaced since it was locked
    with held_while_saving():  # the summary names the checkpoint on disk, whenever a Ctrl-C lands
        ckpt.save_checkpoint(trainer.run_dir, tensors, meta)
        _note_saved(trainer)


def _note_saved(trainer: Trainer) -> None:
    """What the checkpoint just written or restored holds, for a summary written past it (an interrupted run)."""
    trainer.saved_at = trainer.iteration
    trainer.saved_progress = (trainer.samples, trainer.train_seconds, trainer.best.iteration, trainer.best.accuracy)


def restore(trainer: Trainer) -> None:
    """Take a run back from its last checkpoint: weights, optimizer, RNG streams, counts, selection."""
    # Loaded on the CPU: load_state_dict copies into the parameters where they are, the
    # optimizer moves its state to them, and torch takes RNG states only as CPU tensors.
    tensors, meta = ckpt.load_checkpoint(trainer.run_dir, map_location="cpu", quiet=True)  # resume() warned
    # from_dict: keys added since take defaults; the data may have moved (rnnlab train --resume --data-dir)
    if settings_of_the_run(from_dict(meta["config"])) != settings_of_the_run(trainer.cfg):
        raise CheckpointError(f"{trainer.run_dir}: the checkpoint was written by a different config")
    _warn_if_resolved_differently(meta.get("resolved"), trainer.resolved())
    _check_same_data(trainer, meta.get("input"), meta.get("data"))
    trainer.iteration, trainer.train_seconds = meta["iteration"], meta["train_seconds"]
    try:  # a checkpoint.pt from another run beside this checkpoint.json, or a damaged entry
        trainer.model.load_state_dict(tensors["model"])
        trainer.optimizer.load_state_dict(tensors["optimizer"])
        trainer.scaler.load_state_dict(tensors["scaler"])
        seeding.restore_rng_state(tensors.get("rng_processes", [tensors["rng"]]), trainer.cfg.seed, trainer.iteration,
                               trainer.device)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        if dist.is_out_of_memory(exc):  # the optimizer's state moving to a full GPU: not a wrong file
            raise
        raise CheckpointError(f"{trainer.run_dir / ckpt.CHECKPOINT_PT} does not fit the run its "
                              f"{ckpt.CHECKPOINT_JSON} describes ({' '.join(str(exc).split())[:240]}); put back "
                              "this run's own checkpoint.pt, or start the run again") from None
    # Checkpoints before this count was kept: every batch full, as the count then assumed.
    trainer.samples = int(meta.get("samples", trainer.iteration * trainer.cfg.train.batch_size))
    _note_saved(trainer)
    trainer.running.load(meta["running"])
    trainer.best.load_state(meta.get("best"), tensors.get("best_model"))
    # Metrics logged after the checkpoint will be logged again: drop them.
    if dist.is_main_process():
        rows = [r for r in ckpt.read_jsonl(trainer.run_dir / METRICS)
                if isinstance(r.get("iteration"), int) and r["iteration"] <= trainer.iteration]
        ckpt.write_jsonl(trainer.run_dir / METRICS, rows)


def _check_same_data(trainer: Trainer, began: dict[str, Any] | None, identity: dict[str, Any] | None) -> None:
    """The data a resumed run reads now (perhaps from where it moved) must be the data it began with:
    of the same kind, and (checkpoints since this was kept) the same sequences."""
    now = input_shape(trainer.data)
    differs = [f"{key} {began[key]} then, {now[key]} now" for key in ("steps", "features", "classes",
                                                                      "variable_lengths", "dtype")
               if began and key in began and began[key] != now[key]]
    if not differs and identity:
        differs = identity_differences(identity, trainer.data_identity)
    if differs:
        where = trainer.cfg.data.file or trainer.cfg.data.data_dir or trainer.cfg.data.dataset
        raise DataError(f"the data at {where} is not the data this run began with ({'; '.join(differs)}); "
                        f"point {option('--data-dir', 'data_dir')} at the run's own data")


def _warn_if_resolved_differently(before: dict[str, str] | None, now: dict[str, str]) -> None:
    """``auto`` settings resolve by machine: a run moved to another one may go on differently."""
    def kind(key: str, value: str) -> str:  # cuda:0 and cuda:1 are the same footing (torchrun's ranks)
        return value.partition(":")[0] if key == "device" else value

    # Not "backward": by hand and autograd agree to float rounding, and it changes with the process count.
    # Nor "denormals" on a GPU: the mode is the CPU's.
    ignored = {"backward"} | ({"denormals"} if now.get("device", "cpu") != "cpu" else set())
    changed = [f"{key} {before[key]} -> {value}" for key, value in now.items()
               if before and key in before and key not in ignored and kind(key, before[key]) != kind(key, value)]
    if changed and dist.is_main_process():
        warn_caller(f"this run resumes on another footing than it began ({', '.join(changed)}): the train.*=auto "
                    "settings (and whether the CPU flushes denormals) resolve by machine, so the rest of it trains "
                    "differently from an uninterrupted run",
                    RuntimeWarning)
