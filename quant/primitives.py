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

Activations (ONNX Runtime's ``int8-dynamic`` / ``int4-dynamic``): per block of ``block`` features along K,
symmetric int8, chosen at run time (``MatMulNBits`` at accuracy level 4 quantizes its input this way)::

    scale[m, b] = amax_{k in block b} |x[m, k]| / 127        x (M, K) -> q (M, K) in [-127, 127]
    q[m, k]     = round(x[m, k] * (127 / amax))                (0 where the block is all zero)

in float32 operation for operation as MLAS computes it (``127 / amax`` first, then one product):
``x / scale`` is the same number in exact arithmetic but not always in float32, and inputs on a
grid (an int8 embedding row after a norm) land on exact .5 ties often enough to matter. So is
``127.0 / amax`` written with a Python number: torch computes ``scalar / tensor`` as ``reciprocal(tensor)
* scalar``, one more rounding (1 ulp off for amax = 3.8291748: 63.5 became 63.499996 and rounded to 63
where MLAS gets 64), so the quotient is taken tensor by tensor.

Grouped weights (``int4-dynamic``): per output channel and group of ``group`` inputs, symmetric::

    scale[c, g] = up_bf16(max(amax_{k in group g} |w[c, k]| / qmax, SCALE_EPS))   qmax = 7 for 4 bits
    q[c, k]     = clamp(round(w[c, k] / scale[c, g]), -qmax, qmax)

``up_bf16`` rounds up to the next bfloat16 value (float32 with the low 16 bits zero): XNNPACK stores
4-bit weight scales as bfloat16, so a scale it can hold exactly keeps the graph on the same arithmetic
(measured: float32 scales gave a 1.3e-3 relative difference on one Linear, bfloat16-exact ones 5e-8).
Rounding up (by at most 2^-7 relative) keeps every |w / scale| within qmax.

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


INT4_QMAX = 7  # symmetric 4-bit: [-7, 7]
BLOCK_ACT_QMAX = 127


def quantize_per_block_symmetric(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """x (M, K) float32 -> (q (M, K) float32 holding integers in [-127, 127], scale (M, ceil(K / block))).

    The last block may be short (K not a multiple of ``block``). An all-zero block has scale 0 and q 0.
    """
    if x.dim() != 2:
        raise ValueError(f"expected (tokens, features), got shape {tuple(x.shape)}")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    M, K = x.shape
    nb = -(-K // block)
    xp = torch.nn.functional.pad(x.float(), (0, nb * block - K)).reshape(M, nb, block)
    amax = xp.abs().amax(dim=-1)  # (M, nb)
    scale = amax / BLOCK_ACT_QMAX
    # a tensor numerator: ``BLOCK_ACT_QMAX / amax`` would be reciprocal(amax) * 127 (see the module docstring)
    inverse = torch.where(amax > 0, torch.full_like(amax, BLOCK_ACT_QMAX) / torch.where(amax > 0, amax, 1.0), 0.0)
    q = torch.clamp(torch.round(xp * inverse[..., None]), -BLOCK_ACT_QMAX, BLOCK_ACT_QMAX)
    return q.reshape(M, nb * block)[:, :K], scale


def round_up_to_bfloat16(x: Tensor) -> Tensor:
    """Positive finite float32 -> the smallest bfloat16-representable float32 >= x (same shape)."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0xFFFF) & -0x10000).view(torch.float32)


def quantize_per_group_symmetric(w: Tensor, group: int, qmax: int) -> tuple[Tensor, Tensor]:
    """w (C, K) float -> (q (C, K) int8 in [-qmax, qmax], scale (C, ceil(K / group)) float32, bfloat16-exact)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"expected a floating-point weight, got {w.dtype}")
    if group < 1:
        raise ValueError(f"group must be positive, got {group}")
    C, K = w.shape
    ng = -(-K // group)
    wp = torch.nn.functional.pad(w.detach().float(), (0, ng * group - K)).reshape(C, ng, group)
    scale = round_up_to_bfloat16(torch.clamp(wp.abs().amax(dim=-1) / qmax, min=SCALE_EPS))  # (C, ng)
    q = torch.clamp(torch.round(wp / scale[..., None]), -qmax, qmax).to(torch.int8)
    return q.reshape(C, ng * group)[:, :K].contiguous(), scale


def expand_group_scales(scales: Tensor, K: int, group: int) -> Tensor:
    """scales (C,) (one per channel) or (C, ceil(K / group)) -> (C, K) float32, one scale per weight."""
    if scales.dim() == 1:
        return scales.float()[:, None].expand(-1, K)
    return scales.float().repeat_interleave(group, dim=1)[:, :K]


INT4_ZERO = 8  # packed int4: each value is stored as value + 8 in a nibble


def pack_int4(q: Tensor) -> Tensor:
    """q (C, K) int8 in [-8, 7], K even -> (C, K / 2) uint8: two values a byte, stored value + 8, the even
    index in the low nibble (ONNX Runtime ``MatMulNBits``' layout, so its weights are this tensor reshaped).
    A 4-bit model holds its weights so: half the bytes of one int8 per value."""
    if q.dim() != 2 or q.dtype != torch.int8:
        raise TypeError(f"expected a 2-D int8 tensor, got {q.dtype} {tuple(q.shape)}")
    if q.shape[1] % 2:
        raise ValueError(f"4-bit weights are packed two a byte: in_features must be even, got {q.shape[1]}")
    u = (q.to(torch.int16) + INT4_ZERO).to(torch.uint8)
    if bool(((u >> 4) != 0).any()):
        raise ValueError("weight values outside the 4-bit range [-8, 7]")
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    """(C, K / 2) uint8 from ``pack_int4`` -> (C, K) int8."""
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise TypeError(f"expected a 2-D uint8 tensor of packed 4-bit values, got {packed.dtype} "
                        f"{tuple(packed.shape)}")
    pairs = torch.stack([packed & 15, packed >> 4], dim=-1)  # (C, K / 2, 2)
    return (pairs.reshape(packed.shape[0], -1).to(torch.int8) - INT4_ZERO).contiguous()
