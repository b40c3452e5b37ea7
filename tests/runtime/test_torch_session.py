"""The session on the torch backend: streaming equals a hand-written greedy loop, state save / resume /
fork, batch rows independent, stops."""

from __future__ import annotations

import numpy as np
import torch
from xlstm_edge.runtime import SamplingConfig, load
from xlstm_edge.runtime.state import RecurrentState

from tests.conftest import rel_err
from tests.runtime.conftest import random_ids
from xlstm_edge.checkpoint import save_checkpoint


@torch.inference_mode()
def manual_greedy(
    model, prompt: list[int], n: int, dtype=torch.float32, vocab_limit: int | None = None
) -> tuple[list[int], list[torch.Tensor]]:
    """The reference: the model's own chunkwise prefill, then its one-step form, argmax (over ids below
    ``vocab_limit``) each time."""
    m = model.to(dtype)
    try:
        logits, state = m(torch.tensor([prompt]), form="chunkwise")
        out, all_logits = [], []
        for _ in range(n):
            all_logits.append(logits[0, -1])
            tok = int(logits[0, -1, :vocab_limit].argmax())
            out.append(tok)
            logits, state = m(torch.tensor([[tok]]), state)
        return out, all_logits
    finally:
        model.float()


def test_generate_ids_equals_manual_greedy(model_ms, seed):
    prompt = random_ids(37)
    want, _ = manual_greedy(model_ms, prompt, 48)
    sess = load(model_ms, num_threads=1)
    got = sess.generate_ids(prompt, max_new_tokens=48)[0]
    assert got == want, f"seed {seed}"
    # logits along the same tokens vs a float64 run of the model
    sess.reset()
    _, ref64 = manual_greedy(model_ms, prompt, 16, dtype=torch.float64)
    logits = [sess.prefill(prompt)[0]]
    for tok in want[:15]:
        logits.append(sess.step([tok])[0])
    assert rel_err(torch.stack([torch.from_numpy(x) for x in logits]), torch.stack(ref64)) < 1e-5, f"seed {seed}"


def test_text_stream_is_the_decoded_greedy_ids(model_m, seed):
    sess = load(model_m, num_threads=1)
    prompt = "The xLSTM streams text: "
    ids = [sess.tokenizer.bos_token_id, *sess.tokenizer.encode(prompt)]
    want, _ = manual_greedy(model_m, ids, 40, vocab_limit=sess.tokenizer.vocab_size)
    pieces = list(sess.stream(prompt, max_new_tokens=40, stop_tokens=[], add_bos=True))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == sess.tokenizer.decode(want)
    assert sess.last_stats.new_tokens == 40 and sess.last_stats.prompt_tokens == len(ids)
    assert int(sess.get_state().num_tokens[0]) == len(ids) + 39  # the last token is pending


