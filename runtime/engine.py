"""The serving engine: one thread that owns the session and decodes every active request in one batch.

Requests wait in a bounded queue (``submit`` raises ``QueueFullError`` when it is full, and
``EngineClosedError`` once draining began). The loop, on its own thread:

    admit waiting requests while a slot is free: resume each from the longest cached prefix of its
        prompt, prefill the rest (one row at a time), sample its first token, stack its row onto
        the batch
    one step for the whole batch: input_ids (B, 1) -> logits (B, V); each row samples with its own
        sampler, streams its text, and finishes on max_tokens, a stop token or a stop string
    drop finished and cancelled rows (a cancelled one frees its slot at the next step); store each
        finished row's state in the cache under the tokens it encodes (prompt + reply)

Backends take any batch (ONNX graphs have a dynamic batch; ExecuTorch runs groups), so decode costs
one graph call per step for all requests. Prefill is not batched: a newcomer's prompt is fed alone,
the other rows wait that long. Events go back through each request's ``emit`` callback (called
on the engine thread): ``TextEvent``, then one ``DoneEvent`` or ``ErrorEvent``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import RuntimeInputError
from .generate import StopStringFilter
from .sampling import Sampler, SamplingConfig
from .session import Session
from .state import RecurrentState
from .state_cache import StateCache, resume

log = logging.getLogger("xlstm_edge.serve")


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is full (HTTP 429)."""


class EngineClosedError(RuntimeError):
    """The engine is draining or stopped and takes no new request (HTTP 503)."""


@dataclass
class TextEvent:
    text: str


@dataclass
class DoneEvent:
    finish_reason: str  # "stop" (stop token or string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens resumed from a stored state, not prefilled
    first_token_s: float  # queue wait + prefill + first sample
    state: RecurrentState | None = None  # the row's final state (one row), when the request asked for it
    token_ids: list[int] | None = None  # the tokens that state encodes (prompt + reply)


@dataclass
class ErrorEvent:
    status: int  # an HTTP status: 400 for bad input, 500 for a failure of the engine
    message: str


Event = TextEvent | DoneEvent | ErrorEvent


