"""The sLSTM cell: scalar memory, exponential gating with a stabilizer, block-diagonal recurrence.

Shapes (B batch, S sequence, NH heads, DH head dim, D = NH * DH):
    gate pre-activations from the input, Wx + b: (B, S, 4, NH, DH) in order i, f, z, o
    recurrent matrices R: (NH, DH, 4 * DH), applied per head to y_{t-1}
    state y, c, n, m: each (B, NH, DH)
The recurrence is inherently sequential (y_{t-1} feeds the gates), so the chunkwise and parallel
forms of an sLSTM layer are this scan; only the input projections run as one matrix product.
Forget gate in log space: log f = logsigmoid(f~). Arithmetic in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SLSTMState = tuple[Tensor, Tensor, Tensor, Tensor]  # (y, c, n, m)


def zero_state(batch: int, num_heads: int, head_dim: int, device=None, dtype=torch.float32) -> SLSTMState:
    z = torch.zeros(batch, num_heads, head_dim, device=device, dtype=dtype)
    return (z, z.clone(), z.clone(), z.clone())


def slstm_step(wx: Tensor, R: Tensor, state: SLSTMState) -> tuple[Tensor, SLSTMState]:
    """One token. wx (B, 4, NH, DH) input pre-activations (bias included), R (NH, DH, 4*DH)."""
    y, c, n, m = state
    B, _, NH, DH = wx.shape
    ry = torch.einsum("bhd,hde->bhe", y, R.to(y.dtype)).view(B, NH, 4, DH).transpose(1, 2)
    raw = wx.to(y.dtype) + ry  # (B, 4, NH, DH)
    i_raw, f_raw, z_raw, o_raw = raw.unbind(1)
    log_f = F.logsigmoid(f_raw)
    m_new = torch.maximum(log_f + m, i_raw)
    i_act = torch.exp(i_raw - m_new)
    f_act = torch.exp(log_f + m - m_new)
    c_new = f_act * c + i_act * torch.tanh(z_raw)
    n_new = f_act * n + i_act
    y_new = torch.sigmoid(o_raw) * c_new / n_new
    return y_new, (y_new, c_new, n_new, m_new)


def slstm_scan(wx: Tensor, R: Tensor, state: SLSTMState | None = None) -> tuple[Tensor, SLSTMState]:
    """All tokens: wx (B, S, 4, NH, DH) -> y (B, S, NH, DH), final state."""
    B, S, _, NH, DH = wx.shape
    if state is None:
        sd = torch.float64 if wx.dtype == torch.float64 else torch.float32
        state = zero_state(B, NH, DH, wx.device, sd)
    ys = []
    for t in range(S):
        y, state = slstm_step(wx[:, t], R, state)
        ys.append(y)
    return torch.stack(ys, 1), state
