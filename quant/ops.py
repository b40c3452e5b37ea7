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
(``primitives.pack_int4``): it is unpacked one chunk of rows at a time, never whole
(``block_products``, which every op's exact integer products come from).
Being custom ops, they reach ``torch.export`` / ``torch.onnx.export`` as single nodes that the ONNX
backend translates into ONNX Runtime's integer kernels (``onnx_backend``), so the graph computes the
same integers as this reference.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .primitives import (
    ACT_LEVELS,
    BLOCK_ACT_QMAX,
    INT4_ZERO,
    quantize_per_block_symmetric,
    quantize_per_token,
)


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

    acc = (q - zp) @ weight^T is exact (float32 blocks of ``EXACT_SUM_BLOCK``, summed in float64), rounded
    once to float32 as an int32 -> float cast would; then y = (acc * x_scale[:, None]) * scales[None, :] (+ bias).
    """
    _check(x, weight, scales)
    lead = x.shape[:-1]
    q, x_scale, zp = quantize_per_token(x.reshape(-1, x.shape[-1]).to(torch.float32))  # (M, K), (M,), (M,)
    acc = torch.empty(q.shape[0], weight.shape[0], dtype=torch.float32)  # (M, N)
    for n0, n1, part in block_products(q - zp[:, None], weight, EXACT_SUM_BLOCK, ACT_LEVELS):
        acc[:, n0:n1] = part.sum(0, dtype=torch.float64).float()  # exact sums of exact parts, rounded once
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


FLOAT32_EXACT = 2**24  # every integer of smaller magnitude is a float32, so are all partial sums below it
PRODUCT_ELEMENTS = 1 << 22  # elements of one row chunk's (blocks, M, rows) product: 16 MiB float32
WEIGHT_MAX = 128  # |int8| (4-bit values are smaller)
EXACT_SUM_BLOCK = 256  # 256 * 255 * 128 < 2^24: per-token int8 products exact in float32 blocks this wide


def _fill_rows(out: Tensor, weight: Tensor, n0: int, n1: int) -> None:
    """out (n1 - n0, K) float <- rows n0:n1 of an int8 (N, K) or packed 4-bit (N, K / 2) weight,
    unpacked straight into ``out`` (the even index is the low nibble: ``primitives.pack_int4``)."""
    if weight.dtype == torch.uint8:
        rows = weight[n0:n1]
        out[:, 0::2].copy_(rows & 15)
        out[:, 1::2].copy_(rows >> 4)
        out.sub_(INT4_ZERO)
    else:
        out.copy_(weight[n0:n1])


def block_products(q: Tensor, weight: Tensor, block: int, q_max: float) -> Iterator[tuple[int, int, Tensor]]:
    """The exact integer product of each block of K, one chunk of output rows at a time.

    q (M, K) float32 holding integers of magnitude <= ``q_max``; ``weight`` int8 (N, K) or packed
    4-bit uint8 (N, K / 2). Yields (n0, n1, acc) with acc (nb, M, n1 - n0), nb = ceil(K / block):
    acc[b] = q[:, block b] @ weight[n0:n1, block b]^T, exact. It is float32 when every partial sum of
    a block is below 2^24 (int8 blocks up to 1024 wide; int4 wider), else float64 (|sums| < 2^53).
    ``acc`` is overwritten by the next chunk: use it before advancing.

    Speed at D 4096 (one token, 2 cores): rows are converted a contiguous chunk at a time into one
    reused buffer, so the weight is read once, in its own (N, K) order, and never held in float
    (a strided per-block slice of K converted into fresh memory made each call 3-5x slower).
    """
    M, K = q.shape
    N = weight.shape[0]
    nb = -(-K // block)
    pad = nb * block - K
    dtype = torch.float32 if block * q_max * WEIGHT_MAX < FLOAT32_EXACT else torch.float64
    qb = torch.nn.functional.pad(q, (0, pad)).to(dtype).reshape(M, nb, block).transpose(0, 1).contiguous()
    rows = max(1, min(N, PRODUCT_ELEMENTS // (nb * max(M, block))))
    wbuf = torch.empty(rows, nb * block, dtype=dtype)  # reused: fresh memory per chunk costs page faults
    wbuf[:, K:] = 0
    abuf = torch.empty(nb, M, rows, dtype=dtype)
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        w = wbuf[: n1 - n0]
        _fill_rows(w[:, :K], weight, n0, n1)
        wt = w.reshape(n1 - n0, nb, block).permute(1, 2, 0)  # (nb, block, R)
        if n1 - n0 == rows:
            yield n0, n1, torch.bmm(qb, wt, out=abuf)
        else:
            yield n0, n1, torch.bmm(qb, wt)


def _combine(acc: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """sum_b acc[b] * x_scale[b] * w_scale[b] in float64: acc (nb, M, R), x_scale (nb or 1, M, 1),
    w_scale (nb or 1, 1, R) float64 (a leading 1: the same for every block) -> (M, R) float32, one
    block at a time (no (nb, M, R) float64 temporary)."""
    y = torch.zeros(acc.shape[1:], dtype=torch.float64)
    for b in range(acc.shape[0]):
        y.addcmul_(acc[b], x_scale[min(b, x_scale.shape[0] - 1)] * w_scale[min(b, w_scale.shape[0] - 1)])
    return y.float()


def _block_scales(scales: Tensor, n0: int, n1: int) -> Tensor:
    """Weight scales of rows n0:n1 as float64 (nb or 1, 1, R), to broadcast against (nb, M, R)."""
    ws = scales[n0:n1].double()
    return ws[None, None, :] if ws.dim() == 1 else ws.t()[:, None, :]


@torch.library.custom_op("xlstm_quant::linear_a8w8_token_group", mutates_args=())
def linear_a8w8_token_group(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None,
                            group_size: int) -> Tensor:
    """Per-token asymmetric 8-bit activations, weights with one scale per (channel, group of K)."""
    _check_group(x, weight, scales, group_size)
    lead = x.shape[:-1]
    q, x_scale, zp = quantize_per_token(x.reshape(-1, x.shape[-1]).to(torch.float32))
    y = torch.empty(q.shape[0], weight.shape[0], dtype=torch.float32)
    for n0, n1, acc in block_products(q - zp[:, None], weight, group_size, ACT_LEVELS):
        y[:, n0:n1] = _combine(acc, x_scale.double()[None, :, None], _block_scales(scales, n0, n1))
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
    y = torch.empty(q.shape[0], weight.shape[0], dtype=torch.float32)
    xs = x_scale.double().t()[:, :, None]  # (nb, M, 1)
    for n0, n1, acc in block_products(q, weight, block_size, BLOCK_ACT_QMAX):
        y[:, n0:n1] = _combine(acc, xs, _block_scales(scales, n0, n1))
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


@linear_block.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, block_size: int, bits: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
