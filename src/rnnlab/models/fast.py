"""FastRecurrent: a drop-in ``torch.nn.RNN/LSTM/GRU`` for small CPU models.

It subclasses ``nn.RNNBase``, so parameter names, shapes, initialisation (and the
RNG draws it makes) and state_dicts are exactly those of the reference module; only
``forward`` differs: each layer and direction runs through the hand-written
``RecurrentLayerFn`` (``fast_function.py``: ``fast_layer.py``, compiled with its loops in ``fast_kernels.py``). Where that path does not apply
(packed or unbatched input, autocast, tracing/scripting/compiling/export, other
dtypes) it falls back to the reference ``forward`` of torch.nn.

``make_recurrent(..., impl="auto")`` picks FastRecurrent only where it was measured
to win (``fast_supported``); everything else gets the plain torch.nn module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .fast_function import RecurrentLayerFn

MODES = ("rnn_relu", "rnn_tanh", "lstm", "gru")
_TANH_MIN_BATCH_WITHOUT_AUTOGRAD = 8  # see FastRecurrent._fast_without_autograd
_TORCH_MODE = {"rnn_relu": "RNN_RELU", "rnn_tanh": "RNN_TANH", "lstm": "LSTM", "gru": "GRU"}
_REFERENCE_FORWARD = {"rnn_relu": nn.RNN.forward, "rnn_tanh": nn.RNN.forward,
                      "lstm": nn.LSTM.forward, "gru": nn.GRU.forward}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {MODES}")


def _check_direction_and_dropout(bidirectional: Any, dropout: Any) -> None:
    """``bidirectional`` comes before ``dropout`` here, the other way round from torch.nn.RNNBase: the two
    given positionally in torch's order (``0.1, True``) would train a dropout of 1.0 between layers."""
    if isinstance(dropout, bool) or not any(bidirectional is v or bidirectional == v for v in (False, True)):
        raise TypeError(f"bidirectional must be True or False and dropout a number, got "
                        f"bidirectional={bidirectional!r}, dropout={dropout!r}: here bidirectional comes before "
                        "dropout (torch.nn.RNNBase has them the other way round); pass them by keyword")


