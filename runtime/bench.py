"""Speed and memory of a session: prefill tok/s, time to first token, decode tok/s, peak RSS, state bytes,
and decode speed + RSS at growing context lengths (the recurrent state keeps both flat).

Timings are medians over repeats (prefill, first token) or over single steps (decode): the machine
is shared and noisy, and a median resists a stray slow call.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GenerationArgumentError
from .sampling import Sampler, SamplingConfig

if TYPE_CHECKING:
    from .session import Session


@dataclass
class ContextPoint:
    """Decode speed and memory after ``context`` tokens have been fed."""

    context: int
    decode_tok_s: float
    rss_mb: float


@dataclass
class BenchResult:
    backend: str
    source: str
    threads: int
    decode_threads: int
    prompt_tokens: int
    prefill_tok_s: float
    first_token_ms: float
    decode_tokens: int
    decode_tok_s: float
    peak_rss_mb: float
    state_bytes: int
    points: list[ContextPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("backend", f"{self.backend} ({self.threads} threads"
                        + (f", decode {self.decode_threads})" if self.decode_threads != self.threads else ")")),
            ("source", self.source),
            ("prefill", f"{self.prefill_tok_s:.1f} tok/s ({self.prompt_tokens} tokens)"),
            ("time to first token", f"{self.first_token_ms:.1f} ms"),
            ("decode", f"{self.decode_tok_s:.1f} tok/s (median of {self.decode_tokens} steps)"),
            ("peak RSS", f"{self.peak_rss_mb:.1f} MB"),
            ("state", f"{self.state_bytes} bytes ({self.state_bytes / 2**20:.3f} MiB)"),
        ]
        rows += [(f"context {p.context}", f"decode {p.decode_tok_s:.1f} tok/s, RSS {p.rss_mb:.1f} MB")
                 for p in self.points]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_ids(n: int, vocab: int, generator: np.random.Generator) -> list[int]:
    return generator.integers(0, vocab, n).tolist()


def _decode_step_times(session: Session, steps: int, sampler: Sampler) -> list[float]:
    """Seconds of each (sample + feed) step, starting from the session's next-token logits."""
    logits = session.next_logits()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with session.host_ops():
            tok = sampler(logits, session.recent_tokens)
        logits = session.step(tok)
        times.append(time.perf_counter() - t)
    return times


def run_bench(
    session: Session,
    prompt_tokens: int = 256,
    decode_tokens: int = 64,
    contexts: tuple[int, ...] = (256, 1024, 4096),
    steps_per_point: int = 16,
    repeats: int = 3,
    seed: int = 0,
) -> BenchResult:
    """Measure ``session`` (batch 1, greedy). Contexts are reached by prefill, then ``steps_per_point``
    decode steps are timed at each."""
    for name, value in (("prompt_tokens", prompt_tokens), ("decode_tokens", decode_tokens),
                        ("repeats", repeats), ("steps_per_point", steps_per_point)):
        if value < 1:
            raise GenerationArgumentError(f"{name} must be >= 1, got {value}")
    if any(c < 1 for c in contexts) or list(contexts) != sorted(set(contexts)):
        raise GenerationArgumentError(f"contexts must be increasing positive lengths, got {list(contexts)}")
    gen = np.random.default_rng(seed)
    vocab = min(session.vocab_size, session.tokenizer.vocab_size)
    sampler = Sampler(SamplingConfig())
    prompt = _random_ids(prompt_tokens, vocab, gen)

    session.reset()
    session.prefill(prompt[: min(8, prompt_tokens)])  # warm-up: first calls allocate and plan
    _decode_step_times(session, 2, sampler)
    prefill_s, first_s = [], []
    for _ in range(repeats):
        session.reset()
        t = time.perf_counter()
        logits = session.prefill(prompt)
        t_prefill = time.perf_counter()
        with session.host_ops():
            sampler(logits, session.recent_tokens)
        first_s.append(time.perf_counter() - t)
        prefill_s.append(t_prefill - t)
    step_s = _decode_step_times(session, decode_tokens, sampler)

    points = []
    session.reset()
    for c in contexts:
        have = int(session.num_tokens[0])
        if c > have:
            session.prefill(_random_ids(c - have, vocab, gen))
        times = _decode_step_times(session, steps_per_point, sampler)
        gc.collect()
        points.append(ContextPoint(c, 1.0 / statistics.median(times), rss_mb()))
    return BenchResult(
        backend=session.backend.name,
        source=session.backend.source,
        threads=session.backend.num_threads,
        decode_threads=session.backend.decode_threads,
        prompt_tokens=prompt_tokens,
        prefill_tok_s=prompt_tokens / statistics.median(prefill_s),
        first_token_ms=1e3 * statistics.median(first_s),
        decode_tokens=decode_tokens,
        decode_tok_s=1.0 / statistics.median(step_s),
        peak_rss_mb=peak_rss_mb(),
        state_bytes=session.layout.bytes_per_row,
        points=points,
    )


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """A PNG: decode tok/s (left axis) and RSS MB (right axis) against context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p.context for p in result.points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(x, [p.decode_tok_s for p in result.points], "o-", color="tab:blue", label="decode tok/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tok/s", color="tab:blue")
    ax.set_ylim(bottom=0, top=max(p.decode_tok_s for p in result.points) * 1.25)
    ax2 = ax.twinx()
    ax2.plot(x, [p.rss_mb for p in result.points], "s--", color="tab:red", label="RSS MB")
    ax2.set_ylabel("RSS (MB)", color="tab:red")
    ax2.set_ylim(bottom=0, top=max(p.rss_mb for p in result.points) * 1.25)
    ax.set_title(f"{result.backend}, {result.threads} threads: state {result.state_bytes / 2**10:.1f} KiB")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
