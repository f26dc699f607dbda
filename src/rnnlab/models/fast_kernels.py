"""Per-step loops of the hand-written recurrent layers (no autograd inside), in TorchScript.

Everything is time-major: buffers are ``(T, B, .)`` and states ``(B, H)``. The loops hold
only what the recurrence forces to be sequential, the ``(B, H) x (H, G)`` GEMM and a few
elementwise ops writing into preallocated buffers; everything else is done for all steps
at once by ``fast_layer``, whose functions call these.

The functions are TorchScript source: ``compiled(fn)`` compiles a function with all it calls on
first use (cached for the process); if that fails it runs as plain Python. Compiled, a loop runs without
the GIL and with a fraction of Python's per-op overhead (a 28-step RNN backward loop on
tiny tensors: 12 vs 32 us per step).

tanh is never called: in this torch build on this CPU ``torch.tanh`` costs ~3.5 ns per
float32 element against ~1 ns for ``torch.sigmoid`` (measured at 1 thread), so the
loops use ``tanh(a) = 2 * sigmoid(2a) - 1``, with the factor 2 folded into the weights
where the pre-activation comes straight from a GEMM. Constants are 0-dim tensors: an op
with a Python number costs ~6 us on a (100, 100) tensor here, with a tensor ~3 us.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from rnnlab.errors import warn_caller


def _tanh_(a: Tensor, one: Tensor) -> Tensor:
    """In-place tanh of an already doubled pre-activation: a <- 2 sigmoid(a) - 1
    (``one``: a 0-dim tensor)."""
    s = a.sigmoid_()
    return s.add_(s).sub_(one)


def _one(like: Tensor) -> Tensor:
    return torch.ones([], dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------- forward


def rnn_forward(xp: Tensor, h0: Tensor, w2_t: Tensor, relu: bool, reverse: bool) -> None:
    """xp: (T, B, H) input projections (incl. biases; doubled for tanh), overwritten
    with the outputs. w2_t: (H, H) = W_hh^T (doubled for tanh)."""
    xs, one = xp.unbind(0), _one(xp)
    T = len(xs)
    h = h0
    for k in range(T):
        h = xs[T - 1 - k if reverse else k].addmm_(h, w2_t)
        if relu:
            h.relu_()
        else:
            _tanh_(h, one)


def lstm_forward(xp: Tensor, h0: Tensor, c0: Tensor, w2_t: Tensor, hs: Tensor, cs: Tensor,
                 tcs: Tensor, reverse: bool) -> None:
    """xp: (T, B, 4H) input-side pre-activations in the order (o, i, f, g), the g block
    doubled; overwritten with the gate activations. w2_t: (H, 4H), g columns doubled.
    Fills hs, cs, tcs = tanh(cs): (T, B, H)."""
    T, H = xp.shape[0], hs.shape[2]
    one = _one(xp)
    h, c = h0, c0
    for k in range(T):
        t = T - 1 - k if reverse else k
        a = xp[t].addmm_(h, w2_t).sigmoid_()  # one sigmoid for all four gates
        g = a[:, 3 * H:]
        g.add_(g).sub_(one)  # g = tanh
        c = torch.mul(a[:, 2 * H: 3 * H], c, out=cs[t]).addcmul_(a[:, H: 2 * H], g)
        tc = _tanh_(torch.add(c, c, out=tcs[t]), one)
        h = torch.mul(a[:, :H], tc, out=hs[t])


def gru_forward(xp: Tensor, h0: Tensor, w2_t: Tensor, b2_hn: Tensor, hp: Tensor, hs: Tensor,
                reverse: bool) -> None:
    """xp: (T, B, 3H) input-side pre-activations (r, z, n), r and z holding both
    biases, the n block doubled; overwritten with the activations. w2_t: (H, 3H) with
    the n columns doubled, b2_hn: (3H,) zeros but the doubled n hidden bias. Fills
    hp (T, B, 3H) hidden projections (n block doubled) and hs (T, B, H)."""
    T, H = xp.shape[0], hs.shape[2]
    one = _one(xp)
    h = h0
    for k in range(T):
        t = T - 1 - k if reverse else k
        a, p = xp[t], torch.addmm(b2_hn, h, w2_t, out=hp[t])
        rz = a[:, : 2 * H].add_(p[:, : 2 * H]).sigmoid_()
        n = _tanh_(a[:, 2 * H:].addcmul_(rz[:, :H], p[:, 2 * H:]), one)
        h = torch.lerp(n, h, rz[:, H:], out=hs[t])  # n + z * (h - n)


# ---------------------------------------------------------------------- backward
# Each loop walks the steps backwards and writes the gradients w.r.t. the gate
# pre-activations of every step into g, and the gradient w.r.t. the initial state into
# dh0 (and dc0), unless dh0 is empty (no gradient wanted).
# gout: (T, B, H) gradient w.r.t. the outputs (any strides, read only);
# gh: (B, H) the gradient w.r.t. h_n (the last processed step's output).


def rnn_backward(gout: Tensor, gh: Tensor, dact: Tensor, w: Tensor, g: Tensor, dh0: Tensor,
                 reverse: bool, relu: bool, gout_zero: bool) -> None:
    """dact: (T, B, H) relu: the outputs h themselves (the derivative h > 0 is applied by
    ``threshold_backward``, with no pass over all steps for a mask); tanh: the derivatives
    1 - h^2. w: (H, H) = W_hh; g: (T, B, H) pre-activation gradients. ``gout_zero``: no
    gradient reaches the steps' outputs (the hand-written step's ``last`` readout), so each
    step's g[t] is the recurrent path alone, written by one ``mm``: no copy of zeros first."""
    T = g.shape[0]
    if not gout_zero:
        g.copy_(gout)  # one pass, then the recurrent path is added in place
    t = 0 if reverse else T - 1
    dh = g[t].copy_(gh) if gout_zero else g[t].add_(gh)
    for k in range(T):
        if k > 0:
            t = k if reverse else T - 1 - k
            dh = torch.mm(dh, w, out=g[t]) if gout_zero else g[t].addmm_(dh, w)  # the recurrent path
        if relu:
            torch.ops.aten.threshold_backward(dh, dact[t], 0.0, grad_input=dh)  # dh * (h > 0)
        else:
            dh.mul_(dact[t])
    if dh0.numel() > 0:  # empty: h0 needs no gradient (zeros, or a constant)
        torch.mm(dh, w, out=dh0)


