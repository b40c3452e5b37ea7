"""Drop-in int8 modules (gpt-fast style): an int8 buffer plus float32 scales, dequantized in forward.

``Int8Linear``     replaces ``nn.Linear``: weight (out, in) int8, scales (out,) float32, optional bias;
                   ``activation="none"`` (int8-weight) or ``"per_token"`` (int8-dynamic).
``Int8Embedding``  replaces ``nn.Embedding``: weight (num, dim) int8, scales (num,) float32 (one per row).
Both keep the attribute names ``weight`` / ``scales``, so a state dict reads ``...q.weight`` (int8) and
``...q.scales``. The parameters become buffers: a quantized model is for inference only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from . import ops
from .primitives import quantize_per_channel_symmetric

Activation = Literal["none", "per_token"]
ACTIVATIONS: tuple[str, ...] = ("none", "per_token")


class Int8Linear(nn.Module):
    """x (..., in) float32 -> (..., out) float32 through an int8 weight with per-output-channel scales."""

    weight: Tensor
    scales: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False, activation: Activation = "none"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation quantization {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: Activation = "none") -> Int8Linear:
        """Quantize ``linear.weight`` per output channel (symmetric); the bias stays float32."""
        q, scales = quantize_per_channel_symmetric(linear.weight, axis=0)
        return cls.from_quantized(q, scales, linear.bias, activation)

    @classmethod
    def from_quantized(cls, q: Tensor, scales: Tensor, bias: Tensor | None, activation: Activation) -> Int8Linear:
        """From an int8 weight (out, in) and its scales (out,) (shared tensors are kept, not copied)."""
        mod = cls(q.shape[1], q.shape[0], bias is not None, activation)
        mod.weight, mod.scales = q, scales
        if bias is not None:
            mod.bias = bias.detach().float().clone()
        return mod

    def dequantized_weight(self) -> Tensor:
        """(out, in) float32."""
        return self.weight.float() * self.scales[:, None]

    def forward(self, x: Tensor) -> Tensor:
        op = ops.linear_a8w8 if self.activation == "per_token" else ops.linear_w8
        return op(x, self.weight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation}")


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
