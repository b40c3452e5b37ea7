"""What every backend provides: a model that eats tokens and keeps its recurrent state in its own buffers.

A backend owns the state buffers (so it can reuse them from step to step: memory stays flat) and
exposes them through ``read_state`` / ``write_state``. Everything crossing this interface is numpy
(the runtime needs no torch): ``prefill`` and ``step`` take (B, T) int64 ids and return the logits
of the last position, (B, V) float32, as a view into a buffer that the next call may overwrite:
copy it to keep it.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .errors import BackendNotInstalledError
from .state import StateLayout


def require_module(module: str, pip_name: str, backend: str) -> None:
    """Raise ``BackendNotInstalledError`` naming the pip package when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise BackendNotInstalledError(
            f"backend {backend!r} needs the Python package {pip_name!r}, which is not installed: "
            f"pip install {pip_name}"
        )


class Backend(ABC):
    """A loaded model. Subclasses set ``config``, ``layout``, ``num_threads``, ``decode_threads`` (the
    threads of one-token ``step`` calls) and ``source``."""

    name: ClassVar[str]
    config: Any  # xLSTMConfig
    layout: StateLayout
    num_threads: int
    decode_threads: int
    source: str  # what was loaded (a path, or "<model object>")
    # torch threads around each call where torch is loaded (ExecuTorch): one where the backend runs on
    # a pool of its own, so that torch's spinning OpenMP workers leave it the cores (see host_threads);
    # None leaves torch's setting alone (the torch backend computes on it)
    host_torch_threads: ClassVar[int | None] = 1

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    @abstractmethod
    def batch_size(self) -> int:
        """Rows of the state held now."""

    @abstractmethod
    def reset(self, batch_size: int) -> None:
        """Zero the state for ``batch_size`` rows (reallocating only when the batch size changes)."""

    @abstractmethod
    def read_state(self) -> list[np.ndarray]:
        """A copy of the state tensors, layout order, (B, *shape) float32."""

    @abstractmethod
    def write_state(self, tensors: list[np.ndarray]) -> None:
        """Copy ``tensors`` (checked against the layout) into the state buffers; sets the batch size."""

    @abstractmethod
    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed (B, T) int64 tokens (T >= 1) after the current state; return the last logits (B, V)."""

    @abstractmethod
    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed (B, 1) int64 tokens; return logits (B, V)."""

    def describe(self) -> str:
        threads = f"{self.num_threads} threads" + (
            f", decode {self.decode_threads}" if self.decode_threads != self.num_threads else "")
        return f"{self.name} ({threads}) {self.source}"


class SingleBufferBackend(Backend):
    """A backend whose state lives in one set of numpy buffers, ``self._state`` (layout order,
    (B, *shape)), updated after each call (torch; ONNX Runtime double-buffers instead)."""

    _state: list[np.ndarray]

    @property
    def batch_size(self) -> int:
        return self._state[0].shape[0]

    def reset(self, batch_size: int) -> None:
        if batch_size == self.batch_size:
            for t in self._state:
                t.fill(0)
        else:
            self._state = self.layout.zeros(batch_size)

    def read_state(self) -> list[np.ndarray]:
        return [t.copy() for t in self._state]

    def write_state(self, tensors: list[np.ndarray]) -> None:
        batch = self.layout.check(tensors, "state")
        if batch != self.batch_size:
            self._state = self.layout.zeros(batch)
        for buf, t in zip(self._state, tensors, strict=True):
            np.copyto(buf, t)


class DoubleBufferBackend(Backend):
    """A backend whose state lives in two sets of buffers, ``self._bufs[self._cur]`` holding it now (ONNX
    Runtime: a call reads one set and writes the other). Subclasses provide ``_alloc(batch)`` (fresh zero
    buffers) and, where the buffers are not in layout order, ``_pack`` / ``_unpack``."""

    _bufs: list[list[np.ndarray]]
    _cur: int

    @abstractmethod
    def _alloc(self, batch_size: int) -> None:
        """Allocate both buffer sets (zero) and whatever is bound to them for ``batch_size`` rows."""

    def _pack(self, tensors: list[np.ndarray], bufs: list[np.ndarray]) -> None:
        """Copy state ``tensors`` (layout order) into one buffer set."""
        for buf, t in zip(bufs, tensors, strict=True):
            np.copyto(buf, t)

    def _unpack(self, bufs: list[np.ndarray]) -> list[np.ndarray]:
        """Copies of the state (layout order) held by one buffer set."""
        return [t.copy() for t in bufs]

    def reset(self, batch_size: int) -> None:
        if batch_size != self.batch_size:
            self._alloc(batch_size)
        for t in self._bufs[self._cur]:
            t.fill(0)

    def read_state(self) -> list[np.ndarray]:
        return self._unpack(self._bufs[self._cur])

    def write_state(self, tensors: list[np.ndarray]) -> None:
        batch = self.layout.check(tensors, "state")
        if batch != self.batch_size:
            self._alloc(batch)
        self._pack(tensors, self._bufs[self._cur])
