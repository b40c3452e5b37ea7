"""Elementwise and reduction helpers written in the ops that XNNPACK takes (and ONNX Runtime runs).

ExecuTorch's XNNPACK delegate has no log1p, logsigmoid, silu, select, squeeze, expand, sum or
last-dim mean (mean only over the inner dims of 4-D tensors), no cumsum, where or gather; each
such op splits the graph into another delegate call, and every split costs lowering time and
run time. So the exported graphs spell them as matrix products with constant matrices, slices,
views and arithmetic. Every helper equals its torch counterpart to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def log1p(y: Tensor) -> Tensor:
    """log(1 + y) for y >= 0, accurate for tiny y: log(u) + (y - (u - 1)) / u with u = 1 + y
    (the rounding of u is corrected to first order, to within an ulp of log1p)."""
    u = y + 1.0
    return torch.log(u) + (y - (u - 1.0)) / u


def logsigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), as ``F.logsigmoid`` computes it."""
    return torch.clamp(x, max=0.0) - log1p(torch.exp(-torch.abs(x)))


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def blend(new: Tensor, old: Tensor, keep: Tensor, drop: Tensor) -> Tensor:
    """new where keep == 1 else old; keep/drop are exact 0/1 float masks with drop = 1 - keep.
    Exact for finite inputs (x * 1 + y * 0 == x)."""
    return new * keep + old * drop


class ReductionConstants(torch.nn.Module):
    """Constant matrices that turn reductions into matrix products (buffers, not parameters).

    ``mean_vec(n)`` (n, 1) filled with 1/n; ``ones_vec(n)`` (n, 1) ones; ``upper(L)`` (L, L) with
    U[j, t] = 1 for j <= t (so b @ U is an inclusive cumsum over the last dim); ``causal_bias(L)``
    (L, L) 0 on and below the diagonal, -inf above.
    """

    def __init__(self, mean_sizes: list[int], sum_sizes: list[int], chunk_sizes: list[int]):
        super().__init__()
        for n in sorted(set(mean_sizes)):
            self.register_buffer(f"mean_{n}", torch.full((n, 1), 1.0 / n), persistent=False)
        for n in sorted(set(sum_sizes)):
            self.register_buffer(f"ones_{n}", torch.ones(n, 1), persistent=False)
        for L in sorted(set(chunk_sizes)):
            self.register_buffer(f"upper_{L}", torch.ones(L, L).triu(), persistent=False)
            bias = torch.zeros(L, L).masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
            self.register_buffer(f"causal_{L}", bias, persistent=False)

    def mean_vec(self, n: int) -> Tensor:
        return getattr(self, f"mean_{n}")

    def ones_vec(self, n: int) -> Tensor:
        return getattr(self, f"ones_{n}")

    def upper(self, L: int) -> Tensor:
        return getattr(self, f"upper_{L}")

    def causal_bias(self, L: int) -> Tensor:
        return getattr(self, f"causal_{L}")

    # reductions over the last dim, keepdim: (..., n) -> (..., 1), as one 2-D mm (``@`` on an N-D
    # operand would expand the constant to the batch dims, an op XNNPACK does not take)
    def mean_last(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        if x.dim() == 2:  # already rows: no reshape ops
            return x @ self.mean_vec(n)
        return (x.reshape(-1, n) @ self.mean_vec(n)).reshape(*x.shape[:-1], 1)

    def sum_last(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        return (x.reshape(-1, n) @ self.ones_vec(n)).reshape(*x.shape[:-1], 1)

    def cumsum_last(self, x: Tensor) -> Tensor:
        """Inclusive cumulative sum over the last dim (size L, a chunk size given at init)."""
        L = x.shape[-1]
        return (x.reshape(-1, L) @ self.upper(L)).reshape(x.shape)


def max_last(x: Tensor) -> Tensor:
    """max over the last dim, keepdim, through a 4-D view (XNNPACK's max.dim wants rank 4).
    x (..., n) with at least 2 leading dims -> (..., 1)."""
    shape = x.shape
    x4 = x.reshape(shape[0], -1, shape[-2], shape[-1]) if x.dim() != 4 else x
    out = torch.max(x4, dim=3, keepdim=True).values  # dim 3, not -1: the XNNPACK lowering wants it positive
    return out.reshape(*shape[:-1], 1)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched a @ b for equal leading dims, as one 3-D ``torch.bmm`` (``@`` on 4-D/5-D operands
    adds expand ops that XNNPACK does not take). a (..., n, k), b (..., k, m) -> (..., n, m)."""
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, a.shape[-2], a.shape[-1]), b.reshape(-1, b.shape[-2], b.shape[-1]))
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def cat(tensors: list[Tensor], dim: int) -> Tensor:
    """``torch.cat``, but a single tensor passes as it is (XNNPACK takes cat of 2 or more only)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    """``x.narrow`` that returns x itself for the full range (a no-op slice becomes an alias op,
    which XNNPACK does not take)."""
    if start == 0 and length == x.shape[dim]:
        return x
    return x.narrow(dim, start, length)
