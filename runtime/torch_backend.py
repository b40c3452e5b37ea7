"""The eager PyTorch model as a backend: the reference the exported backends are checked against.

It runs a model object, or one loaded from a checkpoint directory with
``xlstm_edge.checkpoint.load_checkpoint`` (an exported package holds no eager weights, so it
cannot feed this backend). Prefill uses the chunkwise form, steps the one-step form. Its state
buffers are numpy arrays (the runtime's interface) that the model reads and writes through
``torch.from_numpy`` views, without copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .backend import SingleBufferBackend
from .errors import PackageError
from .state import StateLayout

# longest slice of a prompt given to the chunkwise form at once (bounds prefill memory)
PREFILL_SLICE = 512


class TorchBackend(SingleBufferBackend):
    """``xLSTMForCausalLM`` in eval mode, float32 state; ``num_threads`` sets torch's (global) threads."""

    name = "torch"
    host_torch_threads = None

    def __init__(self, model: nn.Module, num_threads: int, source: str = "<model object>",
                 decode_threads: int | None = None):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "block_types"):
            raise PackageError(f"the torch backend needs an xLSTMForCausalLM, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config
        self.source = source
        self.layout = StateLayout.from_config(config, model_name=source)
        self.num_threads = num_threads
        self.decode_threads = num_threads if decode_threads is None else decode_threads
        torch.set_num_threads(num_threads)
        self._state = self.layout.zeros(1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, num_threads: int,
                        decode_threads: int | None = None) -> TorchBackend:
        from xlstm_edge.checkpoint import load_checkpoint

        path = Path(path)
        model = load_checkpoint(path, dtype=torch.float32).column_major_linears_()  # faster CPU decode
        return cls(model, num_threads, source=str(path), decode_threads=decode_threads)

    def _layers(self) -> list[dict[str, Tensor]]:
        layers: list[dict[str, Tensor]] = [{} for _ in range(self.config.num_hidden_layers)]
        for spec, t in zip(self.layout.tensors, self._state, strict=True):
            layers[spec.layer][spec.name] = torch.from_numpy(t)
        return layers

    def _store(self, new_layers: list[dict[str, Tensor]]) -> None:
        for spec, buf in zip(self.layout.tensors, self._state, strict=True):
            torch.from_numpy(buf).copy_(new_layers[spec.layer][spec.name])

    @staticmethod
    def _use_threads(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    @torch.inference_mode()
    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        self._use_threads(self.num_threads)
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        logits = None
        for start in range(0, input_ids.shape[1], PREFILL_SLICE):
            piece = ids[:, start:start + PREFILL_SLICE]
            logits, new = self.model(piece, state=self._layers(), form="chunkwise", last_only=True)
            self._store(new)
        assert logits is not None  # T >= 1 is checked by the session
        return logits[:, -1].float().numpy()

    @torch.inference_mode()
    def step(self, input_ids: np.ndarray) -> np.ndarray:
        self._use_threads(self.decode_threads)
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        logits, new = self.model(ids, state=self._layers())
        self._store(new)
        return logits[:, -1].float().numpy()
