"""The generation loop: prompt -> prefill -> (sample, show, feed)* with stop tokens, stop strings and timings.

A token is shown as soon as it is sampled and fed to the model at the start of the next step (it
stays *pending* in the session until then), so a loop of N new tokens costs N - 1 steps and the
session's state always covers exactly the text produced. Rows of a batch are independent: a row
that stops keeps its own state from that moment (the batch runs on until every row has stopped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import EmptyPromptError, GenerationArgumentError
from .sampling import Sampler, SamplingConfig
from .state import RecurrentState

if TYPE_CHECKING:
    from .session import Session


@dataclass
class GenerationStats:
    """Timings of one stream call (seconds; token counts summed over rows)."""

    batch_size: int = 1
    prompt_tokens: int = 0
    new_tokens: int = 0
    decode_steps: int = 0
    prefill_s: float = 0.0  # encode + prefill
    first_token_s: float = 0.0  # call start -> first token sampled (time to first token)
    decode_s: float = 0.0  # first token -> last token sampled
    seed: int | None = None
    stopped: list[str] = field(default_factory=list)  # per row: "length" | "stop_token" | "stop_string"

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        """Tokens produced per second by the decode steps (all rows)."""
        return self.decode_steps * self.batch_size / self.decode_s if self.decode_s > 0 else float("nan")

    def summary(self) -> str:
        prompt = (f"prompt {self.prompt_tokens} tok, prefill {self.prefill_tok_s:.1f} tok/s"
                  if self.prompt_tokens else "continued from the state")
        return (f"{prompt}, first token {self.first_token_s * 1e3:.1f} ms, {self.new_tokens} new tok, "
                f"decode {self.decode_tok_s:.1f} tok/s")


class StopStringFilter:
    """Holds back text that may be the start of a stop string; reports when one appears."""

    def __init__(self, stop_strings: Sequence[str]):
        self.stops = [s for s in stop_strings if s]
        self.buffer = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return (text safe to show, stopped)."""
        self.buffer += piece
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[:min(hits)], ""
            return out, True
        keep = 0  # longest suffix of the buffer that is a proper prefix of a stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buffer)), keep, -1):
                if self.buffer.endswith(s[:n]):
                    keep = n
                    break
        cut = len(self.buffer) - keep
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def _check_args(max_new_tokens: int, stop_strings: Sequence[str]) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise GenerationArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(stop_strings, str):
        raise GenerationArgumentError("stop_strings must be a list of strings, not one string")


def _encode_prompts(session: Session, prompts: list[str], add_bos: bool) -> list[list[int]]:
    bos = session.tokenizer.bos_token_id
    out = []
    for p in prompts:
        if not isinstance(p, str):
            raise GenerationArgumentError(f"a prompt must be a str, got {type(p).__name__}")
        ids = session.encode(p)
        if add_bos and bos is not None and session.is_fresh and ids and ids[0] != bos:
            ids = [bos, *ids]
        out.append(ids)
    return out


def start_generation(session: Session, prompt_ids: list[list[int]], stats: GenerationStats) -> np.ndarray:
    """Feed the prompts (after any pending tokens); return the next-token logits (B, V)."""
    t0 = time.perf_counter()
    batch = len(prompt_ids)
    if all(prompt_ids):
        session.prefill(prompt_ids if batch > 1 else prompt_ids[0])
    elif any(prompt_ids):
        raise EmptyPromptError("a prompt of the batch is empty: give every row some text")
    elif session.is_fresh:
        raise EmptyPromptError("prompt is empty: give some text (or continue from a saved state)")
    elif session.batch_size != batch:
        raise GenerationArgumentError(f"the session holds {session.batch_size} row(s); got {batch} prompt(s)")
    logits = session.next_logits()
    stats.prompt_tokens = sum(len(p) for p in prompt_ids)
    stats.prefill_s = time.perf_counter() - t0
    return logits


