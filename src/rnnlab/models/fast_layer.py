"""One direction of one recurrent layer, forward and backward without autograd, in TorchScript.

Work that does not depend on the recurrence is done for all steps at once: the input
projection (one ``(T*B, F) x (F, G)`` GEMM), the activation derivatives, and the weight
gradients (one GEMM over the stacked ``(T*B, G)`` gate gradients). Only the per-step loops of
``fast_kernels`` remain sequential.

``layer_forward`` and ``layer_backward`` are what ``RecurrentLayerFn`` (autograd) and the
hand-written training step (``fast_step``) both run. Compiled with the loops they call
(``fast_kernels.compiled``), a layer's forward or backward is one call from Python: on
dlw-rnn-a, the Python around some 30 small ops per step was a sixth of a training step.
Where TorchScript is not to be had, the same functions run as Python.

The loops keep the caller's intra-op threads: the per-step GEMM gains from two (measured on
the 2-core dev VM: a 28-step (100, 100) loop 0.74 vs 0.99 ms), while elementwise ops on
fewer than 32k elements stay on one thread anyway.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .fast_kernels import gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward


def _blocks(t: Tensor, order: List[int]) -> Tensor:
    """Reorder the equal gate blocks along dim 0 of a weight/bias (or its grad)."""
    chunks = t.chunk(len(order), 0)
    return torch.cat([chunks[i] for i in order], 0)


def _lstm_order() -> List[int]:
    return [3, 0, 1, 2]  # torch's gate order (i, f, g, o) -> internal (o, i, f, g), as block indices


def _lstm_inverse() -> List[int]:
    return [1, 2, 3, 0]


def layer_forward(mode: str, reverse: bool, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                  w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                  b_hh: Tensor) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """x (T, B, F), h0/c0 (B, H) or None for zeros -> (out (T, B, H), h_n (B, H), c_n (B, H) or
    an empty tensor unless LSTM, what ``layer_backward`` needs)."""
    T, B, F = x.shape[0], x.shape[1], x.shape[2]
    H = w_hh.shape[1]
    h_init = x.new_zeros([B, H]) if h0 is None else h0
    # Per gate row, 2 where a tanh follows (fast_kernels computes tanh(a) as 2 sigmoid(2a) - 1).
    if mode == "lstm":
        w_ih, w_hh = _blocks(w_ih, _lstm_order()), _blocks(w_hh, _lstm_order())
        bias = _blocks(b_ih + b_hh, _lstm_order())
        scale = torch.cat([x.new_ones([3 * H]), x.new_full([H], 2.0)])
    elif mode == "gru":
        bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros([H])])
        scale = torch.cat([x.new_ones([2 * H]), x.new_full([H], 2.0)])
    else:
        bias = b_ih + b_hh
        scale = x.new_full([H], 2.0) if mode == "rnn_tanh" else x.new_empty([0])
    if scale.numel() == 0:  # ReLU: no tanh to prepare for
        w_ih_s, w_hh_s, bias_s = w_ih, w_hh, bias
    else:
        w_ih_s, w_hh_s, bias_s = w_ih * scale.unsqueeze(1), w_hh * scale.unsqueeze(1), bias * scale
    # One GEMM for the input projection of every step: (T*B, F) @ (F, G) -> (T, B, G).
    xp = torch.addmm(bias_s, x.reshape(T * B, F), w_ih_s.t()).view(T, B, -1)
    w2_t = w_hh_s.t()
    last = 0 if reverse else T - 1
    c_n = x.new_empty([0])
    saved: List[Tensor] = []
    if mode == "lstm":
        c_init = x.new_zeros([B, H]) if c0 is None else c0
        out, cs, tcs = x.new_empty([T, B, H]), x.new_empty([T, B, H]), x.new_empty([T, B, H])
        lstm_forward(xp, h_init, c_init, w2_t, out, cs, tcs, reverse)
        c_n = cs[last].clone()
        saved = [xp, cs, tcs, c_init]
    elif mode == "gru":
        b2_hn = torch.cat([b_hh.new_zeros([2 * H]), 2 * b_hh[2 * H:]])
        hp, out = x.new_empty([T, B, 3 * H]), x.new_empty([T, B, H])
        gru_forward(xp, h_init, w2_t, b2_hn, hp, out, reverse)
        saved = [xp, hp]
    else:
        rnn_forward(xp, h_init, w2_t, mode == "rnn_relu", reverse)
        out = xp
    return out, out[last].clone(), c_n, [x, h_init, w_ih, w_hh, out] + saved


def layer_backward(mode: str, reverse: bool, saved: List[Tensor], h0_is_none: bool, gout: Optional[Tensor],
                   gh: Tensor, gc: Tensor, need_dx: bool, need_dh0: bool, need_dw_ih: bool
                   ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor],
                              Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (x, h0, c0, w_ih, w_hh, b_ih, b_hh) of one layer direction, from those
    w.r.t. its outputs ``gout`` (T, B, H; any strides, read only; None: no gradient reaches the
    steps, only h_n), h_n ``gh`` and c_n ``gc`` (B, H). None where not needed (or not an LSTM)."""
    x, h0, w_ih, w_hh, out = saved[0], saved[1], saved[2], saved[3], saved[4]
    T, B, F = x.shape[0], x.shape[1], x.shape[2]
    H = w_hh.shape[1]
    dh0 = x.new_empty([B, H]) if need_dh0 else x.new_empty([0])  # empty: the loops skip its GEMM
    dc0: Optional[Tensor] = None
    if mode == "lstm" or mode == "gru":
        steps = x.new_zeros([1, 1, 1]).expand(T, B, H) if gout is None else gout  # the loops read it
        if mode == "lstm":
            g_in, dc0 = _lstm_gate_grads(steps, gh, gc, out, saved[5], saved[6], saved[7], saved[8], w_hh, dh0,
                                         reverse)
            g_hid = g_in
        else:
            g_in, g_hid = _gru_gate_grads(steps, gh, out, h0, saved[5], saved[6], w_hh, dh0, reverse)
    else:
        g_in = x.new_empty([T, B, H])
        g_hid = g_in
        relu = mode == "rnn_relu"  # relu: the loop reads the derivative off the outputs, step by step
        dact = out if relu else torch.addcmul(out.new_ones([]), out, out, value=-1.0)  # tanh: 1 - h^2
        rnn_backward(x.new_empty([0]) if gout is None else gout, gh, dact, w_hh, g_in, dh0, reverse, relu,
                     gout is None)
    G = g_in.shape[2]
    g_in2 = g_in.reshape(T * B, G)  # (T*B, G): every step's gate gradients, one GEMM each below
    dx: Optional[Tensor] = None
    if need_dx:
        dx = (g_in2 @ w_ih).view(T, B, F)  # (T*B, G) @ (G, F) -> (T, B, F)
    dw_ih: Optional[Tensor] = None
    if need_dw_ih:
        dw_ih = g_in2.t() @ x.reshape(T * B, F)  # (G, T*B) @ (T*B, F) -> (G, F)
    dw_hh = _prev_hidden_grad(g_hid, out, h0, h0_is_none, reverse)
    db_ih = g_in2.sum(0)
    db_hh = db_ih.clone() if mode != "gru" else g_hid.reshape(T * B, G).sum(0)  # (G,)
    if mode == "lstm":  # back to torch's gate order
        if dw_ih is not None:
            dw_ih = _blocks(dw_ih, _lstm_inverse())
        dw_hh = _blocks(dw_hh, _lstm_inverse())
        db_ih = _blocks(db_ih, _lstm_inverse())
        db_hh = db_ih.clone()
    dh0_wanted: Optional[Tensor] = None
    if need_dh0:
        dh0_wanted = dh0
    return dx, dh0_wanted, dc0, dw_ih, dw_hh, db_ih, db_hh


