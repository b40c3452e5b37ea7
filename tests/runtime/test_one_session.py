"""The ONNX Runtime backend over one session (``genai.onnx`` for prefill and decode, ``ort_genai_backend``):
chosen for quantized packages (each session holds its own prepacked MatMulNBits weights), it computes
what the two-session backend computes, and its state files are the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xlstm_edge.runtime import load
from xlstm_edge.runtime import ort_genai_backend as one
from xlstm_edge.runtime.errors import GenerationArgumentError
from xlstm_edge.runtime.genai_slots import SlotLayout
from xlstm_edge.runtime.ort_backend import OrtBackend
from xlstm_edge.runtime.ort_genai_backend import OrtGenAIBackend

from tests.conftest import rel_err


def _open(package, monkeypatch, one_session: bool):
    monkeypatch.setattr(one, "ONE_SESSION_OVERRIDE", one_session)
    return load(package, num_threads=2)


def test_quantized_packages_open_one_session_float32_two(ort_built):
    for scheme, emb in (("int8-dynamic", "int8"), ("int4-dynamic", "fp32")):
        sess = load(ort_built.int8[scheme, emb].out, num_threads=2)
        assert isinstance(sess.backend, OrtGenAIBackend), scheme
        assert "one session: genai.onnx" in sess.backend.describe()
    assert type(load(ort_built.package, num_threads=2).backend) is OrtBackend
    with pytest.raises(GenerationArgumentError, match="one ONNX Runtime session"):
        load(ort_built.int8["int8-dynamic", "int8"].out, num_threads=2, decode_threads=1)


def test_one_session_computes_what_the_two_sessions_compute(ort_built, monkeypatch, seed):
    """On the float32 package (no rounding boundaries between the graphs): the prompt in chunks, steps,
    the state read back and written again, batch 2; logits and state against the two-session backend."""
    gen = torch.Generator().manual_seed(seed)
    V = ort_built.model.config.vocab_size
    ids = torch.randint(0, V, (2, 2 * 16 + 5), generator=gen).numpy()
    nxt = torch.randint(0, V, (2, 3), generator=gen).numpy()
    got = {}
    for one_session in (True, False):
        be = _open(ort_built.package, monkeypatch, one_session).backend
        be.reset(2)
        prompt_logits = be.prefill(ids).copy()
        state = be.read_state()
        steps = [be.step(nxt[:, i:i + 1]).copy() for i in range(3)]
        be.write_state(state)  # back to the prompt's end: the same steps again
        again = [be.step(nxt[:, i:i + 1]).copy() for i in range(3)]
        assert all(np.array_equal(a, b) for a, b in zip(steps, again, strict=True)), one_session
        got[one_session] = prompt_logits, state, steps
    (l1, s1, st1), (l2, s2, st2) = got[True], got[False]
    assert rel_err(torch.from_numpy(l1), torch.from_numpy(l2).double()) < 1e-5, f"seed {seed}"
    for a, b in zip(s1, s2, strict=True):
        assert a.shape == b.shape and rel_err(torch.from_numpy(a), torch.from_numpy(b).double()) < 1e-5, f"seed {seed}"
    for a, b in zip(st1, st2, strict=True):
        assert rel_err(torch.from_numpy(a), torch.from_numpy(b).double()) < 1e-5, f"seed {seed}"


def test_slot_layout_round_trip(seed):
    """pack then unpack gives our state back, for an mLSTM layer ([n | m], C) and an sLSTM layer (flat,
    zero-padded), whatever the values."""
    from xlstm_edge.state_spec import StateTensorSpec

    specs = [StateTensorSpec(0, "C", (2, 3, 4)), StateTensorSpec(0, "n", (2, 3)), StateTensorSpec(0, "m", (2,)),
             StateTensorSpec(1, "y", (2, 2)), StateTensorSpec(1, "c", (2, 2)), StateTensorSpec(1, "n", (2, 2)),
             StateTensorSpec(1, "m", (2, 2)), StateTensorSpec(1, "conv", (1, 4))]
    slots = SlotLayout(specs, (2, 4), (2, 3, 4))
    state = [np.random.default_rng(seed).standard_normal((3, *s.shape)).astype(np.float32) for s in specs]
    buf = slots.zeros(3)
    slots.pack(state, buf)
    assert np.array_equal(buf[2], np.zeros((3, 2, 4), np.float32))  # sLSTM conv_state unused
    assert np.array_equal(buf[3].reshape(3, -1)[:, 20:], np.zeros((3, 4), np.float32))  # padding
    for a, b in zip(slots.unpack(buf), state, strict=True):
        assert np.array_equal(a, b), f"seed {seed}"
    with pytest.raises(ValueError, match="does not fit"):
        SlotLayout(specs, (2, 4), (2, 2, 4))
