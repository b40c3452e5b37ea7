"""Next-token selection: greedy, temperature, top-k, top-p, min-p, repetition / presence / frequency
penalties, seeded RNG.

All functions take ``logits`` (B, V) float32 and return a new tensor (B, V) (filters set removed
entries to ``-inf``); the order ``Sampler`` applies them is the one Hugging Face uses, with the
OpenAI-style additive penalties beside the repetition penalty (as llama.cpp applies them):
repetition penalty -> presence / frequency penalty -> (greedy: argmax) -> temperature -> top-k
-> top-p -> min-p -> draw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import GenerationArgumentError

# the repetition penalty sees at most this many recent tokens per row (so memory stays flat)
MAX_REPETITION_WINDOW = 1024


@dataclass
class SamplingConfig:
    """How to pick the next token.

    temperature         0 means greedy (argmax); > 0 divides the logits before the draw
    top_k               keep the k most likely tokens; 0 turns it off
    top_p               keep the smallest set whose probability reaches p (nucleus); 1 turns it off
    min_p               drop tokens whose probability is below min_p * (top probability); 0 turns it off
    repetition_penalty  > 1 discourages tokens among the last ``repetition_window`` ones (logit > 0:
                        divided by it, else multiplied, as in CTRL / Hugging Face); 1 turns it off
    repetition_window   how many recent tokens (prompt included) the penalties look at
    presence_penalty    subtracted from the logit of every token among the recent ones (OpenAI's
                        field, -2..2); 0 turns it off
    frequency_penalty   subtracted once per occurrence among the recent tokens (OpenAI's field, -2..2)
    seed                seeds the draw (None: a fresh random seed, recorded in ``Sampler.seed``); a
                        session that continues a sampled run with the same seed continues its draws
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (self.temperature >= 0 and self.temperature < float("inf")):
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {self.min_p}")
        if not (self.repetition_penalty > 0 and self.repetition_penalty < float("inf")):
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if not 1 <= self.repetition_window <= MAX_REPETITION_WINDOW:
            problems.append(f"repetition_window must be in 1..{MAX_REPETITION_WINDOW}, got {self.repetition_window}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                problems.append(f"{name} must be in [-2, 2] (0 = off), got {value}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            problems.append(f"seed must be an int in 0..2**64-1, got {self.seed!r}")
        if problems:
            raise GenerationArgumentError("invalid sampling: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---- the filters ----------------------------------------------------------------------------------
def apply_repetition_penalty(logits: Tensor, recent: Tensor, penalty: float) -> Tensor:
    """Penalize tokens in ``recent`` (B, W) int64 (-1 = empty slot): logit > 0 -> / penalty, else * penalty."""
    if penalty == 1.0 or recent.numel() == 0:
        return logits
    B, V = logits.shape
    idx = torch.where(recent >= 0, recent, V)  # empty slots go to a spare column, dropped below
    seen = torch.zeros(B, V + 1, dtype=torch.bool).scatter_(1, idx, True)[:, :V]
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_presence_frequency(logits: Tensor, recent: Tensor, presence: float, frequency: float) -> Tensor:
    """OpenAI's additive penalties over ``recent`` (B, W) int64 (-1 = empty slot):
    logit -= presence * [count > 0] + frequency * count, with count the token's occurrences in ``recent``."""
    if (presence == 0.0 and frequency == 0.0) or recent.numel() == 0:
        return logits
    B, V = logits.shape
    idx = torch.where(recent >= 0, recent, V)
    counts = torch.zeros(B, V + 1, dtype=logits.dtype).scatter_add_(1, idx, torch.ones_like(idx, dtype=logits.dtype))
    counts = counts[:, :V]
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature (temperature > 0)."""
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept); k = 0 or k >= V is a no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability sum reaches ``p`` (always >= 1 token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly before each token
    drop_sorted = before >= p  # the first token has before == 0 < p: always kept
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def filtered_logits(logits: Tensor, config: SamplingConfig, recent: Tensor | None = None) -> Tensor:
    """Everything before the draw: penalty, temperature, top-k, top-p, min-p. (B, V) -> (B, V)."""
    x = logits.float()
    if recent is not None:
        window = recent[:, -config.repetition_window:]
        x = apply_repetition_penalty(x, window, config.repetition_penalty)
        x = apply_presence_frequency(x, window, config.presence_penalty, config.frequency_penalty)
    if config.greedy:
        return x
    x = apply_temperature(x, config.temperature)
    x = top_k_filter(x, config.top_k)
    x = top_p_filter(x, config.top_p)
    return min_p_filter(x, config.min_p)


class Sampler:
    """Draws next tokens with its own seeded ``torch.Generator`` (the global RNG is left alone)."""

    def __init__(self, config: SamplingConfig | None = None, vocab_limit: int | None = None):
        """``vocab_limit``: only ids below it may be drawn (e.g. the tokenizer's size when the model's
        vocab is padded beyond it: ids the tokenizer cannot decode are never produced as text)."""
        self.config = config or SamplingConfig()
        self.vocab_limit = vocab_limit
        self.seed = self.config.seed if self.config.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.generator = torch.Generator().manual_seed(self.seed)

    def rng_state(self) -> Tensor:
        """The generator's state, (N,) uint8 (saved with a conversation state: resumes continue the draws)."""
        return self.generator.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        """Continue the draws from ``rng_state()`` of a sampler with the same seed."""
        self.generator.set_state(state.clone())

    def __call__(self, logits: Tensor, recent: Tensor | None = None) -> Tensor:
        """logits (B, V) -> token ids (B,) int64."""
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits = logits.clone()
            logits[:, self.vocab_limit:] = float("-inf")
        x = filtered_logits(logits, self.config, recent)
        if self.config.greedy:
            return x.argmax(dim=-1)
        probs = torch.softmax(x, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
