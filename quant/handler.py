"""Schemes, the per-layer plan, and ``quantize_model`` (the eager reference of each scheme).

Schemes (``SCHEMES``)
    int8-weight   every large Linear: int8 weight per output channel (symmetric), float32 activations
    int8-dynamic  the same int8 weights; each Linear's input quantized to 8 bits at run time and
                  multiplied in integers
    int4-dynamic  4-bit weights, symmetric, one scale per output channel and group of ``INT4_GROUP``
                  inputs; 8-bit activations at run time as in int8-dynamic
How activations are quantized at run time follows the backend's kernel, and the eager reference
follows it (``Scheme.activation``): per token, asymmetric (ExecuTorch: XNNPACK's qd8); per block
along K, symmetric (ONNX Runtime: ``MatMulNBits`` at accuracy level 4; the block is the weight group
for int4, ``ACT_BLOCK`` inputs for int8, whose per-channel weights ``MatMulNBits`` holds as blocks of
the same scale). On ONNX Runtime, int8-dynamic was per token through ``MatMulInteger`` until
2026-11-23: ``MatMulNBits`` runs the small preset's step 1.6x faster (1 thread).
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
from xlstm_edge.weights import EMBEDDING, ModelWeights, WeightSource

from .modules import ACT_BLOCK, Int8Embedding, Int8Linear
from .primitives import INT4_QMAX, quantize_per_channel_symmetric, quantize_per_group_symmetric

INT4_GROUP = 32  # int4-dynamic: inputs per weight scale


@dataclass(frozen=True)
class Scheme:
    """A scheme's weight format, its activation quantization per backend and its default quality gate."""

    bits: int
    group_size: int  # 0: one scale per output channel
    activation: dict[str, str]  # backend -> "none" | "per_token" | "per_block"
    max_ppl_increase: float  # default gate: relative perplexity increase
    min_greedy_agreement: float


SCHEMES: dict[str, Scheme] = {
    "int8-weight": Scheme(8, 0, {"onnxruntime": "none", "executorch": "none"}, 0.01, 0.95),
    "int8-dynamic": Scheme(8, 0, {"onnxruntime": "per_block", "executorch": "per_token"}, 0.01, 0.95),
    "int4-dynamic": Scheme(4, INT4_GROUP, {"onnxruntime": "per_block", "executorch": "per_token"}, 0.05, 0.90),
}
BACKENDS: tuple[str, ...] = ("onnxruntime", "executorch")
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
    """One weight-holding layer: what the scheme does with it. ``dtype`` is "int8", "int4" or "float32"."""

    name: str
    kind: str  # "linear" | "embedding" | "lm_head" | "conv" | "norm" | "parameter" | "other"
    shape: list[int]
    dtype: str
    reason: str = ""


