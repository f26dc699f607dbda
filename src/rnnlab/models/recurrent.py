"""The recurrent sequence classifier shared by every model in the registry.

Input is a float batch ``(B, T, F)``: pixels in [0, 1] laid out as the data view reads an
image (rows: ``(B, 28, 28)``), or a sequence file's features as they are. Optional
standardisation is a buffer inside the model, so an exported or served model takes the same
raw input as training does.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnlab.config import ModelConfig
from rnnlab.errors import ConfigError, describe, warn_caller
from rnnlab.models.fast import make_recurrent

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _step_counts(points: Any, steps: int) -> list[int]:
    """``points`` as Python ints from 1 to ``steps``: a list, a range, or NumPy's integers
    (``np.arange(4, 29, 4)``); ConfigError for anything else (True is not a step count)."""
    counts = None
    if not isinstance(points, (str, bytes)):
        try:
            items = list(points)
        except TypeError:  # a single number
            items = None
        if items is not None and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in items):
            counts = [int(t) for t in items]
    if counts is None or not all(1 <= t <= steps for t in counts):
        raise ConfigError(f"points must be step counts from 1 to {steps}, got {points!r}")
    return counts


class SequenceClassifier(nn.Module):
    """A stack of RNN/LSTM/GRU layers and a linear readout.

    ``recurrent``: a module of one's own in place of rnnlab's layers (a model registered with
    ``register_model``). It maps ``(B, T, F)`` to a tuple whose first item is the top layer's states
    ``(B, T, D*H)``, as ``torch.nn.LSTM(batch_first=True)`` does, or those states alone; it keeps its
    own initialisation (``model.init`` is for rnnlab's cells)."""

    def __init__(self, config: ModelConfig, *, input_size: int, seq_len: int, num_classes: int,
                 input_mean: float | torch.Tensor = 0.0, input_std: float | torch.Tensor = 1.0,
                 recurrent: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):  # a builder given the whole RunConfig, say: not an AttributeError
            hint = "; pass its .model" if isinstance(getattr(config, "model", None), ModelConfig) else ""
            raise ConfigError(f"SequenceClassifier: config must be a ModelConfig (a run config's .model, as a builder "
                              f"is given it), not {describe(config)}{hint}")
        if recurrent is None and config.cell not in GATES:
            raise ConfigError(f"model.cell={config.cell!r} is a model of your own: its builder must pass "
                              "SequenceClassifier(..., recurrent=your_module)")
        if recurrent is not None and not isinstance(recurrent, nn.Module):
            raise ConfigError(f"SequenceClassifier: recurrent must be a torch.nn.Module, not {describe(recurrent)}")
        self.config = config
        self.input_size, self.seq_len, self.num_classes = input_size, seq_len, num_classes
        self.mode = f"rnn_{config.nonlinearity}" if config.cell == "rnn" else config.cell
        self.directions = 2 if config.bidirectional else 1
        # Scalars for images (one mean and std over all pixels), (F,) per feature for a sequence file.
        self.register_buffer("input_mean", torch.as_tensor(input_mean, dtype=torch.float32).clone())
        self.register_buffer("input_std", torch.as_tensor(input_std, dtype=torch.float32).clone())
        # Set when the recurrence runs in fp32 under bf16 autocast: on a CPU without bf16 RNN
        # kernels, and always on CUDA (see _recurrence).
        self.recurrent_in_fp32 = False
        # FastRecurrent where it was measured to win (impl=auto), else torch.nn; always batch_first
        if recurrent is None:
            self.rnn = make_recurrent(self.mode, input_size, config.hidden, config.layers, config.bidirectional,
                                      config.dropout, impl=config.impl)
        else:
            self.rnn = recurrent
        features = self.directions * config.hidden
        if config.readout == "all":
            features *= seq_len  # a Linear over every step's hidden state
        self.head = nn.Linear(features, num_classes)
        if recurrent is None:
            initialise(self, config.init)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """The recurrence's input: raw ``(B, T, F)`` standardised as in training."""
        return (x - self.input_mean) / self.input_std

    def hidden_states(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Top-layer hidden states ``(B, T, D*H)`` for a raw input ``(B, T, F)``; ``lengths`` (B,)
        for padded sequences, on any device (states past a sequence's end are then meaningless)."""
        x = self.standardize(x)
        if lengths is not None and self.directions == 2 and self.config.cell not in GATES:
            raise ConfigError(f"model.cell={self.config.cell} is a model of your own: bidirectional, it cannot read "
                              "padded sequences of varying length (its reverse direction would read the padding)")
        if lengths is not None and self.directions == 2:
            # The reverse direction must start at each sequence's own end, not in the padding.
            # Packing wants the lengths on the CPU; on a GPU that copy, and packing's own copy of
            # its sort order, wait for the GPU once per batch. Only this case pays it.
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(self._recurrence(packed), batch_first=True, total_length=x.shape[1])[0]
        # One direction: the padding comes after the steps that matter and cannot change them.
        return self._recurrence(x)

    def _recurrence(self, x: Any) -> Any:
        """The recurrent layers' outputs for ``x`` (B, T, F) or a PackedSequence, under whatever
        autocast the caller set, where the layers can honour it."""
        device = x.data.device if isinstance(x, PackedSequence) else x.device
        if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return self._recurrence_under_cpu_autocast(x)
        if (device.type == "cuda" and torch.is_autocast_enabled("cuda")
                and torch.get_autocast_dtype("cuda") == torch.bfloat16):
            # CUDA autocast runs cuDNN's RNNs in float16 whatever dtype it was given
            # (aten/src/ATen/cudnn/AutocastRNN.cpp), and bf16 runs no loss scaling, which float16
            # needs; a ReLU RNN can also overflow float16. So under bf16 the recurrence is float32.
            self.recurrent_in_fp32 = True
            with torch.autocast("cuda", enabled=False):
                return _states(self.rnn(x.float()))
        return _states(self.rnn(x))

    def _recurrence_under_cpu_autocast(self, x: Any) -> Any:
        # oneDNN has bf16 RNN kernels only on CPUs with the right instructions; elsewhere it
        # cannot even build the primitive. Then keep training, with the recurrence in fp32.
        if not self.recurrent_in_fp32:
            try:
                return _states(self.rnn(x))
            except RuntimeError as error:
                if self.config.cell not in GATES:  # a module of one's own: its error, not the CPU's
                    raise
                warn_caller(f"this CPU cannot run the {self.mode} recurrence under bf16 autocast "
                            f"({str(error).splitlines()[0]}); running it in fp32 instead "
                            "(train.amp=off avoids this warning)", RuntimeWarning)
                self.recurrent_in_fp32 = True
        with torch.autocast("cpu", enabled=False):
            return _states(self.rnn(x.float()))

    def features(self, out: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Readout features from hidden states ``(B, T, D*H)``, each sequence read up to its length."""
        if lengths is not None and self.config.readout == "all":
            raise ConfigError("model.readout=all reads every step, so it needs sequences of one length; "
                              "use readout last or mean for sequences of varying length")
        if lengths is not None:
            lengths = lengths.to(out.device)  # (B,): a caller may keep them on the CPU
        if self.config.readout == "mean":
            if lengths is None:
                return out.mean(dim=1)  # (B, D*H)
            valid = torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None]  # (B, T)
            return (out * valid[..., None]).sum(dim=1) / lengths[:, None].to(out.dtype)  # (B, D*H)
        if self.config.readout == "all":
            return out.reshape(out.shape[0], -1)  # (B, T*D*H)
        if lengths is None:
            last = out[:, -1]  # (B, D*H)
        else:
            last = out[torch.arange(out.shape[0], device=out.device), lengths - 1]  # (B, D*H)
        if self.directions == 2:
            # The forward direction has read everything at the last step, the reverse one at step 0.
            hidden = self.config.hidden
            return torch.cat([last[:, :hidden], out[:, 0, hidden:]], dim=1)  # (B, 2H)
        return last  # (B, H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)`` for sequences ``(B, T, F)``; ``lengths`` (B,) if they are padded
        sequences of varying length (None: all T steps count)."""
        return self.head(self.features(self.hidden_states(x, lengths), lengths))

    @property
    def steps_in_one_pass(self) -> bool:
        """Whether :meth:`step_logits` gets every step from one pass (else one pass per step asked)."""
        return self.directions == 1 and self.config.readout in ("last", "mean")

    @torch.no_grad()
    def step_logits(self, x: torch.Tensor, points: list[int] | None = None,
                    lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, P, C)`` after reading the first ``t`` steps, for each ``t`` in ``points``
        (default: every step, ``1..T``); with ``lengths`` (B,), a sequence that ends before step
        ``t`` gives its logits at its end (its padding is never read).

        Exact and cheap for a one-directional model with readout ``last`` or ``mean``
        (the state after step t is what the model knows then). Otherwise each prefix is
        run on its own, padded with zeros (blank pixels) to the trained length for ``all``.
        """
        batch, steps, _ = x.shape
        points = list(range(1, steps + 1)) if points is None else _step_counts(points, steps)
        if self.steps_in_one_pass:
            # One direction: the padding after a sequence's end cannot change its earlier states.
            out = self.hidden_states(x)  # (B, T, H)
            if self.config.readout == "mean":
                counts = torch.arange(1, steps + 1, device=x.device, dtype=out.dtype)
                out = out.cumsum(dim=1) / counts[None, :, None]  # running mean, (B, T, H)
            read = torch.tensor(points, device=x.device).expand(batch, -1)  # (B, P) steps read
            if lengths is not None:
                read = torch.minimum(read, lengths.to(x.device)[:, None])
            index = (read - 1)[..., None].expand(-1, -1, out.shape[2])  # (B, P) -> (B, P, H)
            return self.head(out.gather(1, index))  # (B, P, H) -> (B, P, C)
        logits = []
        for t in points:
            prefix = x[:, :t]  # (B, t, F)
            if self.config.readout == "all":
                prefix = torch.cat([prefix, x.new_zeros(batch, steps - t, x.shape[2])], dim=1)  # (B, T, F)
            logits.append(self(prefix, None if lengths is None else lengths.clamp(max=t)))  # (B, C)
        return torch.stack(logits, dim=1)  # (B, P, C)


def _states(output: Any) -> Any:
    """The top layer's states from a recurrent module's output: ``(states, h_n)`` as torch.nn's layers
    return it, or the states alone, as a module of one's own may."""
    return output[0] if isinstance(output, (tuple, list)) else output


def initialise(model: SequenceClassifier, scheme: str) -> None:
    """Apply an initialisation scheme to the recurrent weights.

    ``default`` keeps PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)). ``orthogonal`` gives each
    gate's recurrent block an orthogonal matrix, Xavier input weights, zero biases and (LSTM)
    a forget-gate bias of 1, which eases long-range gradient flow. ``identity`` is the IRNN of
    Le, Jaitly & Hinton (2015): identity recurrent weights, zero biases, small input weights.
    """
    if scheme == "default":
        return
    hidden = model.config.hidden
    gates = GATES[model.config.cell]
    with torch.no_grad():
        for name, param in model.rnn.named_parameters():
            if name.startswith("weight_hh"):
                for g in range(gates):
                    block = param[g * hidden:(g + 1) * hidden]  # (H, H) per gate
                    if scheme == "orthogonal":
                        nn.init.orthogonal_(block)
                    else:
                        block.copy_(torch.eye(hidden))
            elif name.startswith("weight_ih"):
                if scheme == "orthogonal":
                    nn.init.xavier_uniform_(param)
                else:
                    nn.init.normal_(param, std=0.001)
            elif name.startswith("bias"):
                param.zero_()
                if model.config.cell == "lstm" and name.startswith("bias_ih"):
                    param[hidden:2 * hidden] = 1.0  # gate order i, f, g, o: open the forget gate


def flops_per_sample(model: SequenceClassifier, seq_len: int | None = None) -> int | None:
    """Multiply-adds x2 for one forward pass of one sequence (training costs about 3x this); None
    for a model of one's own (``register_model``).

    Per layer, direction and step: RNN ``2H(I+H)``, GRU three times that, LSTM four times.
    """
    cfg = model.config
    if cfg.cell not in GATES:  # a model of one's own: only its author knows its arithmetic
        return None
    steps = seq_len or model.seq_len
    total = 0
    layer_input = model.input_size
    for _ in range(cfg.layers):
        per_step = 2 * GATES[cfg.cell] * cfg.hidden * (layer_input + cfg.hidden)
        total += per_step * steps * model.directions
        layer_input = cfg.hidden * model.directions
    total += 2 * model.head.in_features * model.head.out_features
    return total


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_parameters(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """``(name, shape, count)`` for every parameter, in registration order."""
    return [(name, tuple(p.shape), p.numel()) for name, p in model.named_parameters()]
