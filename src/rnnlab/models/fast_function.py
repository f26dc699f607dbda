"""The autograd.Function for one direction of one layer, and how its loops are run.

Work that does not depend on the recurrence is done for all steps at once: the input
projection (one ``(T*B, F) x (F, G)`` GEMM), the activation derivatives, and the
weight gradients (one GEMM over the stacked ``(T*B, G)`` gate gradients). Only the
per-step loops of ``fast_kernels`` remain sequential.

The loops are TorchScript (``fast_kernels``): they run without the GIL and without
Python's per-op overhead. They keep the caller's intra-op threads: the per-step GEMM
gains from two (measured on the 2-core dev VM: a 28-step (100, 100) loop 0.74 vs 0.99
ms), while elementwise ops on fewer than 32k elements stay on one thread anyway.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import fast_kernels as K

# torch order (i, f, g, o) <-> internal (o, i, f, g), as block indices.
_LSTM_ORDER = (3, 0, 1, 2)
_LSTM_INVERSE = (1, 2, 3, 0)
# Fused derivative ops with out= variants: grad * s * (1 - s) and grad * (1 - t^2).
_sigmoid_bwd = torch.ops.aten.sigmoid_backward.grad_input
_tanh_bwd = torch.ops.aten.tanh_backward.grad_input


def _blocks(t: Tensor, order: tuple[int, ...]) -> Tensor:
    """Reorder the equal gate blocks along dim 0 of a weight/bias (or its grad)."""
    chunks = t.chunk(len(order), 0)
    return torch.cat([chunks[i] for i in order], 0)


def _prev_hidden_grad(g: Tensor, hs: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """``sum_t g[t]^T h_{t-1}`` as one GEMM: g (T, B, G), hs (T, B, H), h0 (B, H) or
    None for zeros. Returns (G, H)."""
    G, H = g.shape[2], hs.shape[2]
    if reverse:  # step t's previous hidden state is h_{t+1}
        g_in, h_prev, g_first = g[:-1], hs[1:], g[-1]
    else:
        g_in, h_prev, g_first = g[1:], hs[:-1], g[0]
    dw = g_in.reshape(-1, G).t() @ h_prev.reshape(-1, H)
    if h0 is not None:
        dw.addmm_(g_first.t(), h0)
    return dw


def _all_zero(t: Tensor) -> bool:
    """Whether ``t`` is one zero broadcast over every element (strides all 0), as the hand-written
    step passes for outputs no gradient reaches; a dense tensor is not looked into."""
    return t.numel() > 0 and all(s == 0 for s in t.stride()) and bool(t.reshape(-1)[0] == 0)


def _shifted(seq: Tensor, first: Tensor, reverse: bool) -> Tensor:
    """The previous-step values of seq (T, B, H), with ``first`` for the first step."""
    return torch.cat([seq[1:], first[None]]) if reverse else torch.cat([first[None], seq[:-1]])


class RecurrentLayerFn(torch.autograd.Function):
    """(mode, reverse, x (T, B, F), h0, c0, w_ih, w_hh, b_ih, b_hh) -> (out (T, B, H),
    h_n (B, H), c_n (B, H), or an empty tensor unless LSTM). h0/c0 None mean zeros."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mode: str, reverse: bool, x: Tensor, h0: Tensor | None, c0: Tensor | None,
        w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T, B, F = x.shape
        H = w_hh.shape[1]
        h_init = x.new_zeros(B, H) if h0 is None else h0
        scale: Tensor | None = None  # per gate row: 2 where a tanh follows (fast_kernels)
        if mode == "lstm":
            w_ih, w_hh = _blocks(w_ih, _LSTM_ORDER), _blocks(w_hh, _LSTM_ORDER)
            bias = _blocks(b_ih + b_hh, _LSTM_ORDER)
            scale = torch.cat([x.new_ones(3 * H), x.new_full((H,), 2.0)])
        elif mode == "gru":
            bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
            scale = torch.cat([x.new_ones(2 * H), x.new_full((H,), 2.0)])
        else:
            bias = b_ih + b_hh
            if mode == "rnn_tanh":
                scale = x.new_full((H,), 2.0)
        if scale is None:
            w_ih_s, w_hh_s, bias_s = w_ih, w_hh, bias
        else:
            w_ih_s, w_hh_s, bias_s = w_ih * scale[:, None], w_hh * scale[:, None], bias * scale
        # One GEMM for the input projection of every step: (T*B, F) @ (F, G).
        xp = torch.addmm(bias_s, x.reshape(T * B, F), w_ih_s.t()).view(T, B, -1)
        w2_t = w_hh_s.t()
        last = 0 if reverse else T - 1
        c_n = x.new_empty(0)
        saved: tuple[Tensor, ...] = ()
        if mode == "lstm":
            c_init = x.new_zeros(B, H) if c0 is None else c0
            out, cs, tcs = (x.new_empty(T, B, H) for _ in range(3))
            K.loop("lstm_forward")(xp, h_init, c_init, w2_t, out, cs, tcs, reverse)
            c_n = cs[last].clone()
            saved = (xp, cs, tcs, c_init)
        elif mode == "gru":
            b2_hn = torch.cat([b_hh.new_zeros(2 * H), 2 * b_hh[2 * H :]])
            hp, out = x.new_empty(T, B, 3 * H), x.new_empty(T, B, H)
            K.loop("gru_forward")(xp, h_init, w2_t, b2_hn, hp, out, reverse)
            saved = (xp, hp)
        else:
            relu = mode == "rnn_relu"
            K.loop("rnn_forward")(xp, h_init, w2_t, relu, reverse)
            out = xp
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
        # gout (T, B, H), often a transposed view, is autograd's: the loops copy it into
        # buffers of their own and add the recurrent path there.
        need = ctx.needs_input_grad
        dh0 = x.new_empty(B, H) if need[3] else x.new_empty(0)  # empty: the loops skip its GEMM
        dc0 = None
        if mode == "lstm":
            g_in, dc0 = _lstm_backward(gout, gh, gc, out, saved, w_hh, dh0, reverse)
            g_hid = g_in
        elif mode == "gru":
            g_in, g_hid = _gru_backward(gout, gh, out, h0, saved, w_hh, dh0, reverse)
        else:
            g_in = g_hid = x.new_empty(T, B, H)
            relu = mode == "rnn_relu"  # relu: the loop reads the derivative off the outputs, step by step
            dact = out if relu else torch.addcmul(out.new_ones(()), out, out, value=-1.0)  # tanh: 1 - h^2
            K.loop("rnn_backward")(gout, gh, dact, w_hh, g_in, dh0, reverse, relu, _all_zero(gout))
        G = g_in.shape[2]
        g_in2 = g_in.reshape(T * B, G)  # (T*B, G): every step's gate gradients, one GEMM each below
        dx = (g_in2 @ w_ih).view(T, B, F) if need[2] else None  # (T*B, G) @ (G, F) -> (T, B, F)
        dw_ih = g_in2.t() @ x.reshape(T * B, F) if need[5] else None  # (G, T*B) @ (T*B, F) -> (G, F)
        dw_hh = _prev_hidden_grad(g_hid, out, None if ctx.h0_is_none else h0, reverse)
        db_ih = g_in2.sum(0)
        db_hh = db_ih.clone() if g_hid is g_in else g_hid.reshape(T * B, G).sum(0)  # (G,)
        if mode == "lstm":  # back to torch's gate order
            dw_ih = _blocks(dw_ih, _LSTM_INVERSE) if dw_ih is not None else None
            dw_hh = _blocks(dw_hh, _LSTM_INVERSE)
            db_ih = _blocks(db_ih, _LSTM_INVERSE)
            db_hh = db_ih.clone()
        return (None, None, dx, dh0 if need[3] else None, dc0 if need[4] else None,
                dw_ih, dw_hh, db_ih, db_hh)


