"""The training step of a whole SequenceClassifier by hand: forward, cross-entropy and backward
without autograd, writing each parameter's ``.grad`` for the optimizer.

Autograd costs a fixed amount per step at these sizes: building and walking the graph, the
zero-filled gradient of every step's output when only the last is read, Python around each node.
On dlw-rnn-a (one RNN layer of 100, batch 100) that was a seventh to a tenth of a training
step (README, Speed). Here the recurrent layers run the same ``fast_layer`` forward and
backward that autograd's ``RecurrentLayerFn`` calls, in order by hand, and the readout, head and loss
gradients are written out, all in one TorchScript function (``_stack_step``): one call from
Python per training step. Tests check the loss, logits and every gradient against autograd over
the model options.

It applies where the model runs its fast layers in float32 or float64 on fixed-length
sequences, in one process, with no dropout between layers (``hand_step_supported``); the
Trainer uses autograd everywhere else, and with ``train.backward=autograd``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fast_kernels as K
from .fast import FastRecurrent
from .fast_layer import layer_backward, layer_forward
from .recurrent import SequenceClassifier

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # each layer direction's, in _stack_step's order


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
    rnn = model.rnn
    params = step_parameters(model)
    with torch.no_grad():
        layer_in = model.standardize(x).transpose(0, 1).contiguous()  # (B, T, F) -> (T, B, F)
        losses, logits, grads = K.compiled(_stack_step)(
            rnn.cell, model.config.readout, rnn.num_layers, model.directions, layer_in, y, params[:-2], params[-2],
            params[-1], float(label_smoothing), float(scale))
        for param, grad in zip(params, grads):
            if not param.requires_grad:  # frozen: backward() leaves its .grad alone, and so does this
                continue
            if param.grad is None:
                param.grad = grad
            else:
                param.grad.add_(grad)
    return losses, logits


def plain_sgd(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
    """Whether an optimizer's step is ``param -= lr * grad`` over all of ``model``'s parameters, with
    nothing around it (rnnlab's SGD without momentum, weight decay or hooks): :func:`sgd_step` can
    then take the whole training step, update included, in one call."""
    import torch.optim.optimizer as torch_optimizer  # its global hooks (register_optimizer_step_pre_hook)

    from rnnlab.optim import SGD  # late: the optimizers import the config, which imports the models

    if type(optimizer) is not SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if group["momentum"] or group["weight_decay"] or group["maximize"] or group["differentiable"]:
        return False
    hooks = [getattr(where, name, None) for where, names in (
        (optimizer, ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")),
        (torch_optimizer, ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"))) for name in names]
    # A step the caller set on this optimizer (a wrapper that counts, logs or stops steps) would be skipped;
    # torch's LR schedulers' own wrapper only notes that a step ran, which the steps apart still do.
    own_step = vars(optimizer).get("step")
    if own_step is not None and getattr(own_step, "__wrapped__", None) is not type(optimizer).step:
        return False
    params = list(model.parameters())
    return not any(hooks) and all(p.requires_grad for p in params) and \
        {id(p) for p in group["params"]} == {id(p) for p in params} and len(group["params"]) == len(params)


def step_parameters(model: Any) -> list[Tensor]:
    """``model``'s parameters in the order the hand-written step takes them (and returns their
    gradients): each layer direction's (w_ih, w_hh, b_ih, b_hh) in turn, then the head's weight and bias."""
    rnn = model.rnn
    names = [f"rnn.{kind}_l{layer}{'_reverse' if d else ''}" for layer in range(rnn.num_layers)
             for d in range(model.directions) for kind in _KINDS]
    params = dict(model.named_parameters())
    return [params[name] for name in [*names, "head.weight", "head.bias"]]


def sgd_step(model: Any, data_x: Tensor, data_y: Tensor, indices: Tensor, *, lr: float,
             label_smoothing: float = 0.0, params: list[Tensor] | None = None) -> Tensor:
    """One whole training step of plain SGD (:func:`plain_sgd`) on the rows ``indices`` (B,) of the
    stored training set ``data_x`` (N, T, F), uint8 pixels or float values, and ``data_y`` (N,):
    the batch, forward, loss, backward and the update, in one TorchScript call, with the same
    arithmetic as the batch, :func:`loss_and_grads` and the optimizer's step one after another
    (the same weights, bit for bit). ``.grad`` is left as it was. Returns (2,) = (summed loss, correct
    count) over the batch, for the running totals. ``params``: :func:`step_parameters`, if the caller
    keeps them from step to step (working them out takes ~25 us)."""
    rnn = model.rnn
    with torch.no_grad():
        return K.compiled(_sgd_train_step)(
            rnn.cell, model.config.readout, rnn.num_layers, model.directions, data_x, data_y, indices,
            model.input_mean, model.input_std, step_parameters(model) if params is None else params,
            float(lr), float(label_smoothing))


def _sgd_train_step(mode: str, readout: str, L: int, D: int, data_x: Tensor, data_y: Tensor, indices: Tensor,
                    mean: Tensor, std: Tensor, params: List[Tensor], lr: float, label_smoothing: float) -> Tensor:
    """TorchScript: :func:`sgd_step`'s work; ``params``: the stack's weights as ``_stack_step`` takes them,
    then the head's weight and bias. Each op is the one the separate path runs (SequenceData.batch,
    SequenceClassifier.standardize, _stack_step, SGD's _foreach_add_), so the results are the same."""
    x = data_x.index_select(0, indices)  # (B, T, F): a copy
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)  # pixels in [0, 1]
    y = data_y.index_select(0, indices)  # (B,)
    layer_in = ((x - mean) / std).transpose(0, 1).contiguous()  # (B, T, F) -> (T, B, F)
    B = indices.shape[0]
    losses, logits, grads = _stack_step(mode, readout, L, D, layer_in, y, params[:-2], params[-2], params[-1],
                                        label_smoothing, 1.0 / B)
    # On the list given, not on a list made here: TorchScript drops an in-place op on a new list's
    # elements as dead code (torch 2.13), and the step would not update the weights at all.
    torch._foreach_add_(params, grads, alpha=-lr)
    summed = losses.sum()
    return torch.stack([summed, torch.eq(logits.argmax(1), y).sum(dtype=losses.dtype)])  # (2,)


