"""The autograd.Function for one direction of one recurrent layer.

Its forward and backward are ``fast_layer``'s, compiled with TorchScript (one call from Python
each, without the GIL inside); autograd keeps what the backward needs on its ctx.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
import torch

from . import fast_kernels as K
from .fast_layer import layer_backward, layer_forward


class RecurrentLayerFn(torch.autograd.Function):
    """(mode, reverse, x (T, B, F), h0, c0, w_ih, w_hh, b_ih, b_hh) -> (out (T, B, H),
    h_n (B, H), c_n (B, H), or an empty tensor unless LSTM). h0/c0 None mean zeros."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mode: str, reverse: bool, x: Tensor, h0: Tensor | None, c0: Tensor | None,
        w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, h_n, c_n, saved = K.compiled(layer_forward)(mode, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        ctx.mode, ctx.reverse, ctx.h0_is_none = mode, reverse, h0 is None
        ctx.save_for_backward(*saved)
        return out, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gout: Tensor, gh: Tensor, gc: Tensor) -> tuple[Tensor | None, ...]:
        need = ctx.needs_input_grad
        # gout (T, B, H), often a transposed view, is autograd's: the loops read it, never write it.
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = K.compiled(layer_backward)(
            ctx.mode, ctx.reverse, list(ctx.saved_tensors), ctx.h0_is_none, gout, gh, gc, need[2], need[3], need[5])
        return None, None, dx, dh0, dc0 if need[4] else None, dw_ih, dw_hh, db_ih, db_hh