def lstm_backward(gout: Tensor, gh: Tensor, dc: Tensor, k: Tensor, dc_dh: Tensor, f_: Tensor,
                  w: Tensor, dhs: Tensor, g: Tensor, dh0: Tensor, dc0: Tensor,
                  reverse: bool) -> None:
    """dc: (B, H) gradient w.r.t. c_n; k: (T, B, 4H) factors with d pre-activation =
    dh * k (o block) or dc * k (i, f, g blocks); dc_dh: (T, B, H) = o * (1 - tanh(c)^2);
    f_: (T, B, H) forget gates; w: (4H, H) = W_hh in (o, i, f, g) order; dhs: (T, B, H)
    scratch for the hidden-state gradients; g: (T, B, 4H)."""
    T, H = gout.shape[0], dc.shape[1]
    dhs.copy_(gout)  # one pass, then the recurrent path is added in place
    k_cell = k[:, :, H:].unflatten(-1, (3, H))  # (T, B, 3H) -> (T, B, 3, H): the i, f, g blocks
    g_cell = g[:, :, H:].unflatten(-1, (3, H))  # (T, B, 3, H)
    prev = -1
    for n in range(T):
        t = n if reverse else T - 1 - n
        if prev < 0:
            dh = dhs[t].add_(gh)
        else:
            dh = dhs[t].addmm_(g[prev], w)
            dc = dc * f_[prev]
        dc = torch.addcmul(dc, dh, dc_dh[t])
        torch.mul(dh, k[t, :, :H], out=g[t, :, :H])
        torch.mul(dc.unsqueeze(1), k_cell[t], out=g_cell[t])
        prev = t
    torch.mul(dc, f_[prev], out=dc0)
    if dh0.numel() > 0:
        torch.mm(g[prev], w, out=dh0)


def gru_backward(gout: Tensor, gh: Tensor, k: Tensor, z_: Tensor, w: Tensor, dhs: Tensor,
                 g: Tensor, dh0: Tensor, reverse: bool) -> None:
    """k: (T, B, 3H) factors with d hidden-side pre-activation = dh * k; z_: (T, B, H)
    update gates; w: (3H, H); fills dhs (T, B, H) hidden-state gradients and g (T, B, 3H)
    hidden-side gradients."""
    T, H = gout.shape[0], gout.shape[2]
    k3, g3 = k.unflatten(-1, (3, H)), g.unflatten(-1, (3, H))  # (T, B, 3H) -> (T, B, 3, H): r, z, n
    prev = -1
    for n in range(T):
        t = n if reverse else T - 1 - n
        if prev < 0:
            dh = torch.add(gout[t], gh, out=dhs[t])
        else:
            dh = torch.addcmul(gout[t], dhs[prev], z_[prev], out=dhs[t]).addmm_(g[prev], w)
        torch.mul(dh.unsqueeze(1), k3[t], out=g3[t])
        prev = t
    if dh0.numel() > 0:
        torch.mul(dhs[prev], z_[prev], out=dh0).addmm_(g[prev], w)


_compiled: dict[str, Any] = {}
SCRIPT = True  # False: plain Python loops (as when TorchScript is unavailable)


def compiled(fn: Any) -> Any:
    """``fn`` compiled with TorchScript on first use, with every function it calls, and cached
    for the process (about a second for a layer's forward and backward); the plain Python
    function (the same code, so the same results) if SCRIPT is off or compiling fails."""
    if not SCRIPT:
        return fn
    key = f"{fn.__module__}.{fn.__qualname__}"
    done = _compiled.get(key)
    if done is None:
        try:
            with warnings.catch_warnings():  # "torch.jit.script is deprecated" (for models)
                warnings.simplefilter("ignore", DeprecationWarning)
                done = torch.jit.script(fn)
        except Exception as exc:  # noqa: BLE001 - any failure: the Python code is correct
            warn_caller(f"rnnlab fast layers: TorchScript unavailable ({exc}); "
                        "using Python loops", RuntimeWarning)
            done = fn
        _compiled[key] = done
    return done


def is_scripted(fn: Any) -> bool:
    return isinstance(fn, torch.jit.ScriptFunction)
