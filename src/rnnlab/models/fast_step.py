"""The training step of a whole SequenceClassifier by hand: forward, cross-entropy and backward
without autograd, writing each parameter's ``.grad`` for the optimizer.

Autograd costs a fixed amount per step at these sizes: building and walking the graph, the
zero-filled gradient of every step's output when only the last is read, Python around each node.
On dlw-rnn-a (one RNN layer of 100, batch 100) that was a seventh to a tenth of a training
step (README, Speed). Here the recurrent layers are the same ``RecurrentLayerFn`` forward and
backward that autograd would call, run in order by hand, and the readout, head and loss
gradients are written out. Tests check the loss, logits and every gradient against autograd
over the model options.

It applies where the model runs its fast layers in float32 or float64 on fixed-length
sequences, in one process, with no dropout between layers (``hand_step_supported``); the
Trainer uses autograd everywhere else, and with ``train.backward=autograd``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .fast import FastRecurrent
from .fast_function import RecurrentLayerFn
from .recurrent import SequenceClassifier


class _Context:
    """What ``RecurrentLayerFn`` reads and writes on autograd's ctx object."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[Tensor, ...] = ()

    def save_for_backward(self, *tensors: Tensor) -> None:
        self.saved_tensors = tensors


def hand_step_supported(model: torch.nn.Module, *, amp: str, processes: int, varying_lengths: bool) -> str | None:
    """None if :func:`loss_and_grads` can train ``model`` here, else why not (for the record)."""
    # loss_and_grads writes out SequenceClassifier.forward: a subclass may compute something else,
    # and hooks (on modules, or on parameters' gradients) would be skipped without a word.
    if type(model) is not SequenceClassifier:
        return f"a model class of its own ({type(model).__name__}), whose forward may differ"
    if _has_hooks(model):
        return "hooks on the model's modules or parameters"
    rnn = model.rnn
    if not isinstance(rnn, FastRecurrent):
        return "the recurrent layers are torch.nn's (model.impl)"
    param = rnn.weight_hh_l0
    if rnn.cpu_only and param.device.type != "cpu":
        return "on a GPU the layers run cuDNN's kernels"
    if param.dtype not in (torch.float32, torch.float64) or amp != "off":
        return "autocast or a dtype other than float32/float64"
    if processes > 1:
        return "torchrun: DistributedDataParallel averages gradients in autograd's hooks"
    if rnn.dropout > 0 and rnn.num_layers > 1:
        return "dropout between layers"
    if varying_lengths:
        return "sequences of varying length"
    return None


def _has_hooks(model: torch.nn.Module) -> bool:
    modules = any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                  for m in model.modules())
    params = any(getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None)
                 for p in model.parameters())
    return modules or params


def loss_and_grads(model: Any, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
                   scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-sample losses (B,) and logits (B, C) of ``model`` on ``x`` (B, T, F); adds the gradient
    of ``scale * losses.sum()`` to every parameter's ``.grad``, as ``backward()`` would."""
    rnn, head, cfg = model.rnn, model.head, model.config
    D, H, L = model.directions, rnn.hidden_size, rnn.num_layers
    with torch.no_grad():
        # ---- forward, keeping what each layer's backward needs
        layer_in = model.standardize(x).transpose(0, 1).contiguous()  # (B, T, F) -> (T, B, F)
        T, B = layer_in.shape[:2]
        contexts: list[list[_Context]] = []
        for layer in range(L):
            outs, ctxs = [], []
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                ctx = _Context((False, False, layer > 0, False, False, True, True, True, True))
                out, _, _ = RecurrentLayerFn.forward(
                    ctx, rnn.cell, bool(d), layer_in, None, None, getattr(rnn, "weight_ih" + sfx),
                    getattr(rnn, "weight_hh" + sfx), getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx))
                outs.append(out)  # (T, B, H)
                ctxs.append(ctx)
            contexts.append(ctxs)
            layer_in = outs[0] if D == 1 else torch.cat(outs, 2)  # (T, B, D*H)
        top = layer_in  # (T, B, D*H)
        if cfg.readout == "last":  # the forward direction's last step, the reverse one's first
            features = top[-1] if D == 1 else torch.cat([top[-1, :, :H], top[0, :, H:]], 1)  # (B, D*H)
        elif cfg.readout == "mean":
            features = top.mean(0)  # (B, D*H)
        else:  # all
            features = top.transpose(0, 1).reshape(B, -1)  # (T, B, D*H) -> (B, T*D*H)
        logits = torch.addmm(head.bias, features, head.weight.t())  # (B, C)
        log_probs = torch.log_softmax(logits, 1)  # (B, C): the loss and its gradient from one pass
        losses = F.nll_loss(log_probs, y, reduction="none")  # (B,), what cross_entropy computes
        if label_smoothing:
            losses = (1.0 - label_smoothing) * losses - label_smoothing * log_probs.mean(1)

        # ---- backward: d(scale * sum of losses) / d logits = scale * (softmax - smoothed one-hot)
        C = logits.shape[1]
        dlogits = log_probs.exp_()  # (B, C) softmax, in place: log_probs is not needed after this
        dlogits.sub_(label_smoothing / C)
        dlogits[torch.arange(B, device=y.device), y] -= 1.0 - label_smoothing
        dlogits.mul_(scale)
        grads: dict[str, Tensor] = {"head.weight": dlogits.t() @ features, "head.bias": dlogits.sum(0)}
        dfeatures = dlogits @ head.weight  # (B, D*H)
        zero_steps = dfeatures.new_zeros(()).expand(T, B, H)  # no gradient reaches the steps themselves
        zero_state = dfeatures.new_zeros(B, H)
        # Each direction's gradient w.r.t. its outputs (T, B, H) and its last state h_n (B, H).
        if cfg.readout == "last":
            per_direction = [(zero_steps, dfeatures[:, d * H:(d + 1) * H]) for d in range(D)]
        elif cfg.readout == "mean":
            dmean = (dfeatures / T).expand(T, B, D * H)  # (B, D*H) -> (T, B, D*H), a view
            per_direction = [(dmean[..., d * H:(d + 1) * H], zero_state) for d in range(D)]
        else:
            dsteps = dfeatures.view(B, T, D * H).transpose(0, 1)  # (B, T*D*H) -> (T, B, D*H), a view
            per_direction = [(dsteps[..., d * H:(d + 1) * H], zero_state) for d in range(D)]
        for layer in reversed(range(L)):
            dinput: Tensor | None = None
            for d, ctx in enumerate(contexts[layer]):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                gout, gh = per_direction[d]
                dx, _, _, dw_ih, dw_hh, db_ih, db_hh = RecurrentLayerFn.backward(ctx, gout, gh, zero_state)[2:]
                grads |= {f"rnn.weight_ih{sfx}": dw_ih, f"rnn.weight_hh{sfx}": dw_hh,
                          f"rnn.bias_ih{sfx}": db_ih, f"rnn.bias_hh{sfx}": db_hh}
                if dx is not None:
                    dinput = dx if dinput is None else dinput.add_(dx)  # (T, B, D*H) of the layer below
            if dinput is not None:
                per_direction = [(dinput[..., d * H:(d + 1) * H], zero_state) for d in range(D)]
        for name, param in model.named_parameters():
            if not param.requires_grad:  # frozen: backward() leaves its .grad alone, and so does this
                continue
            grad = grads[name]
            if param.grad is None:
                param.grad = grad
            else:
                param.grad.add_(grad)
    return losses, logits
