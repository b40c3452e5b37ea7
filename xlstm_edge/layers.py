"""Small building blocks shared by the mLSTM and sLSTM blocks. Shapes: x (..., D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cap(x: Tensor, cap: float) -> Tensor:
    """cap * tanh(x / cap); cap <= 0 leaves x as it is."""
    return cap * torch.tanh(x / cap) if cap and cap > 0 else x


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the reduction in float32."""

    def __init__(self, dim: int, eps: float = 1e-6, use_bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias else None

    def forward(self, x: Tensor) -> Tensor:
        in_dtype = x.dtype
        xf = x.float() if x.dtype != torch.float64 else x
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(in_dtype) * self.weight
        return y + self.bias if self.bias is not None else y


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm over each head's features: x (B, S, NH, DH) -> (B, S, NH * DH), then * weight."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6, use_bias: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads * head_dim)) if use_bias else None

    def forward(self, x: Tensor) -> Tensor:
        in_dtype = x.dtype
        xf = x.float() if x.dtype != torch.float64 else x
        var, mean = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)
        y = ((xf - mean) * torch.rsqrt(var + self.eps)).to(in_dtype).flatten(-2) * self.weight
        return y + self.bias if self.bias is not None else y


class GatedFFN(nn.Module):
    """down(act(up_gate(x)) * up(x)): SwiGLU in mLSTM blocks, GELU-gated after sLSTM layers."""

    def __init__(self, dim: int, hidden: int, activation: str = "silu", use_bias: bool = False):
        super().__init__()
        if activation not in ("silu", "gelu"):
            raise ValueError(f"unknown FFN activation {activation!r}")
        self.activation = activation
        self.proj_up_gate = nn.Linear(dim, hidden, bias=use_bias)
        self.proj_up = nn.Linear(dim, hidden, bias=use_bias)
        self.proj_down = nn.Linear(hidden, dim, bias=use_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.proj_up_gate(x)
        gate = F.silu(gate) if self.activation == "silu" else F.gelu(gate)
        return self.proj_down(gate * self.proj_up(x))
