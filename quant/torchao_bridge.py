"""Our int8 modules as torchao tensors, the form ExecuTorch's XNNPACK partitioner lowers.

``Int8Linear`` (``per_token``) -> ``nn.Linear`` whose weight is an ``IntxUnpackedToInt8Tensor`` holding
the SAME int8 values and scales (zero point 0, one block per output row) with
``activation_quantization="int8_asym_per_token"``: what ``Int8DynamicActivationIntxWeightConfig(
weight_dtype=torch.int8, weight_granularity=PerAxis(0))`` builds, minus its own choice of scales
(torchao's symmetric scale is amax / 127.5 with [-128, 127]; ours is amax / 127 with [-127, 127]).
XNNPACK runs it as a dynamically quantized fully connected (qd8 x qc8w).
A 4-bit ``Int8Linear`` (int4-dynamic) -> the same tensor with ``target_dtype=torch.int4`` and one block
per (row, group of ``group_size`` inputs): ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
weight_granularity=PerGroup(group_size))`` minus its scales (ours: amax / 7, [-7, 7]); XNNPACK runs it
as qd8 x qb4w.
``Int8Embedding`` -> ``nn.Embedding`` with a weight-only ``IntxUnpackedToInt8Tensor`` (ExecuTorch's
``quantized_decomposed::embedding_byte``; needs ``import executorch.kernels.quantized`` at run time).

Weight-only Linear (``Int8Linear`` with ``activation="none"``) has no form here on purpose: torchao's
``IntxWeightOnlyConfig`` / ``Int8WeightOnlyConfig`` on a Linear lowers through XNNPACK to wrong outputs
with no error (ExecuTorch 1.5.1, see ENVIRONMENT.md), and a dequantize-in-graph Linear is correct but
runs on portable kernels about 25x slower than float32 (measured: 14 ms for one 768 x 2048 product).
"""

from __future__ import annotations

import torch
from torch import nn

from .handler import QuantizationError
from .modules import Int8Embedding, Int8Linear

ACT_PER_TOKEN = "int8_asym_per_token"


def _intx_tensor(q: torch.Tensor, scales: torch.Tensor, activation: str | None, bits: int = 8,
                 group_size: int = 0):
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
    )

    rows, cols = q.shape
    if group_size and cols % group_size:
        raise QuantizationError(f"int4-dynamic on executorch needs in_features ({cols}) to be a multiple of the "
                                f"group size {group_size}")
    scale = scales.float().reshape(rows, -1).clone()  # (rows, 1) per channel, (rows, groups)
    return IntxUnpackedToInt8Tensor(
        qdata=q.contiguous(),
        scale=scale,
        zero_point=torch.zeros(scale.shape, dtype=torch.int8),
        target_dtype=torch.int4 if bits == 4 else torch.int8,
        block_size=(1, group_size or cols),
        dtype=torch.float32,
        activation_quantization=activation,
    )


def linear_to_torchao(mod: Int8Linear) -> nn.Linear:
    """An ``Int8Linear`` with per-token activations -> ``nn.Linear`` with a torchao int8 / int4 weight."""
    if mod.activation == "per_block":
        raise QuantizationError("per-block activations are ONNX Runtime's form; quantize for backend executorch")
    if mod.activation != "per_token":
        raise QuantizationError(
            "weight-only int8 Linear has no correct ExecuTorch/XNNPACK form (IntxWeightOnlyConfig lowers to wrong "
            "outputs with no error; dequantizing in the graph runs ~25x slower than float32): use int8-dynamic"
        )
    lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
    # 4-bit weights unpacked (torchao's IntxUnpackedToInt8Tensor holds one value a byte; XNNPACK packs them again)
    lin.weight = nn.Parameter(_intx_tensor(mod.integer_weight(), mod.scales, ACT_PER_TOKEN, mod.bits, mod.group_size),
                              requires_grad=False)
    if mod.bias is not None:
        lin.bias = nn.Parameter(mod.bias.clone(), requires_grad=False)
    return lin


def embedding_to_torchao(mod: Int8Embedding) -> nn.Embedding:
    emb = nn.Embedding(mod.num_embeddings, mod.embedding_dim)
    emb.weight = nn.Parameter(_intx_tensor(mod.weight, mod.scales, None), requires_grad=False)
    return emb


@torch.no_grad()
def to_torchao(model: nn.Module) -> nn.Module:
    """Replace every ``Int8Linear`` / ``Int8Embedding`` of ``model`` in place; returns the model."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, Int8Linear):
                setattr(parent, attr, linear_to_torchao(child))
            elif isinstance(child, Int8Embedding):
                setattr(parent, attr, embedding_to_torchao(child))
    return model