def test_save_resume_is_bit_for_bit(model_ms, tmp_path, seed):
    """Save mid-stream, resume in a new session (from a checkpoint directory): same continuation."""
    cfg = SamplingConfig(temperature=0.9, top_k=50, repetition_penalty=1.2, seed=seed)
    ckpt = save_checkpoint(model_ms, tmp_path / "ckpt")
    first = load(ckpt, backend="torch", num_threads=1)  # both sessions: the same load path and layout
    first.generate_ids(random_ids(21), max_new_tokens=12, sampling=cfg)
    path = first.save_state(tmp_path / "chat.safetensors")
    want = first.generate_ids([], max_new_tokens=30, sampling=cfg)[0]
    want_state = first.get_state()

    second = load(ckpt, backend="torch", num_threads=1)
    second.load_state(path)
    got = second.generate_ids([], max_new_tokens=30, sampling=cfg)[0]
    assert got == want, f"seed {seed}"
    got_state = second.get_state()
    for a, b in zip(got_state.tensors, want_state.tensors, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(got_state.pending, want_state.pending)
    assert np.array_equal(got_state.recent, want_state.recent)


def test_forks_are_independent(model_ms, seed):
    sess = load(model_ms, num_threads=1)
    sess.generate_ids(random_ids(19), max_new_tokens=5)
    fork = sess.get_state().copy()
    a = sess.generate_ids([], 20, SamplingConfig(temperature=1.0, seed=1))[0]
    after_a = sess.get_state()
    sess.set_state(fork)
    b = sess.generate_ids([], 20, SamplingConfig(temperature=1.0, seed=2))[0]
    assert a != b, f"seed {seed}"
    sess.set_state(fork)  # the fork was not touched by either branch
    assert sess.generate_ids([], 20, SamplingConfig(temperature=1.0, seed=1))[0] == a
    for x, y in zip(sess.get_state().tensors, after_a.tensors, strict=True):
        assert np.array_equal(x, y)


def test_batch_rows_are_independent(model_ms, seed):
    """Ragged prompts in one batch: each row's logits and greedy ids equal a batch-of-one run."""
    prompts = [random_ids(n) for n in (17, 5, 30)]
    batch = load(model_ms, num_threads=1)
    got = batch.generate_ids(prompts, max_new_tokens=20)
    assert batch.batch_size == 3
    for row, prompt in enumerate(prompts):
        want, _ = manual_greedy(model_ms, prompt, 20)
        assert got[row] == want, f"row {row}, seed {seed}"
    # teacher-forced: the same tokens in a batch and alone give the same logits (rows equal length here)
    same_len = random_ids(24, batch=3)
    batch.reset(3)
    single = load(model_ms, num_threads=1)
    lb = batch.prefill(same_len)
    for row in range(3):
        single.reset()
        ls = single.prefill(same_len[row])
        assert rel_err(lb[row], ls[0]) < 1e-5
    toks = torch.randint(0, 256, (3,))
    lb2 = batch.step(toks)
    single.reset()
    single.prefill(same_len[2])
    assert rel_err(lb2[2], single.step([int(toks[2])])[0]) < 1e-5


def test_batch_row_that_stops_keeps_its_own_state(model_ms, seed):
    prompts = random_ids(11, batch=2)
    solo = load(model_ms, num_threads=1)
    ids0 = solo.generate_ids(prompts[0], 12)[0]
    stop = next((t for k, t in enumerate(ids0) if k >= 2 and t not in ids0[:k]), ids0[-1])
    solo.reset()
    want0 = solo.generate_ids(prompts[0], 12, stop_tokens=[stop])[0]
    assert want0[-1] == stop
    want_state0 = solo.get_state()
    batch = load(model_ms, num_threads=1)
    got = batch.generate_ids(prompts, 12, stop_tokens=[stop])
    assert got[0] == want0
    row0 = batch.get_state().row(0)
    assert np.array_equal(row0.pending, want_state0.pending)
    for a, b in zip(row0.tensors, want_state0.tensors, strict=True):
        assert rel_err(a, b) < 1e-5
    solo.reset()
    assert got[1] == solo.generate_ids(prompts[1], 12, stop_tokens=[stop])[0]


def test_stop_strings_and_stop_tokens_in_text(model_m, seed):
    sess = load(model_m, num_threads=1)
    full = sess.generate("Stop here: ", max_new_tokens=30, stop_tokens=[])
    assert len(full) >= 6
    cut = full[3:6]
    sess.reset()
    text = sess.generate("Stop here: ", max_new_tokens=30, stop_tokens=[], stop_strings=[cut])
    assert text == full[:full.index(cut)] and sess.last_stats.stopped == ["stop_string"]
    sess.reset()
    ids = sess.generate_ids(sess.tokenizer.encode("Stop here: "), 30)[0]
    sess.reset()
    text = sess.generate("Stop here: ", max_new_tokens=30, stop_tokens=[ids[4]])
    k = ids.index(ids[4])
    assert text == sess.tokenizer.decode(ids[:k]) and sess.last_stats.stopped == ["stop_token"]


def test_state_object_roundtrip(model_m, tmp_path, seed):
    sess = load(model_m, num_threads=1)
    sess.prefill(random_ids(9, batch=2))
    state = sess.get_state()
    assert state.batch_size == 2 and state.nbytes == sess.state_bytes
    back = RecurrentState.load(state.save(tmp_path / "s.safetensors"), sess.layout)
    for a, b in zip(back.tensors, state.tensors, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(back.logits, state.logits) and back.pending is None
    stacked = RecurrentState.stack([state.row(1), state.row(0)])
    assert np.array_equal(stacked.tensors[0][0], state.tensors[0][1])
