"""ExecuTorch backend: the package's ``.pte`` methods ``step`` and ``prefill`` through the Python runtime.

The binding copies a method's outputs out of the memory the program plans, so the ``present.*``
tensors it returns become the state as they are and go back in as ``past.*``, which packages
exported by ``xlstm_edge.export`` read in place (inputs not memory-planned): no copy of the state in
the runtime, one by the binding per call. Threads: ExecuTorch's threadpool ignores
``torch.set_num_threads``; ``_unsafe_reset_threadpool`` sets it, process-wide, and programs loaded
before a resize must not run after it (``bind_pool``): one thread count for prefill and decode.
This backend still needs torch (ExecuTorch's Python binding takes and returns torch tensors); the
runtime's interface around it is numpy (``torch.from_numpy`` / ``.numpy()``, no copies).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .backend import Backend, require_module
from .errors import GenerationArgumentError, StaleProgramError
from .graphs import load_pte_method, open_pte_program
from .package_checks import check_graph_io, manifest_config_and_layout

_POOL: dict[str, int] = {"threads": 0, "generation": 0}  # ExecuTorch's threadpool as this module last sized it
_ET_TYPES = {"float32": "torch.float32", "int64": "torch.int64", "int32": "torch.int32"}


# ExecuTorch's ScalarType codes (as c10's) of the dtypes a package uses
_SCALAR_TYPES = {3: "torch.int32", 4: "torch.int64", 6: "torch.float32"}


def _dtype_name(dtype: Any) -> str:
    """ExecuTorch's ScalarType (an int code, or an enum) as a torch dtype string ("torch.float32")."""
    code = int(dtype) if isinstance(dtype, int) else int(getattr(dtype, "value", -1))
    return _SCALAR_TYPES.get(code, f"ScalarType {dtype}")


