"""Chunkwise mLSTM backward in Triton, the mirror of forward.py, plus the gate-gradient glue.

Shapes as in forward.py (BH = B * NH, NC chunks of L). The gradient splits in two parts:

1. Holding every stabilizer m fixed, h and the final state are sums of exp(log-weight) * products, so
   the kernels give dq, dk, dv, dC0, dn0 and per-position sums of terms: d i_j = k_j.dk_j, and for
   d logf_l (the log forget gate of token l scales every term whose source lies before l and whose
   sink lies at or after l) the terms that cross l, summed directly (gate_grads), never as a
   difference of large sums that cancel.
2. The stabilizers cancel between numerator and denominator except in eps (h = NUM / (max(|DEN|, 1) +
   eps e^m) in unstabilized terms) and in the final state (C_S = e^{-m_S} C~). That gradient flows
   along the running max m_t = max(logf_t + m_{t-1}, i_t): a small segmented scan done in PyTorch.

Level 1 (`_bwd_states_kernel`): one program per (DQK tile, DV tile, BH) walks the chunks backwards
and writes dC / dn at the end of every chunk; its last value is the initial state's gradient.
Level 2 (`_bwd_inputs_kernel`): one program per (chunk, BH) computes dq, dk, dv of the chunk and the
per-position and per-chunk sums that the forget-gate gradient is made of.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import dot_precision, pick_block
from .forward import ChunkwiseConfig, bwd_launch, state_launch


@triton.jit
def _bwd_delta_kernel(
    h_ptr, dh_ptr, delta_ptr, S,
    DV: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """delta (BH, S) = sum over DV of dh * h."""
    pt = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    t = pt * BT + tl.arange(0, BT)
    mask_t = t < S
    acc = tl.zeros((BT,), dtype=tl.float32)
    for vt in range(DV // BV):
        offs_v = vt * BV + tl.arange(0, BV)
        ptrs = (bh * S + t[:, None]) * DV + offs_v[None, :]
        hh = tl.load(h_ptr + ptrs, mask=mask_t[:, None], other=0.0).to(tl.float32)
        dd = tl.load(dh_ptr + ptrs, mask=mask_t[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(hh * dd, axis=1)
    tl.store(delta_ptr + bh * S + t, acc, mask=mask_t)


@triton.jit
def _bwd_states_kernel(
    q_ptr, dh_ptr, lf_ptr, ig_ptr, mpos_ptr, norm_ptr, dden_ptr, ms_ptr,
    dCf_ptr, dnf_ptr,
    dCs_ptr, dns_ptr, dC0_ptr, dn0_ptr,
    S, NC, scale,
    L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DFINAL: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    pk = tl.program_id(0)
    pv = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pk * BK + tl.arange(0, BK)
    offs_v = pv * BV + tl.arange(0, BV)
    offs_t = tl.arange(0, L)
    c_tile = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_DFINAL:
        dC = tl.load(dCf_ptr + bh * DQK * DV + c_tile).to(tl.float32)
        dn = tl.load(dnf_ptr + bh * DQK + offs_k).to(tl.float32)
    else:
        dC = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    for cc in range(NC):
        c = NC - 1 - cc
        # the gradient of the state at the end of chunk c
        tl.store(dCs_ptr + (bh * NC + c) * DQK * DV + c_tile, dC.to(dCs_ptr.dtype.element_ty))
        if pv == 0:
            tl.store(dns_ptr + (bh * NC + c) * DQK + offs_k, dn)
        t = c * L + offs_t
        mask_t = t < S
        lf = tl.load(lf_ptr + bh * S + t, mask=mask_t, other=0.0)
        b = tl.cumsum(lf, axis=0)
        g = tl.sum(lf, axis=0)
        m_k = tl.load(ms_ptr + bh * (NC + 1) + c)
        m_next = tl.load(ms_ptr + bh * (NC + 1) + c + 1)
        m_pos = tl.load(mpos_ptr + bh * S + t, mask=mask_t, other=0.0)
        norm = tl.load(norm_ptr + bh * S + t, mask=mask_t, other=1.0)
        dden = tl.load(dden_ptr + bh * S + t, mask=mask_t, other=0.0)
        alpha = tl.exp(b + m_k - m_pos) * scale  # weight of C_k in position t's output, times 1/sqrt(DQK)
        qt = tl.load(q_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        dht = tl.load(dh_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        qa = qt.to(tl.float32) * alpha[:, None]
        decay = tl.exp(g + m_k - m_next)
        # 1/norm goes with q (one rounding to q's dtype), so dh enters the product as given
        qan = (qa / norm[:, None]).to(qt.dtype)
        upd = tl.dot(tl.trans(qan), dht, input_precision=DOT_PREC)
        dC = decay * dC + upd  # own accumulator, as in forward.py's state kernel
        dn = decay * dn + tl.sum(qa * dden[:, None], axis=0)
    tl.store(dC0_ptr + bh * DQK * DV + c_tile, dC)
    if pv == 0:
        tl.store(dn0_ptr + bh * DQK + offs_k, dn)


@triton.jit
def _decay_matrix(b, ig, m_pos, offs_t):
    """(L, L): exp(b_i - b_j + ig_j - m_i) for j <= i, else 0 (recomputed rather than kept live)."""
    causal = offs_t[:, None] >= offs_t[None, :]
    log_d = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    return tl.exp(log_d - m_pos[:, None])


# NK, NV: run-time tile counts for one-tile dims, as in forward.py's _fwd_output_kernel (why: there)
@triton.jit(do_not_specialize=["NK", "NV"])
def _bwd_inputs_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, lf_ptr, ig_ptr, mpos_ptr, norm_ptr, dden_ptr,
    Cs_ptr, ns_ptr, ms_ptr, dCs_ptr, dns_ptr,
    dq_ptr, dk_ptr, dv_ptr, kdk_ptr, cross_ptr, qa_ptr, ke_ptr, share_ptr,
    S, NC, scale, NK, NV,
    L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, L)
    t = c * L + offs_t
    mask_t = t < S
    row_k = (bh * S + t[:, None]) * DQK
    row_v = (bh * S + t[:, None]) * DV
    lf = tl.load(lf_ptr + bh * S + t, mask=mask_t, other=0.0)
    ig = tl.load(ig_ptr + bh * S + t, mask=mask_t, other=float("-inf"))
    b = tl.cumsum(lf, axis=0)
    g = tl.sum(lf, axis=0)
    m_k = tl.load(ms_ptr + bh * (NC + 1) + c)
    m_next = tl.load(ms_ptr + bh * (NC + 1) + c + 1)
    m_pos = tl.load(mpos_ptr + bh * S + t, mask=mask_t, other=0.0)
    norm = tl.load(norm_ptr + bh * S + t, mask=mask_t, other=1.0)
    dden = tl.load(dden_ptr + bh * S + t, mask=mask_t, other=0.0)
    state_base = (bh * NC + c) * DQK
    dtype = q_ptr.dtype.element_ty
    n_kt = NK if DQK == BK else DQK // BK  # a one-tile dim loops over a run-time count
    n_vt = NV if DV == BV else DV // BV

    alpha = tl.exp(b + m_k - m_pos)  # weight of C_k at position t
    beta = tl.exp(g - b + ig - m_next)  # weight of token t in the state at the chunk's end
    decay = tl.exp(g + m_k - m_next)  # weight of C_k in the state at the chunk's end

    # phase 1: dP = dnum v^T + dden (reduced over DV), masked by the decay matrix. dnum = dh / norm:
    # the products take dh as given and divide in float32 after (no rounding of dnum to q's dtype)
    dp = tl.zeros((L, L), dtype=tl.float32)
    for vt in range(n_vt):
        offs_v = vt * BV + tl.arange(0, BV)
        dht = tl.load(dh_ptr + row_v + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        vv = tl.load(v_ptr + row_v + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        dp += tl.dot(dht, tl.trans(vv), input_precision=DOT_PREC)
    dp = dp / norm[:, None]
    wdp = (_decay_matrix(b, ig, m_pos, offs_t) * (dp + dden[:, None])).to(dtype)  # d scores^ (up to scale)

    # phase 2: dq and dk, one DQK tile at a time, both from one pass over the (C_k, dC_end) tiles.
    # kdk = k.dk (d i); qa_t = q_t . (C_k's part of dq_t), ke_j = k_j . (dC_end's part of dk_j):
    # forget-gate terms; share = decay (<C_k, dC_end> + n_k . dn_end): the chunk-start state's terms
    # that reach past the chunk's end, a part of every forget-gate gradient in the chunk (summed here
    # from the tiles this pass loads anyway, not in the state kernel, which would read C_k again)
    kdk = tl.zeros((L,), dtype=tl.float32)
    qa = tl.zeros((L,), dtype=tl.float32)
    ke = tl.zeros((L,), dtype=tl.float32)
    share = tl.zeros((BK,), dtype=tl.float32)
    for kt in range(n_kt):
        offs_k = kt * BK + tl.arange(0, BK)
        qt = tl.load(q_ptr + row_k + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        kk = tl.load(k_ptr + row_k + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        dq_inter = tl.zeros((L, BK), dtype=tl.float32)  # dh C_k^T (dnum C_k^T times norm)
        dk_inter = tl.zeros((L, BK), dtype=tl.float32)  # v dC_{k+1}^T
        for vt in range(n_vt):
            offs_v = vt * BV + tl.arange(0, BV)
            dht = tl.load(dh_ptr + row_v + offs_v[None, :], mask=mask_t[:, None], other=0.0)
            ct = tl.load(Cs_ptr + (state_base + offs_k[:, None]) * DV + offs_v[None, :])
            dq_inter += tl.dot(dht, tl.trans(ct), input_precision=DOT_PREC)
            vv = tl.load(v_ptr + row_v + offs_v[None, :], mask=mask_t[:, None], other=0.0)
            dct = tl.load(dCs_ptr + (state_base + offs_k[:, None]) * DV + offs_v[None, :])
            dk_inter += tl.dot(vv, tl.trans(dct), input_precision=DOT_PREC)
            share += tl.sum(ct.to(tl.float32) * dct.to(tl.float32), axis=1)
        nk = tl.load(ns_ptr + state_base + offs_k)
        dq_x = alpha[:, None] * (dq_inter / norm[:, None] + dden[:, None] * nk[None, :]) * scale
        qa += tl.sum(qt.to(tl.float32) * dq_x, axis=1)
        dq = tl.dot(wdp, kk, input_precision=DOT_PREC) * scale + dq_x
        tl.store(dq_ptr + row_k + offs_k[None, :], dq.to(dq_ptr.dtype.element_ty), mask=mask_t[:, None])
        dnk = tl.load(dns_ptr + state_base + offs_k)
        share += nk * dnk
        dk_x = beta[:, None] * (dk_inter + dnk[None, :])
        ke += tl.sum(kk.to(tl.float32) * dk_x, axis=1)
        dk = tl.dot(tl.trans(wdp), qt, input_precision=DOT_PREC) * scale + dk_x
        kdk += tl.sum(kk.to(tl.float32) * dk, axis=1)
        tl.store(dk_ptr + row_k + offs_k[None, :], dk.to(dk_ptr.dtype.element_ty), mask=mask_t[:, None])
    tl.store(kdk_ptr + bh * S + t, kdk, mask=mask_t)
    tl.store(qa_ptr + bh * S + t, qa, mask=mask_t)
    tl.store(ke_ptr + bh * S + t, ke, mask=mask_t)
    tl.store(share_ptr + bh * NC + c, decay * tl.sum(share, axis=0))

    # phase 3: scores q^ k^T (reduced over DQK), masked by the decay matrix
    scores = tl.zeros((L, L), dtype=tl.float32)
    for kt in range(n_kt):
        offs_k = kt * BK + tl.arange(0, BK)
        qt = tl.load(q_ptr + row_k + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        kk = tl.load(k_ptr + row_k + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        scores += tl.dot(qt, tl.trans(kk), input_precision=DOT_PREC)
    # the forget-gate terms inside the chunk: pair (t, j) adds M_tj = wdp_tj * s_tj to d logf_l for
    # every j < l <= t: cross_l = sum over j < l of (sum over t >= l of M_tj), a suffix sum down each
    # column, then a masked sum along row l. No difference of sums: an exclusive scan written as
    # cumsum - M left the rounding of M (fused into an FMA on the GPU) where the true sum is 0
    pair = wdp.to(tl.float32) * scores * scale
    after = tl.cumsum(pair, axis=0, reverse=True)  # [l, j]: sum over t >= l of M_tj
    cross = tl.sum(tl.where(offs_t[None, :] < offs_t[:, None], after, 0.0), axis=1)
    tl.store(cross_ptr + bh * S + t, cross, mask=mask_t)
    # row i of ws divided by norm_i: dv = ws^T dnum = (ws / norm)^T dh, dh as given
    ws = (_decay_matrix(b, ig, m_pos, offs_t) * scores * (scale / norm[:, None])).to(dtype)

    # phase 4: dv, one DV tile at a time
    for vt in range(n_vt):
        offs_v = vt * BV + tl.arange(0, BV)
        dht = tl.load(dh_ptr + row_v + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        dv_inter = tl.zeros((L, BV), dtype=tl.float32)  # k dC_{k+1}
        for kt in range(n_kt):
            offs_k = kt * BK + tl.arange(0, BK)
            kk = tl.load(k_ptr + row_k + offs_k[None, :], mask=mask_t[:, None], other=0.0)
            dct = tl.load(dCs_ptr + (state_base + offs_k[:, None]) * DV + offs_v[None, :])
            dv_inter += tl.dot(kk, dct, input_precision=DOT_PREC)
        dv = tl.dot(tl.trans(ws), dht, input_precision=DOT_PREC) + beta[:, None] * dv_inter
        tl.store(dv_ptr + row_v + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mask_t[:, None])


# Whether the backward's gate gradients run as one Triton kernel (`gate_grads_fused`: `gate_grads` and
# the sigmoid for d f, some 48 small PyTorch launches on (B * NH, S) tensors) instead of the PyTorch
# forms below. On an H100 at 7B heads, B 8, S 8192 the backward's PyTorch glue took 0.20 ms in 61
# launches; `_gate_grads_kernel` 0.05 ms. (A kernel for `output_grad_terms` too, with Triton's
# approximate exp and division, was dropped: with it one float32 GPU test at S = 1 gave d i 3.8e-5
# from float64, bound 1e-5; bench/results/kernels.md.) Read at call time.
FUSED_GLUE = True
# Whether, on CUDA, the normaliser's terms (`output_grad_terms`) run on a side stream beside the
# backward's state recompute (function.py); without a recompute (keep_states) they run in line.
OVERLAP_GRAD_TERMS = True


@triton.jit
def _linear_combine(a1, x1, a2, x2):
    """Compose y -> x1 + a1 y (earlier in scan order) with y -> x2 + a2 y (later)."""
    return a1 * a2, x2 + a2 * x1


@triton.jit
def _gate_grads_kernel(
    f_ptr, ig_ptr, mpos_ptr, kdk_ptr, cross_ptr, qa_ptr, ke_ptr, dmpos_ptr, share_ptr, dmf_ptr, fshare_ptr,
    df_ptr, di_ptr, dm0_ptr,
    S, NC, NB,
    L: tl.constexpr, R: tl.constexpr, HAS_DMF: tl.constexpr, HAS_FSHARE: tl.constexpr,
):  # fmt: skip
    """`gate_grads` and d f = d logf sigmoid(-f) for one row (b, h): blocks of R chunks from the last,
    each block's tokens in reversed order (scan position p <-> token blk BT + BT - 1 - p), so suffix
    sums are forward scans. The stabilizer path acc_t = dm_t + [m_{t+1} > i_{t+1}] acc_{t+1} is a
    linear scan carried across blocks: summed term by term, not as a difference of suffix sums."""
    BT: tl.constexpr = R * L
    bh = tl.program_id(0).to(tl.int64)
    row = bh * S
    pos = tl.arange(0, BT)
    carry = tl.full((), 0.0, tl.float32)
    for bb in range(NB):
        blk = NB - 1 - bb
        t = blk * BT + BT - 1 - pos
        mask = t < S
        kdk = tl.load(kdk_ptr + row + t, mask=mask, other=0.0)
        cross = tl.load(cross_ptr + row + t, mask=mask, other=0.0)
        qa = tl.reshape(tl.load(qa_ptr + row + t, mask=mask, other=0.0), (R, L))
        ke = tl.reshape(tl.load(ke_ptr + row + t, mask=mask, other=0.0), (R, L))
        share = tl.load(share_ptr + bh * NC + t // L, mask=mask, other=0.0)
        # rows of the (R, L) view are chunks, each reversed: the sum over t' >= t in t's chunk is the
        # inclusive scan along the row; the sum over j < t in the chunk, the reversed scan less itself
        qa_after = tl.reshape(tl.cumsum(qa, axis=1), (BT,))
        ke_before = tl.reshape(tl.cumsum(ke, axis=1, reverse=True) - ke, (BT,))
        within = cross + qa_after + ke_before + share
        dm = tl.load(dmpos_ptr + row + t, mask=mask, other=0.0)
        if HAS_DMF:
            dm = tl.where(t == S - 1, dm + tl.load(dmf_ptr + bh), dm)
        if HAS_FSHARE:
            dm = tl.where(t == S - 1, dm - tl.load(fshare_ptr + bh), dm)
        reset = tl.load(mpos_ptr + row + t, mask=mask, other=0.0) <= tl.load(ig_ptr + row + t, mask=mask, other=0.0)
        # token t + 1 (the previous scan position): its reset stops the flow into t
        nxt = mask & (t + 1 < S)
        reset_next = tl.load(mpos_ptr + row + t + 1, mask=nxt, other=0.0) <= tl.load(
            ig_ptr + row + t + 1, mask=nxt, other=0.0
        )
        gate = tl.where(reset_next, 0.0, 1.0)
        a_scan, x_scan = tl.associative_scan((gate, dm), 0, _linear_combine)
        acc = x_scan + a_scan * carry
        carry = tl.sum(tl.where(pos == BT - 1, acc, 0.0), axis=0)  # acc at the block's first token
        di = kdk + tl.where(reset, acc, 0.0)
        dlf = within + tl.where(reset, 0.0, acc)
        f = tl.load(f_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
        tl.store(df_ptr + row + t, dlf * tl.sigmoid(-f), mask=mask)
        tl.store(di_ptr + row + t, di, mask=mask)
    reset0 = tl.load(mpos_ptr + row) <= tl.load(ig_ptr + row)
    tl.store(dm0_ptr + bh, tl.where(reset0, 0.0, carry))


def gate_grads_fused(
    f: Tensor, ig: Tensor, m_pos: Tensor, kdk: Tensor, cross: Tensor, qa: Tensor, ke: Tensor, dm_pos: Tensor,
    chunk_shares: Tensor, chunk_size: int, final_share: Tensor | None, dm_final: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """`gate_grads` (the initial m's value is not needed) and the forget pre-activation's gradient in one
    kernel: f (BH, S) the forget pre-activations (any float dtype). Returns d f (BH,S) float32 (d logf
    times sigmoid(-f)), d i (BH,S), d m0 (BH,): the stabilizer-path share, as `gate_grads`."""
    BH, S = ig.shape
    NC = chunk_shares.shape[1]
    L = chunk_size
    R = max(1, min(8, triton.next_power_of_2(NC)))
    # autograd may hand over expanded (stride 0) gradients, e.g. of m.sum(): the kernel reads rows
    f, dm_final, final_share = (x if x is None else x.contiguous() for x in (f, dm_final, final_share))
    NB = triton.cdiv(S, R * L)
    df = torch.empty(BH, S, device=ig.device, dtype=torch.float32)
    di = torch.empty_like(df)
    dm0 = torch.empty(BH, device=ig.device, dtype=torch.float32)
    _gate_grads_kernel[(BH,)](
        f, ig, m_pos, kdk, cross, qa, ke, dm_pos, chunk_shares,
        dm_final if dm_final is not None else dm0, final_share if final_share is not None else dm0,
        df, di, dm0, S, NC, NB,
        L=L, R=R, HAS_DMF=dm_final is not None, HAS_FSHARE=final_share is not None, num_warps=4,
    )  # fmt: skip
    return df, di, dm0


def output_grad_terms(h: Tensor, dh: Tensor, m_pos: Tensor, den: Tensor, eps: float):
    """Per-position pieces of dh's effect through the normaliser.

    h, dh (BH, S, DV); m_pos, den (BH, S) float32. With norm = max(|den|, e^-m) + eps and
    s = (dh . h) / norm: d den = -sign(den) s where |den| > e^-m (else 0), and the stabilizer's own
    gradient (through eps) d m = -eps s. Returns norm, dden, dm (BH, S) float32.
    """
    BH, S, DV = h.shape
    delta = torch.empty(BH, S, device=h.device, dtype=torch.float32)
    _bwd_delta_kernel[(triton.cdiv(S, 64), BH)](h, dh, delta, S, DV=DV, BT=64, BV=pick_block(DV))
    floor = torch.exp(-m_pos)
    norm = torch.maximum(den.abs(), floor) + eps
    s = delta / norm
    dden = torch.where(den.abs() > floor, -torch.sign(den) * s, torch.zeros_like(s))
    return norm, dden, -eps * s


def chunk_states_bwd(
    q: Tensor, dh: Tensor, lf: Tensor, ig: Tensor, m_pos: Tensor, norm: Tensor, dden: Tensor, ms: Tensor,
    dfinal: tuple[Tensor, Tensor] | None, chunk_size: int, config: ChunkwiseConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Level 1 backward. ms: the chunk-start stabilizers of the forward pass (BH, NC + 1).

    Returns dCs (BH,NC,DQK,DV) in q's dtype and dns (BH,NC,DQK): gradients of the state at the end of
    every chunk (the final state's gradient for the last chunk); dC0 (BH,DQK,DV), dn0 (BH,DQK) float32."""
    BH, S, DQK = q.shape
    DV = dh.shape[-1]
    NC = ms.shape[1] - 1
    launch = state_launch(BH, DQK, DV, config, q.device, chunk_size, q.element_size(), backward=True)
    BK, BV = launch.block_k, launch.block_v
    dev = q.device
    dCs = torch.empty(BH, NC, DQK, DV, device=dev, dtype=q.dtype)
    dns = torch.empty(BH, NC, DQK, device=dev, dtype=torch.float32)
    dC0 = torch.empty(BH, DQK, DV, device=dev, dtype=torch.float32)
    dn0 = torch.empty(BH, DQK, device=dev, dtype=torch.float32)
    dCf, dnf = dfinal if dfinal is not None else (dC0, dn0)  # unused pointers when HAS_DFINAL is off
    _bwd_states_kernel[(DQK // BK, DV // BV, BH)](
        q, dh, lf, ig, m_pos, norm, dden, ms, dCf, dnf, dCs, dns, dC0, dn0, S, NC, DQK**-0.5,
        L=chunk_size, DQK=DQK, DV=DV, BK=BK, BV=BV, HAS_DFINAL=dfinal is not None,
        DOT_PREC=dot_precision(q.dtype), **launch.kwargs(),
    )  # fmt: skip
    return dCs, dns, dC0, dn0


def chunk_inputs_bwd(
    q: Tensor, k: Tensor, v: Tensor, dh: Tensor, lf: Tensor, ig: Tensor, m_pos: Tensor, norm: Tensor,
    dden: Tensor, Cs: Tensor, ns: Tensor, ms: Tensor, dCs: Tensor, dns: Tensor,
    chunk_size: int, config: ChunkwiseConfig,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Level 2 backward. Returns dq, dk (BH,S,DQK), dv (BH,S,DV) in q's dtype, and (BH,S) float32: k.dk,
    cross (the chunk's own pairs (t, j) with j < l <= t, summed per l), qa_t (q_t . the chunk-start
    state's part of dq_t) and ke_j (k_j . the chunk-end state gradient's part of dk_j); and shares
    (BH,NC) float32: decay_c (<C_c, dC_c+1> + n_c.dn_c+1), the terms from the chunk-start state c that
    reach past chunk c's end (with the final state's gradient for the last chunk), a part of every
    forget-gate gradient in chunk c."""
    BH, S, DQK = q.shape
    DV = v.shape[-1]
    NC = Cs.shape[1]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kdk, cross, qa, ke = (torch.empty(BH, S, device=q.device, dtype=torch.float32) for _ in range(4))
    shares = torch.empty(BH, NC, device=q.device, dtype=torch.float32)
    launch = bwd_launch(DQK, DV, config, q.dtype)
    BK, BV = launch.block_k, launch.block_v
    _bwd_inputs_kernel[(NC, BH)](
        q, k, v, dh, lf, ig, m_pos, norm, dden, Cs, ns, ms, dCs, dns, dq, dk, dv, kdk, cross, qa, ke, shares,
        S, NC, DQK**-0.5, DQK // BK, DV // BV,
        L=chunk_size, DQK=DQK, DV=DV, BK=BK, BV=BV, DOT_PREC=dot_precision(q.dtype), **launch.kwargs(),
    )  # fmt: skip
    return dq, dk, dv, kdk, cross, qa, ke, shares


def gate_grads(
    lf: Tensor, ig: Tensor, m0: Tensor, m_pos: Tensor, kdk: Tensor, cross: Tensor, qa: Tensor, ke: Tensor,
    dm_pos: Tensor, chunk_shares: Tensor, chunk_size: int, final_share: Tensor | None, dm_final: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of the gate pre-activations from the kernels' sums and the stabilizer path.

    lf, ig, m_pos, kdk, cross, qa, ke, dm_pos: (BH, S) float32 (``chunk_inputs_bwd``'s sums); m0 (BH,)
    the initial stabilizer; chunk_shares (BH, NC) from ``chunk_inputs_bwd``; final_share (BH,) =
    <C_S, dC_S> + n_S.dn_S (None without final-state gradients); dm_final (BH,) the incoming gradient of
    the final m (or None). Returns d logf (BH,S), d i (BH,S), d m0 (BH,): the last one only the
    stabilizer-path share (the caller adds <C0, dC0> + n0.dn0).

    d logf_l, for l in chunk c, is the sum of the terms that cross l: cross_l (pairs inside the chunk),
    qa_t for t >= l in the chunk (the chunk-start state into outputs after l), ke_j for j < l in the
    chunk (tokens before l into the chunk-end state and everything after it), and chunk_shares[c] (the
    chunk-start state past the chunk's end). Every term enters once, as computed: the earlier form,
    sum over t >= l of (q_t.dq_t - k_t.dk_t) plus a share, was a difference of sums of all terms, and
    where the gradient is small (S below a chunk, S = 1: only eps keeps it from 0) its rounding errors
    were larger than the gradient itself.
    """
    BH, S = lf.shape
    NC = chunk_shares.shape[1]
    L = chunk_size

    def per_chunk(x: Tensor) -> Tensor:  # (BH, S) -> (BH, NC, L), zero-padded
        out = torch.zeros(BH, NC * L, device=x.device, dtype=torch.float32)
        out[:, :S] = x
        return out.view(BH, NC, L)

    # part 1, every m held fixed
    qa_after = per_chunk(qa).flip(-1).cumsum(-1).flip(-1)  # sum over t >= l in l's chunk
    ke_c = per_chunk(ke)
    ke_before = ke_c.cumsum(-1) - ke_c  # sum over j < l in l's chunk
    within = per_chunk(cross) + qa_after + ke_before + chunk_shares[:, :, None]
    dlf = within.view(BH, NC * L)[:, :S].contiguous()
    di = kdk.clone()
    # part 2: the running max m_t = max(lf_t + m_{t-1}, i_t), backwards
    dm = dm_pos.clone()
    if dm_final is not None:
        dm[:, -1] += dm_final
    if final_share is not None:
        dm[:, -1] -= final_share  # C_S = e^{-m_S} C~: holding C~, dL/dm_S loses <C_S, dC_S> + n_S.dn_S
    reset = m_pos <= ig  # m_t == i_t: the input gate won, nothing flows to m_{t-1}
    # acc_t = sum of dm over t' >= t up to (not including) the next reset after t
    tail = dm.flip(-1).cumsum(-1).flip(-1)
    tail = torch.cat([tail, torch.zeros_like(tail[:, :1])], 1)  # (BH, S + 1), tail[S] = 0
    idx = torch.arange(S, device=lf.device).expand_as(reset)
    cand = torch.where(reset, idx, torch.full_like(idx, S))
    next_incl = cand.flip(-1).cummin(-1).values.flip(-1)  # first reset at or after t
    next_after = torch.cat([next_incl[:, 1:], torch.full_like(next_incl[:, :1], S)], 1)
    acc = tail[:, :S] - tail.gather(1, next_after)
    di += torch.where(reset, acc, torch.zeros_like(acc))
    dlf += torch.where(reset, torch.zeros_like(acc), acc)
    dm0 = torch.where(reset[:, 0], torch.zeros_like(acc[:, 0]), acc[:, 0])
    return dlf, di, dm0
