"""Our state layout <-> ONNX Runtime GenAI's per-layer slots, in numpy (the runtime imports no torch).

``genai.onnx`` (``export/genai_graph``) holds each layer's state in two slots whose shapes are the same
for every layer, ``conv_state`` (B, *CONV) and ``recurrent_state`` (B, *REC):

  mLSTM layer (specs C, n, m)   conv_state = [n | m] (B, NH, DQK + 1), recurrent_state = C (B, NH, DQK, DV)
  sLSTM layer (y, c, n, m[, conv])   recurrent_state = those flattened in spec order, zero-padded;
                                     conv_state unused (zero)

Our layout (``StateLayout.tensors``) lists the tensors layer by layer in spec order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MLSTM_NAMES = ("C", "n", "m")


class SlotLayout:
    """The slots of one model: ``zeros(B)`` (2 per layer, graph input order), ``pack`` and ``unpack``."""

    def __init__(self, specs: Sequence[Any], conv_shape: Sequence[int], rec_shape: Sequence[int]):
        self.specs = tuple(specs)
        self.conv_shape, self.rec_shape = tuple(conv_shape), tuple(rec_shape)
        layers: dict[int, list[int]] = {}
        for i, s in enumerate(self.specs):
            layers.setdefault(s.layer, []).append(i)
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"state layers must be 0..L-1, got {sorted(layers)}")
        self.layers = [layers[k] for k in range(len(layers))]  # spec indices of each layer
        rec_numel = math.prod(self.rec_shape)
        for idx in self.layers:
            if not self._is_mlstm(idx):
                need = sum(math.prod(self.specs[i].shape) for i in idx)
                if need > rec_numel:
                    raise ValueError(f"layer {self.specs[idx[0]].layer}'s state ({need} floats) does not fit "
                                     f"the recurrent_state slot {list(self.rec_shape)}")

    def _is_mlstm(self, idx: list[int]) -> bool:
        return tuple(self.specs[i].name for i in idx) == MLSTM_NAMES

    def zeros(self, batch: int) -> list[np.ndarray]:
        """Zero slots for ``batch`` rows: conv_state, recurrent_state of each layer in order, float32."""
        out: list[np.ndarray] = []
        for _ in self.layers:
            out += [np.zeros((batch, *self.conv_shape), np.float32), np.zeros((batch, *self.rec_shape), np.float32)]
        return out

    def pack(self, tensors: Sequence[np.ndarray], slots: list[np.ndarray]) -> None:
        """Write our state ``tensors`` (layout order, (B, *shape)) into ``slots`` (from ``zeros(B)``)."""
        for k, idx in enumerate(self.layers):
            conv, rec = slots[2 * k], slots[2 * k + 1]
            B = rec.shape[0]
            if self._is_mlstm(idx):
                C, n, m = (tensors[i] for i in idx)
                rec[...] = C
                conv[..., :-1] = n
                conv[..., -1] = m
            else:
                flat = rec.reshape(B, -1)
                at = 0
                for i in idx:
                    size = math.prod(self.specs[i].shape)
                    flat[:, at:at + size] = tensors[i].reshape(B, size)
                    at += size
                flat[:, at:] = 0
                conv.fill(0)

    def unpack(self, slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Our state (layout order, (B, *shape) float32 copies) from ``slots``."""
        out: list[np.ndarray | None] = [None] * len(self.specs)
        for k, idx in enumerate(self.layers):
            conv, rec = slots[2 * k], slots[2 * k + 1]
            B = rec.shape[0]
            if self._is_mlstm(idx):
                iC, i_n, i_m = idx
                out[iC] = rec.copy()
                out[i_n] = conv[..., :-1].copy()
                out[i_m] = conv[..., -1].copy()
            else:
                flat = rec.reshape(B, -1)
                at = 0
                for i in idx:
                    shape = self.specs[i].shape
                    size = math.prod(shape)
                    out[i] = flat[:, at:at + size].reshape(B, *shape).copy()
                    at += size
        return out  # type: ignore[return-value]
