"""Memory stays flat however long the stream: the state is constant-size and its buffers are reused."""

from __future__ import annotations

import gc

import psutil
import pytest
import torch
from xlstm_edge.runtime import SamplingConfig, load
from xlstm_edge.runtime.generate import GenerationStats, start_generation, stream_tokens
from xlstm_edge.runtime.sampling import Sampler

from tests.runtime.conftest import make_model, random_ids

# RSS may move by allocator noise (a few pages); a leak of even 100 bytes per step would show
# as 0.3 MB per 3k steps and 2 MB per 20k, above these bounds
MAX_GROWTH_BYTES = 256 * 1024


def rss_growth(session, warmup: int, steps: int) -> tuple[int, int]:
    """RSS after ``warmup`` + ``steps`` sampled-and-fed tokens minus RSS after ``warmup`` (bytes); state bytes."""
    proc = psutil.Process()
    sampler = Sampler(SamplingConfig(temperature=1.0, top_k=40, repetition_penalty=1.1, seed=0), vocab_limit=256)
    stats = GenerationStats(stopped=["length"])
    logits = start_generation(session, [random_ids(32)], stats)
    gen = stream_tokens(session, logits, warmup + steps, sampler, set(), stats, [False])
    before = 0
    for k, _ in enumerate(gen):
        if k == warmup:
            gc.collect()
            before = proc.memory_info().rss
            state_before = session.get_state().nbytes
    gc.collect()
    after = proc.memory_info().rss
    assert session.get_state().nbytes == state_before
    return after - before, state_before


def test_torch_backend_memory_is_flat(seed):
    torch.manual_seed(seed)
    sess = load(make_model("tiny", seed=3), num_threads=1)
    growth, _ = rss_growth(sess, warmup=500, steps=2000)
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth} bytes over 2000 steps"


@pytest.mark.parametrize("backend,steps", [("onnxruntime", 20000), ("executorch", 5000)])
def test_package_backend_memory_is_flat(backend, steps, packages, seed):
    torch.manual_seed(seed)
    sess = load(packages[backend], num_threads=1)
    growth, _ = rss_growth(sess, warmup=2000, steps=steps)
    assert growth < MAX_GROWTH_BYTES, f"{backend}: RSS grew {growth} bytes over {steps} steps"
