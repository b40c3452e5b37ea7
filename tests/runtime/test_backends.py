"""onnxruntime and ExecuTorch packages against the torch backend (same weights): logits over a prefill +
256 steps, save / resume / fork / batch on each, states portable across backends, manifest checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from xlstm_edge.runtime import GenerationArgumentError, PackageError, SamplingConfig, StaleProgramError, load

from tests.conftest import rel_err
from tests.runtime.conftest import random_ids

BACKENDS = ["onnxruntime", "executorch"]
PARITY = 1e-4  # fp32 logits, norm-wise relative error, worst step


@pytest.fixture(scope="module")
def torch_sess(packages):
    return load(packages["model"], num_threads=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_match_torch_over_prefill_and_256_steps(backend, packages, torch_sess, seed):
    sess = load(packages[backend], num_threads=1)
    assert sess.backend.name == backend
    T = sess.backend.prefill_tokens
    torch_sess.reset()
    prompt = random_ids(2 * T + 3)  # two whole chunks and a padded one
    errs = [rel_err(sess.prefill(prompt), torch_sess.prefill(prompt))]
    for tok in torch.randint(0, 256, (256,)).tolist():
        errs.append(rel_err(sess.step([tok]), torch_sess.step([tok])))
    assert max(errs) <= PARITY, f"{backend}: worst step {max(errs):.2e} (seed {seed})"
    for a, b in zip(sess.get_state().tensors, torch_sess.get_state().tensors, strict=True):
        assert rel_err(a, b) <= PARITY
    # and a greedy continuation picks the same tokens
    assert sess.generate_ids([], 24) == torch_sess.generate_ids([], 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_returned_logits_and_saved_state_outlive_the_next_calls(backend, packages, torch_sess):
    """The backends hand their output tensors on without copying (ExecuTorch's binding returns fresh
    tensors, which become the state): what a call returned, and a saved state, must not change later."""
    sess = load(packages[backend], num_threads=1)
    prompt = random_ids(11)
    first = sess.prefill(prompt)
    saved = sess.get_state()
    kept = first.copy(), [t.copy() for t in saved.tensors]
    steps, copies = [], []
    for tok in (3, 5, 7):
        steps.append(sess.step([tok]))
        copies.append(steps[-1].copy())
    assert np.array_equal(first, kept[0]) and all(np.array_equal(a, b) for a, b in zip(steps, copies, strict=True))
    assert not np.array_equal(steps[0], steps[1])
    assert all(np.array_equal(a, b) for a, b in zip(saved.tensors, kept[1], strict=True))
    torch_sess.reset()
    torch_sess.prefill(prompt)
    for tok, got in zip((3, 5, 7), steps, strict=True):
        assert rel_err(got, torch_sess.step([tok])) <= PARITY


@pytest.mark.parametrize("backend", ["onnxruntime", "model"])
def test_decode_threads_give_the_same_tokens(backend, packages):
    """Prefill on 2 threads, steps on 1 (and a prefill again after steps): the same logits as one
    thread throughout, and the backend says so."""
    one = load(packages[backend], num_threads=1)
    mixed = load(packages[backend], num_threads=2, decode_threads=1)
    assert mixed.backend.decode_threads == 1 and "decode 1" in mixed.backend.describe()
    prompt = random_ids(19)
    for sess in (one, mixed):
        sess.prefill(prompt)
    for _ in range(2):
        assert one.generate_ids([], 12) == mixed.generate_ids([], 12)
        assert rel_err(mixed.prefill(prompt[:9]), one.prefill(prompt[:9])) <= PARITY


def test_executorch_threadpool_is_one_size_and_a_resize_is_an_error_not_a_crash(packages):
    """ExecuTorch's threadpool is process-wide and its programs keep a pointer to it: decode_threads
    other than num_threads is refused, and a program loaded before another load resized the pool
    raises instead of crashing the process; a program loaded after the resize runs."""
    with pytest.raises(GenerationArgumentError, match="decode_threads"):
        load(packages["executorch"], num_threads=2, decode_threads=1)
    first = load(packages["executorch"], num_threads=1)
    first.prefill(random_ids(5))
    second = load(packages["executorch"], num_threads=2)
    with pytest.raises(StaleProgramError, match="load it again"):
        first.step([3])
    want = second.generate_ids([1, 2], 3)
    assert load(packages["executorch"], num_threads=2).generate_ids([1, 2], 3) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_resume_fork_on_package(backend, packages, tmp_path, seed):
    cfg = SamplingConfig(temperature=0.9, top_p=0.95, seed=seed)
    sess = load(packages[backend], num_threads=1)
    sess.generate_ids(random_ids(21), 10, cfg)
    path = sess.save_state(tmp_path / "s.safetensors")
    fork = sess.get_state().copy()
    want = sess.generate_ids([], 25, cfg)[0]
    other = load(packages[backend], num_threads=1)
    other.load_state(path)
    assert other.generate_ids([], 25, cfg)[0] == want, f"seed {seed}"
    for a, b in zip(other.get_state().tensors, sess.get_state().tensors, strict=True):
        assert np.array_equal(a, b)
    # a fork is untouched by the branch that ran; another seed diverges
    sess.set_state(fork)
    assert sess.generate_ids([], 25, cfg)[0] == want
    sess.set_state(fork)
    assert sess.generate_ids([], 25, SamplingConfig(temperature=0.9, top_p=0.95, seed=seed + 1))[0] != want


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_rows_independent_on_package(backend, packages, seed):
    prompts = [random_ids(n) for n in (19, 4, 40)]
    sess = load(packages[backend], num_threads=1)
    got = sess.generate_ids(prompts, 16)
    single = load(packages[backend], num_threads=1)
    for row, prompt in enumerate(prompts):
        single.reset()
        assert got[row] == single.generate_ids(prompt, 16)[0], f"{backend} row {row} (seed {seed})"
    rows = random_ids(9, batch=3)
    sess.reset(3)
    lb = sess.prefill(rows)
    for row in range(3):
        single.reset()
        assert rel_err(lb[row], single.prefill(rows[row])[0]) < 1e-5


def test_state_is_portable_across_backends(packages, torch_sess, tmp_path, seed):
    """A conversation saved on one backend continues on another (same model)."""
    ort = load(packages["onnxruntime"], num_threads=1)
    ort.generate_ids(random_ids(30), 6)
    path = ort.save_state(tmp_path / "s.safetensors")
    want = ort.step([7])
    for sess in (load(packages["executorch"], num_threads=1), torch_sess):
        sess.load_state(path)
        assert rel_err(sess.step([7]), want) <= PARITY


@pytest.mark.parametrize("backend", BACKENDS)
def test_manifest_that_does_not_match_its_graphs(backend, packages, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(packages[backend], pkg)
    manifest = pkg / "xlstm_edge.json"
    raw = json.loads(manifest.read_text())
    good = json.dumps(raw)
    T = raw["graphs"]["prefill"]["tokens_per_call"]
    raw["graphs"]["prefill"]["tokens_per_call"] = 2 * T  # the graph takes T tokens
    raw["graphs"]["prefill"]["inputs"][0]["shape"][1] = 2 * T
    manifest.write_text(json.dumps(raw))
    with pytest.raises(PackageError) as e:
        load(pkg)
    assert "does not match its manifest" in str(e.value) and "input_ids" in str(e.value)
    raw = json.loads(good)  # swap the files of the two graphs
    step_file, prefill_file = raw["graphs"]["step"]["file"], raw["graphs"]["prefill"]["file"]
    raw["graphs"]["step"]["method"], raw["graphs"]["prefill"]["method"] = (
        raw["graphs"]["prefill"]["method"], raw["graphs"]["step"]["method"])
    raw["graphs"]["step"]["file"], raw["graphs"]["prefill"]["file"] = prefill_file, step_file
    manifest.write_text(json.dumps(raw))
    with pytest.raises(PackageError) as e:
        load(pkg)
    assert "does not match its manifest" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("backend", [*BACKENDS, "model"])
def test_session_ops_run_on_one_torch_thread_beside_a_backend_pool(backend, packages, monkeypatch):
    """Around the calls of a backend with a pool of its own, the session's torch work (logits copies,
    sampling) runs on one torch thread, so torch's spinning OpenMP workers leave that pool the cores;
    torch's setting is restored after each call. The torch backend computes on torch's threads: untouched."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sess = load(packages[backend], num_threads=2)
        seen: list[int] = []
        for method in ("step", "prefill"):
            inner = getattr(sess.backend, method)

            def spy(ids, inner=inner):
                seen.append(torch.get_num_threads())
                return inner(ids)

            monkeypatch.setattr(sess.backend, method, spy)
        sampled: list[int] = []
        from xlstm_edge.runtime import sampling

        real_sample = sampling.Sampler.__call__

        def sample_and_note_threads(self, *args):
            sampled.append(torch.get_num_threads())
            return real_sample(self, *args)

        monkeypatch.setattr(sampling.Sampler, "__call__", sample_and_note_threads)
        sess.prefill(random_ids(5))
        sess.step([7])
        list(sess.stream("ab", max_new_tokens=3))
        want = 2 if backend == "model" else 1
        assert seen and set(seen) == {want} and sampled and set(sampled) == {want}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