@contextlib.contextmanager
def _quiet_startup() -> Iterator[None]:
    """Hold back what ExecuTorch prints while it starts: torchao's warnings about its CUDA-only
    extensions (Python logging) and the native cpuinfo / threadpool info lines (file descriptor 2).
    If starting fails, the held-back native output is written out after all, with the error."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


@dataclass(frozen=True)
class PoolBinding:
    """The ExecuTorch threadpool a program was loaded on (process-wide; see ``bind_pool``)."""

    generation: int

    def check(self, what: str) -> None:
        """Raise ``StaleProgramError`` if the pool was resized since the program was loaded."""
        if self.generation != _POOL["generation"]:
            raise StaleProgramError(
                f"{what} was loaded for ExecuTorch's threadpool before another load in this process resized "
                f"it to {_POOL['threads']} threads (the pool is process-wide; running it would crash): load it "
                f"again, or load every ExecuTorch package with the same thread count")


def bind_pool(threads: int | None = None) -> PoolBinding:
    """Size ExecuTorch's process-wide threadpool to ``threads`` (None: leave it as it is; no resize if
    this module last gave it that size) and return the binding of programs loaded now.

    Resizing replaces the pool, and the XNNPACK delegates of programs loaded before keep a pointer
    to the old one: running them afterwards crashes the process. Everything in this package that
    runs ExecuTorch programs binds them here and checks the binding before each call.
    """
    if threads is not None and _POOL["threads"] != threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        _POOL["threads"] = threads
        _POOL["generation"] += 1
    return PoolBinding(_POOL["generation"])


def _pad_rows(t: Tensor, pad: int) -> Tensor:
    """``t`` (n, ...) with ``pad`` more rows, copies of its first (valid input for any tensor)."""
    if pad == 0:
        return t.contiguous()
    return torch.cat([t, t[:1].expand(pad, *t.shape[1:])]).contiguous()


class ExecuTorchBackend(Backend):
    """``executorch.runtime`` methods with explicit state I/O (the package contract's positional order).

    The state is held as the torch tensors the binding returns (``self._state``)."""

    name = "executorch"

    def __init__(self, package_dir: Path, manifest: Any, num_threads: int, decode_threads: int | None = None):
        require_module("executorch", "executorch", self.name)
        if decode_threads not in (None, num_threads):
            raise GenerationArgumentError(
                f"ExecuTorch runs every method on one process-wide threadpool, fixed once a program is loaded: "
                f"decode_threads ({decode_threads}) must equal num_threads ({num_threads}) (pass --threads "
                f"{decode_threads} to decode on {decode_threads})")
        self.decode_threads = num_threads
        with _quiet_startup():
            self._start(package_dir, manifest, num_threads)

    def _start(self, package_dir: Path, manifest: Any, num_threads: int) -> None:
        self.manifest = manifest
        self.source = str(package_dir)
        self.num_threads = num_threads
        self.config, self.layout = manifest_config_and_layout(manifest, str(package_dir))
        self._pool = bind_pool(num_threads)
        programs: dict[str, Any] = {}
        self._methods: dict[str, Any] = {}
        self._max_batch: dict[str, int] = {}  # rows one call takes (upper bound, or the static batch)
        self._static_batch: dict[str, bool] = {}
        for method in ("step", "prefill"):
            entry = manifest.graph(method)
            path = package_dir / entry.file
            if entry.file not in programs:
                programs[entry.file] = open_pte_program(path)
            loaded = load_pte_method(programs[entry.file], path, entry.method)
            meta = loaded.metadata
            got_in = [self._io(meta.input_tensor_meta(i), entry.inputs, i) for i in range(meta.num_inputs())]
            got_out = [self._io(meta.output_tensor_meta(i), entry.outputs, i) for i in range(meta.num_outputs())]
            check_graph_io(path, entry, got_in, got_out, _ET_TYPES, ordered=True)
            self._methods[method] = loaded
            self._max_batch[method] = int(meta.input_tensor_meta(0).sizes()[0])
            self._static_batch[method] = isinstance(entry.inputs[0].shape[0], int)
        prefill = manifest.graph("prefill")
        self.prefill_tokens = prefill.tokens_per_call
        self._has_valid_length = prefill.valid_length_input is not None
        self._state: list[Tensor] = self._zeros(1)

    def _zeros(self, batch: int) -> list[Tensor]:
        return [torch.from_numpy(t) for t in self.layout.zeros(batch)]

    # ---- state -----------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self._state[0].shape[0]

    def reset(self, batch_size: int) -> None:
        if batch_size == self.batch_size:
            for t in self._state:
                t.zero_()
        else:
            self._state = self._zeros(batch_size)

    def read_state(self) -> list[np.ndarray]:
        return [t.numpy().copy() for t in self._state]

    def write_state(self, tensors: list[np.ndarray]) -> None:
        batch = self.layout.check(tensors, "state")
        self._state = [torch.from_numpy(t.copy()) for t in tensors]
        assert self.batch_size == batch

    @staticmethod
    def _io(info: Any, listed: list[Any], pos: int) -> tuple[str, list[Any], str]:
        """(name, sizes, dtype) of one positional tensor; the name is the manifest's (.pte I/O is unnamed).

        A dynamic batch dim shows as its upper bound, so it is reported as dynamic (None) here.
        """
        name = listed[pos].name if pos < len(listed) else f"#{pos}"
        sizes: list[Any] = list(info.sizes())
        if pos < len(listed) and listed[pos].shape and not isinstance(listed[pos].shape[0], int) and sizes:
            sizes[0] = None
        return name, sizes, _dtype_name(info.dtype())

    # ---- Backend API -----------------------------------------------------------------------------
    def _call(self, method: str, inputs: list[Tensor]) -> Tensor:
        """Run ``method`` on batch-first ``inputs`` + the state; ``present.*`` become the state.

        A batch larger than the method takes (or, for a static-batch method, of another size) runs in
        groups of its batch, the last group padded with copies of its first row.
        """
        self._pool.check(f"package {self.source}")
        B, cap, static = self.batch_size, self._max_batch[method], self._static_batch[method]
        if B == cap or (B < cap and not static):
            outs = self._methods[method].execute([*inputs, *self._state])
            # the binding returns fresh tensors (copied out of the method's planned memory): they become
            # the state as they are, not copied once more (3.5 MB a step on the small preset, ~0.3 ms)
            self._state = list(outs[1:])
            return outs[0]
        logits = []
        for start in range(0, B, cap):
            rows = slice(start, min(start + cap, B))
            n = rows.stop - rows.start
            pad = cap - n if static else 0
            group = [_pad_rows(t[rows], pad) for t in (*inputs, *self._state)]
            outs = self._methods[method].execute(group)
            for buf, out in zip(self._state, outs[1:], strict=True):
                buf[rows].copy_(out[:n])
            logits.append(outs[0][:n])  # fresh tensors: torch.cat copies them once
        return torch.cat(logits)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        return self._call("step", [ids]).numpy()

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Chunks of T tokens (the last one padded, with its valid length); a lone token via ``step``."""
        T, B = self.prefill_tokens, input_ids.shape[0]
        logits = None
        for start in range(0, input_ids.shape[1], T):
            piece = input_ids[:, start:start + T]
            n = piece.shape[1]
            if n == 1:
                logits = self.step(piece)
                continue
            ids = torch.zeros(B, T, dtype=torch.int64)
            ids[:, :n] = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.int64))
            extra = [torch.full((B,), n, dtype=torch.int64)] if self._has_valid_length else []
            logits = self._call("prefill", [ids, *extra]).numpy()
        assert logits is not None  # T >= 1 is checked by the session
        return logits