def _prev_hidden_grad(g: Tensor, hs: Tensor, h0: Tensor, h0_is_zero: bool, reverse: bool) -> Tensor:
    """``sum_t g[t]^T h_{t-1}`` as one GEMM: g (T, B, G), hs (T, B, H), h0 (B, H), whose term is
    skipped where it is zeros. Returns (G, H)."""
    G, H = g.shape[2], hs.shape[2]
    if reverse:  # step t's previous hidden state is h_{t+1}
        g_in, h_prev, g_first = g[:-1], hs[1:], g[-1]
    else:
        g_in, h_prev, g_first = g[1:], hs[:-1], g[0]
    dw = g_in.reshape(-1, G).t() @ h_prev.reshape(-1, H)
    if not h0_is_zero:
        dw.addmm_(g_first.t(), h0)
    return dw


def _shifted(seq: Tensor, first: Tensor, reverse: bool) -> Tensor:
    """The previous-step values of seq (T, B, H), with ``first`` for the first step."""
    if reverse:
        return torch.cat([seq[1:], first.unsqueeze(0)])
    return torch.cat([first.unsqueeze(0), seq[:-1]])


def _lstm_gate_grads(gout: Tensor, gh: Tensor, dc: Tensor, hs: Tensor, acts: Tensor, cs: Tensor, tcs: Tensor,
                     c0: Tensor, w_hh: Tensor, dh0: Tensor, reverse: bool) -> Tuple[Tensor, Tensor]:
    """The gate gradients (T, B, 4H) in (o, i, f, g) order, and dc0; writes dh0."""
    H = hs.shape[2]
    o_, i_, f_, g_ = acts[..., :H], acts[..., H: 2 * H], acts[..., 2 * H: 3 * H], acts[..., 3 * H:]
    # d pre-activation = (dh or dc) * k, for all steps at once, one fused op each
    # (sigmoid_backward: grad * s * (1 - s); tanh_backward: grad * (1 - t^2)).
    k = torch.empty_like(acts)
    torch.ops.aten.sigmoid_backward(tcs, o_, grad_input=k[..., :H])
    torch.ops.aten.sigmoid_backward(g_, i_, grad_input=k[..., H: 2 * H])
    kf = k[..., 2 * H: 3 * H]
    if reverse:  # c_{t-1} is c_{t+1}, and c0 before the last step
        torch.ops.aten.sigmoid_backward(cs[1:], f_[:-1], grad_input=kf[:-1])
        torch.ops.aten.sigmoid_backward(c0, f_[-1], grad_input=kf[-1])
    else:
        torch.ops.aten.sigmoid_backward(cs[:-1], f_[1:], grad_input=kf[1:])
        torch.ops.aten.sigmoid_backward(c0, f_[0], grad_input=kf[0])
    torch.ops.aten.tanh_backward(i_, g_, grad_input=k[..., 3 * H:])
    dc_dh = torch.ops.aten.tanh_backward(o_, tcs, grad_input=torch.empty_like(tcs))  # (T, B, H)
    g, dhs = torch.empty_like(acts), torch.empty_like(tcs)
    dc0 = hs.new_empty([hs.shape[1], H])  # (B, H)
    lstm_backward(gout, gh, dc, k, dc_dh, f_, w_hh, dhs, g, dh0, dc0, reverse)
    return g, dc0