def _tracing() -> bool:
    """True under torch.jit / torch.compile / ONNX export, where a Python
    autograd.Function with in-place loops is not wanted: use the reference path."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


class FastRecurrent(nn.RNNBase):
    """RNN (relu/tanh), LSTM or GRU with a hand-written backward.

    forward(x (B, T, F), hx=None) -> (output (B, T, D*H), h_n (L*D, B, H)), and for
    the LSTM (output, (h_n, c_n)), with torch.nn's semantics; ``batch_first=False`` takes and
    returns ``(T, B, .)`` as torch.nn does.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0,
                 device: Any = None, dtype: Any = None, *, batch_first: bool = True) -> None:
        _check_mode(mode)
        _check_direction_and_dropout(bidirectional, dropout)
        super().__init__(_TORCH_MODE[mode], input_size, hidden_size, num_layers, bias=True,
                         batch_first=batch_first, dropout=float(dropout), bidirectional=bidirectional,
                         device=device, dtype=dtype)
        self.cell = mode
        self.cpu_only = False  # make_recurrent(impl="auto") sets True: on a GPU use cuDNN instead
        if mode.startswith("rnn_"):
            self.nonlinearity = mode[4:]  # what nn.RNN.forward/extra_repr expect

    def extra_repr(self) -> str:
        return f"{self.cell!r}, {super().extra_repr()}"  # FastRecurrent('gru', 28, 128, ...): which cell

    # The reference forward of nn.LSTM calls these LSTM-specific hooks on ``self``.
    def get_expected_cell_size(self, *args: Any) -> tuple[int, int, int]:
        return nn.LSTM.get_expected_cell_size(self, *args)  # type: ignore[arg-type]

    def check_forward_args(self, *args: Any) -> None:  # type: ignore[override]
        base = nn.LSTM if self.cell == "lstm" else nn.RNNBase
        base.check_forward_args(self, *args)  # type: ignore[arg-type]

    def permute_hidden(self, *args: Any) -> Any:  # type: ignore[override]
        base = nn.LSTM if self.cell == "lstm" else nn.RNNBase
        return base.permute_hidden(self, *args)  # type: ignore[arg-type]

    def _fast_ok(self, x: Any) -> bool:
        # Cheapest checks first: a one-image call without autograd, where torch.nn's forward
        # is taken, should not pay the ~2 us of the tracing checks.
        if not isinstance(x, Tensor) or x.dim() != 3:
            return False
        if not (torch.is_grad_enabled() or self._fast_without_autograd(x.shape[0 if self.batch_first else 1])):
            return False
        return (x.shape[0] > 0 and x.shape[1] > 0 and x.dtype in (torch.float32, torch.float64)
                and (x.device.type == "cpu" or not self.cpu_only)
                and not torch.is_autocast_enabled(x.device.type) and not _tracing())

    def _fast_without_autograd(self, batch: int) -> bool:
        # Without autograd (evaluation, predict, serve) nothing is saved for a backward. The
        # Elman loops still beat torch.nn's forward there (one GEMM for every step's input
        # projection: 1.1-1.8x from one image to batches of 1000, 28 or 784 steps, 2-core
        # AVX-512 VM), except tanh on a handful of sequences: its loop computes
        # 2 sigmoid(2a) - 1, three ops a step where torch.nn calls one tanh, and per-op
        # overhead is all there is at that size (0.82-0.96x for 1-4 sequences at hidden
        # 64-512, 0.99-1.23x from 8). The GRU's set-up costs more than torch.nn's whole forward
        # on one image (0.65-0.70x), and on batches of 1000 it wins only while freed buffers are
        # kept (1.22-1.26x tuned, 0.90-0.94x with glibc's defaults), which evaluate() undoes
        # before each batch; the LSTM never takes the fast path by default. So those keep
        # torch.nn's forward.
        if self.cell == "rnn_relu":
            return True
        return self.cell == "rnn_tanh" and batch >= _TANH_MIN_BATCH_WITHOUT_AUTOGRAD

    def forward(self, x: Any, hx: Any = None) -> Any:  # type: ignore[override]
        if not self._fast_ok(x):
            return _REFERENCE_FORWARD[self.cell](self, x, hx)
        lstm = self.cell == "lstm"
        D = 2 if self.bidirectional else 1
        h0s: Tensor | None
        c0s: Tensor | None
        if hx is None:
            h0s = c0s = None
        elif lstm:
            h0s, c0s = hx
        else:
            h0s, c0s = hx, None
        B = x.shape[0 if self.batch_first else 1]
        for name, s in (("h0", h0s), ("c0", c0s)):
            want = (self.num_layers * D, B, self.hidden_size)
            if s is not None and tuple(s.shape) != want:
                raise RuntimeError(f"Expected {name} size {want}, got {tuple(s.shape)}")
        if x.shape[2] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[2]}")
        # (T, B, F): time-major inside
        layer_in = (x.transpose(0, 1) if self.batch_first else x).contiguous()
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                out, h, c = RecurrentLayerFn.apply(
                    self.cell, bool(d), layer_in,
                    None if h0s is None else h0s[k], None if c0s is None else c0s[k],
                    getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx),
                    getattr(self, "bias_ih" + sfx), getattr(self, "bias_hh" + sfx))
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if D == 1 else torch.cat(outs, 2)  # (T, B, D*H)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = nn.functional.dropout(layer_in, self.dropout, training=True)
        # (B, T, D*H), a view like torch.nn's; or (T, B, D*H) as it is
        output = layer_in.transpose(0, 1) if self.batch_first else layer_in
        h_stack = torch.stack(h_n)  # (L*D, B, H)
        if lstm:
            return output, (h_stack, torch.stack(c_n))
        return output, h_stack


