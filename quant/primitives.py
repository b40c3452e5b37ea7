"""The int8 arithmetic every scheme is built from: one weight primitive, one activation primitive.

Weights: per-channel symmetric int8 (gpt-fast's ``dynamically_quant_int8``)::

    scale[c] = max(amax(|w[c, :]|) / 127, SCALE_EPS)        w (C, K) -> q (C, K) int8 in [-127, 127]
    q[c, k]  = clamp(round(w[c, k] / scale[c]), -127, 127)   w ~= q * scale[:, None]

Activations (``int8-dynamic``): per-token asymmetric 8-bit, chosen at run time from each row's own
range, zero always representable (ONNX ``DynamicQuantizeLinear``'s formula, per row; unsigned form)::

    lo = min(min_k x, 0), hi = max(max_k x, 0)               x (M, K), one scale per row
    scale = max((hi - lo) / 255, SCALE_EPS)
    zp    = clamp(-round(lo / scale), 0, 255)                 uint8 zero point
    q     = clamp(round(x / scale) + zp, 0, 255)              x ~= (q - zp) * scale[:, None]

Rounding is half-to-even everywhere (``torch.round``, ONNX ``Round`` / ``QuantizeLinear``), so the
ONNX graph reproduces these integers exactly. The signed form used by torchao / XNNPACK is the
same grid shifted by 128.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_EPS = torch.finfo(torch.float32).eps  # smallest scale: an all-zero row quantizes to zeros
WEIGHT_QMAX = 127  # symmetric: [-127, 127], so -q is always representable
ACT_LEVELS = 255  # uint8 [0, 255]


def quantize_per_channel_symmetric(w: Tensor, axis: int = 0) -> tuple[Tensor, Tensor]:
    """w (C, K) float -> (q (C, K) int8, scale (C,) float32), one scale per index of ``axis``.

    ``axis=0`` is a Linear's output channel (``weight`` is (out, in)) and an embedding's row.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"expected a floating-point weight, got {w.dtype}")
    wf = w.detach().float()
    if axis == 1:
        wf = wf.t()
    elif axis != 0:
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    amax = wf.abs().amax(dim=1)  # (C,)
    scale = torch.clamp(amax / WEIGHT_QMAX, min=SCALE_EPS)
    q = torch.clamp(torch.round(wf / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8)
    if axis == 1:
        q = q.t().contiguous()
    return q, scale


def dequantize_per_channel(q: Tensor, scale: Tensor, axis: int = 0) -> Tensor:
    """q (C, K) int8, scale (C,) (axis 0) or (K,) (axis 1) -> float32 (C, K)."""
    s = scale.float()
    return q.float() * (s[:, None] if axis == 0 else s[None, :])


def choose_qparams_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K) float32 -> (scale (M,) float32, zero_point (M,) float32 holding integers in [0, 255])."""
    lo = torch.clamp(x.amin(dim=-1), max=0.0)
    hi = torch.clamp(x.amax(dim=-1), min=0.0)
    scale = torch.clamp((hi - lo) / ACT_LEVELS, min=SCALE_EPS)
    zero_point = torch.clamp(-torch.round(lo / scale), 0, ACT_LEVELS)
    return scale, zero_point


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, K) float32 -> (q (M, K), scale (M,), zero_point (M,)); q and zero_point are float32
    tensors holding integers in [0, 255] (exact), so the caller can form ``q - zero_point`` in float."""
    if x.dim() != 2:
        raise ValueError(f"expected (tokens, features), got shape {tuple(x.shape)}")
    scale, zero_point = choose_qparams_per_token(x)
    q = torch.clamp(torch.round(x / scale[:, None]) + zero_point[:, None], 0, ACT_LEVELS)
    return q, scale, zero_point


def fake_quantize_per_token(x: Tensor) -> Tensor:
    """x (..., K) -> the values ``quantize_per_token`` represents, same shape and dtype."""
    shape = x.shape
    q, scale, zp = quantize_per_token(x.reshape(-1, shape[-1]).float())
    return ((q - zp[:, None]) * scale[:, None]).reshape(shape).to(x.dtype)
