"""Schemes, the per-layer plan, and ``quantize_model`` (the eager reference of each scheme).

Schemes
    int8-weight   every large Linear: int8 weight per output channel (symmetric), float32 activations
    int8-dynamic  the same int8 weights; each Linear's input quantized per token at run time (8-bit,
                  asymmetric) and multiplied in integers
``embedding="int8"`` also stores the input embedding table as int8 rows with one scale per row.

What stays float32 in every scheme, and why (each such layer is listed in the plan with its reason):
gate pre-activations (mLSTM ``igate_preact``/``fgate_preact``: NH outputs each, tiny; sLSTM
``igate``/``fgate``: their outputs go through exp() and set the stabilizer), the sLSTM recurrent
matrix, gate bias and causal conv, every norm, and the recurrent state itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from xlstm_edge.model import mLSTMLayer, sLSTMLayer, xLSTMForCausalLM

from .modules import Int8Embedding, Int8Linear
from .primitives import quantize_per_channel_symmetric

SCHEMES: dict[str, str] = {"int8-weight": "none", "int8-dynamic": "per_token"}  # scheme -> activation
EMBEDDINGS: tuple[str, ...] = ("fp32", "int8")

# float32 by design: (owner class, attribute) -> reason
_GATES: dict[tuple[type, str], str] = {
    (mLSTMLayer, "igate_preact"): "mLSTM input-gate pre-activation: tiny (NH outputs), feeds exp() and the stabilizer",
    (mLSTMLayer, "fgate_preact"): "mLSTM forget-gate pre-activation: tiny (NH outputs), feeds the stabilizer",
    (sLSTMLayer, "igate"): "sLSTM input-gate pre-activation: feeds exp() and the stabilizer",
    (sLSTMLayer, "fgate"): "sLSTM forget-gate pre-activation: feeds the stabilizer",
}


class QuantizationError(ValueError):
    """A bad scheme, a model that cannot take a scheme, or a quantized graph that fails its check."""


@dataclass
class LayerDecision:
    """One weight-holding layer: what the scheme does with it. ``dtype`` is "int8" or "float32"."""

    name: str
    kind: str  # "linear" | "embedding" | "lm_head" | "conv" | "norm" | "parameter" | "other"
    shape: list[int]
    dtype: str
    reason: str = ""


@dataclass
class QuantPlan:
    scheme: str
    embedding: str
    activation: str
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def int8_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.dtype == "int8"]

    @property
    def float_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.dtype != "int8"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: scheme, counts, int8 / float32 element counts, every float32 layer with its reason."""
        def numel(d: LayerDecision) -> int:
            n = 1
            for s in d.shape:
                n *= s
            return n

        return {
            "scheme": self.scheme,
            "embedding": self.embedding,
            "activation": self.activation,
            "weight_granularity": "per output channel, symmetric int8 [-127, 127], float32 scales",
            "activation_granularity": None if self.activation == "none" else
            "per token, asymmetric 8-bit, chosen at run time",
            "int8_layers": len(self.int8_layers),
            "int8_params": sum(numel(d) for d in self.int8_layers),
            "float32_params": sum(numel(d) for d in self.float_layers),
            "float32_layers": {d.name: d.reason for d in self.float_layers},
            "state_dtype": "float32",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_scheme(scheme: str, embedding: str = "fp32") -> None:
    """Raise ``QuantizationError`` (one line) for an unknown scheme or embedding choice."""
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if embedding not in EMBEDDINGS:
        raise QuantizationError(f"unknown embedding choice {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")


def _is_norm(mod: nn.Module) -> bool:
    return type(mod).__name__ in ("RMSNorm", "MultiHeadLayerNorm", "ExportMultiHeadLayerNorm", "LayerNorm")


def plan_quantization(model: nn.Module, scheme: str, embedding: str = "fp32") -> QuantPlan:
    """Decide, for every module or parameter holding weights, int8 or float32 (with the reason)."""
    check_scheme(scheme, embedding)
    plan = QuantPlan(scheme, embedding, SCHEMES[scheme])
    tied = isinstance(model, xLSTMForCausalLM) and model.config.tie_word_embeddings
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        for attr, child in parent.named_children():
            name = prefix + attr
            if isinstance(child, nn.Linear):
                reason = _GATES.get((type(parent), attr))
                kind = "lm_head" if name == "lm_head" else "linear"
                shape = list(child.weight.shape)
                if reason is not None:
                    plan.layers.append(LayerDecision(name, kind, shape, "float32", reason))
                else:
                    note = ""
                    if kind == "lm_head" and tied:
                        note = ("tied to the embedding: shares its int8 rows" if embedding == "int8" else
                                "tied to the embedding, which stays float32: the head gets its own int8 copy")
                    plan.layers.append(LayerDecision(name, kind, shape, "int8", note))
            elif isinstance(child, nn.Embedding):
                if embedding == "int8":
                    plan.layers.append(LayerDecision(name, "embedding", list(child.weight.shape), "int8",
                                                     "one int8 row and float32 scale per id"))
                else:
                    plan.layers.append(LayerDecision(name, "embedding", list(child.weight.shape), "float32",
                                                     "embedding kept float32 (embedding='fp32'); "
                                                     "decode reads one row per token"))
            elif isinstance(child, nn.Conv1d):
                plan.layers.append(LayerDecision(name, "conv", list(child.weight.shape), "float32",
                                                 "sLSTM depthwise causal conv: K*D weights, tiny"))
            elif _is_norm(child):
                plan.layers.append(LayerDecision(name, "norm", list(child.weight.shape), "float32", "norm"))
            elif not isinstance(child, (Int8Linear, Int8Embedding)) and any(
                True for _ in child.parameters(recurse=False)
            ) and not isinstance(child, (mLSTMLayer, sLSTMLayer)):
                shape = list(next(child.parameters(recurse=False)).shape)
                plan.layers.append(LayerDecision(name, "other", shape, "float32",
                                                 f"no int8 implementation for {type(child).__name__}"))
        if isinstance(parent, sLSTMLayer):
            plan.layers.append(LayerDecision(prefix + "recurrent", "parameter", list(parent.recurrent.shape),
                                             "float32", "sLSTM recurrent matrix: part of the recurrence"))
            plan.layers.append(LayerDecision(prefix + "bias", "parameter", list(parent.bias.shape), "float32",
                                             "sLSTM gate bias"))
    return plan


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, embedding: str = "fp32") -> nn.Module:
    """Swap the model's layers for int8 ones following ``plan_quantization``; returns the model.

    In place (like gpt-fast's handler): the float weights of quantized layers are released. The
    plan is kept on the model as ``model.quant_plan``. Eval mode, no gradients.
    """
    if any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules()):
        raise QuantizationError("model is already quantized")
    plan = plan_quantization(model, scheme, embedding)
    activation = SCHEMES[scheme]
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(float weight) -> its (q, scales)
    for d in plan.int8_layers:
        old = model.get_submodule(d.name)
        key = id(old.weight)
        if key not in shared:
            shared[key] = quantize_per_channel_symmetric(old.weight, axis=0)
        q, scales = shared[key]
        if isinstance(old, nn.Embedding):
            new: nn.Module = Int8Embedding.from_quantized(q, scales)
        else:
            new = Int8Linear.from_quantized(q, scales, old.bias, activation)
        _set_child(model, d.name, new)
    model.eval()
    model.requires_grad_(False)
    model.quant_plan = plan
    return model
