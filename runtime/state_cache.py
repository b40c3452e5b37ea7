"""Conversation states keyed by the token prefix they encode: resume a conversation, prefill only what is new.

A stored entry is a ``RecurrentState`` of one row that encodes exactly the tokens of its key (fed
tokens plus the pending one, if any). ``lookup(ids)`` returns the entry with the longest key that is
a prefix of ``ids``; ``resume`` puts it into a session and prefills only the rest. Entries live on
disk as safetensors (written atomically by one writer thread, so the caller never waits on the
disk) or in memory (``directory=None``); the least recently used ones are evicted beyond the byte
budget. An entry's file names its key by hash (sha256 of the ids as int64), which its metadata
repeats with the key's length, so a restarted server finds its entries again.

    cache = StateCache("states/", session.layout, budget_bytes=1 << 30)
    cached = resume(session, cache, prompt_ids)   # tokens that were not prefilled
    ...
    cache.store(prompt_ids + reply_ids, session.get_state())
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import StateMismatchError
from .state import RecurrentState, StateLayout

if TYPE_CHECKING:
    from .session import Session

_SUFFIX = ".safetensors"


def prefix_key(ids: Sequence[int]) -> str:
    """sha256 of the token ids as little-endian int64: the name of a state that encodes them."""
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


def entry_bytes(state: RecurrentState) -> int:
    """Bytes of every tensor a stored state holds (its file adds a header of about a kilobyte)."""
    extra = [state.logits, state.pending, state.recent, state.num_tokens, None if state.rng is None else state.rng[1]]
    return state.nbytes + sum(t.nbytes for t in extra if t is not None)


def _prefix_keys(ids: Sequence[int], lengths: list[int]) -> dict[int, str]:
    """``prefix_key(ids[:n])`` for each n of the ascending ``lengths``, hashing ``ids`` once."""
    blob = np.asarray(ids, dtype="<i8").tobytes()
    h, done, out = hashlib.sha256(), 0, {}
    for n in lengths:
        h.update(blob[8 * done:8 * n])
        done = n
        out[n] = h.copy().hexdigest()
    return out


@dataclass
class _Entry:
    length: int  # tokens of the key
    nbytes: int
    last_used: float
    state: RecurrentState | None  # held in memory: memory caches, and disk entries still being written


class StateCache:
    """Prefix-keyed states of one model (``layout``), least recently used evicted beyond ``budget_bytes``."""

    def __init__(self, directory: str | os.PathLike | None, layout: StateLayout, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"state cache budget must be > 0 bytes, got {budget_bytes}")
        self.layout = layout
        self.budget_bytes = int(budget_bytes)
        self.directory = None if directory is None else Path(directory) / layout.config_hash
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="state-cache") if self.directory else None
        self.hits = 0
        self.misses = 0
        if self.directory is not None:
            if self.directory.exists() and not self.directory.is_dir():
                raise StateMismatchError(f"state cache {self.directory} is not a directory")
            self.directory.mkdir(parents=True, exist_ok=True)
            self._scan()

    # ---- facts -----------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}{_SUFFIX}"

    def _scan(self) -> None:
        """Index the entries a previous run left (their metadata names key and length)."""
        from safetensors import SafetensorError, safe_open

        assert self.directory is not None
        for path in self.directory.glob(f"*{_SUFFIX}"):
            try:
                with safe_open(str(path), framework="numpy") as fh:
                    meta = fh.metadata() or {}
            except (SafetensorError, OSError):
                continue
            key, length = meta.get("prefix_sha256"), meta.get("prefix_length", "")
            if key != path.stem or not length.isdigit() or meta.get("config_hash") != self.layout.config_hash:
                continue
            st = path.stat()
            self._entries[key] = _Entry(int(length), st.st_size, st.st_mtime, None)
        self._evict()

    # ---- use -------------------------------------------------------------------------------------
    def lookup(self, ids: Sequence[int]) -> tuple[RecurrentState, int] | None:
        """The stored state whose key is the longest prefix of ``ids`` (up to all of them), with the
        key's length; None when no key is a prefix."""
        with self._lock:
            lengths = sorted({e.length for e in self._entries.values() if e.length <= len(ids)})
        keys = _prefix_keys(ids, lengths)
        for n in reversed(lengths):
            key = keys[n]
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    continue
                entry.last_used = time.time()
                state = entry.state
            if state is None:
                try:
                    state = RecurrentState.load(self._path(key), self.layout)
                    os.utime(self._path(key))
                except (StateMismatchError, OSError):
                    with self._lock:  # removed or damaged behind our back: forget it
                        self._entries.pop(key, None)
                    continue
            self.hits += 1
            return state.copy(), n
        self.misses += 1
        return None

    def store(self, ids: Sequence[int], state: RecurrentState) -> Future[None] | None:
        """Keep ``state`` (one row, encoding exactly ``ids``) under the key ``ids``. On disk the write runs
        on the writer thread; the returned future ends when the file is in place (None in memory)."""
        if state.batch_size != 1:
            raise StateMismatchError(f"a cached state holds one row, got {state.batch_size}")
        if not ids:
            return None
        key = prefix_key(ids)
        state = state.copy()
        nbytes = entry_bytes(state)
        if nbytes > self.budget_bytes:
            return None
        with self._lock:
            self._entries[key] = _Entry(len(ids), nbytes, time.time(), state)
            self._evict()
        if self._writer is None:
            return None
        return self._writer.submit(self._write, key, len(ids), state)

    def _write(self, key: str, length: int, state: RecurrentState) -> None:
        path = self._path(key)
        state.save(path, {"prefix_sha256": key, "prefix_length": str(length)})
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.state is not state:  # evicted (or replaced) meanwhile
                if entry is None:
                    path.unlink(missing_ok=True)
                return
            entry.state = None

    def _evict(self) -> None:
        """Drop least recently used entries until within budget (caller holds the lock)."""
        total = sum(e.nbytes for e in self._entries.values())
        for key in sorted(self._entries, key=lambda k: self._entries[k].last_used):
            if total <= self.budget_bytes:
                break
            entry = self._entries.pop(key)
            total -= entry.nbytes
            if self.directory is not None and entry.state is None:  # on disk (a pending write deletes itself)
                self._path(key).unlink(missing_ok=True)

    def flush(self) -> None:
        """Wait until every submitted write is on disk."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)


def resume(session: Session, cache: StateCache | None, ids: Sequence[int]) -> int:
    """Make ``session`` (one row) encode ``ids``: start from the longest cached prefix (or a fresh state)
    and prefill the rest. Returns how many of ``ids`` came from the cache. The session then holds the
    next-token logits."""
    hit = cache.lookup(ids) if cache is not None else None
    if hit is None:
        session.reset(1)
        cached = 0
    else:
        state, cached = hit
        session.set_state(state)
    rest = list(ids[cached:])
    if rest:
        session.prefill(rest)
    session.next_logits()
    return cached
