"""Hand-written forward/backward for one direction of one recurrent layer.

Everything here is time-major: ``x`` is ``(T, B, F)`` and hidden buffers are
``(T, B, H)``. The work that does not depend on the recurrence is done for all
steps at once (input projection, activation derivatives, weight gradients as one
GEMM over ``(T*B, H)``); the per-step loops hold only the recurrent GEMM and a few
in-place elementwise ops, because at batch 100 x hidden 100 the per-op dispatch
cost (a few microseconds) is comparable to the arithmetic.

Gate orders follow ``torch.nn`` in the parameters; the LSTM is run internally in
the order (o, i, f, g) so that one ``sigmoid_`` covers three gates in the forward
and the cell gradient multiplies one contiguous ``3H`` block in the backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# torch order (i, f, g, o) -> internal (o, i, f, g), as block indices.
_LSTM_ORDER = (3, 0, 1, 2)
_LSTM_INVERSE = (1, 2, 3, 0)


def _blocks(t: Tensor, order: tuple[int, ...], n: int) -> Tensor:
    """Reorder the ``n`` equal blocks along dim 0 of a weight/bias (or its grad)."""
    chunks = t.chunk(n, 0)
    return torch.cat([chunks[i] for i in order], 0)


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _prev_hidden_grad(g: Tensor, hs: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """``sum_t g[t]^T h_{t-1}``: the recurrent weight gradient as one big GEMM.

    g: (T, B, G) gate gradients, hs: (T, B, H) hidden outputs, h0: (B, H) or None
    (= zeros). Returns (G, H).
    """
    T, B, G = g.shape
    H = hs.shape[2]
    if reverse:  # step t's previous hidden state is h_{t+1}
        g_in, h_prev, g_first = g[:-1], hs[1:], g[-1]
    else:
        g_in, h_prev, g_first = g[1:], hs[:-1], g[0]
    dw = g_in.reshape(-1, G).t() @ h_prev.reshape(-1, H)
    if h0 is not None:
        dw.addmm_(g_first.t(), h0)
    return dw


# ----------------------------------------------------------------------- forward


def _rnn_forward(xp: Tensor, h0: Tensor, w_hh: Tensor, relu: bool, reverse: bool) -> Tensor:
    """xp: (T, B, H) input projections incl. biases, overwritten with the outputs."""
    w_t = w_hh.t()
    h = h0
    for t in _steps(xp.shape[0], reverse):
        h = xp[t].addmm_(h, w_t)
        h.relu_() if relu else h.tanh_()
    return xp


def _lstm_forward(
    xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xp: (T, B, 4H) gate pre-activations (o, i, f, g) from the input, overwritten
    with the gate activations. Returns (acts, hs, cs, tanh(cs)), each (T, B, .)."""
    T, B, G = xp.shape
    H = G // 4
    w_t = w_hh.t()
    hs = xp.new_empty(T, B, H)
    cs = xp.new_empty(T, B, H)
    tcs = xp.new_empty(T, B, H)
    o_, i_, f_, g_ = xp[..., :H], xp[..., H : 2 * H], xp[..., 2 * H : 3 * H], xp[..., 3 * H :]
    h, c = h0, c0
    for t in _steps(T, reverse):
        a = xp[t].addmm_(h, w_t)
        a[:, : 3 * H].sigmoid_()
        a[:, 3 * H :].tanh_()
        c = torch.mul(f_[t], c, out=cs[t]).addcmul_(i_[t], g_[t])
        h = torch.mul(o_[t], torch.tanh(c, out=tcs[t]), out=hs[t])
    return xp, hs, cs, tcs


