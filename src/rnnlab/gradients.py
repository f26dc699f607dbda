"""Gradient flow through time: how strongly the loss reaches back to each step's hidden state.

``gradient_flow`` reruns a model's recurrence one step at a time with the model's own
weights (torch's cell functions, an LSTM's step written out: the maths of torch.nn.RNN/LSTM/GRU),
keeps every hidden state h_t, and differentiates the summed cross-entropy of a batch with respect to them.
The mean over the batch of ``||dL/dh_t||`` per layer, direction and step shows where
gradients vanish or explode. On row MNIST at initialisation, dlw-rnn-a (ReLU RNN, PyTorch's
default init) keeps about 4e-11 of it at step 1 relative to step 28. With identity
recurrent weights (dlw-rnn-a-plus) it keeps 0.45 (64 test images).

For an LSTM the cell state's ``||dL/dc_t||`` is reported too: the total derivative, through
the next cell state and through ``h_t = o_t * tanh(c_t)``.

Each sample's loss depends only on its own states, so summing the losses makes every norm
that sample's own gradient, whatever the batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models.recurrent import GATES, SequenceClassifier

_CELLS = {"rnn_tanh": torch.rnn_tanh_cell, "rnn_relu": torch.rnn_relu_cell, "gru": torch.gru_cell}


@dataclass(frozen=True)
class GradientFlow:
    """``norms[l, d, t]``: mean over the batch of ``||dL/dh_t||`` in layer l, direction d
    (0 forward, 1 reverse); ``t`` counts input steps from 0."""

    norms: torch.Tensor  # (L, D, T)
    loss: float  # mean cross-entropy of the batch
    samples: int
    state_difference: float  # largest |h_t| difference between the unrolled and the model's own run, over max(1, |h|)
    cell_norms: torch.Tensor | None = None  # (L, D, T): ||dL/dc_t|| of an LSTM's cell state

    def to_dict(self) -> dict[str, Any]:
        return {"norms": self.norms.tolist(), "loss": self.loss, "samples": self.samples,
                "state_difference": self.state_difference,
                "cell_norms": None if self.cell_norms is None else self.cell_norms.tolist()}


States = list[list[list[torch.Tensor]]]  # [layer][direction][t] -> (B, H)


def unrolled_states(model: SequenceClassifier, x: torch.Tensor) -> tuple[torch.Tensor, States, States]:
    """Run the recurrence step by step: the last layer's outputs ``(B, T, D*H)``, every hidden
    state ``h[layer][direction][t]`` of shape ``(B, H)``, and for an LSTM every cell state
    likewise (an empty list for other cells). No dropout (eval)."""
    mode, rnn = model.mode, model.rnn
    hidden, directions = model.config.hidden, model.directions
    layer_input = model.standardize(x)  # (B, T, F)
    batch, steps = layer_input.shape[:2]
    states: States = []
    cells: States = []
    for layer in range(model.config.layers):
        outputs, layer_states, layer_cells = [], [], []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = [getattr(rnn, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = layer_input.new_zeros(batch, hidden)
            c = layer_input.new_zeros(batch, hidden)
            per_step: list[torch.Tensor] = [h] * steps
            cell_per_step: list[torch.Tensor] = [c] * steps
            for t in (reversed(range(steps)) if direction else range(steps)):
                if mode == "lstm":
                    h, c = _lstm_step(layer_input[:, t], h, c, *weights)
                    cell_per_step[t] = c
                else:
                    h = _CELLS[mode](layer_input[:, t], h, *weights)
                per_step[t] = h
            layer_states.append(per_step)
            layer_cells.append(cell_per_step)
            outputs.append(torch.stack(per_step, dim=1))  # (B, T, H)
        states.append(layer_states)
        if mode == "lstm":
            cells.append(layer_cells)
        layer_input = torch.cat(outputs, dim=2)  # (B, T, D*H)
    return layer_input, states, cells


def _lstm_step(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
               bias_ih: torch.Tensor, bias_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of torch.nn.LSTM (gates i, f, g, o), written out so that h_t is computed from c_t on
    every device: ``torch.lstm_cell`` on a GPU is one fused kernel whose h_t and c_t are sibling
    outputs of one autograd node, so the gradient with respect to c_t would miss the path through
    h_t = o_t * tanh(c_t) (and c_T's would be 0)."""
    i, f, g, o = (x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh).chunk(4, dim=1)  # (B, H) each
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gradient_flow(model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor) -> GradientFlow:
    """``||dL/dh_t||`` for every layer, direction and step, averaged over the batch ``x (B, T, F)``
    with labels ``y (B,)``, on the device ``x`` and the model are on, in float32 (autocast is
    turned off). The model's parameters and their ``.grad`` are left untouched."""
    if model.config.cell not in GATES:
        raise ConfigError(f"the gradient flow unrolls rnnlab's own cells (rnn, lstm, gru) from their weights; "
                          f"model.cell={model.config.cell!r} is a model of your own (register_model)")
    was_training = model.training
    model.eval()
    # Always float32, even inside a caller's autocast: the norms reach 1e-11 and below, under
    # fp16's range, and bf16's 3 significant digits would blur them and fail the check below.
    with torch.autocast(x.device.type, enabled=False):
        try:
            with torch.enable_grad():
                out, states, cells = unrolled_states(model, x)
                logits = model.head(model.features(out)).float()  # (B, C)
                loss = F.cross_entropy(logits, y, reduction="sum")
                flat = [s for group in (states, cells) for layer in group for direction in layer for s in direction]
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
            with torch.no_grad(), _full_float32_rnns(x.device):
                reference = model.hidden_states(x)  # (B, T, D*H), the model's own (fused) run
                # relative to the states' size (at least 1): float32 rounding of states of 1e5 is 1e-2
                scale = max(1.0, reference.float().abs().max().item())
                difference = (reference.float() - out.detach().float()).abs().max().item() / scale
        finally:
            model.train(was_training)
    layers, directions, steps = len(states), len(states[0]), x.shape[1]
    norms = mean_norms(grads, len(x)).view(-1, layers, directions, steps)  # (1 or 2, L, D, T)
    return GradientFlow(norms[0], loss.item() / len(x), len(x), difference,
                        cell_norms=norms[1] if len(norms) > 1 else None)


