"""The conversation state as an object: recurrent tensors + next-token logits, saved as safetensors.

``StateLayout`` says which tensors a model's state has (names ``past.{layer}.{name}``, shapes
without batch, spec order) and which model it belongs to (a hash of the canonical config).
``RecurrentState`` holds one state: the tensors (B, *shape) float32, plus what a conversation needs
to continue exactly: the logits for the next token (B, V) or the tokens chosen but not yet fed
(B,), the recent tokens for the repetition penalty (B, RECENT_WINDOW), the token count (B,) and,
after a sampled run, the sampler's seed and random state (a resume with the same seed continues
the draws of the uninterrupted run). Its size never depends on the context length.

After a stop string the state holds every token the model produced, the stop string's included
(it was generated, only not shown): a resumed conversation continues after the stop string.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_edge.state_spec import StateTensorSpec

from .errors import StateMismatchError
from .sampling import MAX_REPETITION_WINDOW, RNG_KIND

STATE_FORMAT = "xlstm-edge-state"
STATE_FORMAT_VERSION = "1"
STATE_CONVENTION = "scale_q"
RECENT_WINDOW = MAX_REPETITION_WINDOW
_EXTRA = "xlstm_edge."  # prefix of the non-recurrent tensors in a state file
_LOGITS, _PENDING, _RECENT, _COUNT, _RNG = (_EXTRA + k for k in ("logits", "pending", "recent", "num_tokens",
                                                                  "rng"))


def config_hash(model_config: dict[str, Any]) -> str:
    """16 hex digits naming a model architecture: sha256 of the canonical ``xLSTMConfig`` dict."""
    from xlstm_edge.config import xLSTMConfig

    canonical = xLSTMConfig.from_dict(model_config).to_dict()
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class StateLayout:
    """The state tensors of one model, in spec order, and that model's identity."""

    tensors: tuple[StateTensorSpec, ...]  # layer, name, shape (without batch), input/output names
    config_hash: str
    model_name: str
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any, model_name: str) -> StateLayout:
        """From an ``xLSTMConfig`` (the order of ``xlstm_edge.state.state_spec``)."""
        from xlstm_edge.state_spec import state_spec

        return cls(tuple(state_spec(config)), config_hash(config.to_dict()), model_name, config.vocab_size)

    def zeros(self, batch_size: int) -> list[np.ndarray]:
        """The initial state: every tensor zero, (batch_size, *shape) float32."""
        return [np.zeros((batch_size, *t.shape), dtype=np.float32) for t in self.tensors]

    @property
    def bytes_per_row(self) -> int:
        n = 0
        for t in self.tensors:
            k = 4
            for d in t.shape:
                k *= d
            n += k
        return n

    def check(self, tensors: list[np.ndarray], where: str) -> int:
        """Check count, shapes and dtype; return the batch size. Raises ``StateMismatchError``."""
        if len(tensors) != len(self.tensors):
            raise StateMismatchError(f"{where}: {len(tensors)} state tensors, the model has {len(self.tensors)}")
        batch = tensors[0].shape[0] if tensors and np.ndim(tensors[0]) else -1
        for spec, t in zip(self.tensors, tensors, strict=True):
            if not isinstance(t, np.ndarray):
                raise StateMismatchError(f"{where}: {spec.input_name} is a {type(t).__name__}, expected a numpy "
                                         f"array (the runtime's state is numpy)")
            if t.dtype != np.float32 or t.ndim != 1 + len(spec.shape) or tuple(t.shape[1:]) != spec.shape \
                    or t.shape[0] != batch:
                raise StateMismatchError(
                    f"{where}: {spec.input_name} is {t.dtype} {tuple(t.shape)}, expected float32 "
                    f"({batch}, *{spec.shape})"
                )
        if batch < 1:
            raise StateMismatchError(f"{where}: batch size {batch}")
        return batch


def _empty_recent(batch_size: int) -> np.ndarray:
    return np.full((batch_size, RECENT_WINDOW), -1, dtype=np.int64)


