"""ONNX Runtime backend: the package's ``step`` and ``prefill`` graphs with IOBinding.

The state lives in two sets of buffers (A and B, numpy arrays whose memory ``OrtValue``s wrap): a
call reads ``past.*`` from one set and writes ``present.*`` into the other, then the roles swap.
Input ids, valid length and logits have fixed buffers too, and the four bindings (step / prefill,
A->B / B->A) are built once per batch size: a step allocates nothing, memory stays flat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backend import DoubleBufferBackend, require_module
from .errors import GenerationArgumentError, PackageError
from .graphs import SharedWeights, open_ort_session, ort_session_options
from .package_checks import check_graph_io, manifest_config_and_layout

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "int32": "tensor(int32)"}


# None: prepack only where MatMulNBits runs (its kernels need their packed layout); True / False force it
PREPACK_OVERRIDE: bool | None = None


def _has_nbits(package_dir: Path, manifest: Any) -> bool:
    """Whether the package's graphs use MatMulNBits (a quantized ONNX package)."""
    return any(b"MatMulNBits" in (package_dir / manifest.graph(m).file).read_bytes() for m in ("step", "prefill"))


class OrtBackend(DoubleBufferBackend):
    """onnxruntime ``InferenceSession``s on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, package_dir: Path, manifest: Any, num_threads: int, decode_threads: int | None = None):
        require_module("onnxruntime", "onnxruntime", self.name)
        import onnxruntime as ort

        self.manifest = manifest
        self.source = str(package_dir)
        self.num_threads = num_threads
        self.decode_threads = num_threads if decode_threads is None else decode_threads
        self.config, self.layout = manifest_config_and_layout(manifest, str(package_dir))
        def options(threads: int) -> Any:
            # pool threads keep ONNX Runtime's default spin-wait, even when they fill every core: with
            # the session's own torch work kept on one thread (host_threads), spinning is the faster
            # choice. Small preset, 2 threads, 2-core VM, 2026-11-23, tok/s, spinning vs not: int8
            # 138-142 vs 118-125, fp32 48-51 vs 45-46 (it was the other way round while torch's
            # OpenMP workers spun beside it)
            opts = ort_session_options(threads)
            if not prepack:
                # MatMul would keep a packed copy of every float weight per session beside the shared
                # mapped one; without prepacking both sessions read the one copy
                opts.add_session_config_entry("session.disable_prepacking", "1")
            return opts

        # quantized graphs (MatMulNBits) need their prepacked layout, and a prepacked initializer that
        # was handed in cannot be freed: there each session loads its own weights (small int8, peak RSS
        # 376 MiB own vs 485 shared); float32 graphs share one mapped copy, unpacked
        prepack = _has_nbits(package_dir, manifest) if PREPACK_OVERRIDE is None else PREPACK_OVERRIDE

        self._ort = ort
        # one mapped copy of weights.bin for both sessions (RSS: the weights once, not per session)
        self.weights = SharedWeights(package_dir)
        self._sessions: dict[str, Any] = {}
        for method in ("step", "prefill"):
            entry = manifest.graph(method)
            path = package_dir / entry.file
            threads = self.decode_threads if method == "step" else num_threads
            sess = open_ort_session(path, options=options(threads), weights=None if prepack else self.weights)
            got_in = [(i.name, i.shape, i.type) for i in sess.get_inputs()]
            got_out = [(o.name, o.shape, o.type) for o in sess.get_outputs()]
            check_graph_io(path, entry, got_in, got_out, _ORT_TYPES, ordered=False)
            self._sessions[method] = sess
        prefill = manifest.graph("prefill")
        self.prefill_tokens = prefill.tokens_per_call
        self.valid_length_input = prefill.valid_length_input
        self._pad_id = 0
        # a graph exported for one fixed batch size names it in the manifest instead of "batch"
        fixed = {g.inputs[0].shape[0] for g in manifest.graphs.values() if isinstance(g.inputs[0].shape[0], int)}
        if len(fixed) > 1:
            raise PackageError(f"package {package_dir}: its graphs were exported for different fixed batch sizes")
        self._fixed_batch: int | None = next(iter(fixed), None)
        self._alloc(self._fixed_batch or 1)

    # ---- buffers and bindings --------------------------------------------------------------------
    def _ov(self, t: np.ndarray) -> Any:
        """An OrtValue over the memory of ``t`` (no copy; ``t`` must outlive it)."""
        return self._ort.OrtValue.ortvalue_from_numpy(t)

    def _alloc(self, batch: int) -> None:
        if self._fixed_batch is not None and batch != self._fixed_batch:
            raise GenerationArgumentError(f"package {self.source} was exported for batch {self._fixed_batch} "
                                          f"only, got {batch} rows")
        B, T, V = batch, self.prefill_tokens, self.vocab_size
        self._bufs = [self.layout.zeros(B), self.layout.zeros(B)]
        self._cur = 0  # self._bufs[self._cur] holds the state now
        self._step_ids = np.zeros((B, 1), dtype=np.int64)
        self._prefill_ids = np.zeros((B, T), dtype=np.int64)
        self._valid = np.zeros(B, dtype=np.int64)
        self._logits = np.zeros((B, V), dtype=np.float32)
        state_ovs = [[self._ov(t) for t in bufs] for bufs in self._bufs]
        ids_ov = {"step": self._ov(self._step_ids), "prefill": self._ov(self._prefill_ids)}
        valid_ov, logits_ov = self._ov(self._valid), self._ov(self._logits)
        self._keep = (state_ovs, ids_ov, valid_ov, logits_ov)  # the OrtValues must stay alive
        self._bindings: dict[tuple[str, int], Any] = {}
        for method, sess in self._sessions.items():
            for src in (0, 1):
                io = sess.io_binding()
                io.bind_ortvalue_input("input_ids", ids_ov[method])
                if method == "prefill" and self.valid_length_input:
                    io.bind_ortvalue_input(self.valid_length_input, valid_ov)
                for spec, ov in zip(self.layout.tensors, state_ovs[src], strict=True):
                    io.bind_ortvalue_input(spec.input_name, ov)
                io.bind_ortvalue_output("logits", logits_ov)
                for spec, ov in zip(self.layout.tensors, state_ovs[1 - src], strict=True):
                    io.bind_ortvalue_output(spec.output_name, ov)
                self._bindings[(method, src)] = io

    def _run(self, method: str) -> np.ndarray:
        self._sessions[method].run_with_iobinding(self._bindings[(method, self._cur)])
        self._cur = 1 - self._cur
        return self._logits

    # ---- Backend API -----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self._step_ids.shape[0]

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        np.copyto(self._step_ids, input_ids.reshape(self._step_ids.shape))
        return self._run("step")

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Whole chunks of T tokens through the prefill graph; a last lone token through the step graph."""
        T = self.prefill_tokens
        logits = self._logits
        for start in range(0, input_ids.shape[1], T):
            piece = input_ids[:, start:start + T]
            n = piece.shape[1]
            if n == 1:
                logits = self.step(piece)
                continue
            self._prefill_ids[:, :n] = piece
            self._prefill_ids[:, n:] = self._pad_id
            self._valid.fill(n)
            logits = self._run("prefill")
        return logits