def mean_norms(grads: Sequence[torch.Tensor | None], batch: int) -> torch.Tensor:
    """The mean over the batch of each gradient's per-sample norm: (N,) float64 on the CPU, for N
    gradients (B, H) (None: no gradient, 0). Taken in float64: a float32 norm squares elements
    under 1e-22 to zero, and a 784-step gradient that still holds 1e-23 would read as 0."""
    return torch.stack([torch.zeros(batch, dtype=torch.float64) if g is None
                        else g.detach().to("cpu", torch.float64).norm(dim=1) for g in grads]).mean(dim=1)


@contextlib.contextmanager
def _full_float32_rnns(device: torch.device) -> Iterator[None]:
    """On a GPU, torch.nn's RNNs without cuDNN for the block: cuDNN may compute them in TF32
    (``torch.backends.cudnn.allow_tf32``, on by default), whose ~3 digits are the tolerance of the
    state check itself, while the unrolled cells' matrix products stay float32."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


def format_flow(flow: GradientFlow, title: str, rows: int = 28) -> str:
    """A text table: one line per shown step (at most ``rows``, evenly spaced), one column per
    layer and direction, and per column how much of the gradient reaches the step read first
    (a ratio far below 1 is a vanishing gradient, far above 1 an exploding one)."""
    layers, directions, steps = flow.norms.shape
    series = [("h", flow.norms)] + ([("c", flow.cell_norms)] if flow.cell_norms is not None else [])
    columns = [(kind, values, layer, d) for kind, values in series
               for layer in range(layers) for d in range(directions)]
    names = [f"layer {layer + 1}" + ((" rev" if d else " fwd") if directions == 2 else "")
             + (f" {kind}" if len(series) > 1 else "") for kind, _, layer, d in columns]
    width = max(12, *(len(n) + 2 for n in names))
    count = min(rows, steps)  # spread over the steps from first to last, T included
    shown = sorted({round(i * (steps - 1) / max(1, count - 1)) for i in range(count)})
    what = "||dL/dh_t|| (h) and ||dL/dc_t|| (c)" if len(series) > 1 else "||dL/dh_t||"
    lines = [title, f"mean {what} over {flow.samples} test sequences (loss {flow.loss:.4f})", "",
             f"{'step':>6}" + "".join(f"{n:>{width}}" for n in names)]
    for t in shown:
        lines.append(f"{t + 1:>6}" + "".join(f"{values[layer, d, t].item():>{width}.3e}"
                                              for _, values, layer, d in columns))
    ratios = []
    for _, values, layer, d in columns:
        first_read, last_read = (steps - 1, 0) if d else (0, steps - 1)  # the reverse direction reads backwards
        first, last = values[layer, d, first_read].item(), values[layer, d, last_read].item()
        ratios.append(f"{first / last:.3g}" if last > 0 else "n/a")
    lines += ["", "step read first / step read last:" + "".join(f"{r:>{width}}" for r in ratios)]
    zero = [f"{name.strip()} at {zero_steps(values[layer, d])}" for name, (_, values, layer, d) in zip(names, columns)
            if (values[layer, d] == 0).any()]
    if zero:  # a class reading 0 must not take it for a measured value, nor miss the steps in the plot
        lines += ["", f"norm 0 (not drawn by --plot): {'; '.join(zero)}: no gradient left in float32 (under its "
                      "smallest number, 1.4e-45), or none at all"]
    return "\n".join(lines)


def zero_steps(norms: Any) -> str:
    """The steps (counted from 1) whose norm in ``norms`` (T,), a tensor or array, is 0, as ranges:
    "steps 1-401", "step 7", "steps 1-3, 9"."""
    steps = [t + 1 for t, value in enumerate(norms.tolist()) if value == 0]
    ranges: list[list[int]] = []
    for t in steps:
        if ranges and ranges[-1][1] == t - 1:
            ranges[-1][1] = t
        else:
            ranges.append([t, t])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in ranges)
    return f"step{'s' if len(steps) > 1 else ''} {text}"
