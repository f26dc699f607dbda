"""The one training loop, shared by every model.

Plain PyTorch, no framework: build data and model from a ``RunConfig``, then iterate. The
batch order is a pure function of (seed, epoch) and the learning rate a pure function of the
iteration, so a run resumed from a checkpoint ends with the same weights as one never stopped.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rnnlab import checkpoint as ckpt
from rnnlab.allocator import tune_allocator
from rnnlab.denormals import set_flush_denormals
from rnnlab.checkpoint import CONFIG, METRICS
from rnnlab import distributed as dist
from rnnlab import seeding
from rnnlab import run_summary, trainer_state
from rnnlab.config import RunConfig, save_toml
from rnnlab.data import SequenceData
from rnnlab.data.splits import data_identity, load_datasets
from rnnlab.errors import ConfigError
from rnnlab.evaluation import NAN_CHECK_EVERY, RunningTotals, evaluate, lengths_to
from rnnlab.locks import check_held
from rnnlab.models.build import build_model
from rnnlab.models.own import raised_in_own_code
from rnnlab.models import native
from rnnlab.models.fast_step import hand_step_supported, loss_and_grads, plain_sgd, sgd_step, step_parameters
from rnnlab.models.size import check_model_size
from rnnlab.optim import learning_rate, make_optimizer, warn_of_a_long_warmup
from rnnlab.progress import training_bar
from rnnlab.selection import BestByValidation
from rnnlab.stopping import StopBetweenSteps, Terminated, pass_on_sigterm


def total_iterations(cfg: RunConfig, train: SequenceData) -> int:
    return cfg.train.iterations or cfg.train.epochs * train.num_batches(cfg.train.batch_size)


class Trainer:
    """Holds the state of one run; ``fit()`` runs the loop to the end of the budget."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, progress: bool = True, eval_limit: int | None = None) -> None:
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.eval_limit = eval_limit  # a dry run's: evaluate the first that many samples of each split
        dist.init_process_group(cfg.train.device)  # a no-op unless launched by torchrun
        self.world = dist.world_size()
        dist.configure_threads(cfg.train.threads)
        # After the threads: it sets each of them. "kept" also where the CPU has no such mode.
        flushed = set_flush_denormals(cfg.train.flush_denormals) and cfg.train.flush_denormals
        self.denormals = "flushed" if flushed else "kept"
        tune_allocator()
        self.device = dist.select_device(cfg.train.device)
        seeding.seed_everything(cfg.seed)
        self.data = load_datasets(cfg)
        self.data_identity = data_identity(self.data)  # kept in every checkpoint; a resume must match it
        budget = total_iterations(cfg, self.data.train)
        if dist.is_main_process():
            warn_of_a_long_warmup(cfg, budget)
        _, steps, features = self.data.train.x.shape  # refuse a model too big to train before building it
        check_model_size(cfg.model, input_size=features, seq_len=steps, num_classes=self.data.num_classes,
                         train=cfg.train, gpu=dist.device_memory(self.device))
        self.model = build_model(cfg, self.data).to(self.device)
        self.placed: dict[str, SequenceData] = {}  # the splits copied to a GPU, once each
        self.train_data = self._placed("train")
        seeding.seed_process_stream(cfg.seed)  # after the model: same initial weights everywhere
        self.train_model = dist.wrap_for_training(self.model, self.device)  # DDP under torchrun
        self.optimizer = make_optimizer(cfg, self.model)
        # train.amp=auto becomes bf16 or off here, for this model on this machine
        self.amp = dist.resolve_amp(cfg.train.amp, self.device, cfg.model.cell, self.data.train.x.shape[1])
        self.scaler = dist.grad_scaler(self.device, self.amp)
        # The whole step by hand where the model allows it, else autograd (train.backward, the summary says which)
        why_not = "train.backward=autograd" if cfg.train.backward == "autograd" else hand_step_supported(
            self.model, amp=self.amp, processes=self.world, varying_lengths=self.data.train.lengths is not None)
        if cfg.train.backward == "hand" and why_not is not None:
            raise ConfigError(f"train.backward=hand: this run's step cannot be taken by hand ({why_not}); "
                              "use train.backward=auto (by hand where it can be) or autograd")
        self.hand_step = why_not is None
        self.total = budget
        self.mid_step = False  # True while a step is under way (its update may be half done)
        self.terminated = False  # SIGTERM stopped training: the process ends once the run folder is saved
        self.ctrl_c = False  # a Ctrl-C came during fit, even in its last step or its test evaluation
        self.stopped_by = "SIGTERM"
        self.batches_per_epoch = self.data.train.num_batches(cfg.train.batch_size)
        self.iteration = 0
        self.saved_at: int | None = None  # the iteration of the last checkpoint written or restored
        # at saved_at: samples, train_seconds, and the best validation's iteration and accuracy so far
        self.saved_progress: tuple[int, float, int | None, float] = (0, 0.0, None, 0.0)
        self.diverged_at: tuple[int, float, float] | None = None  # (iteration, loss, lr), set by _diverged
        self.samples = 0  # training samples processed: an epoch's last batch may be partial
        self.train_seconds = 0.0
        self.running = RunningTotals(self.device)
        self.check_every = NAN_CHECK_EVERY
        self.best = BestByValidation(keep_weights=cfg.train.keep_best, patience=cfg.train.patience)
        self.stopped_early = False  # train.patience evaluations went by without a better val accuracy

    def resolved(self) -> dict[str, str]:
        """What the ``auto`` settings became on this machine, which a resumed run may not repeat."""
        backward = "autograd" if not self.hand_step else "by hand"
        if self._c_steps():  # plain SGD: in C, where the model allows (models/native.py)
            why_not = native.unsupported(self.model, self.train_data.x, self.train_data.y)
            if why_not is None:
                backward = "by hand, in C"
            elif why_not == native.unavailable_reason():  # it would be, but cannot be built here
                backward = f"by hand (not in C: {why_not})"
        return {"device": str(self.device), "amp": self.amp, "backward": backward, "denormals": self.denormals}

    def _placed(self, name: str) -> SequenceData:
        """Split ``name`` on a GPU if it fits there (in its stored form: uint8 for images), copied
        once: not again at every evaluation. On the CPU, the split itself."""
        if name not in self.placed:
            split = getattr(self.data, name)
            fits = dist.fits_on_device(split.x.nbytes, self.device)
            self.placed[name] = split.to(self.device) if fits else split
        return self.placed[name]

    def _evaluated(self, name: str) -> SequenceData:
        """What evaluations measure of split ``name``: all of it, or under ``eval_limit`` (a dry run)
        its first samples only, so that a check of a 784-step run takes seconds, not minutes."""
        split = self._placed(name)
        limit = self.eval_limit
        if limit is None or len(split) <= limit:
            return split
        lengths = None if split.lengths is None else split.lengths[:limit]
        return SequenceData(split.x[:limit], split.y[:limit], lengths)  # views: no copy

    def evaluated_sizes(self) -> dict[str, int]:
        """How many samples of each split an evaluation measures (all, without ``eval_limit``)."""
        splits = {name: getattr(self.data, name) for name in ("val", "test")}
        return {name: len(split) if self.eval_limit is None else min(len(split), self.eval_limit)
                for name, split in splits.items() if split is not None}

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write a checkpoint (rank 0 writes; every process must call it, for the RNG states)."""
        trainer_state.save(self)

    def restore(self) -> None:
        """Take the run back from its last checkpoint (``rnnlab train --resume``)."""
        trainer_state.restore(self)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end of the budget (or until ``stop_after`` iterations), then test and summarise."""
        # As before each later write: the locked folder may be gone by now, or made again and another's
        check_held(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main_process():
            save_toml(self.cfg, self.run_dir / CONFIG)
        # Ctrl-C and SIGTERM are held from here until the run folder is saved: the same signal delivered
        # twice (a scheduler and a launcher) must not cut the last save or the summary.
        stop = StopBetweenSteps()
        try:
            if self.best.patience_spent:  # resumed after an early stop whose test evaluation was cut: only finish
                status, self.stopped_early = "completed", self.iteration < self.total
            else:
                status = self.train_until(self.total if stop_after is None else min(self.total, stop_after), stop)
            if status == "completed" and self.iteration < self.total and not self.stopped_early:
                status = "stopped"
            if status == "completed" and self.best.weights is not None:  # train.keep_best
                self.model.load_state_dict(self.best.weights)  # what is saved, tested and served from now on
            # Under torchrun a Ctrl-C stops each process at its own step: a checkpoint or an
            # evaluation now, both collective, would pair calls from different points and fail.
            apart = status == "interrupted" and self.world > 1
            if status != "diverged" and not self.mid_step and not apart:  # a torn step: the last checkpoint stands
                self.save()
            try:
                tested = status in ("completed", "stopped")  # only these end in a test evaluation
                stop.cut_on_sigterm = tested  # first: a SIGTERM from here on cuts the test evaluation
                if stop.terminated and tested:  # SIGTERM in the last step or the save: no test evaluation,
                    raise Terminated  # as during training: the process is to end soon
                summary = self._finish(status)
            except KeyboardInterrupt as cut:  # a second signal cut the test evaluation: the checkpoint stands, say so
                self.terminated, self.stopped_by = True, "SIGTERM" if isinstance(cut, Terminated) else "a second Ctrl-C"
                summary = self._finish("interrupted")
                if not isinstance(cut, Terminated):
                    raise  # Ctrl-C stops the command at once, as it asked; the summary says how to go on
        except Exception as exc:  # noqa: BLE001 - only running out of memory or disk is handled here
            if run_summary.is_storage_error(exc):  # a full disk or quota, a folder made read-only
                error = run_summary.storage_error(self, exc)
            elif not dist.is_out_of_memory(exc):
                if hasattr(exc, "add_note") and raised_in_own_code(exc, self.model):  # Python 3.11+
                    where, kept = run_summary.where_and_kept(self)  # a model of one's own: its traceback, with context
                    exc.add_note(f"rnnlab: model {self.cfg.model.cell!r}, a model of your own, failed {where}; {kept}")
                raise
            else:
                error = run_summary.out_of_memory_error(self, exc)
        else:
            self.terminated = self.terminated or stop.terminated  # also one that came after the loop
            self.ctrl_c = stop.received == signal.SIGINT
            stop.restore()
            if self.terminated:  # the checkpoint and summary are written: now end, as SIGTERM asked
                pass_on_sigterm(self.run_dir)
            return summary
        finally:
            stop.restore()
        raise error  # outside the handler: the failed step's tensors are freed, not kept as its context

    @torch.enable_grad()  # also when the caller trains inside torch.no_grad()
    def train_until(self, end: int, stop: StopBetweenSteps | None = None) -> str:
        """The loop: train up to iteration ``end``; returns completed, diverged or interrupted."""
        cfg, t = self.cfg, self.cfg.train
        self.model.train()
        train = self.data.train
        bar = training_bar(end, self.iteration, cfg.label,  # end: 2 for --dry-run, not the budget
                           shown=self.progress and dist.is_main_process())
        seconds_at_start, samples_at_start = self.train_seconds, self.samples
        order, order_epoch = None, -1
        status = "completed"
        own_stop = stop is None  # fit() passes its own, held until the run folder is saved
        stop = StopBetweenSteps() if stop is None else stop
        whole_sgd = self._whole_sgd_steps()
        params = step_parameters(self.model) if whole_sgd else None  # the same objects for the whole call
        # Plain SGD on an Elman or LSTM stack: every step in C where it can be built here (models/native.py)
        in_c = native.native_step(self.model, self.train_data.x, self.train_data.y) if self._c_steps() else None
        try:
            while self.iteration < end:
                if stop.requested:  # Ctrl-C or SIGTERM came during the last step, which has now finished
                    status = "interrupted"
                    break
                self.mid_step = True  # until the step is whole: a checkpoint now would be torn
                step_started = time.perf_counter()  # only training steps count, not evaluation
                epoch, index = divmod(self.iteration, self.batches_per_epoch)
                if epoch != order_epoch:  # where the training set is: no copy of indices per step
                    order, order_epoch = train.epoch_order(epoch, cfg.seed).to(self.train_data.x.device), epoch
                batch_idx = order[index * t.batch_size:(index + 1) * t.batch_size]
                lr = learning_rate(cfg, self.iteration, self.total)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                check = self._must_check(end)  # a look for a NaN loss after this step
                quiet = 0 if in_c is None or check else self._quiet_steps(end, index, len(order) // t.batch_size)
                if quiet > 1:  # the steps up to the next look for a NaN loss, in one call in C
                    its = range(self.iteration, self.iteration + quiet)
                    lrs = [learning_rate(cfg, i, self.total) for i in its]
                    steps = order[index * t.batch_size:(index + quiet) * t.batch_size].view(quiet, t.batch_size)
                    all_totals = in_c.run(steps, lrs, t.label_smoothing)  # (quiet, 2)
                    for i, totals in zip(its, all_totals):
                        self.running.add(totals, t.batch_size, i)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lrs[-1]
                    self.iteration += quiet
                    self.samples += quiet * t.batch_size
                    self.mid_step = False
                    self.train_seconds += time.perf_counter() - step_started
                    bar.update(quiet)
                    continue  # none of them ends where the loop evaluates or saves: those steps look
                if in_c is not None:  # batch, step and update in one call, in C
                    # guard: where this step looks for a NaN loss, one leaves the weights as they were
                    totals = in_c(batch_idx, lr, t.label_smoothing, guard=check)  # (2,)
                    self.running.add(totals, len(batch_idx), self.iteration)
                    if check and self._diverged():
                        status = "diverged"
                        break
                elif whole_sgd and not check:  # batch, step and update in one TorchScript call
                    totals = sgd_step(self.model, self.train_data.x, self.train_data.y, batch_idx, lr=lr,
                                      label_smoothing=t.label_smoothing, params=params)  # (2,) on the device
                    self.running.add(totals, len(batch_idx), self.iteration)
                else:  # apart, so that a NaN loss is seen before the update that would spread it
                    loss, totals = self._forward(batch_idx)  # totals (2,) stay on the device
                    self.running.add(totals, len(batch_idx), self.iteration)
                    if check and self._diverged():
                        status = "diverged"
                        break
                    if not self.hand_step:  # the hand-written step wrote the gradients already
                        self.optimizer.zero_grad(set_to_none=True)
                        self.scaler.scale(loss).backward()
                    if t.clip > 0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.iteration += 1
                self.samples += len(batch_idx)
                self.mid_step = False
                self.train_seconds += time.perf_counter() - step_started
                bar.update(1)
                if self.iteration % t.eval_every == 0 or self.iteration == self.total:
                    seconds = max(self.train_seconds - seconds_at_start, 1e-9)
                    rate = (self.samples - samples_at_start) / seconds
                    row = self._log_evaluation(rate, lr)
                    shown = {k: f"{row[k]:.4g}" for k in ("train_loss", "val_accuracy", "test_accuracy") if k in row}
                    bar.set_postfix(shown | {"samples/s": f"{rate:.0f}"})
                    if self.best.active and "val_accuracy" in row:
                        if self.best.update(row["val_accuracy"], self.iteration, self.model) and self.iteration < self.total:
                            self.stopped_early = True
                            break
                if self.iteration % t.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt as interrupt:  # a second signal, or one under torchrun: where it landed
            status = "interrupted"
            self.terminated = isinstance(interrupt, Terminated)
            if self.world > 1 and threading.current_thread() is threading.main_thread():
                # The process is ending. torchrun's agent passes the same Ctrl-C on to every process
                # (after the terminal's); one landing in the teardown of the Gloo group aborted a
                # rank at exit ("terminate called without an active exception", 1 CI run in ~20).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        finally:
            if own_stop:
                stop.restore()
            self.terminated = self.terminated or stop.terminated
            bar.close()
        # Steps not looked at yet: no NaN checkpoint. Under torchrun a Ctrl-C stops each process at a
        # step of its own, so no collective: each looks at its own share.
        if status == "interrupted" and self._diverged(together=self.world == 1):
            status = "diverged"
        return status

    def _whole_sgd_steps(self) -> bool:
        """Whether steps between NaN checks can be one call, update included (:func:`sgd_step`): the
        step by hand, plain SGD with nothing around it, no clipping, the training set where the model is.
        Asked at each :meth:`train_until`, as a caller may change the optimizer or add hooks between."""
        param = next(self.model.parameters())
        return self.hand_step and self.train_data.x.device == param.device and self._c_steps()

    def _c_steps(self) -> bool:
        """Whether the run's settings let its steps be taken whole (in C, :mod:`rnnlab.models.native`,
        which then asks the model; or by :meth:`_whole_sgd_steps`): plain SGD with nothing around it,
        no clipping, float32, one process, fixed-length sequences, and train.backward not autograd.
        Asked at each :meth:`train_until`."""
        t = self.cfg.train
        return (t.backward != "autograd" and t.clip == 0 and self.amp == "off" and self.world == 1
                and self.train_data.lengths is None and plain_sgd(self.optimizer, self.model))

    def _diverged(self, *, together: bool = True) -> bool:
        """Look at the losses of the steps since the last look (waits for the device; under
        torchrun, every process at the same step unless not ``together``)."""
        found = self.running.diverged(together=together)
        if found is not None:
            iteration, value = found
            self.diverged_at = (iteration, value, learning_rate(self.cfg, iteration, self.total))
        return found is not None

    def _quiet_steps(self, end: int, index: int, full_batches: int) -> int:
        """How many steps from this one on look for no NaN loss, within this epoch's full batches."""
        count = 0
        while index + count < full_batches and not self._must_check(end, self.iteration + count):
            count += 1
        return count

    def _must_check(self, end: int, iteration: int | None = None) -> bool:
        """Whether this step (or ``iteration``) looks for a NaN loss: every ``check_every`` steps, and
        always before a step after which the loop evaluates, saves or stops (so that no evaluation
        or checkpoint is made of a diverged model)."""
        t, after = self.cfg.train, (self.iteration if iteration is None else iteration) + 1
        return (after % self.check_every == 0 or after % t.eval_every == 0
                or after % t.checkpoint_every == 0 or after >= end or after >= self.total)

    def _forward(self, batch_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward one global batch, or under torchrun this process's share of it.

        Every process draws the same global batch and takes its slice. DDP averages the
        gradients over processes, so the loss is scaled by the process count: their average
        is then the gradient of the mean loss over the global batch, as one process gets.
        Returns the loss to backpropagate and, on the device, (2,) = (summed loss, correct
        count) over this process's share of the global batch.
        """
        t = self.cfg.train
        start, stop = dist.shard(len(batch_idx))
        shard, counted = batch_idx[start:stop], 1.0
        if len(shard) == 0:  # a last partial batch smaller than the process count:
            shard, counted = batch_idx[:1], 0.0  # still take part in DDP's gradient all-reduce
        x, y = self.train_data.batch(shard)  # (b, T, F) float, (b,)
        lengths = lengths_to(self.train_data.batch_lengths(shard), self.device)  # (b,) or None: full length
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        scale = self.world * counted / len(batch_idx)
        if self.hand_step:  # forward, loss and backward in one: the gradients of scale * summed
            self.optimizer.zero_grad(set_to_none=True)
            losses, logits = loss_and_grads(self.model, x, y, label_smoothing=t.label_smoothing, scale=scale)
        else:
            with dist.autocast(self.device, self.amp):
                logits = self.train_model(x, lengths)  # (b, C)
                losses = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing,
                                         reduction="none")  # (b,)
        summed = losses.sum()
        loss = summed * scale
        correct = torch.eq(logits.argmax(1), y).sum(dtype=losses.dtype)
        totals = torch.stack([summed.detach(), correct])  # (2,)
        if counted != 1.0:
            totals = totals * counted
        return loss, totals  # (2,): this process's share, summed over processes at the next NaN check

    def _log_evaluation(self, samples_per_second: float, lr: float) -> dict[str, Any]:
        """Evaluate on the validation split (or on test, under the tutorial protocol) and log it."""
        running = self.running.as_dict()
        count = max(1, running["count"])
        row: dict[str, Any] = {
            "iteration": self.iteration,
            "epoch": round(self.iteration / self.batches_per_epoch, 4),
            "train_loss": running["loss"] / count,
            "train_accuracy": 100.0 * running["correct"] / count,
            "lr": lr,
            "samples_per_second": samples_per_second,
            "elapsed_seconds": self.train_seconds,
        }
        self.running.reset()
        name = "test" if self.cfg.train.protocol == "tutorial" else "val"
        if getattr(self.data, name) is not None:
            result = evaluate(self.model, self._evaluated(name), batch_size=self.cfg.train.eval_batch_size,
                              device=self.device, amp=self.amp, sharded=True)
            row[f"{name}_loss"], row[f"{name}_accuracy"] = result.loss, result.accuracy
        if dist.is_main_process():
            check_held(self.run_dir)
            ckpt.append_jsonl(self.run_dir / METRICS, row)
        return row

    def _finish(self, status: str) -> dict[str, Any]:
        """Test (where the status calls for it) and write ``summary.json``."""
        return run_summary.finish(self, status)