@dataclass
class RecurrentState:
    """One conversation state for ``batch_size`` rows (numpy arrays).

    tensors     recurrent tensors in ``layout`` order, (B, *shape) float32
    logits      (B, V) float32 logits for the next token, or None when ``pending`` holds tokens
    pending     (B,) int64 tokens chosen (and shown) but not yet fed to the model, or None
    recent      (B, RECENT_WINDOW) int64, most recent last, -1 = empty (for the repetition penalty)
    num_tokens  (B,) int64 tokens fed so far
    rng         the sampler's ``(seed, PCG64 state (6,) uint64)`` after a sampled run, else None
    """

    layout: StateLayout
    tensors: list[np.ndarray]
    logits: np.ndarray | None
    pending: np.ndarray | None
    recent: np.ndarray
    num_tokens: np.ndarray
    rng: tuple[int, np.ndarray] | None = None

    @classmethod
    def fresh(cls, layout: StateLayout, batch_size: int = 1) -> RecurrentState:
        return cls(layout, layout.zeros(batch_size), None, None, _empty_recent(batch_size),
                   np.zeros(batch_size, dtype=np.int64))

    @property
    def batch_size(self) -> int:
        return self.tensors[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the recurrent tensors (not counting logits and bookkeeping)."""
        return sum(t.nbytes for t in self.tensors)

    def copy(self) -> RecurrentState:
        """An independent deep copy (fork a conversation)."""
        return RecurrentState(
            self.layout,
            [t.copy() for t in self.tensors],
            None if self.logits is None else self.logits.copy(),
            None if self.pending is None else self.pending.copy(),
            self.recent.copy(),
            self.num_tokens.copy(),
            None if self.rng is None else (self.rng[0], self.rng[1].copy()),
        )

    def row(self, index: int) -> RecurrentState:
        """Row ``index`` as a batch-1 state (a copy)."""
        pick = slice(index, index + 1)
        return RecurrentState(
            self.layout,
            [t[pick].copy() for t in self.tensors],
            None if self.logits is None else self.logits[pick].copy(),
            None if self.pending is None else self.pending[pick].copy(),
            self.recent[pick].copy(),
            self.num_tokens[pick].copy(),
            None if self.rng is None else (self.rng[0], self.rng[1].copy()),
        )

    @classmethod
    def stack(cls, rows: list[RecurrentState]) -> RecurrentState:
        """Concatenate states of one model along the batch (all with logits, or all with pending)."""
        if not rows:
            raise StateMismatchError("cannot stack zero states")
        layout = rows[0].layout
        if any(r.layout.config_hash != layout.config_hash for r in rows):
            raise StateMismatchError("cannot stack states of different models")
        has_logits = [r.logits is not None for r in rows]
        has_pending = [r.pending is not None for r in rows]
        if len(set(has_logits)) > 1 or len(set(has_pending)) > 1:
            raise StateMismatchError("cannot stack states that stand at different points (logits vs pending)")
        return cls(
            layout,
            [np.concatenate([r.tensors[i] for r in rows]) for i in range(len(layout.tensors))],
            np.concatenate([r.logits for r in rows]) if has_logits[0] else None,  # type: ignore[misc]
            np.concatenate([r.pending for r in rows]) if has_pending[0] else None,  # type: ignore[misc]
            np.concatenate([r.recent for r in rows]),
            np.concatenate([r.num_tokens for r in rows]),
        )

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write a safetensors file atomically; its metadata names the model (config hash) and the
        format, plus ``metadata`` (str -> str, e.g. a chat's messages)."""
        from safetensors.numpy import save_file

        c = np.ascontiguousarray
        flat = {spec.input_name: c(t) for spec, t in zip(self.layout.tensors, self.tensors, strict=True)}
        flat[_RECENT] = c(self.recent)
        flat[_COUNT] = c(self.num_tokens)
        if self.logits is not None:
            flat[_LOGITS] = c(self.logits)
        if self.pending is not None:
            flat[_PENDING] = c(self.pending)
        if self.rng is not None:
            flat[_RNG] = c(self.rng[1])
        meta = {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "config_hash": self.layout.config_hash,
            "model_name": self.layout.model_name,
            "convention": STATE_CONVENTION,
            "batch_size": str(self.batch_size),
            **({} if self.rng is None else {"rng_seed": str(self.rng[0]), "rng_kind": RNG_KIND}),
            **(metadata or {}),
        }
        path = Path(path)
        if path.is_dir():
            raise StateMismatchError(f"cannot write the state to {path}: it is a directory (name a file)")
        path.parent.mkdir(parents=True, exist_ok=True)
        # write beside the target, then rename: a reader (or a crash) never sees half a file
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
        try:
            save_file(flat, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, layout: StateLayout) -> RecurrentState:
        """Read a state file and check that it belongs to the model of ``layout``."""
        return cls.load_with_metadata(path, layout)[0]

    @classmethod
    def load_with_metadata(cls, path: str | os.PathLike, layout: StateLayout) -> tuple[RecurrentState, dict[str, str]]:
        """``load``, plus the file's metadata (str -> str)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.is_dir():
            raise StateMismatchError(f"state file {path} is a directory (name a file written by --state-out)")
        if not path.is_file():
            raise StateMismatchError(f"state file {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                flat = {k: fh.get_tensor(k) for k in fh.keys()}
        except SafetensorError as e:
            raise StateMismatchError(f"{path} is not a safetensors state file: {e}") from None
        if meta.get("format") != STATE_FORMAT:
            raise StateMismatchError(f"{path} is not an xlstm-edge state file (format {meta.get('format')!r})")
        if meta.get("format_version") != STATE_FORMAT_VERSION:
            raise StateMismatchError(f"{path} has state format_version {meta.get('format_version')!r}, "
                                     f"this runtime reads {STATE_FORMAT_VERSION}")
        if meta.get("convention") != STATE_CONVENTION:
            raise StateMismatchError(f"{path} uses state convention {meta.get('convention')!r}, "
                                     f"expected {STATE_CONVENTION!r}")
        if meta.get("config_hash") != layout.config_hash:
            raise StateMismatchError(
                f"state file {path} is from another model: {meta.get('model_name')!r} (config "
                f"{meta.get('config_hash')}), this session runs {layout.model_name!r} (config {layout.config_hash})"
            )
        names = [t.input_name for t in layout.tensors]
        missing = [n for n in names + [_RECENT, _COUNT] if n not in flat]
        unexpected = sorted(set(flat) - set(names) - {_RECENT, _COUNT, _LOGITS, _PENDING, _RNG})
        if missing or unexpected:
            raise StateMismatchError(f"state file {path} does not match the model: missing {missing[:4]}, "
                                     f"unexpected {unexpected[:4]}")
        tensors = [flat[n] for n in names]
        batch = layout.check(tensors, f"state file {path}")
        logits, pending = flat.get(_LOGITS), flat.get(_PENDING)
        if (logits is None) == (pending is None):
            raise StateMismatchError(f"state file {path} must hold exactly one of logits / pending tokens")
        checks = [
            (_RECENT, flat[_RECENT], np.int64, (batch, RECENT_WINDOW)),
            (_COUNT, flat[_COUNT], np.int64, (batch,)),
            (_LOGITS, logits, np.float32, (batch, layout.vocab_size)),
            (_PENDING, pending, np.int64, (batch,)),
        ]
        for name, t, dtype, shape in checks:
            if t is not None and (t.dtype != dtype or tuple(t.shape) != shape):
                raise StateMismatchError(f"state file {path}: {name} is {t.dtype} {tuple(t.shape)}, "
                                         f"expected {dtype} {shape}")
        rng = None
        if _RNG in flat:
            seed = meta.get("rng_seed", "")
            if meta.get("rng_kind") != RNG_KIND:
                raise StateMismatchError(
                    f"state file {path} holds a {meta.get('rng_kind', 'torch')} sampler state (written by an older "
                    f"xlstm-edge), which this runtime ({RNG_KIND} draws) cannot continue: start the conversation again")
            if not seed.isdigit() or flat[_RNG].dtype != np.uint64 or flat[_RNG].shape != (6,):
                raise StateMismatchError(f"state file {path}: malformed sampler state (rng_seed {seed!r})")
            rng = (int(seed), flat[_RNG])
        return cls(layout, tensors, logits, pending, flat[_RECENT], flat[_COUNT], rng), meta