def _stack_step(mode: str, readout: str, L: int, D: int, x: Tensor, y: Tensor, weights: List[Tensor],
                head_weight: Tensor, head_bias: Tensor, label_smoothing: float,
                scale: float) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """TorchScript: forward, loss and backward of the stack and its head. x (T, B, F), standardised;
    weights: (w_ih, w_hh, b_ih, b_hh) of each layer's directions in turn. Returns the per-sample
    losses (B,), the logits (B, C), and the gradients of ``weights`` then of the head's weight and bias."""
    T, B = x.shape[0], x.shape[1]
    H = weights[1].shape[1]
    # ---- forward, keeping what each layer's backward needs
    layer_in = x
    kept: List[List[Tensor]] = []
    for layer in range(L):
        outs: List[Tensor] = []
        for d in range(D):
            k = 4 * (layer * D + d)
            out, h_n, c_n, saved = layer_forward(mode, d == 1, layer_in, None, None, weights[k], weights[k + 1],
                                                 weights[k + 2], weights[k + 3])
            outs.append(out)  # (T, B, H)
            kept.append(saved)
        layer_in = outs[0] if D == 1 else torch.cat(outs, 2)  # (T, B, D*H)
    top = layer_in  # (T, B, D*H)
    if readout == "last":  # the forward direction's last step, the reverse one's first
        features = top[-1] if D == 1 else torch.cat([top[-1, :, :H], top[0, :, H:]], 1)  # (B, D*H)
    elif readout == "mean":
        features = top.mean(0)  # (B, D*H)
    else:  # all
        features = top.transpose(0, 1).reshape(B, -1)  # (T, B, D*H) -> (B, T*D*H)
    logits = torch.addmm(head_bias, features, head_weight.t())  # (B, C)
    log_probs = torch.log_softmax(logits, 1)  # (B, C): the loss and its gradient from one pass
    losses = F.nll_loss(log_probs, y, reduction="none")  # (B,), what cross_entropy computes
    if label_smoothing != 0.0:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * log_probs.mean(1)

    # ---- backward: d(scale * sum of losses) / d logits = scale * (softmax - smoothed one-hot)
    C = logits.shape[1]
    dlogits = log_probs.exp_()  # (B, C) softmax, in place: log_probs is not needed after this
    dlogits.sub_(label_smoothing / C)
    rows = torch.arange(B, device=y.device)
    dlogits.index_put_([rows, y], dlogits.new_full([1], -(1.0 - label_smoothing)), accumulate=True)
    dlogits.mul_(scale)
    head_grads = [dlogits.t() @ features, dlogits.sum(0)]
    dfeatures = dlogits @ head_weight  # (B, D*H)
    zero_state = dfeatures.new_zeros([B, H])
    # Each direction's gradient w.r.t. its outputs (T, B, H), None where none reaches the steps
    # themselves, and w.r.t. its last state h_n (B, H).
    gouts: List[Optional[Tensor]] = []
    ghs: List[Tensor] = []
    for d in range(D):
        if readout == "last":
            gouts.append(None)
            ghs.append(dfeatures[:, d * H:(d + 1) * H])
        elif readout == "mean":
            dmean = (dfeatures / T).expand(T, B, D * H)  # (B, D*H) -> (T, B, D*H), a view
            gouts.append(dmean[:, :, d * H:(d + 1) * H])
            ghs.append(zero_state)
        else:
            dsteps = dfeatures.view(B, T, D * H).transpose(0, 1)  # (B, T*D*H) -> (T, B, D*H), a view
            gouts.append(dsteps[:, :, d * H:(d + 1) * H])
            ghs.append(zero_state)
    grads: List[Tensor] = [zero_state] * (4 * L * D)  # each replaced below
    for layer in range(L - 1, -1, -1):
        dinput: Optional[Tensor] = None
        for d in range(D):
            k = layer * D + d
            dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = layer_backward(
                mode, d == 1, kept[k], True, gouts[d], ghs[d], zero_state, layer > 0, False, True)
            assert dw_ih is not None  # asked for (need_dw_ih)
            grads[4 * k], grads[4 * k + 1], grads[4 * k + 2], grads[4 * k + 3] = dw_ih, dw_hh, db_ih, db_hh
            if dx is not None:
                dinput = dx if dinput is None else dinput.add_(dx)  # (T, B, D*H) of the layer below
        if dinput is not None:
            gouts = []
            ghs = []
            for d in range(D):
                gouts.append(dinput[:, :, d * H:(d + 1) * H])
                ghs.append(zero_state)
    return losses, logits, grads + head_grads
