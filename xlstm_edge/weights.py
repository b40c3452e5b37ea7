"""Weights read one tensor at a time, in the dtype the reader asks for: the pipeline's single source.

A ``WeightSource`` names a model's parameters (the Hugging Face layout; ``lm_head.weight`` absent
when tied to the embedding) and reads any one of them, or a range of its rows, converted on the way:

    CheckpointWeights(path)    a checkpoint on disk (HF or xlstm_large layout, fused or not, shards);
                               tensors come from the memory-mapped safetensors files
    ModelWeights(model)        a model already in memory (reading converts a copy)

``build_model(source, dtype)`` assembles a whole model from one; ``build_block`` a single block (the
streamed float references of ``xlstm_edge.streamed`` hold one block at a time). Nothing here ever
holds a second copy of the whole model: a 7B bf16 checkpoint is read straight into the final dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from .config import xLSTMConfig
from .model import mLSTMBlock, sLSTMBlock, xLSTMForCausalLM

EMBEDDING = "backbone.embeddings.weight"
LM_HEAD = "lm_head.weight"


class WeightSource(Protocol):
    config: xLSTMConfig

    def names(self) -> list[str]:
        """Parameter names of the model (HF layout), ``lm_head.weight`` absent when tied."""
        ...

    def read(self, name: str, dtype: torch.dtype, rows: tuple[int, int] | None = None) -> Tensor:
        """The parameter ``name`` (rows ``[start, end)`` of dim 0 if given) as a new ``dtype`` tensor."""
        ...

    def describe(self) -> str: ...


def head_name(config: xLSTMConfig) -> str:
    """The stored tensor that holds the LM head: its own, or the embedding when tied."""
    return EMBEDDING if config.tie_word_embeddings else LM_HEAD


class CheckpointWeights:
    """A checkpoint directory (or .safetensors file) read tensor by tensor from its files (each read maps
    the file, copies the tensor out in the asked dtype and unmaps it)."""

    def __init__(self, path: str | os.PathLike[str]):
        from .checkpoint import _open

        self.path = Path(path)
        self._ckpt = _open(path)
        self.config = self._ckpt.config

    def names(self) -> list[str]:
        return list(self._ckpt.plan)

    def describe(self) -> str:
        return str(self.path)

    def read(self, name: str, dtype: torch.dtype, rows: tuple[int, int] | None = None) -> Tensor:
        from .checkpoint import CheckpointError

        info = self._ckpt.plan.get(name)
        if info is None:
            raise CheckpointError(f"{self.path} has no tensor {name}")
        start = info.rows[0] if info.rows else 0
        lo, hi = (start + rows[0], start + rows[1]) if rows else (info.rows or (None, None))
        try:
            # opened per read: the mapping (and the pages it touched, which count in this process's
            # resident set) ends with the read, so reading a 13.7 GB checkpoint does not leave it resident
            with safe_open(info.file, framework="pt") as f:
                t = f.get_slice(info.name)[lo:hi] if lo is not None else f.get_tensor(info.name)
        except SafetensorError as exc:
            raise CheckpointError(f"cannot read {info.name} from {info.file}: {exc}") from exc
        return t.to(dtype)  # safetensors copies out of the mapping: no clone needed at the same dtype


class ModelWeights:
    """A model in memory as a ``WeightSource`` (quantized layers excluded: float parameters only)."""

    def __init__(self, model: xLSTMForCausalLM):
        self.model = model
        self.config = model.config
        self._params = dict(model.named_parameters(remove_duplicate=False))

    def names(self) -> list[str]:
        tied = self.config.tie_word_embeddings
        return [n for n in self._params if not (tied and n == LM_HEAD)]

    def describe(self) -> str:
        return "the model in memory"

    def read(self, name: str, dtype: torch.dtype, rows: tuple[int, int] | None = None) -> Tensor:
        t = self._params[name].detach()
        t = t[rows[0]: rows[1]] if rows else t
        return t.to(dtype, copy=True)


def _assign(module: nn.Module, source: WeightSource, prefix: str, dtype: torch.dtype) -> nn.Module:
    """Fill a meta-device ``module`` with ``source``'s tensors named ``prefix + key``."""
    tensors = {k: source.read(prefix + k, dtype) for k in module.state_dict()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def build_block(source: WeightSource, idx: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Block ``idx`` of the source's model, its weights in ``dtype`` (eval mode, no gradients)."""
    config = source.config
    with torch.device("meta"):
        block = sLSTMBlock(config) if config.block_types()[idx] == "s" else mLSTMBlock(config)
    return _assign(block, source, f"backbone.blocks.{idx}.", dtype)


def build_out_norm(source: WeightSource, dtype: torch.dtype = torch.float32) -> nn.Module:
    from .layers import RMSNorm

    c = source.config
    if not c.add_out_norm:
        return nn.Identity()
    with torch.device("meta"):
        norm = RMSNorm(c.hidden_size, c.norm_eps, c.use_bias)
    return _assign(norm, source, "backbone.out_norm.", dtype)


def build_model(source: WeightSource, dtype: torch.dtype = torch.float32) -> xLSTMForCausalLM:
    """The whole model, each tensor read from ``source`` straight into ``dtype`` (eval mode)."""
    config = source.config
    tensors = {name: source.read(name, dtype) for name in source.names()}
    if config.tie_word_embeddings:
        tensors[LM_HEAD] = tensors[EMBEDDING]
    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    return model.eval()


__all__ = ["CheckpointWeights", "ModelWeights", "WeightSource", "build_block", "build_model", "build_out_norm",
           "head_name"]
