"""Per-step loops of the hand-written recurrent layers (no autograd inside).

Everything is time-major: buffers are ``(T, b, .)`` and states ``(b, H)``, where
``b`` may be a slice of the batch (``fast_function`` runs two halves on two
threads). The loops hold only what the recurrence forces to be sequential, the
``(b, H) x (H, G)`` GEMM and a few in-place elementwise ops writing into
preallocated buffers; everything else is done for all steps at once by the caller.

tanh is never called: in this torch build on this CPU ``torch.tanh`` costs ~3.3 ns
per float32 element against ~0.4 ns for ``torch.sigmoid`` (measured at 1 thread),
so the loops use ``tanh(a) = 2 * sigmoid(2a) - 1``, with the factor 2 folded into the
weights where the pre-activation comes straight from a GEMM.
"""

from __future__ import annotations

import torch
from torch import Tensor


# Fused derivative ops with out= variants: grad * s * (1 - s), grad * (1 - t^2) and
# grad * (x > 0), one op each instead of three.
sigmoid_bwd = torch.ops.aten.sigmoid_backward.grad_input
tanh_bwd = torch.ops.aten.tanh_backward.grad_input
_relu_bwd = torch.ops.aten.threshold_backward.grad_input


def steps(T: int, reverse: bool) -> list[int]:
    """Time indices in processing order."""
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _tanh_(a: Tensor) -> Tensor:
    """In-place tanh of an already doubled pre-activation: a <- 2 sigmoid(a) - 1."""
    return a.sigmoid_().mul_(2).sub_(1)


# ----------------------------------------------------------------------- forward


def rnn_forward(xp: Tensor, h0: Tensor, w2_t: Tensor, relu: bool, reverse: bool) -> None:
    """xp: (T, b, H) input projections (incl. biases; doubled for tanh), overwritten
    with the outputs. w2_t: (H, H) = W_hh^T (doubled for tanh)."""
    h = h0
    for t in steps(xp.shape[0], reverse):
        h = xp[t].addmm_(h, w2_t)
        h.relu_() if relu else _tanh_(h)


def lstm_forward(xp: Tensor, h0: Tensor, c0: Tensor, w2_t: Tensor, hs: Tensor, cs: Tensor,
                 tcs: Tensor, reverse: bool) -> None:
    """xp: (T, b, 4H) input-side pre-activations in the order (o, i, f, g), the g block
    doubled; overwritten with the gate activations. w2_t: (H, 4H), g columns doubled.
    Fills hs, cs, tcs = tanh(cs): (T, b, H)."""
    H = hs.shape[2]
    o_, i_, f_, g_ = xp[..., :H], xp[..., H : 2 * H], xp[..., 2 * H : 3 * H], xp[..., 3 * H :]
    h, c = h0, c0
    for t in steps(xp.shape[0], reverse):
        xp[t].addmm_(h, w2_t).sigmoid_()  # one sigmoid for all four gates
        g_[t].mul_(2).sub_(1)  # g = tanh
        c = torch.mul(f_[t], c, out=cs[t]).addcmul_(i_[t], g_[t])
        _tanh_(torch.mul(c, 2, out=tcs[t]))
        h = torch.mul(o_[t], tcs[t], out=hs[t])


def gru_forward(xp: Tensor, h0: Tensor, w2_t: Tensor, b2_hn: Tensor, hp: Tensor, hs: Tensor,
                reverse: bool) -> None:
    """xp: (T, b, 3H) input-side pre-activations (r, z, n), r and z holding both
    biases, the n block doubled; overwritten with the activations. w2_t: (H, 3H) with
    the n columns doubled, b2_hn: (3H,) zeros but the doubled n hidden bias. Fills
    hp (T, b, 3H) hidden projections (n block doubled) and hs (T, b, H)."""
    H = hs.shape[2]
    h = h0
    for t in steps(xp.shape[0], reverse):
        a, p = xp[t], torch.addmm(b2_hn, h, w2_t, out=hp[t])
        rz = a[:, : 2 * H].add_(p[:, : 2 * H]).sigmoid_()
        n = _tanh_(a[:, 2 * H :].addcmul_(rz[:, :H], p[:, 2 * H :]))
        h = torch.lerp(n, h, rz[:, H:], out=hs[t])  # n + z * (h - n)


