"""One API over the backends: ``load`` a package (or a checkpoint / model for ``torch``), then
``prefill`` / ``step`` / ``stream`` / ``generate``, with the conversation state as an object.

    sess = load("pkg/")                                   # backend from the manifest
    for piece in sess.stream("Once upon a time", max_new_tokens=64, sampling=SamplingConfig(temperature=0.8)):
        print(piece, end="", flush=True)
    sess.save_state("chat.safetensors")                   # resume later, even on another backend

A ``Session`` holds a conversation: a ``stream`` / ``generate`` call continues from where the previous
one stopped unless it is given ``continue_conversation=False`` (or after ``reset()``). Sampling is
given by keyword (``temperature=0.7, top_p=0.9, seed=1``) or as one ``SamplingConfig``. Token ids are
checked against the vocab before they reach a graph. ``last_stats`` holds the ``GenerationStats`` of
the last call (prompt / new tokens, time to first token, tok/s, why each row stopped).

Arrays in and out are numpy: ``prefill`` / ``step`` / ``logits`` give (B, V) float32 arrays, token ids
may be lists, numpy arrays or (when torch is installed) torch tensors. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend
from .errors import (
    EmptyPromptError,
    GenerationArgumentError,
    InvalidTextError,
    PackageError,
    TokenRangeError,
    UnknownBackendError,
)
from .host_threads import torch_threads
from .sampling import SamplingConfig
from .state import RecurrentState, StateLayout

BACKENDS = ("onnxruntime", "executorch", "torch")
TokenInput = Sequence[int] | Sequence[Sequence[int]] | np.ndarray  # or a torch tensor


def _is_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module`` (checked without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---- loading ------------------------------------------------------------------------------------
def load(
    source: str | os.PathLike | Any,
    backend: str | None = None,
    *,
    tokenizer: Any | None = None,
    num_threads: int | None = None,
    decode_threads: int | None = None,
) -> Session:
    """Open a model for streaming.

    source       an exported package directory (``xlstm_edge.json`` inside; backend from its manifest),
                 a checkpoint directory (``config.json`` + safetensors; torch backend), or an
                 ``xLSTMForCausalLM`` object (torch backend)
    backend      "onnxruntime" | "executorch" | "torch", or None to take it from the source
    tokenizer    a ``xlstm_edge.tokenizer.Tokenizer``; None reads the package's / checkpoint's (a model
                 object with a byte-level config gets the byte tokenizer)
    num_threads  intra-op threads of the backend (default: the cores this process may use)
    decode_threads  threads of one-token steps (default: ``num_threads``; ONNX Runtime and torch
                 only: ExecuTorch's threadpool is process-wide). A step is ~1000 small ops, so two
                 threads gain less in decode than in prefill (bench/RESULTS.md: int8 on a 2-core VM,
                 1.2-1.4x)
    """
    if backend is not None and backend not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    threads = default_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise GenerationArgumentError(f"num_threads must be >= 1, got {num_threads}")
    decode = threads if decode_threads is None else int(decode_threads)
    if decode < 1:
        raise GenerationArgumentError(f"decode_threads must be >= 1, got {decode_threads}")
    if _is_module(source):
        if backend not in (None, "torch"):
            raise PackageError(f"a model object runs on the torch backend only, not {backend!r}: export it first")
        from .torch_backend import TorchBackend

        impl: Backend = TorchBackend(source, threads, decode_threads=decode)
        return Session(impl, tokenizer if tokenizer is not None else _model_tokenizer(impl.config))

    path = Path(source)
    if not path.exists():
        raise PackageError(f"{path} does not exist")
    if not path.is_dir():
        raise PackageError(f"{path} is not a directory (expected an exported package or a checkpoint directory)")
    from xlstm_edge.export.metadata import MANIFEST_NAME

    if (path / MANIFEST_NAME).is_file():
        impl = _open_package(path, backend, threads, decode)
        if tokenizer is None:
            from xlstm_edge.tokenizer import TokenizerError, load_tokenizer

            manifest = impl.manifest  # type: ignore[attr-defined]
            try:
                tokenizer = load_tokenizer(path / manifest.tokenizer.file, config=impl.config)
            except TokenizerError as e:
                raise PackageError(f"package {path}: {e}") from None
        return Session(impl, tokenizer, eos_token_ids=_generation_eos(path))

    if (path / "config.json").is_file():
        if backend not in (None, "torch"):
            raise PackageError(
                f"{path} is a checkpoint, not an exported package: export it for {backend} first "
                f"(or use backend 'torch')"
            )
        from xlstm_edge.checkpoint import CheckpointError

        from .torch_backend import TorchBackend

        try:
            impl = TorchBackend.from_checkpoint(path, threads, decode)
        except CheckpointError as e:
            raise PackageError(str(e)) from None
        if tokenizer is None:
            from xlstm_edge.tokenizer import TokenizerError, load_tokenizer

            try:
                tokenizer = load_tokenizer(path, config=impl.config)
            except TokenizerError as e:
                raise PackageError(f"checkpoint {path}: {e}") from None
        return Session(impl, tokenizer, eos_token_ids=_generation_eos(path))
    raise PackageError(f"{path} is neither an exported package (no {MANIFEST_NAME}) nor a checkpoint (no config.json)")


def _open_package(path: Path, backend: str | None, threads: int, decode_threads: int) -> Backend:
    from xlstm_edge.export.metadata import ManifestError, read_manifest

    try:
        manifest = read_manifest(path)
    except ManifestError as e:
        raise PackageError(str(e)) from None
    if backend == "torch":
        raise PackageError(
            f"{path} is an exported {manifest.backend} package, which holds no eager weights: "
            f"the torch backend needs a checkpoint directory or a model object"
        )
    if backend is not None and backend != manifest.backend:
        raise PackageError(f"{path} was exported for {manifest.backend}, not {backend}")
    if manifest.backend == "onnxruntime":
        from .ort_backend import OrtBackend
        from .ort_genai_backend import OrtGenAIBackend, use_one_session

        if use_one_session(path, manifest):
            return OrtGenAIBackend(path, manifest, threads, decode_threads)
        return OrtBackend(path, manifest, threads, decode_threads)
    from .executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend(path, manifest, threads, decode_threads)


def _generation_eos(path: Path) -> list[int]:
    """The eos ids of ``path``/generation_config.json ([] without one); ``PackageError`` if malformed."""
    from xlstm_edge.export.metadata import ManifestError, generation_eos_ids

    try:
        return generation_eos_ids(path)
    except ManifestError as e:
        raise PackageError(str(e)) from None


def _model_tokenizer(config: Any) -> Any:
    from xlstm_edge.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    if config.bos_token_id != tok.bos_token_id or config.vocab_size < tok.vocab_size:
        raise PackageError("this model object is not byte-level: pass its tokenizer (load(model, tokenizer=...))")
    return tok


# ---- the session --------------------------------------------------------------------------------
class Session:
    """A model on one backend + its tokenizer + one conversation state (``batch_size`` rows)."""

    def __init__(self, backend: Backend, tokenizer: Any, eos_token_ids: Sequence[int] = ()):
        """``eos_token_ids``: ids that end a reply besides the tokenizer's eos (a package's or checkpoint's
        generation_config.json ``eos_token_id``)."""
        self.backend = backend
        self.tokenizer = tokenizer
        self.layout: StateLayout = backend.layout
        eos = {int(i) for i in eos_token_ids}
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        bad = sorted(i for i in eos if not 0 <= i < backend.layout.vocab_size)
        if bad:
            raise PackageError(f"eos token id {bad[0]} (generation_config.json) is outside "
                               f"0..{backend.layout.vocab_size - 1}")
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self.last_stats = None  # GenerationStats of the last stream / generate call
        self._sampler: Any = None  # the Sampler of the last sampled call (its draws continue on a resume)
        self._saved_rng: tuple[int, np.ndarray] | None = None  # (seed, generator state) from a loaded state
        self._reset_bookkeeping(backend.batch_size)

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.backend.config

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def batch_size(self) -> int:
        return self.backend.batch_size

    @property
    def state_bytes(self) -> int:
        """Bytes of the recurrent state now held (all rows); constant in the context length."""
        return self.layout.bytes_per_row * self.batch_size

    @property
    def is_fresh(self) -> bool:
        """True when no token has been fed and none is pending."""
        return self._pending is None and not bool(self._num_tokens.any())

    @property
    def logits(self) -> np.ndarray | None:
        """Logits for the next token (B, V), or None when a token is pending (fed on the next call)."""
        return self._logits

    @property
    def num_tokens(self) -> np.ndarray:
        """(B,) int64: tokens fed so far in each row."""
        return self._num_tokens.copy()

    @property
    def recent_tokens(self) -> np.ndarray:
        """(B, RECENT_WINDOW) int64, -1 = empty: the recent tokens the repetition penalty sees."""
        return self._recent

    def __repr__(self) -> str:
        return f"Session({self.backend.describe()}, batch {self.batch_size}, vocab {self.vocab_size})"

    def host_ops(self) -> AbstractContextManager[None]:
        """A context for host work around the backend's calls (sampling, copies): torch, where something
        loaded it, on one thread when the backend has a thread pool of its own (see ``host_threads``)."""
        return torch_threads(self.backend.host_torch_threads)

    # ---- state ---------------------------------------------------------------------------------
    def _reset_bookkeeping(self, batch_size: int) -> None:
        fresh = RecurrentState.fresh(self.layout, batch_size)
        self._logits: np.ndarray | None = None
        self._pending: np.ndarray | None = None
        self._recent = fresh.recent
        self._num_tokens = fresh.num_tokens

    def reset(self, batch_size: int = 1) -> None:
        """Forget the conversation: zero state for ``batch_size`` rows."""
        if batch_size < 1:
            raise GenerationArgumentError(f"batch_size must be >= 1, got {batch_size}")
        self.backend.reset(batch_size)
        self._reset_bookkeeping(batch_size)
        self._sampler, self._saved_rng = None, None

    def sampler_state(self) -> tuple[int, np.ndarray] | None:
        """(seed, generator state) of the conversation's last sampled draw, or None (greedy / fresh)."""
        if self._sampler is not None and not self._sampler.config.greedy:
            return self._sampler.seed, self._sampler.rng_state()
        return self._saved_rng

    def attach_sampler(self, sampler: Any) -> None:
        """Make ``sampler`` the conversation's: a seeded sampler with the seed of the conversation's last
        draws continues them (so a resumed run equals the uninterrupted one)."""
        prior = self.sampler_state()
        if sampler.config.seed is not None and prior is not None and prior[0] == sampler.seed:
            sampler.set_rng_state(prior[1])
        self._sampler, self._saved_rng = sampler, None

    def get_state(self) -> RecurrentState:
        """A copy of the whole conversation state (fork it, save it, set it back later)."""
        with self.host_ops():
            return RecurrentState(
                self.layout,
                self.backend.read_state(),
                None if self._logits is None else self._logits.copy(),
                None if self._pending is None else self._pending.copy(),
                self._recent.copy(),
                self._num_tokens.copy(),
                self.sampler_state(),
            )

    def set_state(self, state: RecurrentState) -> None:
        """Continue from ``state`` (copied in); it must belong to this model."""
        from .errors import StateMismatchError

        if state.layout.config_hash != self.layout.config_hash:
            raise StateMismatchError(
                f"state is from another model: {state.layout.model_name!r} (config {state.layout.config_hash}), "
                f"this session runs {self.layout.model_name!r} (config {self.layout.config_hash})"
            )
        if state.pending is not None:
            self._check_ids(state.pending[:, None])
        with self.host_ops():
            self.backend.write_state(state.tensors)
        self._logits = None if state.logits is None else state.logits.copy()
        self._pending = None if state.pending is None else state.pending.copy()
        self._recent = state.recent.copy()
        self._num_tokens = state.num_tokens.copy()
        self._sampler = None
        self._saved_rng = None if state.rng is None else (state.rng[0], state.rng[1].copy())

    def save_state(self, path: str | os.PathLike) -> Path:
        """Write the conversation state to a safetensors file (atomically: write, then rename)."""
        return self.get_state().save(path)

    def load_state(self, path: str | os.PathLike) -> None:
        """Continue from a state file written by ``save_state`` (any backend, same model)."""
        self.set_state(RecurrentState.load(path, self.layout))

    # ---- feeding tokens ------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no specials added; ``allow_special``: special-token text such as
        ``<eos>`` becomes its special id, as in a rendered chat template). Raises ``InvalidTextError``
        on text that is not valid UTF-8 (lone surrogates, as Python decodes invalid bytes of argv)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[e.start].encode("utf-8", "surrogateescape") if 0xDC80 <= ord(text[e.start]) <= 0xDCFF \
                else None
            what = f"byte 0x{bad[0]:02x}" if bad else f"code point U+{ord(text[e.start]):04X}"
            raise InvalidTextError(f"the text is not valid UTF-8 ({what} at character {e.start})") from None
        if allow_special:
            return self.tokenizer.encode(text, allow_special=True)
        return self.tokenizer.encode(text)

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        """Raise ``TokenRangeError`` naming the first id of (B, T) ``ids`` outside the vocab."""
        flat = ids.reshape(-1).tolist()  # plain ints: cheaper than array ops for one token per step
        if flat and (min(flat) < 0 or max(flat) >= self.vocab_size):
            bad = (ids < 0) | (ids >= self.vocab_size)
            row, pos = (int(i[0]) for i in np.nonzero(bad))
            raise TokenRangeError(
                f"token id {int(ids[row, pos])} (row {row}, position {pos}) is outside 0..{self.vocab_size - 1}"
            )
        return ids

    def as_ids(self, tokens: TokenInput) -> np.ndarray | list[np.ndarray]:
        """(B, T) int64 array for equal-length rows, a list of (1, T_b) arrays for ragged ones."""
        if hasattr(tokens, "shape") and hasattr(tokens, "dtype"):  # a numpy array or a torch tensor
            arr = np.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens)
            if arr.dtype.kind not in "iu" or arr.ndim not in (1, 2):
                raise GenerationArgumentError(f"tokens must be an integer (T,) or (B, T) array, got "
                                              f"{arr.dtype} {tuple(arr.shape)}")
            ids = arr.astype(np.int64).reshape(1, -1) if arr.ndim == 1 else arr.astype(np.int64)
            return self._check_ids(ids)
        rows = list(tokens)
        if rows and not isinstance(rows[0], int | np.integer) and hasattr(rows[0], "__len__"):
            arrays = [np.asarray([int(t) for t in r], dtype=np.int64).reshape(1, -1) for r in rows]
        else:
            arrays = [np.asarray([int(t) for t in rows], dtype=np.int64).reshape(1, -1)]
        for a in arrays:
            self._check_ids(a)
        if len({a.shape[1] for a in arrays}) == 1:
            return np.concatenate(arrays)
        return arrays

    def _record(self, ids: np.ndarray) -> None:
        """Bookkeeping after feeding ``ids`` (B, T): recent window, token counts."""
        window = self._recent.shape[1]
        T = ids.shape[1]
        if T >= window:
            self._recent = ids[:, -window:].copy()
        else:  # shift in place: no new (B, W) array per step
            self._recent[:, :-T] = self._recent[:, T:]
            self._recent[:, -T:] = ids
        self._num_tokens += T

    def _take_pending(self, ids: np.ndarray) -> np.ndarray:
        """Prepend the pending tokens (chosen but not yet fed) to ``ids`` (B, T)."""
        if self._pending is None:
            return ids
        ids = np.concatenate([self._pending[:, None], ids], axis=1)
        self._pending = None
        return ids

    def prefill(self, tokens: TokenInput) -> np.ndarray:
        """Feed a prompt after the current state; return the next-token logits (B, V).

        ``tokens``: a list of ids (one row), a list of lists (one per row; rows of different lengths
        are fed one row at a time) or a (B, T) tensor. A fresh session takes the batch size of ``tokens``.
        """
        ids = self.as_ids(tokens)
        batch = ids.shape[0] if isinstance(ids, np.ndarray) else len(ids)
        lengths = [ids.shape[1]] * batch if isinstance(ids, np.ndarray) else [t.shape[1] for t in ids]
        if min(lengths) == 0 and self._pending is None:
            raise EmptyPromptError("prompt is empty: give at least one token")
        if self.is_fresh and batch != self.batch_size:
            self.reset(batch)
        if batch != self.batch_size:
            raise GenerationArgumentError(f"the session holds {self.batch_size} row(s); got {batch} prompt(s) "
                                          f"(call reset() to start over with another batch size)")
        if isinstance(ids, np.ndarray):
            ids = self._take_pending(ids)
            with self.host_ops():
                self._logits = self.backend.prefill(ids).copy()
            self._record(ids)
            return self._logits
        return self._prefill_ragged(ids)

    def _prefill_ragged(self, rows: list[np.ndarray]) -> np.ndarray:
        """Rows of different lengths: run each as a batch of one, then stack the states."""
        whole = self.get_state()
        done = []
        for b, ids in enumerate(rows):
            self.set_state(whole.row(b))
            self.prefill(ids)
            done.append(self.get_state())
        self.set_state(RecurrentState.stack(done))
        assert self._logits is not None
        return self._logits

    def step(self, tokens: TokenInput) -> np.ndarray:
        """Feed one token per row ((B,) or (B, 1)); return the next-token logits (B, V) float32."""
        ids = self.as_ids(tokens)
        if not isinstance(ids, np.ndarray) or (ids.shape[0] > 1 and ids.shape[1] != 1):
            raise GenerationArgumentError("step takes one token per row: (B,) or (B, 1)")
        ids = ids.reshape(-1, 1)
        if ids.shape[0] != self.batch_size:
            if not self.is_fresh:
                raise GenerationArgumentError(f"step takes one token for each of the {self.batch_size} row(s), "
                                              f"got {ids.shape[0]}")
            self.reset(ids.shape[0])
        if self._pending is not None:
            self._flush_pending()
        with self.host_ops():
            self._logits = self.backend.step(ids).copy()
        self._record(ids)
        return self._logits

    def _flush_pending(self) -> None:
        assert self._pending is not None
        ids = self._pending[:, None]
        self._pending = None
        with self.host_ops():
            self._logits = self.backend.step(ids).copy()
        self._record(ids)

    def next_logits(self) -> np.ndarray:
        """Logits for the next token, feeding the pending tokens first if there are any."""
        if self._pending is not None:
            self._flush_pending()
        if self._logits is None:
            raise EmptyPromptError("nothing has been fed yet: prefill a prompt first")
        return self._logits

    def set_pending(self, tokens: np.ndarray) -> None:
        """Mark (B,) tokens as chosen: they are fed at the start of the next call."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self._check_ids(ids.reshape(-1, 1))
        self._pending = ids.copy()
        self._logits = None

    # ---- generation (see generate.py) ----------------------------------------------------------
    def stream(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        stop_tokens: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
        add_bos: bool = False,
        *,
        continue_conversation: bool = True,
        **sampling_fields: Any,
    ) -> Iterator[str] | Iterator[list[str]]:
        """Yield text pieces as they come: ``str`` for one prompt, ``list[str]`` (one per row) for a list.

        continue_conversation  True: the prompt follows the conversation held so far (an empty prompt
                     continues from the state; an error on a fresh session). False: start over first.
        sampling / sampling_fields  a ``SamplingConfig``, or its fields by keyword (``temperature=0.7,
                     top_p=0.9, seed=1``); not both. Default: greedy.
        ``stop_tokens`` defaults to ``eos_token_ids`` (the tokenizer's eos and generation_config.json's); generation of a row stops at a stop token (not
        shown) or a stop string (not shown, nor anything after it; it stays in the state). Stats of
        the call land in ``last_stats``.
        """
        from .generate import stream_text

        sampling = sampling_config(sampling, sampling_fields)
        if not continue_conversation:
            self.reset(self.batch_size)
        return stream_text(self, prompt, max_new_tokens, sampling, stop_tokens, stop_strings, add_bos)

    def generate_ids(
        self,
        prompt_ids: Sequence[int] | Sequence[Sequence[int]],
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        stop_tokens: Sequence[int] = (),
        *,
        continue_conversation: bool = True,
        **sampling_fields: Any,
    ) -> list[list[int]]:
        """Token-level generation: new ids per row (a row's stop token is its last id). No text, no bos.

        ``prompt_ids``: ids of one row, or one list per row; empty lists continue from the state.
        Other arguments as in ``stream``.
        """
        from .generate import GenerationStats, _check_args, start_generation, stream_tokens
        from .sampling import Sampler

        _check_args(max_new_tokens, ())
        sampling = sampling_config(sampling, sampling_fields)
        if not continue_conversation:
            self.reset(self.batch_size)
        rows = [list(r) for r in prompt_ids] if prompt_ids and not isinstance(prompt_ids[0], int) \
            else [list(prompt_ids)]  # type: ignore[arg-type]
        sampler = Sampler(sampling)
        stats = GenerationStats(batch_size=len(rows), seed=sampler.seed, stopped=["length"] * len(rows))
        self.last_stats = stats
        logits = start_generation(self, rows, stats)
        self.attach_sampler(sampler)
        should_stop = [False] * len(rows)
        out: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        for tokens in stream_tokens(self, logits, max_new_tokens, sampler, set(stop_tokens), stats, should_stop):
            for b, t in enumerate(tokens.tolist()):
                if not done[b]:
                    out[b].append(t)
                    done[b] = should_stop[b]
        return out

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        stop_tokens: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
        add_bos: bool = False,
        *,
        continue_conversation: bool = True,
        **sampling_fields: Any,
    ) -> str | list[str]:
        """The whole completion text (``str``, or ``list[str]`` for a list of prompts); arguments as in
        ``stream``, e.g. ``sess.generate("x", temperature=0.7, max_new_tokens=32)``."""
        pieces = list(self.stream(prompt, max_new_tokens, sampling, stop_tokens, stop_strings, add_bos,
                                  continue_conversation=continue_conversation, **sampling_fields))
        if isinstance(prompt, str):
            return "".join(pieces)  # type: ignore[arg-type]
        return ["".join(row) for row in zip(*pieces, strict=True)] if pieces else ["" for _ in prompt]


def sampling_config(sampling: SamplingConfig | None, fields: dict[str, Any]) -> SamplingConfig | None:
    """One ``SamplingConfig`` from a config or its fields by keyword (not both; unknown names raise)."""
    if not fields:
        return sampling
    if sampling is not None:
        raise GenerationArgumentError(f"give sampling= or sampling keywords ({', '.join(fields)}), not both")
    known = set(SamplingConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise GenerationArgumentError(f"unknown argument(s) {', '.join(unknown)}; sampling keywords are "
                                      f"{', '.join(sorted(known))}")
    return SamplingConfig(**fields)
