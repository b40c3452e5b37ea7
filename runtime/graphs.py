"""The one place that loads and runs a package's graph files, per format.

``open_ort_session(path, threads)``   an onnxruntime ``InferenceSession`` for a ``.onnx`` file
``SharedWeights(package_dir)``        the package's weights file mapped once (numpy memmap): its
                                      ``OrtValue``s go to every session through ``add_initializer``,
                                      so the step and prefill sessions hold one copy of the weights
``open_pte_program(path)``            an ``executorch.runtime`` Program for a ``.pte`` file
``OrtGraph(path)`` / ``PteMethod(path, method)``
                                      one graph with ``run(inputs) -> outputs`` (torch tensors, the package
                                      contract's positional order): what export verification and
                                      quantization run; the streaming backends (``OrtBackend``,
                                      ``ExecuTorchBackend``) open their sessions and programs here too.

A file that is missing, truncated or not a graph at all raises ``PackageError`` with one line naming
the file (``cannot load PATH: ...``), before the runtime's own multi-line message: an ONNX graph whose
external weights file is shorter than its initializers need names that file.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import PackageError
from .onnx_initializers import GraphRecord, ProtoError, read_graph

if TYPE_CHECKING:
    from torch import Tensor


# ---- ONNX Runtime --------------------------------------------------------------------------------
def check_external_data(path: Path) -> GraphRecord:
    """Every external initializer of the graph at ``path`` must lie inside its data file; returns the
    graph's initializer records.

    Raises ``PackageError`` naming the graph or the data file (missing, or shorter than needed).
    """
    if not path.is_file():
        raise PackageError(f"cannot load {path}: the file does not exist")
    try:
        record = read_graph(path)
    except (ProtoError, UnicodeDecodeError, ValueError, OSError) as e:
        raise PackageError(f"cannot load {path}: not an ONNX graph ({str(e).splitlines()[0] or type(e).__name__})"
                           ) from None
    if not record.num_nodes:
        raise PackageError(f"cannot load {path}: not an ONNX graph (no nodes)")
    need: dict[str, int] = {}
    for t in record.initializers:
        if t.location is not None:
            end = t.offset + (t.length if t.length is not None else (t.nbytes or 0))
            need[t.location] = max(need.get(t.location, 0), end)
    for name, end in need.items():
        data = path.parent / name
        if not data.is_file():
            raise PackageError(f"cannot load {path}: its weights file {data} does not exist")
        size = data.stat().st_size
        if size < end:
            raise PackageError(f"cannot load {path}: its weights file {data} is truncated ({size:,} bytes, "
                               f"the graph needs {end:,})")
    return record


class SharedWeights:
    """The external weights of a package's ONNX graphs, mapped once and handed to every session.

    ONNX Runtime loads a graph's external initializers per session, so a step and a prefill session
    would each hold the weights. Here the data file is mapped once (numpy memmap, read-only: pages
    are shared with the page cache and the other session) and each external initializer becomes an
    ``OrtValue`` over its bytes, given to a session through ``SessionOptions.add_initializer``; equal
    (file, offset, length, dtype, shape) records, even under different names, share one ``OrtValue``.
    Keep this object alive as long as the sessions. Kernels that prepack their weights
    (MatMulNBits) still keep one packed copy per session: onnxruntime's Python API has no shared
    prepacked-weights container (the C API's ``CreateSessionWithPrepackedWeightsContainer``).
    """

    def __init__(self, base: Path):
        self.base = Path(base)
        self._maps: dict[str, np.memmap] = {}
        self._values: dict[tuple, Any] = {}

    def _map(self, location: str) -> np.memmap:
        if location not in self._maps:
            self._maps[location] = np.memmap(self.base / location, dtype=np.uint8, mode="r")
        return self._maps[location]

    def array(self, location: str, offset: int, length: int, dtype: np.dtype, dims: tuple[int, ...]) -> np.ndarray:
        """A read-only view of ``length`` bytes at ``offset`` of the data file, as ``dtype`` ``dims``."""
        return self._map(location)[offset:offset + length].view(dtype).reshape(dims)

    def add_to(self, options: Any, record: GraphRecord) -> int:
        """``options.add_initializer`` for every external initializer of ``record``; returns how many."""
        import onnxruntime as ort

        n = 0
        for t in record.initializers:
            dtype = t.dtype
            if t.location is None or dtype is None:
                continue
            length = t.length if t.length is not None else t.nbytes
            assert length is not None
            key = (t.location, t.offset, length, dtype.str, t.dims)
            if key not in self._values:
                arr = self.array(t.location, t.offset, length, dtype, t.dims)
                self._values[key] = ort.OrtValue.ortvalue_from_numpy(arr)
            options.add_initializer(t.name, self._values[key])
            n += 1
        return n

    @property
    def num_values(self) -> int:
        """Distinct tensors handed out so far."""
        return len(self._values)


def ort_session_options(threads: int | None) -> Any:
    """Options of every session we open: ``threads`` intra-op threads (None: ONNX Runtime's default),
    one inter-op thread, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def open_ort_session(path: Path, threads: int | None = None, options: Any = None,
                     weights: SharedWeights | None = None) -> Any:
    """An ``InferenceSession`` (CPU) for the graph at ``path``; ``PackageError`` naming the file if it
    cannot be loaded. ``options`` replaces ``ort_session_options(threads)``; ``weights`` gives the
    session its external initializers from a ``SharedWeights`` (one copy for several sessions)."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    path = Path(path)
    record = check_external_data(path)
    if weights is not None:
        options = options or ort_session_options(threads)
        weights.add_to(options, record)
    load_errors = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph,
                   ort_errors.InvalidProtobuf, ort_errors.NoSuchFile, ort_errors.NotImplemented,
                   ort_errors.RuntimeException)
    try:
        return ort.InferenceSession(str(path), options or ort_session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except load_errors as e:
        raise PackageError(f"cannot load {path}: {str(e).splitlines()[0]}") from None


class OrtGraph:
    """One .onnx graph: ``run(inputs) -> outputs`` in the order of the graph's own inputs / outputs."""

    def __init__(self, path: Path, num_threads: int | None = 2):
        self.path = Path(path)
        self.session = open_ort_session(self.path, num_threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        """torch tensors in and out (export verification and quantization run on torch)."""
        import torch

        feeds = {name: t.contiguous().numpy() for name, t in zip(self.input_names, inputs, strict=True)}
        return [torch.from_numpy(a) for a in self.session.run(self.output_names, feeds)]


# ---- ExecuTorch ----------------------------------------------------------------------------------
def load_quantized_kernels() -> None:
    """Register ``quantized_decomposed::*`` kernels (an int8 embedding runs on them), if installed."""
    if importlib.util.find_spec("executorch.kernels.quantized") is not None:
        importlib.import_module("executorch.kernels.quantized")


def open_pte_program(path: Path) -> Any:
    """An ``executorch.runtime`` Program for the .pte at ``path``; ``PackageError`` naming the file if
    it is missing, truncated or not a program."""
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise PackageError(f"cannot load {path}: the file does not exist")
    load_quantized_kernels()
    try:
        return Runtime.get().load_program(path)
    except (RuntimeError, ValueError) as e:  # "Failed to load program, error: 0x.."
        raise PackageError(f"cannot load {path}: {str(e).splitlines()[0]} (truncated or not a .pte?)") from None


def load_pte_method(program: Any, path: Path, method: str) -> Any:
    """``program.load_method(method)``; ``PackageError`` naming the file if it lacks the method or
    cannot load it."""
    if method not in program.method_names:
        raise PackageError(f"{path} has no method {method!r} (has {sorted(program.method_names)})")
    try:
        return program.load_method(method)
    except RuntimeError as e:
        raise PackageError(f"cannot load method {method!r} of {path}: {str(e).splitlines()[0]}") from None


class PteMethod:
    """One method of a .pte: ``run(inputs) -> outputs`` (outputs are fresh tensors; inputs are read in place).

    ``num_threads`` sizes ExecuTorch's process-wide threadpool (None: as it is).
    """

    def __init__(self, path: Path, method: str, num_threads: int | None = 2, program: Any = None):
        from .executorch_backend import bind_pool

        self._pool = bind_pool(num_threads)
        self.path = Path(path)
        self.program = program if program is not None else open_pte_program(self.path)
        self.method_name = method
        self.method = load_pte_method(self.program, self.path, method)

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        self._pool.check(f"{self.path} ({self.method_name})")
        return list(self.method.execute([t.contiguous() for t in inputs]))


__all__ = ["OrtGraph", "PteMethod", "SharedWeights", "check_external_data", "load_pte_method", "load_quantized_kernels",
           "open_ort_session", "open_pte_program", "ort_session_options"]