def _gru_forward(
    xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """xp: (T, B, 3H) pre-activations (r, z, n) from the input (r, z already hold
    both biases), overwritten with the activations. b_hn: (3H,) zeros except the n
    block's hidden bias. Returns (acts, hp, hs) with hp (T, B, 3H) the hidden
    projections (only the n block is used later) and hs (T, B, H)."""
    T, B, G = xp.shape
    H = G // 3
    w_t = w_hh.t()
    hp = xp.new_empty(T, B, G)
    hs = xp.new_empty(T, B, H)
    h = h0
    for t in _steps(T, reverse):
        a, p = xp[t], torch.addmm(b_hn, h, w_t, out=hp[t])
        rz = a[:, : 2 * H].add_(p[:, : 2 * H]).sigmoid_()
        n = a[:, 2 * H :].addcmul_(rz[:, :H], p[:, 2 * H :]).tanh_()
        h = torch.lerp(n, h, rz[:, H:], out=hs[t])  # n + z * (h - n)
    return xp, hp, hs


# ---------------------------------------------------------------------- backward


def _rnn_backward(
    gout: Tensor, dh: Tensor, hs: Tensor, w_hh: Tensor, relu: bool, reverse: bool
) -> tuple[Tensor, Tensor]:
    """Returns (g, dh0): g (T, B, H) gradients w.r.t. pre-activations."""
    deriv = (hs > 0).to(hs.dtype) if relu else 1 - hs * hs  # (T, B, H), one bulk op
    g = torch.empty_like(hs)
    steps = list(_steps(hs.shape[0], not reverse))
    for k, t in enumerate(steps):
        torch.mul(dh, deriv[t], out=g[t])
        nxt = steps[k + 1] if k + 1 < len(steps) else None
        dh = torch.addmm(gout[nxt], g[t], w_hh) if nxt is not None else g[t] @ w_hh
    return g, dh


def _lstm_backward(
    gout: Tensor, dh: Tensor, dc: Tensor, acts: Tensor, cs: Tensor, tcs: Tensor,
    c0: Tensor, w_hh: Tensor, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (g, dh0, dc0): g (T, B, 4H) gate pre-activation gradients (o, i, f, g)."""
    T, B, G = acts.shape
    H = G // 4
    o_, i_, f_, g_ = acts[..., :H], acts[..., H : 2 * H], acts[..., 2 * H : 3 * H], acts[..., 3 * H :]
    c_prev = torch.cat([cs[1:], c0[None]]) if reverse else torch.cat([c0[None], cs[:-1]])
    # Per-step gradient factors, for all steps at once: dgate = (dh or dc) * k.
    k = torch.empty_like(acts)
    s = acts[..., : 3 * H]
    torch.mul(s, 1 - s, out=k[..., : 3 * H])  # sigmoid' for o, i, f
    k[..., :H].mul_(tcs)
    k[..., H : 2 * H].mul_(g_)
    k[..., 2 * H : 3 * H].mul_(c_prev)
    torch.mul(1 - g_ * g_, i_, out=k[..., 3 * H :])
    dc_dh = o_ * (1 - tcs * tcs)  # (T, B, H): d c_t / d h_t through tanh
    g = torch.empty_like(acts)
    k_cell = k[..., H:].unflatten(-1, (3, H))  # (T, B, 3, H): i, f, g blocks use dc
    g_cell = g[..., H:].unflatten(-1, (3, H))
    steps = list(_steps(T, not reverse))
    for n, t in enumerate(steps):
        dc = torch.addcmul(dc, dh, dc_dh[t])
        torch.mul(dh, k[t, :, :H], out=g[t, :, :H])
        torch.mul(dc.unsqueeze(1), k_cell[t], out=g_cell[t])
        dc = dc * f_[t]
        nxt = steps[n + 1] if n + 1 < len(steps) else None
        dh = torch.addmm(gout[nxt], g[t], w_hh) if nxt is not None else g[t] @ w_hh
    return g, dh, dc


def _gru_backward(
    gout: Tensor, dh: Tensor, acts: Tensor, hp: Tensor, hs: Tensor, h0: Tensor,
    w_hh: Tensor, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (g_in, g_hid, dh0): gradients w.r.t. the input-side (T, B, 3H) and
    hidden-side (T, B, 3H) pre-activations; they differ only in the n block."""
    T, B, G = acts.shape
    H = G // 3
    r_, z_, n_ = acts[..., :H], acts[..., H : 2 * H], acts[..., 2 * H :]
    h_prev = torch.cat([hs[1:], h0[None]]) if reverse else torch.cat([h0[None], hs[:-1]])
    k = torch.empty_like(acts)  # d pre-activation / d h_t, per gate, all steps at once
    kn = torch.mul(1 - z_, 1 - n_ * n_, out=k[..., 2 * H :])
    torch.mul(kn * hp[..., 2 * H :], r_ * (1 - r_), out=k[..., :H])
    torch.mul((h_prev - n_) * z_, 1 - z_, out=k[..., H : 2 * H])
    k[..., 2 * H :].mul_(r_)  # hidden side of n: d(r * hp_n) / d hp_n = r
    dhs = torch.empty_like(hs)
    g_hid = torch.empty_like(acts)
    k3, g3 = k.unflatten(-1, (3, H)), g_hid.unflatten(-1, (3, H))
    steps = list(_steps(T, not reverse))
    dhs[steps[0]] = dh
    for n, t in enumerate(steps):
        dh = dhs[t]
        torch.mul(dh.unsqueeze(1), k3[t], out=g3[t])
        nxt = steps[n + 1] if n + 1 < len(steps) else None
        if nxt is None:
            dh0 = torch.addmm(dh * z_[t], g_hid[t], w_hh)
        else:
            torch.addcmul(gout[nxt], dh, z_[t], out=dhs[nxt]).addmm_(g_hid[t], w_hh)
    g_in = g_hid.clone()
    torch.mul(dhs, (1 - z_) * (1 - n_ * n_), out=g_in[..., 2 * H :])
    return g_in, g_hid, dh0


# ---------------------------------------------------------------- autograd glue


class RecurrentLayerFn(torch.autograd.Function):
    """One direction of one layer: (x, h0, c0, weights) -> (out, h_n, c_n).

    x: (T, B, F) time-major; h0, c0: (B, H) or None for zeros (c0 LSTM only).
    Returns out (T, B, H), h_n (B, H), c_n (B, H) (a dummy empty tensor unless LSTM).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mode: str, reverse: bool, x: Tensor, h0: Tensor | None, c0: Tensor | None,
        w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T, B, F = x.shape
        H = w_hh.shape[1]
        zeros = x.new_zeros(B, H)
        h_init = zeros if h0 is None else h0
        if mode == "lstm":
            w_ih, w_hh = _blocks(w_ih, _LSTM_ORDER, 4), _blocks(w_hh, _LSTM_ORDER, 4)
            bias = _blocks(b_ih + b_hh, _LSTM_ORDER, 4)
        elif mode == "gru":
            bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
        else:
            bias = b_ih + b_hh
        # One GEMM for the input projection of every step: (T*B, F) @ (F, G).
        xp = torch.addmm(bias, x.reshape(T * B, F), w_ih.t()).view(T, B, -1)
        last = 0 if reverse else T - 1
        c_n = x.new_empty(0)
        if mode == "lstm":
            c_init = zeros if c0 is None else c0
            acts, out, cs, tcs = _lstm_forward(xp, h_init, c_init, w_hh, reverse)
            c_n = cs[last].clone()
            saved: tuple[Tensor, ...] = (acts, cs, tcs, c_init)
        elif mode == "gru":
            b_hn = torch.cat([b_hh.new_zeros(2 * H), b_hh[2 * H :]])
            acts, hp, out = _gru_forward(xp, h_init, w_hh, b_hn, reverse)
            saved = (acts, hp)
        else:
            out = _rnn_forward(xp, h_init, w_hh, mode == "rnn_relu", reverse)
            saved = ()
        ctx.mode, ctx.reverse, ctx.h0_is_none = mode, reverse, h0 is None
        ctx.save_for_backward(x, h_init, w_ih, w_hh, out, *saved)
        return out, out[last].clone(), c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gout: Tensor, gh: Tensor, gc: Tensor) -> tuple[Tensor | None, ...]:
        x, h0, w_ih, w_hh, out, *saved = ctx.saved_tensors
        mode, reverse = ctx.mode, ctx.reverse
        T, B, F = x.shape
        H = w_hh.shape[1]
        last = 0 if reverse else T - 1
        dh = gh + gout[last]
        dc0 = None
        if mode == "lstm":
            acts, cs, tcs, c0 = saved
            g, dh0, dc0 = _lstm_backward(gout, dh, gc, acts, cs, tcs, c0, w_hh, reverse)
            g_in = g_hid = g
        elif mode == "gru":
            acts, hp = saved
            g_in, g_hid, dh0 = _gru_backward(gout, dh, acts, hp, out, h0, w_hh, reverse)
        else:
            g, dh0 = _rnn_backward(gout, dh, out, w_hh, mode == "rnn_relu", reverse)
            g_in = g_hid = g
        need = ctx.needs_input_grad
        G = g_in.shape[2]
        g_in2 = g_in.reshape(T * B, G)
        dx = (g_in2 @ w_ih).view(T, B, F) if need[2] else None
        dw_ih = g_in2.t() @ x.reshape(T * B, F) if need[5] else None
        dw_hh = _prev_hidden_grad(g_hid, out, None if ctx.h0_is_none else h0, reverse)
        db_ih = g_in2.sum(0)
        db_hh = db_ih.clone() if g_hid is g_in else g_hid.reshape(T * B, G).sum(0)
        if mode == "lstm":  # back to torch's gate order
            dw_ih = _blocks(dw_ih, _LSTM_INVERSE, 4) if dw_ih is not None else None
            dw_hh = _blocks(dw_hh, _LSTM_INVERSE, 4)
            db_ih = _blocks(db_ih, _LSTM_INVERSE, 4)
            db_hh = db_ih.clone()
        return (None, None, dx, dh0 if need[3] else None, dc0 if need[4] else None,
                dw_ih, dw_hh, db_ih, db_hh)
