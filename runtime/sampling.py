"""Next-token selection: greedy, temperature, top-k, top-p, min-p, repetition / presence / frequency
penalties, seeded RNG (numpy's PCG64: the runtime needs no torch).

All functions take ``logits`` (B, V) float32 numpy arrays and return a new array (B, V) (filters set
removed entries to ``-inf``); the order ``Sampler`` applies them is the one Hugging Face uses, with the
OpenAI-style additive penalties beside the repetition penalty (as llama.cpp applies them):
repetition penalty -> presence / frequency penalty -> (greedy: argmax) -> temperature -> top-k
-> top-p -> min-p -> draw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

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
def _seen_mask(recent: np.ndarray, vocab: int) -> np.ndarray:
    """(B, V) bool: which tokens occur in ``recent`` (B, W) int64 (-1 = empty slot)."""
    B = recent.shape[0]
    idx = np.where(recent >= 0, recent, vocab)  # empty slots go to a spare column, dropped below
    seen = np.zeros((B, vocab + 1), dtype=bool)
    seen[np.arange(B)[:, None], idx] = True
    return seen[:, :vocab]


def apply_repetition_penalty(logits: np.ndarray, recent: np.ndarray, penalty: float) -> np.ndarray:
    """Penalize tokens in ``recent`` (B, W) int64 (-1 = empty slot): logit > 0 -> / penalty, else * penalty."""
    if penalty == 1.0 or recent.size == 0:
        return logits
    seen = _seen_mask(np.asarray(recent), logits.shape[1])
    penalized = np.where(logits > 0, logits / np.float32(penalty), logits * np.float32(penalty))
    return np.where(seen, penalized, logits).astype(np.float32, copy=False)


def apply_presence_frequency(logits: np.ndarray, recent: np.ndarray, presence: float,
                             frequency: float) -> np.ndarray:
    """OpenAI's additive penalties over ``recent`` (B, W) int64 (-1 = empty slot):
    logit -= presence * [count > 0] + frequency * count, with count the token's occurrences in ``recent``."""
    if (presence == 0.0 and frequency == 0.0) or recent.size == 0:
        return logits
    B, V = logits.shape
    recent = np.asarray(recent)
    idx = np.where(recent >= 0, recent, V)
    counts = np.zeros((B, V + 1), dtype=np.float32)
    np.add.at(counts, (np.arange(B)[:, None], idx), 1.0)
    counts = counts[:, :V]
    return (logits - np.float32(presence) * (counts > 0) - np.float32(frequency) * counts).astype(np.float32)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature (temperature > 0)."""
    return logits / np.float32(temperature)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row (ties with the k-th are kept); k = 0 or k >= V is a no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = -np.partition(-logits, k - 1, axis=-1)[:, k - 1:k]
    return np.where(logits < kth, np.float32(-np.inf), logits)


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (rows of all ``-inf`` are not expected)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _nucleus(probs: np.ndarray, p: float) -> np.ndarray:
    """Indices of the smallest set of most likely entries of ``probs`` (V,) whose sum reaches ``p``.

    Only the top candidates are sorted (``argpartition`` of the top 64, then 512, until their mass
    reaches p; then the whole row), not the whole vocabulary: a peaked row (a trained model's) costs
    ~1 ms instead of a full sort's several.
    """
    V = probs.shape[0]
    k = min(64, V)
    while True:
        top = np.argpartition(-probs, k - 1)[:k] if k < V else np.arange(V)
        order = top[np.argsort(-probs[top])]
        sp = probs[order]
        before = np.cumsum(sp) - sp  # probability mass strictly before each token
        if k == V or before[-1] + sp[-1] >= p:
            return order[before < p]  # the first token has before == 0 < p: always kept
        k = 8 * k if k < 512 else V  # a flat row: one full sort (argpartition got slow on wide k)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability sum reaches ``p`` (always >= 1 token)."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    out = np.full_like(logits, -np.inf)
    for b in range(logits.shape[0]):
        keep = _nucleus(probs[b], p)
        out[b, keep] = logits[b, keep]
    return out


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability."""
    if min_p <= 0.0:
        return logits
    probs = _softmax(logits)
    threshold = np.float32(min_p) * probs.max(axis=-1, keepdims=True)
    return np.where(probs < threshold, np.float32(-np.inf), logits)


def filtered_logits(logits: np.ndarray, config: SamplingConfig, recent: np.ndarray | None = None) -> np.ndarray:
    """Everything before the draw: penalty, temperature, top-k, top-p, min-p. (B, V) -> (B, V) float32."""
    x = np.asarray(logits, dtype=np.float32)
    if recent is not None:
        window = np.asarray(recent)[:, -config.repetition_window:]
        x = apply_repetition_penalty(x, window, config.repetition_penalty)
        x = apply_presence_frequency(x, window, config.presence_penalty, config.frequency_penalty)
    if config.greedy:
        return x
    x = apply_temperature(x, config.temperature)
    x = top_k_filter(x, config.top_k)
    x = top_p_filter(x, config.top_p)
    return min_p_filter(x, config.min_p)


# ---- the random state -------------------------------------------------------------------------------
RNG_KIND = "numpy-pcg64"  # what a state file's sampler state is (files name it in their metadata)
_U64 = (1 << 64) - 1


def pack_pcg64(state: dict) -> np.ndarray:
    """numpy's ``PCG64.state`` dict -> (6,) uint64: state hi/lo, inc hi/lo, has_uint32, uinteger."""
    s, inc = state["state"]["state"], state["state"]["inc"]
    return np.array([s >> 64, s & _U64, inc >> 64, inc & _U64, state["has_uint32"], state["uinteger"]],
                    dtype=np.uint64)


def unpack_pcg64(packed: np.ndarray) -> dict:
    """Inverse of ``pack_pcg64``."""
    v = [int(x) for x in np.asarray(packed, dtype=np.uint64).tolist()]
    return {"bit_generator": "PCG64", "state": {"state": (v[0] << 64) | v[1], "inc": (v[2] << 64) | v[3]},
            "has_uint32": v[4], "uinteger": v[5]}


class Sampler:
    """Draws next tokens with its own seeded ``numpy.random.Generator`` (PCG64; global RNGs are left alone)."""

    def __init__(self, config: SamplingConfig | None = None, vocab_limit: int | None = None):
        """``vocab_limit``: only ids below it may be drawn (e.g. the tokenizer's size when the model's
        vocab is padded beyond it: ids the tokenizer cannot decode are never produced as text)."""
        self.config = config or SamplingConfig()
        self.vocab_limit = vocab_limit
        self.seed = self.config.seed if self.config.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.generator = np.random.Generator(np.random.PCG64(self.seed))

    def rng_state(self) -> np.ndarray:
        """The generator's state, (6,) uint64 (saved with a conversation state: resumes continue the draws)."""
        return pack_pcg64(self.generator.bit_generator.state)

    def set_rng_state(self, state: np.ndarray) -> None:
        """Continue the draws from ``rng_state()`` of a sampler with the same seed."""
        self.generator.bit_generator.state = unpack_pcg64(state)

    def __call__(self, logits: np.ndarray, recent: np.ndarray | None = None) -> np.ndarray:
        """logits (B, V) float32 -> token ids (B,) int64."""
        logits = np.asarray(logits, dtype=np.float32)
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits = logits.copy()
            logits[:, self.vocab_limit:] = -np.inf
        x = filtered_logits(logits, self.config, recent)
        if self.config.greedy:
            return x.argmax(axis=-1).astype(np.int64)
        # inverse CDF, one uniform per row (in row order); float64 sums so that the CDF ends at ~1
        cdf = np.cumsum(np.exp(x - x.max(axis=-1, keepdims=True), dtype=np.float64), axis=-1)
        u = self.generator.random(x.shape[0]) * cdf[:, -1]
        out = np.empty(x.shape[0], dtype=np.int64)
        for b in range(x.shape[0]):
            i = int(np.searchsorted(cdf[b], u[b], side="right"))
            out[b] = min(i, x.shape[1] - 1)
        return out
