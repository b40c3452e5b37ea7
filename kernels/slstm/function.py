"""Autograd wrapper and the public op `slstm_scan_triton` (fused forward and fused backward kernels)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..common import check_float, check_shape, check_triton_device
from .backward import slstm_scan_bwd
from .forward import slstm_scan_fwd

SLSTMState = tuple[Tensor, Tensor, Tensor, Tensor]  # (y, c, n, m)


class SLSTMScanFunction(torch.autograd.Function):
    """(wx, R, y0, c0, n0, m0) -> (ys, y_S, c_S, n_S, m_S), all float32 but wx's own dtype in.

    wx (B,S,4,NH,DH), R (NH,DH,4DH) contiguous; the initial state float32 (B,NH,DH) each.
    """

    @staticmethod
    def forward(ctx, wx, R, y0, c0, n0, m0):
        init = (y0, c0, n0, m0)
        save = any(ctx.needs_input_grad)
        ys, final, seq = slstm_scan_fwd(wx, R, init, save)
        if save:
            ctx.save_for_backward(wx, R, *init, ys, *seq)
        ctx.set_materialize_grads(False)
        return (ys, *final)

    @staticmethod
    def backward(ctx, dys, dy, dc, dn, dm):
        wx, R, y0, c0, n0, m0, ys, cs, ns, ms = ctx.saved_tensors
        dfinal = None
        if any(g is not None for g in (dy, dc, dn, dm)):
            dfinal = tuple(
                torch.zeros_like(y0) if g is None else g.float().contiguous() for g in (dy, dc, dn, dm)
            )
        dys = None if dys is None else dys.float().contiguous()
        dwx, dR, dinit = slstm_scan_bwd(wx, R, (y0, c0, n0, m0), (ys, cs, ns, ms), dys, dfinal)
        return (dwx.to(wx.dtype), dR.to(R.dtype), *dinit)


def slstm_scan_triton(wx: Tensor, R: Tensor, state: SLSTMState | None = None) -> tuple[Tensor, SLSTMState]:
    """sLSTM over a sequence (same signature and result as `xlstm_edge.slstm.slstm_scan`).

    wx (B, S, 4, NH, DH) input pre-activations (i, f, z, o; bias included), any float dtype; R (NH, DH,
    4 * DH) recurrent matrices; state (y, c, n, m) each (B, NH, DH), zeros when None. Gate and state
    math in float32. Returns y (B, S, NH, DH) float32 and the final state; differentiable in wx, R and
    the initial state (fused backward kernel).

    Example:
        >>> y, (y_S, c_S, n_S, m_S) = slstm_scan_triton(wx, R)   # doctest: +SKIP
    """
    name = "slstm_scan_triton"
    check_float(f"{name}: wx", wx)
    check_float(f"{name}: R", R)
    if wx.dim() != 5 or wx.shape[2] != 4:
        raise ValueError(f"{name}: wx must be (B, S, 4, NH, DH), got shape {tuple(wx.shape)}")
    B, S, _, NH, DH = wx.shape
    if S == 0:
        raise ValueError(f"{name}: needs at least one token (S = 0)")
    check_shape(f"{name}: R", R, (NH, DH, 4 * DH))
    if state is None:
        state = tuple(torch.zeros(B, NH, DH, device=wx.device) for _ in range(4))
    if len(state) != 4:
        raise ValueError(f"{name}: state must be (y, c, n, m), got {len(state)} tensors")
    for label, t in zip("ycnm", state, strict=True):
        check_shape(f"{name}: state {label}", t, (B, NH, DH))
        check_float(f"{name}: state {label}", t)
    if len({t.device for t in (wx, R, *state)}) != 1:
        raise ValueError(f"{name}: all tensors must be on one device")
    check_triton_device(name, wx)
    init = tuple(t.float().contiguous() for t in state)
    ys, *final = SLSTMScanFunction.apply(wx.contiguous(), R.contiguous(), *init)
    return ys, tuple(final)
