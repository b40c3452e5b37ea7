"""sLSTM forward scan in Triton: one program per (head, batch row) loops over time with the head's
recurrent matrix held on chip (loaded once, before the loop), as FlashRNN does.

Shapes (B batch, S sequence, NH heads, DH head dim): wx (B, S, 4, NH, DH) input pre-activations in
gate order i, f, z, o (bias included); R (NH, DH, 4 * DH); state y, c, n, m (B, NH, DH) float32.
Outputs y (B, S, NH, DH) float32 and the final state; with `save` also c, n, m per step (B, S, NH,
DH) for the backward pass. Equations: ../shared/XLSTM_MATH.md (sLSTM cell), log-space forget gate.

R lives in registers as four DH x DH tiles: fine up to DH = 64 (8 warps); beyond that the compiler
spills to local memory (still correct, slower: FlashRNN splits R over several blocks instead).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    return tl.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)


@triton.jit
def _load_r(R_ptr, h, DH: tl.constexpr, BD: tl.constexpr):
    """The four DH x DH gate blocks of head h's recurrent matrix, float32, zero-padded to BD."""
    rows = tl.arange(0, BD)
    cols = tl.arange(0, BD)
    mask = (rows[:, None] < DH) & (cols[None, :] < DH)
    base = R_ptr + h * DH * 4 * DH + rows[:, None] * (4 * DH) + cols[None, :]
    r_i = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    r_f = tl.load(base + DH, mask=mask, other=0.0).to(tl.float32)
    r_z = tl.load(base + 2 * DH, mask=mask, other=0.0).to(tl.float32)
    r_o = tl.load(base + 3 * DH, mask=mask, other=0.0).to(tl.float32)
    return r_i, r_f, r_z, r_o


@triton.jit
def _slstm_fwd_kernel(
    wx_ptr, R_ptr, y0_ptr, c0_ptr, n0_ptr, m0_ptr,
    ys_ptr, cs_ptr, ns_ptr, ms_ptr, yf_ptr, cf_ptr, nf_ptr, mf_ptr,
    S,
    NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, SAVE: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, BD)
    md = d < DH
    r_i, r_f, r_z, r_o = _load_r(R_ptr, h, DH, BD)
    sb = (b * NH + h) * DH + d
    y = tl.load(y0_ptr + sb, mask=md, other=0.0)
    c = tl.load(c0_ptr + sb, mask=md, other=0.0)
    n = tl.load(n0_ptr + sb, mask=md, other=1.0)
    m = tl.load(m0_ptr + sb, mask=md, other=0.0)
    for t in range(S):
        xb = wx_ptr + ((b * S + t) * 4 * NH + h) * DH + d
        yr = y[:, None]
        raw_i = tl.load(xb, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_i, axis=0)
        raw_f = tl.load(xb + NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_f, axis=0)
        raw_z = tl.load(xb + 2 * NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_z, axis=0)
        raw_o = tl.load(xb + 3 * NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_o, axis=0)
        lf = _logsigmoid(raw_f)
        m_new = tl.maximum(lf + m, raw_i)
        i_act = tl.exp(raw_i - m_new)
        f_act = tl.exp(lf + m - m_new)
        c = f_act * c + i_act * _tanh(raw_z)
        n = f_act * n + i_act
        m = m_new
        y = tl.where(md, tl.sigmoid(raw_o) * c / n, 0.0)
        ob = ((b * S + t) * NH + h) * DH + d
        tl.store(ys_ptr + ob, y, mask=md)
        if SAVE:
            tl.store(cs_ptr + ob, c, mask=md)
            tl.store(ns_ptr + ob, n, mask=md)
            tl.store(ms_ptr + ob, m, mask=md)
    tl.store(yf_ptr + sb, y, mask=md)
    tl.store(cf_ptr + sb, c, mask=md)
    tl.store(nf_ptr + sb, n, mask=md)
    tl.store(mf_ptr + sb, m, mask=md)


def num_warps_for(block: int) -> int:
    return 4 if block <= 32 else 8


def slstm_scan_fwd(
    wx: Tensor, R: Tensor, init: tuple[Tensor, Tensor, Tensor, Tensor], save: bool
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor] | None]:
    """Launcher. wx (B,S,4,NH,DH), R (NH,DH,4DH) contiguous; init (y,c,n,m) float32 (B,NH,DH).

    Returns ys (B,S,NH,DH) float32, the final state, and (cs, ns, ms) per step when `save`.
    """
    from ..common import next_pow2

    B, S, _, NH, DH = wx.shape
    dev = wx.device
    ys = torch.empty(B, S, NH, DH, device=dev, dtype=torch.float32)
    seq = tuple(torch.empty_like(ys) for _ in range(3)) if save else (ys, ys, ys)
    final = tuple(torch.empty(B, NH, DH, device=dev, dtype=torch.float32) for _ in range(4))
    BD = next_pow2(DH)
    _slstm_fwd_kernel[(NH, B)](
        wx, R, *init, ys, *seq, *final, S, NH=NH, DH=DH, BD=BD, SAVE=save, num_warps=num_warps_for(BD)
    )
    return ys, final, (seq if save else None)