def _lstm_backward(gout: Tensor, gh: Tensor, dc: Tensor, hs: Tensor, saved: list[Tensor],
                   w_hh: Tensor, dh0: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Returns the gate gradients (T, B, 4H) in (o, i, f, g) order and dc0; writes dh0."""
    acts, cs, tcs, c0 = saved
    H = hs.shape[2]
    o_, i_, f_, g_ = acts[..., :H], acts[..., H : 2 * H], acts[..., 2 * H : 3 * H], acts[..., 3 * H :]
    # d pre-activation = (dh or dc) * k, for all steps at once, one fused op each.
    k = torch.empty_like(acts)
    _sigmoid_bwd(tcs, o_, grad_input=k[..., :H])
    _sigmoid_bwd(g_, i_, grad_input=k[..., H : 2 * H])
    kf = k[..., 2 * H : 3 * H]
    first, rest = (-1, slice(None, -1)) if reverse else (0, slice(1, None))
    _sigmoid_bwd(cs[1:] if reverse else cs[:-1], f_[rest], grad_input=kf[rest])
    _sigmoid_bwd(c0, f_[first], grad_input=kf[first])  # c_{-1} = c0
    _tanh_bwd(i_, g_, grad_input=k[..., 3 * H :])
    dc_dh = _tanh_bwd(o_, tcs, grad_input=torch.empty_like(tcs))  # (T, B, H)
    g, dhs = torch.empty_like(acts), torch.empty_like(tcs)
    dc0 = hs.new_empty(hs.shape[1:])  # (B, H)
    K.loop("lstm_backward")(gout, gh, dc, k, dc_dh, f_, w_hh, dhs, g, dh0, dc0, reverse)
    return g, dc0


def _gru_backward(gout: Tensor, gh: Tensor, hs: Tensor, h0: Tensor, saved: list[Tensor],
                  w_hh: Tensor, dh0: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Input-side and hidden-side gate gradients, each (T, B, 3H); they differ only in
    the n block (the hidden one is multiplied by r). Writes dh0."""
    acts, hp = saved
    H = hs.shape[2]
    r_, z_, n_ = acts[..., :H], acts[..., H : 2 * H], acts[..., 2 * H :]
    kn = _tanh_bwd(1 - z_, n_, grad_input=torch.empty_like(n_))  # d a_n / d h_t, (T, B, H)
    k = torch.empty_like(acts)
    _sigmoid_bwd(kn * hp[..., 2 * H :], r_, grad_input=k[..., :H]).mul_(0.5)  # hp_n doubled
    _sigmoid_bwd(_shifted(hs, h0, reverse) - n_, z_, grad_input=k[..., H : 2 * H])
    torch.mul(kn, r_, out=k[..., 2 * H :])
    g_hid, dhs = torch.empty_like(acts), torch.empty_like(n_)
    K.loop("gru_backward")(gout, gh, k, z_, w_hh, dhs, g_hid, dh0, reverse)
    g_in = torch.empty_like(acts)
    g_in[..., : 2 * H].copy_(g_hid[..., : 2 * H])
    torch.mul(dhs, kn, out=g_in[..., 2 * H :])
    return g_in, g_hid