def _gru_gate_grads(gout: Tensor, gh: Tensor, hs: Tensor, h0: Tensor, acts: Tensor, hp: Tensor, w_hh: Tensor,
                    dh0: Tensor, reverse: bool) -> Tuple[Tensor, Tensor]:
    """Input-side and hidden-side gate gradients, each (T, B, 3H); they differ only in
    the n block (the hidden one is multiplied by r). Writes dh0."""
    H = hs.shape[2]
    r_, z_, n_ = acts[..., :H], acts[..., H: 2 * H], acts[..., 2 * H:]
    kn = torch.ops.aten.tanh_backward(1 - z_, n_, grad_input=torch.empty_like(n_))  # d a_n / d h_t, (T, B, H)
    k = torch.empty_like(acts)
    torch.ops.aten.sigmoid_backward(kn * hp[..., 2 * H:], r_, grad_input=k[..., :H]).mul_(0.5)  # hp_n doubled
    torch.ops.aten.sigmoid_backward(_shifted(hs, h0, reverse) - n_, z_, grad_input=k[..., H: 2 * H])
    torch.mul(kn, r_, out=k[..., 2 * H:])
    g_hid, dhs = torch.empty_like(acts), torch.empty_like(n_)
    gru_backward(gout, gh, k, z_, w_hh, dhs, g_hid, dh0, reverse)
    g_in = torch.empty_like(acts)
    g_in[..., : 2 * H].copy_(g_hid[..., : 2 * H])
    torch.mul(dhs, kn, out=g_in[..., 2 * H:])
    return g_in, g_hid
