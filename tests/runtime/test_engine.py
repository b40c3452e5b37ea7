"""The serving engine: rows decoded in one batch end in the states their own tokens give, on every backend."""

from __future__ import annotations

import queue

import pytest
from xlstm_edge.runtime import SamplingConfig, load
from xlstm_edge.runtime.engine import DoneEvent, Engine, ErrorEvent, GenerationRequest

from tests.conftest import rel_err
from tests.runtime.conftest import random_ids


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "executorch"])
def test_batched_rows_end_in_their_own_states(packages, backend, seed):
    """ONNX graphs take the batch in one call; the batch-1 ExecuTorch package runs it row by row."""
    pytest.importorskip(backend if backend != "torch" else "torch")
    source = packages["model"] if backend == "torch" else packages[backend]
    sess = load(source, num_threads=1)
    engine = Engine(sess, None, max_batch=3, max_queue=3)
    events: queue.Queue = queue.Queue()
    prompts = [random_ids(n) for n in (5, 11, 17)]
    lengths = [9, 4, 13]  # rows leave the batch at different steps
    for p, n in zip(prompts, lengths, strict=True):
        engine.submit(GenerationRequest(p, n, SamplingConfig(temperature=1.0, seed=seed), events.put,
                                        return_state=True))
    engine.start()
    done = []
    for _ in range(200):
        ev = events.get(timeout=60)
        assert not isinstance(ev, ErrorEvent), ev
        if isinstance(ev, DoneEvent):
            done.append(ev)
            if len(done) == 3:
                break
    engine.close(30)
    assert engine.batched_steps > 0
    ref = load(source, num_threads=1)
    for ev in done:
        ids = ev.token_ids
        assert ev.state.pending is not None and ev.completion_tokens in lengths
        ref.reset(1)
        ref.prefill(ids[:-1])  # teacher-forced: the row's own tokens, alone
        want = ref.get_state()
        for a, b in zip(ev.state.tensors, want.tensors, strict=True):
            if abs(b).max() > 0:
                assert rel_err(a, b) < 1e-4, (backend, seed)
        assert int(ev.state.pending[0]) == ids[-1]
        assert ev.state.num_tokens.tolist() == [len(ids) - 1]
