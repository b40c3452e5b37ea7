"""The two quantized matrix products as PyTorch custom ops: the eager reference of each scheme.

``xlstm_quant::linear_w8(x, weight, scales, bias)``      int8-weight: y = x @ (weight * scales)^T + bias
``xlstm_quant::linear_a8w8(x, weight, scales, bias)``    int8-dynamic: x quantized per token (see
    ``primitives.quantize_per_token``), integer product, then y = acc * x_scale * scales + bias

Shapes: x (..., K) float32, weight (N, K) int8, scales (N,) float32, bias (N,) or None -> y (..., N).
Being custom ops, they reach ``torch.export`` / ``torch.onnx.export`` as single nodes that the ONNX
backend translates into ONNX Runtime's integer kernels (``onnx_backend``), so the graph computes the
same integers as this reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import quantize_per_token


def _check(x: Tensor, weight: Tensor, scales: Tensor) -> None:
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise TypeError(f"weight must be a 2-D int8 tensor, got {weight.dtype} {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features, the weight expects {weight.shape[1]}")
    if scales.shape != (weight.shape[0],):
        raise ValueError(f"scales must be ({weight.shape[0]},), got {tuple(scales.shape)}")


@torch.library.custom_op("xlstm_quant::linear_w8", mutates_args=())
def linear_w8(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    """Weight-only int8: the weight dequantized to float32, then a float32 product."""
    _check(x, weight, scales)
    w = weight.to(torch.float32) * scales[:, None]  # (N, K)
    y = x.to(torch.float32) @ w.t()
    return y + bias if bias is not None else y


@linear_w8.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("xlstm_quant::linear_a8w8", mutates_args=())
def linear_a8w8(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    """Dynamic int8: per-token activation quantization, an exact integer product, then the scales.

    acc = (q - zp) @ weight^T is exact (float64 holds every partial sum), rounded once to float32 as an
    int32 -> float cast would; then y = (acc * x_scale[:, None]) * scales[None, :] (+ bias).
    """
    _check(x, weight, scales)
    lead = x.shape[:-1]
    q, x_scale, zp = quantize_per_token(x.reshape(-1, x.shape[-1]).to(torch.float32))  # (M, K), (M,), (M,)
    acc = ((q - zp[:, None]).double() @ weight.double().t()).to(torch.float32)  # (M, N)
    y = (acc * x_scale[:, None]) * scales[None, :]
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


@linear_a8w8.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
