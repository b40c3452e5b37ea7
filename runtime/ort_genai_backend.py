"""ONNX Runtime backend over ONE session: the package's ``genai.onnx`` for prefill and decode alike.

Why: a quantized package's ``MatMulNBits`` kernels keep their weights in a prepacked layout of their own,
one copy per session, and ONNX Runtime's Python API cannot share prepacked weights between sessions
(``PrepackedWeightsContainer`` is C/C++ only). The two-session backend (``ort_backend``: step + prefill
graphs) therefore holds a quantized package twice, 14 GB for 7B int8. ``genai.onnx`` takes any number of
tokens per call (T = 1 decodes, a prompt chunk of T tokens prefills), so one session does both with one
copy of the weights. Same IOBinding scheme as ``ort_backend``: two sets of state buffers (A, B), here in
GenAI's slot layout (``genai_slots``); ``read_state`` / ``write_state`` convert to and from our layout,
so saved states are the same files either backend writes and reads.

Prefill feeds the prompt in chunks of the package's ``prefill`` tokens per call (the genai graph's
mLSTM is the parallel form over one call: its T x T gate matrices grow with T).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backend import DoubleBufferBackend, require_module
from .errors import GenerationArgumentError, PackageError
from .genai_slots import SlotLayout
from .graphs import open_ort_session, ort_session_options
from .package_checks import manifest_config_and_layout

SLOTS = ("conv_state", "recurrent_state")
# None: one session wherever the package is quantized (MatMulNBits) and has genai.onnx; True / False force it
ONE_SESSION_OVERRIDE: bool | None = None


def use_one_session(package_dir: Path, manifest: Any) -> bool:
    """Whether to open ``package_dir`` with ``OrtGenAIBackend`` (see the module docstring)."""
    from .ort_backend import _has_nbits

    if ONE_SESSION_OVERRIDE is not None:
        return ONE_SESSION_OVERRIDE
    return bool(manifest.genai and manifest.genai.get("graph")) and _has_nbits(package_dir, manifest)


class OrtGenAIBackend(DoubleBufferBackend):
    """onnxruntime, one ``InferenceSession`` on ``genai.onnx`` (CPU execution provider)."""

    name = "onnxruntime"

    def __init__(self, package_dir: Path, manifest: Any, num_threads: int, decode_threads: int | None = None):
        require_module("onnxruntime", "onnxruntime", self.name)
        import onnxruntime as ort

        self._ort = ort
        self.manifest = manifest
        self.source = str(package_dir)
        # one session, one thread pool: prefill and decode share it
        if decode_threads is not None and decode_threads != num_threads:
            raise GenerationArgumentError(
                f"package {package_dir} streams on one ONNX Runtime session (quantized, genai.onnx: each session "
                f"would hold its own prepacked weights), so decode runs on its {num_threads} threads: "
                f"decode_threads {decode_threads} cannot differ from num_threads")
        self.num_threads = self.decode_threads = num_threads
        self.config, self.layout = manifest_config_and_layout(manifest, str(package_dir))
        if not manifest.genai or not manifest.genai.get("graph"):
            raise PackageError(f"package {package_dir}: it has no genai.onnx graph (exported with --no-genai?)")
        path = package_dir / manifest.genai["graph"]
        self.session = open_ort_session(path, options=ort_session_options(num_threads))
        L = self.config.num_hidden_layers
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        self._past = [f"past_key_values.{k}.{s}" for k in range(L) for s in SLOTS]
        self._present = [f"present.{k}.{s}" for k in range(L) for s in SLOTS]
        missing = [n for n in ["input_ids", *self._past] if n not in ins] + \
                  [n for n in ["logits", *self._present] if n not in outs]
        if missing:
            raise PackageError(f"{path}: not a GenAI graph of this model: it lacks {', '.join(missing[:3])}"
                               + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        conv = [int(d) for d in ins[self._past[0]].shape[1:]]
        rec = [int(d) for d in ins[self._past[1]].shape[1:]]
        try:
            self.slots = SlotLayout(self.layout.tensors, conv, rec)
        except ValueError as e:
            raise PackageError(f"{path}: {e}") from None
        self.prefill_tokens = manifest.graph("prefill").tokens_per_call
        self._alloc(1)

    def describe(self) -> str:
        return f"{self.name} ({self.num_threads} threads, one session: genai.onnx) {self.source}"

    # ---- buffers and bindings --------------------------------------------------------------------
    def _alloc(self, batch: int) -> None:
        self._bufs = [self.slots.zeros(batch), self.slots.zeros(batch)]
        self._cur = 0  # self._bufs[self._cur] holds the state now
        self._logits = np.zeros((batch, 1, self.vocab_size), dtype=np.float32)
        ov = self._ort.OrtValue.ortvalue_from_numpy
        self._state_ovs = [[ov(t) for t in bufs] for bufs in self._bufs]
        self._logits_ov = ov(self._logits)
        self._ids: dict[int, np.ndarray] = {}  # tokens per call -> (B, T) ids buffer
        self._bindings: dict[tuple[int, int], Any] = {}

    def _binding(self, tokens: int, src: int) -> tuple[Any, np.ndarray]:
        """The IOBinding of a call of ``tokens`` tokens reading state set ``src``, and its ids buffer."""
        key = (tokens, src)
        if key not in self._bindings:
            ids = self._ids.get(tokens)
            if ids is None:
                ids = np.zeros((self.batch_size, tokens), dtype=np.int64)
            io = self.session.io_binding()
            io.bind_ortvalue_input("input_ids", self._ort.OrtValue.ortvalue_from_numpy(ids))
            for name, v in zip(self._past, self._state_ovs[src], strict=True):
                io.bind_ortvalue_input(name, v)
            io.bind_ortvalue_output("logits", self._logits_ov)
            for name, v in zip(self._present, self._state_ovs[1 - src], strict=True):
                io.bind_ortvalue_output(name, v)
            if tokens not in (1, self.prefill_tokens):  # a prompt's last short chunk: not kept
                return io, ids
            self._ids[tokens] = ids
            self._bindings[key] = (io, ids)
        return self._bindings[key]

    def _call(self, input_ids: np.ndarray) -> np.ndarray:
        io, ids = self._binding(input_ids.shape[1], self._cur)
        np.copyto(ids, input_ids)
        self.session.run_with_iobinding(io)
        self._cur = 1 - self._cur
        return self._logits[:, 0]

    # ---- Backend API -----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self._logits.shape[0]

    def _pack(self, tensors: list[np.ndarray], bufs: list[np.ndarray]) -> None:
        self.slots.pack(tensors, bufs)

    def _unpack(self, bufs: list[np.ndarray]) -> list[np.ndarray]:
        return self.slots.unpack(bufs)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        if input_ids.size != self.batch_size:
            raise GenerationArgumentError(f"step takes {self.batch_size} ids (one a row), got {input_ids.shape}")
        return self._call(input_ids.reshape(self.batch_size, 1))

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Chunks of at most the package's prefill tokens per call, each one graph call."""
        T = self.prefill_tokens
        logits = self._logits[:, 0]
        for start in range(0, input_ids.shape[1], T):
            logits = self._call(np.ascontiguousarray(input_ids[:, start:start + T]))
        return logits