@dataclass
class QuantPlan:
    scheme: str
    embedding: str
    backend: str
    activation: str
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def quantized_layers(self) -> list[LayerDecision]:
        """Layers stored as integers ("int8" or "int4")."""
        return [d for d in self.layers if d.dtype != "float32"]

    @property
    def float_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.dtype == "float32"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: scheme, counts, int8 / float32 element counts, every float32 layer with its reason."""
        def numel(d: LayerDecision) -> int:
            n = 1
            for s in d.shape:
                n *= s
            return n

        sch = SCHEMES[self.scheme]
        weights = ("per output channel, symmetric int8 [-127, 127], float32 scales" if sch.bits == 8 else
                   f"per output channel and group of {sch.group_size} inputs, symmetric 4-bit [-{INT4_QMAX}, "
                   f"{INT4_QMAX}], float32 scales")
        acts = {"none": None, "per_token": "per token, asymmetric 8-bit, chosen at run time",
                "per_block": f"per block of {sch.group_size or ACT_BLOCK} inputs, symmetric 8-bit [-127, 127], "
                             "chosen at run time"}
        return {
            "scheme": self.scheme,
            "embedding": self.embedding,
            "backend": self.backend,
            "activation": self.activation,
            "weight_bits": sch.bits,
            "weight_group_size": sch.group_size,
            "weight_granularity": weights,
            "activation_granularity": acts[self.activation],
            "quantized_layers": len(self.quantized_layers),
            "quantized_params": sum(numel(d) for d in self.quantized_layers),
            "int4_params": sum(numel(d) for d in self.quantized_layers if d.dtype == "int4"),
            "float32_params": sum(numel(d) for d in self.float_layers),
            "float32_layers": {d.name: d.reason for d in self.float_layers},
            "state_dtype": "float32",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_scheme(scheme: str, embedding: str = "fp32", backend: str | None = None) -> None:
    """Raise ``QuantizationError`` (one line) for an unknown scheme, embedding choice or backend."""
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if embedding not in EMBEDDINGS:
        raise QuantizationError(f"unknown embedding choice {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
    if backend is not None and backend not in BACKENDS:
        raise QuantizationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _is_norm(mod: nn.Module) -> bool:
    return type(mod).__name__ in ("RMSNorm", "MultiHeadLayerNorm", "ExportMultiHeadLayerNorm", "LayerNorm")


def plan_quantization(model: nn.Module, scheme: str, embedding: str = "fp32", *,
                      backend: str) -> QuantPlan:
    """Decide, for every module or parameter holding weights, quantized ("int8") or float32 (with the
    reason). Quantized Linears hold the scheme's bits (4-bit values packed two a byte)."""
    check_scheme(scheme, embedding, backend)
    plan = QuantPlan(scheme, embedding, backend, SCHEMES[scheme].activation[backend])
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
                        note = ("tied to the embedding: shares its int8 rows"
                                if embedding == "int8" and SCHEMES[scheme].bits == 8 else
                                "tied to the embedding: the head gets its own quantized copy")
                    dtype = "int4" if SCHEMES[scheme].bits == 4 else "int8"
                    plan.layers.append(LayerDecision(name, kind, shape, dtype, note))
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
def load_quantized(source: WeightSource, scheme: str, embedding: str = "fp32", *, backend: str) -> nn.Module:
    """The quantized model of ``source``'s weights, quantized as they are read (``plan_quantization``).

    Each weight the plan quantizes is read in float32, quantized and dropped before the next is read;
    the rest is read straight into float32. Peak memory: the quantized model plus one float32 weight,
    never a float copy of the whole model. ``backend`` picks the activation quantization the
    backend's graph computes (see the module docstring), so the model is the eager reference of that
    graph. The plan is kept on the model as ``model.quant_plan``. Eval mode, no gradients.
    """
    config = source.config
    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    plan = plan_quantization(model, scheme, embedding, backend=backend)
    sch = SCHEMES[scheme]
    tied = config.tie_word_embeddings
    # (the tied embedding, group size) -> its (q, scales): a tied head shares the embedding's int8 rows.
    # Only that one is kept: a 4-bit Linear packs its q, and a kept int8 q of every weight would hold
    # the whole model at one byte a value again
    shared: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for d in plan.quantized_layers:
        old = model.get_submodule(d.name)
        group = 0 if isinstance(old, nn.Embedding) else sch.group_size
        stored = EMBEDDING if tied and d.name == "lm_head" else f"{d.name}.weight"
        if (stored, group) in shared:
            q, scales = shared[stored, group]
        else:
            weight = source.read(stored, torch.float32)
            q, scales = (quantize_per_group_symmetric(weight, group, INT4_QMAX) if group else
                         quantize_per_channel_symmetric(weight, axis=0))
            del weight
            if tied and stored == EMBEDDING:
                shared[stored, group] = q, scales
        if isinstance(old, nn.Embedding):
            new: nn.Module = Int8Embedding.from_quantized(q, scales)
        else:
            bias = None if old.bias is None else source.read(f"{d.name}.bias", torch.float32)
            new = Int8Linear.from_quantized(q, scales, bias, plan.activation, sch.bits, group)
        _set_child(model, d.name, new)
    rest = {k: source.read(EMBEDDING if tied and k == "lm_head.weight" else k, torch.float32)
            for k, v in model.state_dict().items() if v.is_meta}
    model.load_state_dict(rest, strict=False, assign=True)
    if tied and isinstance(model.lm_head, nn.Linear) and isinstance(model.backbone.embeddings, nn.Embedding):
        model.lm_head.weight = model.backbone.embeddings.weight
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:
        raise QuantizationError(f"{len(left)} tensor(s) were never read: {', '.join(left[:3])}")
    model.eval()
    model.requires_grad_(False)
    model.quant_plan = plan
    return model


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, embedding: str = "fp32", *, backend: str) -> nn.Module:
    """The quantized model of ``model``'s weights (``load_quantized`` reading them from memory); a new
    model: ``model`` itself is left as it is."""
    if any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules()):
        raise QuantizationError("model is already quantized")
    return load_quantized(ModelWeights(model), scheme, embedding, backend=backend)
