"""Measuring a model: loss and accuracy over a split, the confusion matrix, and the running
training figures the loop keeps between two evaluations.

Sums stay on the model's device until they are read, so that neither a training step nor an
evaluation batch waits for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from rnnlab import distributed as dist
from rnnlab.allocator import release_free_memory
from rnnlab.data import SequenceData
from rnnlab.models import SequenceClassifier


@dataclass
class Evaluation:
    loss: float
    accuracy: float  # percent
    predictions: torch.Tensor = field(repr=False)  # (N,) predicted classes


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums kept on a device (as exact as Python's float), float32 where a device
    has no float64 (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


# Steps between two looks at the loss for NaN. A look waits for the device: on a GPU it stalls
# the queue of kernels (with models this small the GPU then idles most of the time), and on a
# CPU a look every step cost 0.1 ms of a 3.4 ms dlw-rnn-a step (in the Trainer, 20 paired
# blocks). Checkpoints and evaluations always look first, and the first bad iteration is
# reported all the same.
NAN_CHECK_EVERY = 20


class RunningTotals:
    """The training figures between two evaluations, summed on the training device so that a
    step never waits for it (loss sum and correct count), and the steps' totals since the last
    look for a NaN loss. Under torchrun each process adds its own share of a step, and the look
    sums the processes' (one collective for all the steps since the last: one per step cost
    Gloo ~0.4 ms, a sixth of a dlw-rnn-a step); the sums are whole after each look."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()
        self.pending: list[tuple[int, torch.Tensor]] = []  # (iteration, totals) not looked at yet

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=_sum_dtype(self.device), device=self.device)  # (loss, correct)
        self.count = 0

    def add(self, totals: torch.Tensor, count: int, iteration: int) -> None:
        """One step's ``totals`` (2,) = (loss sum, correct count), this process's share of the
        step's ``count`` samples; no sync."""
        self.count += count
        self.pending.append((iteration, totals))

    def diverged(self, *, together: bool = True) -> tuple[int, float] | None:
        """(iteration, loss) of the first step since the last look whose loss was not finite,
        or None. Waits for the device. ``together``: every process looks at this step (it sums
        their totals); False for one process ending on its own (its totals alone)."""
        if not self.pending:
            return None
        steps = torch.stack([totals for _, totals in self.pending])  # (steps, 2)
        if together:
            steps = dist.all_reduce_sum(steps)
        for row in steps:  # one step at a time, as ever: sums that do not depend on when they were looked at
            self.sums += row
        losses = steps[:, 0]  # (steps,) loss sums
        bad = ~torch.isfinite(losses)
        iterations, self.pending = [i for i, _ in self.pending], []
        if not bad.any():
            return None
        first = int(bad.nonzero()[0])
        return iterations[first], float(losses[first])  # NaN or inf: the sum and the mean alike

    def as_dict(self) -> dict[str, float | int]:
        loss, correct = self.sums.tolist()
        return {"loss": loss, "correct": int(correct), "count": self.count}

    def load(self, running: dict[str, Any]) -> None:
        self.sums = torch.tensor([running["loss"], running["correct"]], dtype=self.sums.dtype, device=self.device)
        self.count = int(running["count"])


def lengths_to(lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Sequence lengths (B,) on the device (None: every sequence is full length)."""
    return None if lengths is None else lengths.to(device, non_blocking=True)


def evaluate(model: SequenceClassifier, data: SequenceData, *, batch_size: int = 1000,
             device: torch.device | str = "cpu", amp: str = "off", sharded: bool = False) -> Evaluation:
    """Loss and accuracy over a whole split, without autograd.

    ``sharded`` (under torchrun): each process evaluates its own share of the split and the
    results are combined, so every process gets the whole split's figures at 1/N the cost.
    """
    device = torch.device(device)
    labels = data.y  # (N,) where the split is stored
    # On a GPU, one copy of the split in its stored form (uint8 for images) if it fits: not a
    # float copy of every batch from pageable memory, each of which may wait for the GPU.
    data = data.to(device) if dist.fits_on_device(data.x.nbytes, device) else data
    start, stop = dist.shard(len(data)) if sharded else (0, len(data))
    # The loss sum stays on the device: one sync at the end, not one per batch.
    total_loss = torch.zeros((), dtype=_sum_dtype(device), device=device)
    predictions = [torch.zeros(0, dtype=torch.long, device=device)]
    # amp is the evaluation's own: a caller's autocast (around TrainedModel.evaluate) is left first
    with dist.inference(model), dist.autocast_off(), dist.autocast(device, amp):
        first = start
        for x, y in data.iterate_once(batch_size, start, stop):
            # Freed pages back to the OS before each batch (the training buffers kept for reuse,
            # then the previous batch's), so that batches do not stack on them in a fragmented heap.
            if device.type == "cpu":  # on a GPU the batches live in the GPU's memory, not the heap
                release_free_memory()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            rows = torch.arange(first, first + len(y), device=data.x.device)  # no copy of indices
            lengths = data.batch_lengths(rows)  # (B,) or None
            first += len(y)
            logits = model(x, lengths_to(lengths, device)).float()  # (B, C)
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            predictions.append(logits.argmax(dim=1))
    predictions_all = torch.cat(predictions)  # (stop - start,)
    if sharded:  # collectives on the training device (NCCL needs CUDA tensors)
        total_loss = dist.all_reduce_sum(total_loss)
        predictions_all = dist.all_gather_shards(predictions_all, len(data))
    predictions_all = predictions_all.cpu()  # (N,)
    release_free_memory()  # and evaluation's batches: not under the next training steps
    correct = (predictions_all == labels.cpu()).sum().item()
    return Evaluation(total_loss.item() / len(data), 100.0 * correct / len(data), predictions_all)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    flat = labels.long() * num_classes + predictions.long()  # (N,): each sample's (true, predicted) cell
    counts = torch.bincount(flat, minlength=num_classes * num_classes)  # (C*C,)
    return counts.view(num_classes, num_classes).tolist()  # (C, C)
