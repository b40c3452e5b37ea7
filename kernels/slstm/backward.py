"""Fused sLSTM backward in Triton: one program per (head, batch row) walks time backwards with R on
chip, recomputing each step's gates from the saved previous state, and accumulates its share of dR.

Shapes as in forward.py. Inputs: the saved per-step y, c, n, m (B, S, NH, DH), the initial state,
dy (B, S, NH, DH) and the final state's gradients. Outputs: dwx (B, S, 4, NH, DH) float32, dR per
batch row (B, NH, DH, 4 * DH) float32 (summed over B by the launcher), and the initial state's
gradients (B, NH, DH).

Per step (vectors of DH, ' marks activations):
    y = o c / n,   c = f' c_prev + i' tanh(z~),   n = f' n_prev + i',
    i' = exp(i~ - m),  f' = exp(logsigmoid(f~) + m_prev - m),  m = max(logsigmoid(f~) + m_prev, i~)
and raw gates g~ = wx_g + y_prev R_g, so dy_prev += R_g dg~ and dR_g += y_prev^T dg~.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .forward import _load_r, _logsigmoid, _tanh, num_warps_for


@triton.jit
def _slstm_bwd_kernel(
    wx_ptr, R_ptr, y0_ptr, c0_ptr, n0_ptr, m0_ptr,
    ys_ptr, cs_ptr, ns_ptr, ms_ptr,
    dys_ptr, dyf_ptr, dcf_ptr, dnf_ptr, dmf_ptr,
    dwx_ptr, dR_ptr, dy0_ptr, dc0_ptr, dn0_ptr, dm0_ptr,
    S,
    NH: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DFINAL: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, BD)
    md = d < DH
    r_i, r_f, r_z, r_o = _load_r(R_ptr, h, DH, BD)
    dr_i = tl.zeros((BD, BD), dtype=tl.float32)
    dr_f = tl.zeros((BD, BD), dtype=tl.float32)
    dr_z = tl.zeros((BD, BD), dtype=tl.float32)
    dr_o = tl.zeros((BD, BD), dtype=tl.float32)
    sb = (b * NH + h) * DH + d
    y_init = tl.load(y0_ptr + sb, mask=md, other=0.0)
    c_init = tl.load(c0_ptr + sb, mask=md, other=0.0)
    n_init = tl.load(n0_ptr + sb, mask=md, other=1.0)
    m_init = tl.load(m0_ptr + sb, mask=md, other=0.0)
    if HAS_DFINAL:
        dy_next = tl.load(dyf_ptr + sb, mask=md, other=0.0)  # gradient reaching y_t from later
        dc = tl.load(dcf_ptr + sb, mask=md, other=0.0)
        dn = tl.load(dnf_ptr + sb, mask=md, other=0.0)
        dm = tl.load(dmf_ptr + sb, mask=md, other=0.0)
    else:
        dy_next = tl.zeros((BD,), dtype=tl.float32)
        dc = tl.zeros((BD,), dtype=tl.float32)
        dn = tl.zeros((BD,), dtype=tl.float32)
        dm = tl.zeros((BD,), dtype=tl.float32)
    for tt in range(S):
        t = S - 1 - tt
        has_prev = (d * 0 + t) > 0  # as a vector: the interpreter wants tensor masks
        pb = ((b * S + t - 1) * NH + h) * DH + d
        mp = md & has_prev
        y_prev = tl.where(has_prev, tl.load(ys_ptr + pb, mask=mp, other=0.0), y_init)
        c_prev = tl.where(has_prev, tl.load(cs_ptr + pb, mask=mp, other=0.0), c_init)
        n_prev = tl.where(has_prev, tl.load(ns_ptr + pb, mask=mp, other=1.0), n_init)
        m_prev = tl.where(has_prev, tl.load(ms_ptr + pb, mask=mp, other=0.0), m_init)
        # recompute the step
        xb = wx_ptr + ((b * S + t) * 4 * NH + h) * DH + d
        yr = y_prev[:, None]
        raw_i = tl.load(xb, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_i, axis=0)
        raw_f = tl.load(xb + NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_f, axis=0)
        raw_z = tl.load(xb + 2 * NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_z, axis=0)
        raw_o = tl.load(xb + 3 * NH * DH, mask=md, other=0.0).to(tl.float32) + tl.sum(yr * r_o, axis=0)
        lf = _logsigmoid(raw_f)
        m_t = tl.maximum(lf + m_prev, raw_i)
        i_act = tl.exp(raw_i - m_t)
        f_act = tl.exp(lf + m_prev - m_t)
        z_act = _tanh(raw_z)
        o_act = tl.sigmoid(raw_o)
        c_t = f_act * c_prev + i_act * z_act
        n_t = f_act * n_prev + i_act
        # backwards through y = o c / n
        dy = dy_next
        if HAS_DY:
            dy += tl.load(dys_ptr + ((b * S + t) * NH + h) * DH + d, mask=md, other=0.0)
        d_raw_o = dy * c_t / n_t * o_act * (1.0 - o_act)
        dct = dc + dy * o_act / n_t
        dnt = dn - dy * o_act * c_t / (n_t * n_t)
        # through c, n updates
        d_fact = dct * c_prev + dnt * n_prev
        d_iact = dct * z_act + dnt
        d_raw_z = dct * i_act * (1.0 - z_act * z_act)
        dc = dct * f_act
        dn = dnt * f_act
        # through the exponentials and the stabilizer m_t = max(lf + m_prev, raw_i)
        d_raw_i = d_iact * i_act
        dlf = d_fact * f_act
        dm_t = dm - d_iact * i_act - d_fact * f_act
        reset = raw_i >= lf + m_prev
        d_raw_i += tl.where(reset, dm_t, 0.0)
        dlf += tl.where(reset, 0.0, dm_t)
        dm = d_fact * f_act + tl.where(reset, 0.0, dm_t)
        d_raw_f = dlf * tl.sigmoid(-raw_f)
        d_raw_i = tl.where(md, d_raw_i, 0.0)
        d_raw_f = tl.where(md, d_raw_f, 0.0)
        d_raw_z = tl.where(md, d_raw_z, 0.0)
        d_raw_o = tl.where(md, d_raw_o, 0.0)
        gb = dwx_ptr + ((b * S + t) * 4 * NH + h) * DH + d
        tl.store(gb, d_raw_i, mask=md)
        tl.store(gb + NH * DH, d_raw_f, mask=md)
        tl.store(gb + 2 * NH * DH, d_raw_z, mask=md)
        tl.store(gb + 3 * NH * DH, d_raw_o, mask=md)
        # through the recurrence raw = wx + y_prev R
        dy_next = (
            tl.sum(r_i * d_raw_i[None, :], axis=1)
            + tl.sum(r_f * d_raw_f[None, :], axis=1)
            + tl.sum(r_z * d_raw_z[None, :], axis=1)
            + tl.sum(r_o * d_raw_o[None, :], axis=1)
        )
        dr_i += yr * d_raw_i[None, :]
        dr_f += yr * d_raw_f[None, :]
        dr_z += yr * d_raw_z[None, :]
        dr_o += yr * d_raw_o[None, :]
    tl.store(dy0_ptr + sb, dy_next, mask=md)
    tl.store(dc0_ptr + sb, dc, mask=md)
    tl.store(dn0_ptr + sb, dn, mask=md)
    tl.store(dm0_ptr + sb, dm, mask=md)
    rows = tl.arange(0, BD)
    mask = (rows[:, None] < DH) & md[None, :]
    base = dR_ptr + (b * NH + h) * DH * 4 * DH + rows[:, None] * (4 * DH) + d[None, :]
    tl.store(base, dr_i, mask=mask)
    tl.store(base + DH, dr_f, mask=mask)
    tl.store(base + 2 * DH, dr_z, mask=mask)
    tl.store(base + 3 * DH, dr_o, mask=mask)


def slstm_scan_bwd(
    wx: Tensor, R: Tensor, init: tuple[Tensor, Tensor, Tensor, Tensor],
    seq: tuple[Tensor, Tensor, Tensor, Tensor], dys: Tensor | None,
    dfinal: tuple[Tensor, Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:  # fmt: skip
    """Launcher. seq = saved (ys, cs, ns, ms); dys (B,S,NH,DH) or None; dfinal (dy,dc,dn,dm) or None.

    Returns dwx (B,S,4,NH,DH) float32, dR (NH,DH,4DH) float32, and the initial state's gradients.
    """
    from ..common import next_pow2

    B, S, _, NH, DH = wx.shape
    dev = wx.device
    dwx = torch.empty(B, S, 4, NH, DH, device=dev, dtype=torch.float32)
    dR_rows = torch.empty(B, NH, DH, 4 * DH, device=dev, dtype=torch.float32)
    dinit = tuple(torch.empty(B, NH, DH, device=dev, dtype=torch.float32) for _ in range(4))
    BD = next_pow2(DH)
    dys_arg = dys if dys is not None else dwx  # unused pointer when HAS_DY is off
    dfin = dfinal if dfinal is not None else dinit  # unused pointers when HAS_DFINAL is off
    _slstm_bwd_kernel[(NH, B)](
        wx, R, *init, *seq, dys_arg, *dfin, dwx, dR_rows, *dinit, S,
        NH=NH, DH=DH, BD=BD, HAS_DY=dys is not None, HAS_DFINAL=dfinal is not None,
        num_warps=num_warps_for(BD),
    )  # fmt: skip
    return dwx, dR_rows.sum(0), dinit