@dataclass
class GenerationRequest:
    """One completion: ``prompt_ids`` (>= 1 token) -> up to ``max_tokens`` new tokens."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    emit: Callable[[Event], None]
    stop_strings: list[str] = field(default_factory=list)
    stop_tokens: set[int] = field(default_factory=set)
    return_state: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop this request (client gone): its slot is freed at the engine's next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Slot:
    """A request being decoded: its sampler, text decoder and stop-string filter."""

    def __init__(self, req: GenerationRequest, session: Session, cached: int):
        from xlstm_edge.tokenizer import StreamDecoder

        self.req = req
        self.cached = cached
        self.sampler = Sampler(req.sampling, vocab_limit=session.tokenizer.vocab_size)
        self.decoder = StreamDecoder(session.tokenizer)
        self.filter = StopStringFilter(req.stop_strings)
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.first_token_s = 0.0

    @property
    def next_token(self) -> int:
        """The last sampled token: shown, not yet fed to the model."""
        return self.generated[-1]

    def accept(self, logits: np.ndarray, recent: np.ndarray) -> None:
        """Sample from (1, V) ``logits``, stream the text, decide whether the request is finished."""
        token = int(self.sampler(logits, recent)[0])
        if not self.generated:
            self.first_token_s = time.perf_counter() - self.req.submitted
        self.generated.append(token)
        if token in self.req.stop_tokens:  # not shown; show what the filter held back
            text = self.filter.push(self.decoder.flush())[0] + self.filter.flush()
            self._emit(text)
            self.finish_reason = "stop"
            return
        text, hit = self.filter.push(self.decoder.push(token))
        self._emit(text)
        if hit:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.req.max_tokens:
            text, hit = self.filter.push(self.decoder.flush())
            self._emit(text if hit else text + self.filter.flush())
            self.finish_reason = "stop" if hit else "length"

    def _emit(self, text: str) -> None:
        if text:
            self.req.emit(TextEvent(text))

    def done(self, reason: str, state: RecurrentState | None) -> DoneEvent:
        keep = self.req.return_state and state is not None
        return DoneEvent(reason, len(self.req.prompt_ids), len(self.generated), self.cached, self.first_token_s,
                         state if keep else None, self.req.prompt_ids + self.generated if keep else None)


class Engine:
    """Owns ``session``; ``start()`` runs the loop on a thread, ``submit`` queues a request.

    max_batch   requests decoded together (slots); 1 serializes them
    max_queue   requests that may wait for a slot; more are refused (``QueueFullError``)
    cache       prefix-keyed states (``StateCache``), or None to prefill every prompt whole
    """

    def __init__(self, session: Session, cache: StateCache | None = None, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.session = session
        self.cache = cache
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[GenerationRequest] = deque()
        self._slots: list[_Slot] = []
        self._admitting = 0  # taken from the queue, not yet in a slot
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.steps = 0  # decode steps (graph calls)
        self.batched_steps = 0  # of which with more than one row
        self.tokens = 0  # tokens decoded, all rows

    # ---- the outside ----------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="xlstm-edge-engine", daemon=True)
        self._thread.start()
        return self

    def submit(self, req: GenerationRequest) -> None:
        if not req.prompt_ids:
            raise RuntimeInputError("prompt is empty: give at least one token")
        with self._cond:
            if self._closing:
                raise EngineClosedError("the server is shutting down")
            if any(r.cancelled for r in self._waiting):  # clients that left while waiting free their places
                for r in [r for r in self._waiting if r.cancelled]:
                    self._waiting.remove(r)
                    r.emit(DoneEvent("cancelled", len(r.prompt_ids), 0, 0, 0.0))
            if len(self._waiting) + len(self._slots) + self._admitting >= self.max_batch + self.max_queue:
                raise QueueFullError(f"all {self.max_batch} slots are busy and {len(self._waiting)} requests wait; "
                                     "retry later")
            self._waiting.append(req)
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Take no new request, finish the queued and active ones, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.cache is not None:
            self.cache.flush()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"active": len(self._slots), "waiting": len(self._waiting), "slots": self.max_batch,
                    "max_queue": self.max_queue, "completed": self.completed, "steps": self.steps,
                    "batched_steps": self.batched_steps, "tokens": self.tokens}

    # ---- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._slots and not self._closing:
                    self._cond.wait()
                if self._closing and not self._waiting and not self._slots:
                    return
                newcomers = []
                while self._waiting and len(self._slots) + len(newcomers) < self.max_batch:
                    newcomers.append(self._waiting.popleft())
                self._admitting = len(newcomers)
            try:
                self._drop_cancelled()
                if newcomers:
                    self._admit(newcomers)
                if self._slots:
                    self._step()
            except Exception as e:  # a backend failure: fail the active requests, keep serving
                log.exception("engine step failed")
                for slot in self._slots:
                    slot.req.emit(ErrorEvent(500, f"generation failed: {type(e).__name__}: {e}"))
                with self._cond:
                    self._slots, self._admitting = [], 0

    def _drop_cancelled(self) -> None:
        gone = [i for i, s in enumerate(self._slots) if s.req.cancelled]
        if gone:
            self._remove(gone)

    def _admit(self, newcomers: list[GenerationRequest]) -> None:
        sess = self.session
        whole = sess.get_state() if self._slots else None
        rows, slots = [], []
        for req in newcomers:
            if req.cancelled:
                req.emit(DoneEvent("cancelled", len(req.prompt_ids), 0, 0, 0.0))
                continue
            try:
                with sess.host_ops():
                    cached = resume(sess, self.cache, req.prompt_ids)
                    if self.cache is not None and cached < len(req.prompt_ids):
                        self.cache.store(req.prompt_ids, sess.get_state())  # the prompt's own state
                    slot = _Slot(req, sess, cached)
                    slot.accept(sess.next_logits(), sess.recent_tokens)
            except RuntimeInputError as e:
                req.emit(ErrorEvent(400, str(e)))
                continue
            except Exception as e:  # a backend failure on this prompt: fail it alone
                log.exception("prefill failed")
                req.emit(ErrorEvent(500, f"generation failed: {type(e).__name__}: {e}"))
                continue
            if slot.finish_reason is not None:
                self._finish(slot, sess.get_state(), slot.finish_reason)
            else:
                rows.append(sess.get_state())
                slots.append(slot)
        with self._cond:
            self._slots.extend(slots)
            self._admitting = 0
        if whole is None and not rows:
            return
        sess.set_state(RecurrentState.stack(([whole] if whole is not None else []) + rows))

    def _step(self) -> None:
        sess = self.session
        ids = np.array([[s.next_token] for s in self._slots], dtype=np.int64)
        logits = sess.step(ids)  # (B, V)
        self.steps += 1
        self.batched_steps += len(self._slots) > 1
        self.tokens += len(self._slots)
        recent = sess.recent_tokens
        with sess.host_ops():
            for b, slot in enumerate(self._slots):  # cancelled rows too: every row then stands alike
                slot.accept(logits[b:b + 1], recent[b:b + 1])
        done = [i for i, s in enumerate(self._slots) if s.finish_reason is not None or s.req.cancelled]
        if done:
            self._remove(done)

    def _remove(self, indices: list[int]) -> None:
        """Take rows out of the batch; finished ones report (and store) their final state."""
        sess = self.session
        whole = sess.get_state()
        gone = [(self._slots[i], whole.row(i)) for i in indices]
        keep = [i for i in range(len(self._slots)) if i not in set(indices)]
        with self._cond:  # free the slots before anyone hears of it
            self._slots = [self._slots[i] for i in keep]
        if keep:
            sess.set_state(RecurrentState.stack([whole.row(i) for i in keep]))
        for slot, row in gone:
            self._finish(slot, row, "cancelled" if slot.req.cancelled else slot.finish_reason)

    def _finish(self, slot: _Slot, row: RecurrentState, reason: str | None) -> None:
        """``row`` (with the logits after the slot's fed tokens) + the last sampled token, pending, is
        the state of prompt + reply (a cancelled reply: as far as it went): store it, report it."""
        row.logits = None
        row.pending = np.array([slot.next_token], dtype=np.int64)
        row.rng = None if slot.sampler.config.greedy else (slot.sampler.seed, slot.sampler.rng_state())
        if self.cache is not None:
            self.cache.store(slot.req.prompt_ids + slot.generated, row)
        self.completed += 1
        assert reason is not None
        slot.req.emit(slot.done(reason, row))
