"""Drop-in int8 modules (gpt-fast style): an int8 buffer plus float32 scales, dequantized in forward.

``Int8Linear``     replaces ``nn.Linear``: weight (out, in) int8 (8-bit values) or (out, in / 2) uint8
                   (4-bit values packed two a byte, ``primitives.pack_int4``), scales (out,) or
                   (out, groups) float32, optional bias; ``activation`` "none" | "per_token" | "per_block".
``Int8Embedding``  replaces ``nn.Embedding``: weight (num, dim) int8, scales (num,) float32 (one per row).
Both keep the attribute names ``weight`` / ``scales``, so a state dict reads ``...q.weight`` (int8) and
``...q.scales``. The parameters become buffers: a quantized model is for inference only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from . import ops
from .primitives import (
    INT4_QMAX,
    expand_group_scales,
    pack_int4,
    quantize_per_channel_symmetric,
    quantize_per_group_symmetric,
    unpack_int4,
)

Activation = Literal["none", "per_token", "per_block"]
ACTIVATIONS: tuple[str, ...] = ("none", "per_token", "per_block")
ACT_BLOCK = 128  # "per_block" activations of per-channel weights: block of K (ONNX Runtime, int8-dynamic)


class Int8Linear(nn.Module):
    """x (..., in) float32 -> (..., out) float32 through an integer weight.

    ``bits`` 8: ``weight`` (out, in) int8 in [-127, 127], ``scales`` (out,) (per output channel).
    ``bits`` 4: values in [-7, 7] packed two a byte, ``weight`` (out, in / 2) uint8 (``pack_int4``; ``in``
    even), ``scales`` (out, ceil(in / group_size)) (per channel and group of ``group_size`` inputs): a
    4-bit model in memory is half the size of one int8 per value (at 7B, 3 GB less).
    ``activation``: "none" (weight-only), "per_token" (8-bit asymmetric per token: XNNPACK's qd8) or
    "per_block" (8-bit symmetric per block of K: ONNX Runtime's MatMulNBits; the block is the weight
    group, or ``ACT_BLOCK`` for per-channel weights).
    """

    weight: Tensor
    scales: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False, activation: Activation = "none",
                 bits: int = 8, group_size: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation quantization {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if (bits, group_size > 0) not in ((8, False), (4, True)):
            raise ValueError(f"bits={bits}, group_size={group_size}: 8-bit weights are per channel (group_size 0), "
                             "4-bit weights per group (group_size > 0)")
        if activation == "none" and bits != 8:
            raise ValueError("weight-only quantization is 8-bit only")
        if bits == 4 and in_features % 2:
            raise ValueError(f"4-bit weights are packed two a byte: in_features must be even, got {in_features}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.bits, self.group_size = bits, group_size
        n_groups = -(-in_features // group_size) if group_size else 0
        stored = (out_features, in_features // 2) if bits == 4 else (out_features, in_features)
        self.register_buffer("weight", torch.zeros(stored, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scales", torch.ones((out_features, n_groups) if group_size else (out_features,)))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: Activation = "none", bits: int = 8,
                    group_size: int = 0) -> Int8Linear:
        """Quantize ``linear.weight`` (symmetric, per output channel or per group); the bias stays float32."""
        if group_size:
            q, scales = quantize_per_group_symmetric(linear.weight, group_size, INT4_QMAX)
        else:
            q, scales = quantize_per_channel_symmetric(linear.weight, axis=0)
        return cls.from_quantized(q, scales, linear.bias, activation, bits, group_size)

    @classmethod
    def from_quantized(cls, q: Tensor, scales: Tensor, bias: Tensor | None, activation: Activation,
                       bits: int = 8, group_size: int = 0) -> Int8Linear:
        """From an int8 weight (out, in) and its scales (shared tensors are kept, not copied); 4-bit
        values are packed here (``pack_int4``), or given packed: (out, in / 2) uint8."""
        in_features = 2 * q.shape[1] if q.dtype == torch.uint8 else q.shape[1]
        mod = cls(in_features, q.shape[0], bias is not None, activation, bits, group_size)
        if bits == 4 and q.dtype == torch.int8:
            q = pack_int4(q)
        if q.dtype != mod.weight.dtype:
            raise ValueError(f"a {bits}-bit weight is stored {mod.weight.dtype}, got {q.dtype}")
        if scales.shape != mod.scales.shape:
            raise ValueError(f"scales must be {tuple(mod.scales.shape)}, got {tuple(scales.shape)}")
        mod.weight, mod.scales = q, scales
        if bias is not None:
            mod.bias = bias.detach().float().clone()
        return mod

    def integer_weight(self) -> Tensor:
        """(out, in) int8: the weight's values, unpacked (a new tensor for 4-bit weights)."""
        return unpack_int4(self.weight) if self.bits == 4 else self.weight

    def dequantized_weight(self) -> Tensor:
        """(out, in) float32."""
        return self.integer_weight().float() * expand_group_scales(self.scales, self.in_features, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation == "none":
            return ops.linear_w8(x, self.weight, self.scales, self.bias)
        if self.activation == "per_block":
            return ops.linear_block(x, self.weight, self.scales, self.bias, self.group_size or ACT_BLOCK, self.bits)
        if self.group_size:
            return ops.linear_a8w8_token_group(x, self.weight, self.scales, self.bias, self.group_size)
        return ops.linear_a8w8(x, self.weight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation}, bits={self.bits}, "
                f"group_size={self.group_size}")


class Int8Embedding(nn.Module):
    """ids (...) int64 -> (..., dim) float32: one int8 row and one float32 scale per id."""

    weight: Tensor
    scales: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(num_embeddings, dtype=torch.float32))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        q, scales = quantize_per_channel_symmetric(emb.weight, axis=0)
        return cls.from_quantized(q, scales)

    @classmethod
    def from_quantized(cls, q: Tensor, scales: Tensor) -> Int8Embedding:
        mod = cls(q.shape[0], q.shape[1])
        mod.weight, mod.scales = q, scales
        return mod

    def dequantized_weight(self) -> Tensor:
        return self.weight.float() * self.scales[:, None]

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = nn.functional.embedding(input_ids, self.weight).to(torch.float32)  # (..., dim)
        return rows * nn.functional.embedding(input_ids, self.scales[:, None])  # (..., 1) broadcast

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"