# Where the fast path wins. benchmarks/layer_speed.py, one training step (fwd + bwd +
# SGD, Linear readout), 2-core AMD EPYC VM (otherwise idle, but its step times scatter
# by +-25 % even so), torch 2.13 CPU, 2 threads, float32, batch 100 x 28 steps unless
# noted, glibc malloc tuned as the Trainer does; torch / fast ms, median of 7-9
# interleaved repeats (and the ratio of the best repeats):
#   rnn_relu 1x100   6.6 / 4.4 = 1.50x (1.41x), another run 7.9 / 4.0 = 1.95x (1.54x)
#   rnn_relu 1x256  21.6 / 16.0 = 1.35x;  rnn_tanh 2x100 14.7 / 9.8 = 1.49x
#   rnn_tanh 2x256 b64  39.2 / 28.6 = 1.37x (1.32x);  rnn_tanh 1x512 b64 1.23x
#   gru 1x128  27.9 / 20.1 = 1.38x (1.28x);  gru 2x100 1.43x;  gru 1x256 1.17x (1.23x)
#   lstm 2x100  35.2 / 42.8 = 0.82x, lstm 1x128 on 784x1 0.88x: nn.LSTM runs oneDNN's
#               fused RNN kernels (mkldnn_rnn_layer), which our loop cannot beat
# Rechecked on a 2-core AVX-512 VM (2026-11-30, train_speed.py in the Trainer, 4-5 repeats,
# rnnlab fast vs rnnlab model.impl=torch): dlw-rnn-a 1.41x, GRU 1x128 1.25x, rnn-allsteps 1.27x,
# and dlw-lstm-b 0.75x (oneDNN still wins). layer_speed.py there, malloc tuned (mmap off, as
# the Trainer now does), 5-7 repeats: rnn_tanh 1x512 b64 1.24x, gru 1x256 1.14x, and pixel
# MNIST (784x1, hidden 128): rnn_relu 1.78x, gru 1.40x (0.96x with mmap on: its 120 MB
# buffers then fault in fresh pages every step), lstm 0.67x.
# Bidirectional, same VM, train_speed.py in the Trainer, fast vs torch against the same plain
# baseline, 4-5 repeats: rnn_relu 1x100 1.55x, rnn_tanh 2x256 b64 (all-steps readout) 1.18x,
# gru 1x128 b128 mean readout (row-best) 1.36x.
# Hence: fast for RNNs and GRUs (either direction) up to the sizes measured, torch for LSTMs.
_FAST_MAX_HIDDEN = {"rnn_relu": 512, "rnn_tanh": 512, "gru": 256}


def fast_supported(mode: str, hidden_size: int, device: Any = "cpu", dtype: Any = torch.float32) -> bool:
    """Whether FastRecurrent is expected to be faster than torch.nn for this mode and size
    (measured: see the table above; layers, directions and dropout did not change the answer).
    Unmeasured corners answer False."""
    _check_mode(mode)
    if torch.device(device).type != "cpu":  # cuDNN is hard to beat
        return False
    if dtype not in (torch.float32, torch.float64):
        return False
    return hidden_size <= _FAST_MAX_HIDDEN.get(mode, 0)  # no entry (lstm): never


def make_recurrent(mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                   bidirectional: bool = False, dropout: float = 0.0,
                   impl: str = "auto", device: Any = None, dtype: Any = None) -> nn.Module:
    """Build a batch-first recurrent module: FastRecurrent or the torch.nn one.

    impl: "fast", "torch" or "auto" (fast only where ``fast_supported`` says it
    wins). Both have the same parameter names, so state_dicts load across.
    """
    _check_mode(mode)
    _check_direction_and_dropout(bidirectional, dropout)
    if impl not in ("auto", "fast", "torch"):
        raise ValueError(f"impl must be 'auto', 'fast' or 'torch', got {impl!r}")
    # torch.nn drops out between stacked layers only; on one layer it would only warn (in its own words).
    dropout = dropout if num_layers > 1 else 0.0
    requested = impl
    if impl == "auto":
        dev = device if device is not None else "cpu"
        ok = fast_supported(mode, hidden_size, dev, dtype if dtype is not None else torch.get_default_dtype())
        impl = "fast" if ok else "torch"
    if impl == "fast":
        module = FastRecurrent(mode, input_size, hidden_size, num_layers, bidirectional,
                               dropout, device=device, dtype=dtype)
        # Chosen by "auto" for a CPU: if the model later moves to a GPU, cuDNN's kernels
        # (the reference forward) are faster, so the hand-written path stays CPU-only.
        module.cpu_only = requested == "auto"
        return module
    kw: dict[str, Any] = dict(num_layers=num_layers, bias=True, batch_first=True,
                              dropout=float(dropout), bidirectional=bidirectional,
                              device=device, dtype=dtype)
    if mode == "lstm":
        return nn.LSTM(input_size, hidden_size, **kw)
    if mode == "gru":
        return nn.GRU(input_size, hidden_size, **kw)
    return nn.RNN(input_size, hidden_size, nonlinearity=mode[4:], **kw)
