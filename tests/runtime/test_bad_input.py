"""Bad input: each case raises a ValueError subclass with one line that names the problem."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from xlstm_edge.runtime import (
    BackendNotInstalledError,
    EmptyPromptError,
    GenerationArgumentError,
    PackageError,
    StateMismatchError,
    TokenRangeError,
    UnknownBackendError,
    load,
)

from tests.runtime.conftest import make_model, write_fake_package
from xlstm_edge import xLSTMConfig
from xlstm_edge.checkpoint import save_checkpoint


def _raises(kind, fn, *words):
    with pytest.raises(kind) as info:
        fn()
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg and msg.strip(), msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture(scope="module")
def sess():
    return load(make_model("tiny", seed=7), num_threads=1)


def test_unknown_backend(tmp_path):
    _raises(UnknownBackendError, lambda: load(tmp_path, backend="tensorrt"), "tensorrt", "onnxruntime")


def test_missing_or_unknown_source(tmp_path):
    _raises(PackageError, lambda: load(tmp_path / "nope"), "does not exist")
    _raises(PackageError, lambda: load(tmp_path), "neither an exported package")
    (tmp_path / "f.txt").write_text("x")
    _raises(PackageError, lambda: load(tmp_path / "f.txt"), "not a directory")


def test_package_missing_files(tmp_path):
    pkg = write_fake_package(tmp_path, xLSTMConfig.from_preset("tiny"))
    (pkg / "prefill.onnx").unlink()
    _raises(PackageError, lambda: load(pkg), "prefill.onnx")
    (pkg / "xlstm_edge.json").unlink()
    _raises(PackageError, lambda: load(pkg), "neither")


def test_manifest_state_that_contradicts_its_config(tmp_path):
    pytest.importorskip("onnxruntime")
    pkg = write_fake_package(tmp_path, xLSTMConfig.from_preset("tiny"))
    raw = json.loads((pkg / "xlstm_edge.json").read_text())
    raw["model"]["num_heads"] = 4  # C would be (4, 8, 16), the manifest says (2, 16, 32)
    (pkg / "xlstm_edge.json").write_text(json.dumps(raw))
    _raises(PackageError, lambda: load(pkg), "do not match its model config")


def test_corrupt_graph_file(tmp_path):
    pytest.importorskip("onnxruntime")
    pkg = write_fake_package(tmp_path, xLSTMConfig.from_preset("tiny"))
    _raises(PackageError, lambda: load(pkg), "cannot load", "step.onnx")


@pytest.mark.parametrize("backend,module,pip", [("onnxruntime", "onnxruntime", "onnxruntime"),
                                                ("executorch", "executorch", "executorch")])
def test_backend_not_installed(tmp_path, monkeypatch, backend, module, pip):
    pkg = write_fake_package(tmp_path, xLSTMConfig.from_preset("tiny"), backend=backend)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    _raises(BackendNotInstalledError, lambda: load(pkg), f"pip install {pip}")


def test_backend_that_does_not_fit_the_source(tmp_path):
    model = make_model("tiny", seed=1)
    _raises(PackageError, lambda: load(model, backend="onnxruntime"), "torch backend only")
    pkg = write_fake_package(tmp_path / "pkg", xLSTMConfig.from_preset("tiny"))
    _raises(PackageError, lambda: load(pkg, backend="torch"), "no eager weights")
    _raises(PackageError, lambda: load(pkg, backend="executorch"), "exported for onnxruntime")
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    _raises(PackageError, lambda: load(ckpt, backend="executorch"), "is a checkpoint")
    (ckpt / "model.safetensors").unlink()
    _raises(PackageError, lambda: load(ckpt), "weights")
    _raises(GenerationArgumentError, lambda: load(model, num_threads=0), "num_threads")
    _raises(GenerationArgumentError, lambda: load(model, num_threads=1, decode_threads=0), "decode_threads")


def test_state_from_another_model(sess, tmp_path):
    other = load(make_model("tiny-ms", seed=2), num_threads=1)
    other.prefill([1, 2, 3])
    path = other.save_state(tmp_path / "other.safetensors")
    _raises(StateMismatchError, lambda: sess.load_state(path), "another model", "config")
    _raises(StateMismatchError, lambda: sess.set_state(other.get_state()), "another model")
    _raises(StateMismatchError, lambda: sess.load_state(tmp_path / "missing.safetensors"), "does not exist")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    _raises(StateMismatchError, lambda: sess.load_state(tmp_path / "junk.safetensors"), "junk.safetensors")


def test_state_file_with_wrong_shapes(sess, tmp_path):
    from safetensors.torch import load_file, save_file

    sess.reset()
    sess.prefill([5, 6])
    path = sess.save_state(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    flat = load_file(str(path))
    flat["past.0.C"] = flat["past.0.C"][:, :1].contiguous()
    save_file(flat, str(path), metadata=meta)
    _raises(StateMismatchError, lambda: sess.load_state(path), "past.0.C")


def test_state_file_with_a_torch_sampler_state_is_refused_in_one_line(sess, tmp_path):
    """State files written before the runtime drew with numpy's PCG64 hold torch's generator state
    (uint8, no ``rng_kind``): refused, since its draws cannot be continued."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    sess.reset()
    sess.generate_ids([5, 6], 3, temperature=0.9, seed=1)
    path = sess.save_state(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["rng_kind"] == "numpy-pcg64"
    flat = load_file(str(path))
    flat["xlstm_edge.rng"] = np.zeros(5056, dtype=np.uint8)  # torch.Generator().get_state()'s size
    del meta["rng_kind"]
    save_file(flat, str(path), metadata=meta)
    _raises(StateMismatchError, lambda: sess.load_state(path), "torch sampler state", "start the conversation again")


def test_token_ids_out_of_range(sess):
    sess.reset()
    v = sess.vocab_size
    _raises(TokenRangeError, lambda: sess.prefill([1, v, 2]), str(v), "position 1")
    _raises(TokenRangeError, lambda: sess.prefill(torch.tensor([[3, -1]])), "-1")
    sess.prefill([1, 2])
    _raises(TokenRangeError, lambda: sess.step([v + 5]), str(v + 5))
    _raises(GenerationArgumentError, lambda: sess.prefill(torch.tensor([[0.5, 1.0]])), "integer")
    _raises(GenerationArgumentError, lambda: sess.generate("x", 5, stop_tokens=[10**6]), "stop token")


def test_empty_prompt(sess):
    sess.reset()
    _raises(EmptyPromptError, lambda: sess.stream("", max_new_tokens=5), "empty")
    _raises(EmptyPromptError, lambda: sess.prefill([]), "empty")
    _raises(EmptyPromptError, lambda: sess.generate_ids([], 3), "empty")
    _raises(EmptyPromptError, lambda: sess.generate(["ab", ""], 3), "empty")
    # with a conversation to continue, an empty prompt is fine
    sess.generate("ab", 3)
    assert isinstance(sess.generate("", 3), str)


@pytest.mark.parametrize("n", [0, -4, 2.5, True])
def test_max_new_tokens_not_positive(sess, n):
    sess.reset()
    _raises(GenerationArgumentError, lambda: sess.stream("hi", max_new_tokens=n), "max_new_tokens")
    _raises(GenerationArgumentError, lambda: sess.generate_ids([1, 2], max_new_tokens=n), "max_new_tokens")


def test_other_generation_arguments(sess):
    sess.reset()
    _raises(GenerationArgumentError, lambda: sess.generate("hi", 3, stop_strings="END"), "list of strings")
    _raises(GenerationArgumentError, lambda: sess.generate([b"hi"], 3), "str")
    sess.prefill([[1, 2], [3, 4]])
    _raises(GenerationArgumentError, lambda: sess.prefill([[1, 2], [3, 4], [5, 6]]), "2 row(s)")
    _raises(GenerationArgumentError, lambda: sess.step([1, 2, 3]), "2 row(s)")
    _raises(GenerationArgumentError, lambda: sess.reset(0), "batch_size")