# ---------------------------------------------------------------------- backward
# Each loop walks the steps backwards and writes the gradients w.r.t. the gate
# pre-activations of every step into g, and the gradient w.r.t. the initial state
# into dh0 (and dc0). gout: (T, b, H) gradient w.r.t. the outputs; dh: (b, H) the
# gradient w.r.t. the last processed step's output, already including gout there.


def rnn_backward(dhs: Tensor, hs: Tensor, relu: bool, w: Tensor, dh0: Tensor,
                 reverse: bool) -> None:
    """dhs: (T, b, H) holding the output gradients (the last processed step's incl.
    h_n's), turned in place into the pre-activation gradients; hs: (T, b, H)
    outputs; w: (H, H) = W_hh."""
    order = steps(dhs.shape[0], not reverse)
    for k, t in enumerate(order):
        g = dhs[t]  # dh -> d pre-activation, in place
        _relu_bwd(g, hs[t], 0, grad_input=g) if relu else tanh_bwd(g, hs[t], grad_input=g)
        if k + 1 < len(order):
            dhs[order[k + 1]].addmm_(g, w)  # + recurrent path, no temporary
        else:
            torch.mm(g, w, out=dh0)


def lstm_backward(dhs: Tensor, dc: Tensor, k: Tensor, dc_dh: Tensor, f_: Tensor,
                  w: Tensor, g: Tensor, dh0: Tensor, dc0: Tensor, reverse: bool) -> None:
    """dhs: (T, b, H) holding the output gradients (the last processed step's incl.
    h_n's), to which the recurrent path is added in place; k: (T, b, 4H) factors with d pre-activation = dh * k (o block) or dc * k (i, f,
    g blocks); dc_dh: (T, b, H) = o * (1 - tanh(c)^2); f_: (T, b, H) forget gates;
    w: (4H, H) = W_hh in (o, i, f, g) order; g: (T, b, 4H)."""
    H = dc.shape[1]
    k_cell = k[..., H:].unflatten(-1, (3, H))  # (T, b, 3, H)
    g_cell = g[..., H:].unflatten(-1, (3, H))
    order = steps(g.shape[0], not reverse)
    for n, t in enumerate(order):
        dh = dhs[t]
        dc = torch.addcmul(dc, dh, dc_dh[t])
        torch.mul(dh, k[t, :, :H], out=g[t, :, :H])
        torch.mul(dc.unsqueeze(1), k_cell[t], out=g_cell[t])
        if n + 1 < len(order):
            dc = dc * f_[t]
            dhs[order[n + 1]].addmm_(g[t], w)
        else:
            torch.mul(dc, f_[t], out=dc0)
            torch.mm(g[t], w, out=dh0)


def gru_backward(dhs: Tensor, k: Tensor, z_: Tensor, w: Tensor, g: Tensor, dh0: Tensor,
                 reverse: bool) -> None:
    """dhs: (T, b, H) holding the output gradients (the last processed step's incl.
    h_n's), to which the recurrent paths are added in place; k: (T, b, 3H) factors with
    d hidden-side pre-activation = dh * k; z_: (T, b, H) update gates; w: (3H, H);
    g: (T, b, 3H) hidden-side gradients."""
    H = dhs.shape[2]
    k3, g3 = k.unflatten(-1, (3, H)), g.unflatten(-1, (3, H))
    order = steps(g.shape[0], not reverse)
    for n, t in enumerate(order):
        dh = dhs[t]
        torch.mul(dh.unsqueeze(1), k3[t], out=g3[t])
        if n + 1 < len(order):
            nxt = order[n + 1]
            dhs[nxt].addcmul_(dh, z_[t]).addmm_(g[t], w)
        else:
            torch.mul(dh, z_[t], out=dh0).addmm_(g[t], w)
