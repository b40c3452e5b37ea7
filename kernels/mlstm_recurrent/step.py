"""Fused mLSTM step for GPU decode: state update and readout in one kernel, one pass over C.

Shapes (B batch, NH heads): q, k (B, NH, DQK), v (B, NH, DV), i, f (B, NH); state C (B, NH, DQK, DV),
n (B, NH, DQK), m (B, NH) float32. Returns h (B, NH, DV) in q's dtype and the new state (float32).

One program per (DV tile, B * NH): it recomputes the scalar gates and the full q.n (DQK is small),
then streams its C tile once: read, decay + rank-1 update, write, and accumulate q^T C. Decode is
bound by reading and writing C (NH * DQK * DV * 8 bytes per layer and token), so this is the floor.
Inference only: no autograd.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import KERNEL_DTYPES, check_float, check_shape, check_triton_device, next_pow2, pick_block

MLSTMState = tuple[Tensor, Tensor, Tensor]


@triton.jit
def _step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, C_ptr, n_ptr, m_ptr,
    h_ptr, Cn_ptr, nn_ptr, mn_ptr,
    scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BQ: tl.constexpr,
):  # fmt: skip
    pv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ig = tl.load(i_ptr + bh).to(tl.float32)
    fg = tl.load(f_ptr + bh).to(tl.float32)
    m = tl.load(m_ptr + bh)
    lf = tl.minimum(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))  # logsigmoid
    m_new = tl.maximum(lf + m, ig)
    f_act = tl.exp(lf + m - m_new)
    i_act = tl.exp(ig - m_new)

    # n update and the denominator over the whole DQK (cheap; every program does it)
    offs_q = tl.arange(0, BQ)
    mask_q = offs_q < DQK
    qv = tl.load(q_ptr + bh * DQK + offs_q, mask=mask_q, other=0.0).to(tl.float32) * scale
    kv = tl.load(k_ptr + bh * DQK + offs_q, mask=mask_q, other=0.0).to(tl.float32)
    n_new = f_act * tl.load(n_ptr + bh * DQK + offs_q, mask=mask_q, other=0.0) + i_act * kv
    den = tl.sum(qv * n_new, axis=0)
    if pv == 0:
        tl.store(nn_ptr + bh * DQK + offs_q, n_new, mask=mask_q)
        tl.store(mn_ptr + bh, m_new)

    offs_v = pv * BV + tl.arange(0, BV)
    vv = tl.load(v_ptr + bh * DV + offs_v).to(tl.float32) * i_act
    num = tl.zeros((BV,), dtype=tl.float32)
    for kt in range(DQK // BK):
        offs_k = kt * BK + tl.arange(0, BK)
        tile = bh * DQK * DV + offs_k[:, None] * DV + offs_v[None, :]
        kk = tl.load(k_ptr + bh * DQK + offs_k).to(tl.float32)
        qq = tl.load(q_ptr + bh * DQK + offs_k).to(tl.float32) * scale
        c_new = f_act * tl.load(C_ptr + tile) + kk[:, None] * vv[None, :]
        tl.store(Cn_ptr + tile, c_new)
        num += tl.sum(qq[:, None] * c_new, axis=0)
    h = num / (tl.maximum(tl.abs(den), tl.exp(-m_new)) + eps)
    tl.store(h_ptr + bh * DV + offs_v, h.to(h_ptr.dtype.element_ty))


def mlstm_step_triton(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, eps: float = 1e-6
) -> tuple[Tensor, MLSTMState]:
    """One decode step (same signature and result as `xlstm_edge.mlstm.mlstm_step`).

    q, k (B, NH, DQK), v (B, NH, DV) in float32/bfloat16/float16; i, f (B, NH) float; state (C, n, m)
    float32 (B,NH,DQK,DV), (B,NH,DQK), (B,NH). DQK and DV multiples of 16. Returns h (B, NH, DV) in
    q's dtype and a new float32 state (the old one is left as it was).

    Example:
        >>> h, state = mlstm_step_triton(q, k, v, i, f, state)   # doctest: +SKIP
    """
    name = "mlstm_step_triton"
    if q.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"{name}: q must be (B, NH, DQK) and v (B, NH, DV), got {tuple(q.shape)}, {tuple(v.shape)}"
        )
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    check_shape(f"{name}: k", k, (B, NH, DQK))
    check_shape(f"{name}: v", v, (B, NH, DV))
    check_shape(f"{name}: i", i, (B, NH))
    check_shape(f"{name}: f", f, (B, NH))
    if len(state) != 3:
        raise ValueError(f"{name}: state must be (C, n, m), got {len(state)} tensors")
    C, n, m = state
    check_shape(f"{name}: state C", C, (B, NH, DQK, DV))
    check_shape(f"{name}: state n", n, (B, NH, DQK))
    check_shape(f"{name}: state m", m, (B, NH))
    for label, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        check_float(f"{name}: {label}", t)
    if q.dtype not in KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"{name}: q, k, v must share one of float32/bfloat16/float16, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if any(t.dtype != torch.float32 for t in state):
        raise ValueError(f"{name}: the state must be float32, got {[t.dtype for t in state]}")
    if DQK % 16 or DV % 16:
        raise ValueError(f"{name}: DQK ({DQK}) and DV ({DV}) must be multiples of 16")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, i, f, *state)):
        raise ValueError(f"{name}: inference only (no autograd); call it under torch.no_grad()")
    if len({t.device for t in (q, k, v, i, f, *state)}) != 1:
        raise ValueError(f"{name}: all tensors must be on one device")
    check_triton_device(name, q)

    q, k, v, i, f, C, n, m = (t.contiguous() for t in (q, k, v, i, f, C, n, m))
    h = torch.empty(B, NH, DV, device=q.device, dtype=q.dtype)
    C_new, n_new, m_new = torch.empty_like(C), torch.empty_like(n), torch.empty_like(m)
    BV = pick_block(DV)
    BK = pick_block(DQK, cap=32)
    _step_kernel[(DV // BV, B * NH)](
        q, k, v, i, f, C, n, m, h, C_new, n_new, m_new, DQK**-0.5, eps,
        DQK=DQK, DV=DV, BK=BK, BV=BV, BQ=next_pow2(DQK), num_warps=4,
    )  # fmt: skip
    return h, (C_new, n_new, m_new)
