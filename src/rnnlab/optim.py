"""The optimizer and the learning-rate schedule of a run, from its ``TrainConfig``.

The learning rate is a pure function of the iteration, so a resumed run follows the same
schedule as one never stopped.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rnnlab.config import RunConfig
from rnnlab.errors import warn_caller


class SGD(torch.optim.SGD):
    """torch's SGD, with its plainest case (no momentum, weight decay or maximize: the tutorials'
    recipe) as one ``_foreach_add_``, the arithmetic torch does (``param += -lr * grad``). Inside a
    training loop torch's ``step`` spent 80-150 us of Python per call here, against ~50 for this,
    on dlw-rnn-a steps of 2.5 ms. Every other case, and state_dicts, are torch's own."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        # torch wraps this method to run the step hooks: the other cases call torch's step unwrapped
        # (torch wraps SGD.step too once any torch SGD exists), so that they run once.
        if closure is not None or any(g["momentum"] or g["weight_decay"] or g["maximize"] or g["differentiable"]
                                      for g in self.param_groups):
            return _torch_sgd_step(self, closure)
        updates = [(group["lr"], [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        if any(p.grad.is_sparse for _, params in updates for p in params):  # before any group is updated
            return _torch_sgd_step(self)
        for lr, params in updates:
            if params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
        return None


def _torch_sgd_step(optimizer: SGD, closure: Any = None) -> Any:
    """``torch.optim.SGD.step`` without the hook-running wrapper torch may have put around it
    (marked ``hooked``; under it, torch's own grad-mode decorator stays)."""
    step = torch.optim.SGD.step
    if getattr(step, "hooked", False):  # functools.wraps keeps the wrapped function; a torch that
        step = getattr(step, "__wrapped__", step)  # did not would run the hooks twice, not fail
    return step(optimizer, closure)


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    params = list(model.parameters())
    if t.optimizer == "sgd":
        return SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    # Adam's fused kernel does the whole update in one pass per tensor: 3.4x faster than the
    # per-tensor loop on the dlw-rnn-a parameters here (101 vs 339 us per step), same math.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def warn_of_a_long_warmup(cfg: RunConfig, budget: int) -> None:
    """A warm-up of the whole budget or more is warned of, not refused: a short look at a preset is fine."""
    warmup, lr = cfg.train.warmup, f"train.lr={cfg.train.lr:g}"
    if warmup >= budget:
        reach = f"reaches {lr} only at the last step" if warmup == budget else f"never reaches {lr}"
        warn_caller(f"train.warmup={warmup} iterations is the whole budget ({budget} iterations) or more: the "
                    f"learning rate {reach}, and the schedule never starts; for a real run make it shorter "
                    f"(e.g. train.warmup={budget // 10}, a tenth of the budget)")


def learning_rate(cfg: RunConfig, iteration: int, total: int) -> float:
    """The learning rate at an iteration: linear warm-up, then the schedule."""
    t = cfg.train
    if t.warmup and iteration < t.warmup:
        return t.lr * (iteration + 1) / t.warmup
    if t.schedule == "cosine":
        progress = (iteration - t.warmup) / max(1, total - t.warmup)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if t.schedule == "step":
        return t.lr * t.gamma ** (iteration // t.step_size)
    return t.lr
