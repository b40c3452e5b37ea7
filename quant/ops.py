"""The quantized matrix products as PyTorch custom ops: the eager reference of each scheme and backend.

``xlstm_quant::linear_w8(x, weight, scales, bias)``      int8-weight: y = x @ (weight * scales)^T + bias
``xlstm_quant::linear_a8w8(x, weight, scales, bias)``    int8-dynamic on ExecuTorch (XNNPACK qd8-qc8w):
    x quantized per token (see ``primitives.quantize_per_token``), integer product, then
    y = acc * x_scale * scales + bias
``xlstm_quant::linear_a8w8_token_group(x, weight, scales, bias, group_size)``   int4-dynamic on
    ExecuTorch (XNNPACK qd8-qb4w): x per token as above, weight scales per group of ``group_size``
    inputs: y = x_scale * sum_g scales[:, g] * acc_g + bias
``xlstm_quant::linear_block(x, weight, scales, bias, block_size, bits)``   int8-dynamic and
    int4-dynamic on ONNX Runtime (``MatMulNBits``, accuracy level 4): x quantized per block of
    ``block_size`` inputs, symmetric (``primitives.quantize_per_block_symmetric``); weight scales
    per channel (N,) or per block (N, nb): y = sum_b x_scale[:, b] * scales[:, b] * acc_b + bias

Shapes: x (..., K) float32, weight (N, K) int8, scales (N,) float32, bias (N,) or None -> y (..., N).
The two grouped ops also take a 4-bit weight packed two values a byte, (N, K / 2) uint8
(``primitives.pack_int4``): it is unpacked one block of K at a time, never whole.
Being custom ops, they reach ``torch.export`` / ``torch.onnx.export`` as single nodes that the ONNX
backend translates into ONNX Runtime's integer kernels (``onnx_backend``), so the graph computes the
same integers as this reference.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .primitives import quantize_per_block_symmetric, quantize_per_token, unpack_int4


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


def _check_group(x: Tensor, weight: Tensor, scales: Tensor, group: int) -> int:
    """Shape checks for grouped scales (``weight`` int8 (N, K) or packed 4-bit uint8 (N, K / 2), whose
    groups must then be even); returns the number of groups along K."""
    if weight.dtype not in (torch.int8, torch.uint8) or weight.dim() != 2:
        raise TypeError(f"weight must be a 2-D int8 (or packed 4-bit uint8) tensor, got {weight.dtype} "
                        f"{tuple(weight.shape)}")
    packed = weight.dtype == torch.uint8
    N, K = weight.shape[0], weight.shape[1] * (2 if packed else 1)
    if x.shape[-1] != K:
        raise ValueError(f"input has {x.shape[-1]} features, the weight expects {K}")
    if group < 1 or (packed and group % 2):
        raise ValueError(f"group / block size must be positive{' and even' if packed else ''}, got {group}")
    nb = -(-K // group)
    if scales.shape not in ((N,), (N, nb)):
        raise ValueError(f"scales must be ({N},) or ({N}, {nb}), got {tuple(scales.shape)}")
    return nb


def _blockwise(q: Tensor, weight: Tensor, scales: Tensor, block: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Per block b of K: (exact integer product (M, N) float64, weight scales (N,) float64), one block
    at a time (a list of them held 24 products of (256, 50304) float64, 2.5 GB, for an int4 LM head).
    A packed 4-bit ``weight`` (uint8) is unpacked block by block (``block`` even)."""
    packed = weight.dtype == torch.uint8
    K = q.shape[1]
    for b, k0 in enumerate(range(0, K, block)):
        k1 = min(k0 + block, K)
        w = unpack_int4(weight[:, k0 // 2:k1 // 2]) if packed else weight[:, k0:k1]
        acc = q[:, k0:k1].double() @ w.double().t()  # exact: |partial sums| < 2^53
        ws = scales.double() if scales.dim() == 1 else scales[:, b].double()
        yield acc, ws


@torch.library.custom_op("xlstm_quant::linear_a8w8_token_group", mutates_args=())
def linear_a8w8_token_group(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None,
                            group_size: int) -> Tensor:
    """Per-token asymmetric 8-bit activations, weights with one scale per (channel, group of K)."""
    _check_group(x, weight, scales, group_size)
    lead = x.shape[:-1]
    q, x_scale, zp = quantize_per_token(x.reshape(-1, x.shape[-1]).to(torch.float32))
    y = torch.zeros(q.shape[0], weight.shape[0], dtype=torch.float64)
    for acc, ws in _blockwise(q - zp[:, None], weight, scales, group_size):
        y += acc * ws[None, :]
    y = (y * x_scale.double()[:, None]).to(torch.float32)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


@linear_a8w8_token_group.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, group_size: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("xlstm_quant::linear_block", mutates_args=())
def linear_block(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, block_size: int,
                 bits: int) -> Tensor:
    """Per-block symmetric 8-bit activations times ``bits``-bit weights (ONNX Runtime's MatMulNBits).

    ``bits`` (8 or 4) only names the weight format of the graph; the integers are ``weight``'s.
    """
    _check_group(x, weight, scales, block_size)
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if weight.dtype == torch.uint8 and bits != 4:
        raise ValueError("a packed (uint8) weight holds 4-bit values: bits must be 4")
    lead = x.shape[:-1]
    q, x_scale = quantize_per_block_symmetric(x.reshape(-1, x.shape[-1]).to(torch.float32), block_size)
    y = torch.zeros(q.shape[0], weight.shape[0], dtype=torch.float64)
    for b, (acc, ws) in enumerate(_blockwise(q, weight, scales, block_size)):
        y += acc * (x_scale[:, b].double()[:, None] * ws[None, :])
    y = y.to(torch.float32)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


@linear_block.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, block_size: int, bits: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