def stream_tokens(
    session: Session,
    logits: np.ndarray,
    max_new_tokens: int,
    sampler: Sampler,
    stop_tokens: set[int],
    stats: GenerationStats,
    should_stop: list[bool],
) -> Iterator[np.ndarray]:
    """From the first next-token ``logits`` (B, V), yield (B,) int64 sampled ids, one array per step.

    A row whose ``should_stop`` entry turns True (set by the caller after a yield, or here on a stop
    token) is finished: at the end its state is put back to what it was right after its last token.
    """
    batch = logits.shape[0]
    finished: dict[int, tuple[int, RecurrentState]] = {}  # row -> (step, its state then)
    t_first = time.perf_counter()
    i = 0
    for i in range(max_new_tokens):
        t_sample = time.perf_counter()
        with session.host_ops():
            tokens = sampler(logits, session.recent_tokens)
        session.set_pending(tokens)
        if i == 0:
            t_first = time.perf_counter()
            stats.first_token_s = stats.prefill_s + (t_first - t_sample)
        for b in range(batch):
            if not should_stop[b] and int(tokens[b]) in stop_tokens:
                should_stop[b] = True
                stats.stopped[b] = "stop_token"
        yield tokens
        stats.new_tokens += sum(1 for b in range(batch) if b not in finished)
        newly = [b for b in range(batch) if should_stop[b] and b not in finished]
        if newly:
            snapshot = session.get_state()
            for b in newly:
                finished[b] = (i, snapshot.row(b))
        if len(finished) == batch or i == max_new_tokens - 1:
            break
        logits = session.next_logits()  # feeds the pending tokens
        stats.decode_steps += 1
    stats.decode_s = time.perf_counter() - t_first
    if any(step < i for step, _ in finished.values()):
        whole = session.get_state()
        rows = [finished[b][1] if b in finished else whole.row(b) for b in range(batch)]
        session.set_state(RecurrentState.stack(rows))


def stream_text(
    session: Session,
    prompt: str | Sequence[str],
    max_new_tokens: int,
    sampling: SamplingConfig | None,
    stop_tokens: Sequence[int] | None,
    stop_strings: Sequence[str],
    add_bos: bool,
) -> Iterator[str] | Iterator[list[str]]:
    """Validate, then return the generator (so bad arguments raise at the call, not at the first next())."""
    _check_args(max_new_tokens, stop_strings)
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise EmptyPromptError("no prompts given")
    sampler = Sampler(sampling, vocab_limit=session.tokenizer.vocab_size)  # text: ids the tokenizer knows
    if stop_tokens is None:
        stops = set(session.eos_token_ids)
    else:
        stops = {int(t) for t in stop_tokens}
        bad = [t for t in stops if not 0 <= t < session.vocab_size]
        if bad:
            raise GenerationArgumentError(f"stop token {bad[0]} is outside 0..{session.vocab_size - 1}")
    prompt_ids = _encode_prompts(session, prompts, add_bos)
    stats = GenerationStats(batch_size=len(prompts), seed=sampler.seed, stopped=["length"] * len(prompts))
    session.last_stats = stats
    # prefill now, so that bad input (empty prompt, token range) raises at the call
    logits = start_generation(session, prompt_ids, stats)
    session.attach_sampler(sampler)
    rows = _stream_text(session, logits, max_new_tokens, sampler, stops, list(stop_strings), stats)
    if not single:
        return rows
    return (pieces[0] for pieces in rows if pieces[0])


def _stream_text(
    session: Session,
    logits: np.ndarray,
    max_new_tokens: int,
    sampler: Sampler,
    stops: set[int],
    stop_strings: list[str],
    stats: GenerationStats,
) -> Iterator[list[str]]:
    """Text pieces per row for each sampled token; a last item holds what decoders / filters held back."""
    from xlstm_edge.tokenizer import StreamDecoder

    batch = logits.shape[0]
    decoders = [StreamDecoder(session.tokenizer) for _ in range(batch)]
    filters = [StopStringFilter(stop_strings) for _ in range(batch)]
    should_stop = [False] * batch
    shown_done = [False] * batch  # row has produced its last text
    for tokens in stream_tokens(session, logits, max_new_tokens, sampler, stops, stats, should_stop):
        pieces = []
        for b in range(batch):
            if shown_done[b]:
                pieces.append("")
                continue
            if should_stop[b]:  # a stop token: not shown; show what the filters held back
                pieces.append(filters[b].push(decoders[b].flush())[0] + filters[b].flush())
                shown_done[b] = True
                continue
            text, hit = filters[b].push(decoders[b].push(int(tokens[b])))
            if hit:
                should_stop[b] = True
                shown_done[b] = True
                stats.stopped[b] = "stop_string"
            pieces.append(text)
        yield pieces
    tail = []
    for b in range(batch):
        if shown_done[b]:
            tail.append("")
            continue
        text, hit = filters[b].push(decoders[b].flush())
        tail.append(text if hit else text + filters[b].flush())
    if any(tail):
        yield tail
