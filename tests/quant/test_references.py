"""The check stages' pieces: relative errors without float64 copies, kept steps, recorded references."""

from __future__ import annotations

import math

import torch
from xlstm_edge.quant.handler import quantize_model
from xlstm_edge.quant.references import eager_greedy, greedy_run, kept_steps, prefill_records, replay
from xlstm_edge.quant.verify import CHUNK, EagerGraph, rel_error, rel_error_whole

from tests.quant.conftest import make_model


def test_rel_error_in_chunks_equals_float64(seed):
    ref = torch.randn(3, CHUNK // 2 + 17)  # more than CHUNK elements, not a multiple of it
    got = ref + 1e-3 * torch.randn_like(ref)
    direct = float((got.double() - ref.double()).norm() / ref.double().norm())
    assert math.isclose(rel_error(got, ref), direct, rel_tol=1e-9), seed
    whole = float((torch.cat([got[0], got[1:].reshape(-1)]).double() - ref.double().reshape(-1)).norm()
                  / ref.double().norm())
    assert math.isclose(rel_error_whole([got[0], got[1:]], [ref[0], ref[1:]]), whole, rel_tol=1e-9), seed
    got[1, 5] = float("nan")
    assert math.isnan(rel_error(got, ref))


def test_kept_steps():
    assert kept_steps(10, record_bytes=1, budget=100) == list(range(10))
    picked = kept_steps(48, record_bytes=200, budget=512)  # 2 fit: the first and the last
    assert picked == [0, 47]
    picked = kept_steps(48, record_bytes=100, budget=512)
    assert picked[0] == 0 and picked[-1] == 47 and len(picked) == 5
    assert kept_steps(48, record_bytes=10**9, budget=512) == [0, 47]  # never fewer than 2


def test_recorded_references_replay(seed):
    """A runner replayed on the eager model's own records agrees exactly; another model's runner does not;
    the eager greedy run is the same run as ``greedy_run`` of the eager step."""
    model = make_model("tiny", seed=seed % 1000, num_hidden_layers=2, hidden_size=32, chunk_size=8)
    int8 = quantize_model(model, "int8-dynamic", backend="onnxruntime")
    prompt = torch.randint(0, model.config.vocab_size, (5,))
    run = eager_greedy(int8, prompt, steps=12)
    assert run.fed.shape == (12,) and run.logits.shape == (8, model.config.vocab_size)
    assert len(run.steps) == 12  # a tiny state: every step is kept
    assert torch.equal(run.fed, greedy_run(EagerGraph(int8, "step"), int8.config, prompt, 12).fed)
    assert replay(EagerGraph(int8, "step"), run.steps).logits_rel_err == 0.0
    other = quantize_model(make_model("tiny", seed=seed % 1000 + 1, num_hidden_layers=2, hidden_size=32,
                                            chunk_size=8), "int8-dynamic", backend="onnxruntime")
    assert replay(EagerGraph(other, "step"), run.steps).logits_rel_err > 1e-2
    calls = prefill_records(int8, 8, 2, torch.Generator().manual_seed(seed))
    assert calls[0].inputs[1].tolist() == [8, 5]  # valid lengths T and T // 2 + 1
    assert replay(EagerGraph(int8, "prefill", 8), calls).whole_state_rel_err == 0.0
