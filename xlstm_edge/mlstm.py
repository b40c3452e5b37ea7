"""The mLSTM cell in three forms that agree: one step, chunkwise, and parallel.

Shapes (B batch, NH heads, S sequence, DQK / DV head dims):
    q, k  (B, NH, S, DQK)      v  (B, NH, S, DV)      i, f  (B, NH, S) gate pre-activations
    state C (B, NH, DQK, DV)   n (B, NH, DQK)         m (B, NH)
Convention: q is scaled by 1/sqrt(DQK) inside the cell; C and n hold unscaled k (as xLSTM 7B and
Hugging Face do). Gate and state arithmetic runs in float32 (float64 if the inputs are float64).
Equations: ../shared/XLSTM_MATH.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MLSTMState = tuple[Tensor, Tensor, Tensor]  # (C, n, m)


def _state_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def zero_state(batch: int, num_heads: int, dqk: int, dv: int, device=None, dtype=torch.float32) -> MLSTMState:
    """The initial state: C = 0, n = 0, m = 0."""
    return (
        torch.zeros(batch, num_heads, dqk, dv, device=device, dtype=dtype),
        torch.zeros(batch, num_heads, dqk, device=device, dtype=dtype),
        torch.zeros(batch, num_heads, device=device, dtype=dtype),
    )


def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, eps: float = 1e-6
) -> tuple[Tensor, MLSTMState]:
    """One token. q, k (B, NH, DQK), v (B, NH, DV), i, f (B, NH) -> h (B, NH, DV), new state."""
    C, n, m = state
    sd = C.dtype
    out_dtype = q.dtype
    q, k, v, i, f = (t.to(sd) for t in (q, k, v, i, f))
    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    f_act = torch.exp(log_f + m - m_new)
    i_act = torch.exp(i - m_new)
    C_new = f_act[..., None, None] * C + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = f_act[..., None] * n + i_act[..., None] * k
    q_scaled = q * (q.shape[-1] ** -0.5)
    num = (q_scaled[..., None, :] @ C_new).squeeze(-2)  # (B, NH, DV)
    den = (q_scaled * n_new).sum(-1)  # (B, NH)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_new)) + eps)[..., None]
    return h.to(out_dtype), (C_new, n_new, m_new)


def mlstm_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    state: MLSTMState | None = None,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[Tensor, MLSTMState]:
    """Chunkwise form: inter-chunk state recurrence, then a parallel pass inside every chunk.

    Any S >= 1: the last chunk is padded with gates that leave the state untouched (i = -inf,
    log f = 0), and its padded outputs are dropped. Returns h (B, NH, S, DV) in q's dtype and the
    final state, equal to stepping token by token.
    """
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    if S == 0:
        raise ValueError("mlstm_chunkwise needs at least one token")
    sd = _state_dtype(q)
    out_dtype = q.dtype
    if state is None:
        state = zero_state(B, NH, DQK, DV, q.device, sd)
    C0, n0, m0 = (s.to(sd) for s in state)
    L = min(chunk_size, S)
    NC = math.ceil(S / L)
    pad = NC * L - S
    q, k, v = (t.to(sd) for t in (q, k, v))
    log_f = F.logsigmoid(f.to(sd))
    i = i.to(sd)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_f = F.pad(log_f, (0, pad), value=0.0)
        i = F.pad(i, (0, pad), value=-math.inf)
    q = q * DQK**-0.5
    qc = q.view(B, NH, NC, L, DQK)
    kc = k.view(B, NH, NC, L, DQK)
    vc = v.view(B, NH, NC, L, DV)
    b = log_f.view(B, NH, NC, L).cumsum(-1)  # inclusive cumulative log forget gate
    ic = i.view(B, NH, NC, L)
    g = b[..., -1]  # (B, NH, NC): total log decay of each chunk

    # ---- inter-chunk: state at the start of every chunk, sequential over NC ----
    a = g[..., None] - b + ic  # (B, NH, NC, L): log weight of token j in the chunk's end state
    a_max = a.max(-1).values  # (B, NH, NC)
    k_weighted = kc * torch.exp(a - a_max[..., None])[..., None]
    C_chunk = k_weighted.transpose(-2, -1) @ vc  # (B, NH, NC, DQK, DV), scaled by exp(-a_max)
    n_chunk = k_weighted.sum(-2)  # (B, NH, NC, DQK)
    C_starts, n_starts, m_starts = [], [], []
    C_k, n_k, m_k = C0, n0, m0
    for c in range(NC):
        C_starts.append(C_k)
        n_starts.append(n_k)
        m_starts.append(m_k)
        m_next = torch.maximum(g[..., c] + m_k, a_max[..., c])
        decay = torch.exp(g[..., c] + m_k - m_next)
        inject = torch.exp(a_max[..., c] - m_next)
        C_k = decay[..., None, None] * C_k + inject[..., None, None] * C_chunk[:, :, c]
        n_k = decay[..., None] * n_k + inject[..., None] * n_chunk[:, :, c]
        m_k = m_next
    Cs = torch.stack(C_starts, 2)  # (B, NH, NC, DQK, DV)
    ns = torch.stack(n_starts, 2)  # (B, NH, NC, DQK)
    ms = torch.stack(m_starts, 2)  # (B, NH, NC)

    # ---- intra-chunk: causal, quadratic in L, all chunks at once ----
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_D = (b[..., :, None] - b[..., None, :] + ic[..., None, :]).masked_fill(~causal, -math.inf)
    m_inter = b + ms[..., None]  # (B, NH, NC, L)
    m_comb = torch.maximum(m_inter, log_D.max(-1).values)
    D = torch.exp(log_D - m_comb[..., None])
    scores = (qc @ kc.transpose(-2, -1)) * D  # (B, NH, NC, L, L)
    q_inter = qc * torch.exp(m_inter - m_comb)[..., None]
    num = q_inter @ Cs + scores @ vc  # (B, NH, NC, L, DV)
    den = (q_inter * ns[..., None, :]).sum(-1) + scores.sum(-1)  # (B, NH, NC, L)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_comb)) + eps)[..., None]
    h = h.reshape(B, NH, NC * L, DV)[:, :, :S].to(out_dtype)
    return h, (C_k, n_k, m_k)


def mlstm_parallel(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None = None, eps: float = 1e-6
) -> tuple[Tensor, MLSTMState]:
    """Parallel (quadratic) form: the chunkwise form with one chunk spanning the whole sequence."""
    return mlstm_chunkwise(q, k, v, i, f, state, chunk_size=q.shape[2], eps=eps)


def mlstm_recurrent(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None = None, eps: float = 1e-6
) -> tuple[Tensor, MLSTMState]:
    """Token-by-token loop over ``mlstm_step`` (the reference for the other forms)."""
    B, NH, S, DQK = q.shape
    if state is None:
        state = zero_state(B, NH, DQK, v.shape[-1], q.device, _state_dtype(q))
    hs = []
    for t in range(S):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state, eps)
        hs.append(h)
    return torch.stack(hs, 2), state
