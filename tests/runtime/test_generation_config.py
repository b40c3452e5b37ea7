"""generation_config.json: export copies it from the checkpoint into the package, and the runtime stops at
its ``eos_token_id``s (an int or a list, as transformers writes it) besides the tokenizer's eos."""

from __future__ import annotations

import json
import shutil

import pytest
from xlstm_edge.export.metadata import GENERATION_CONFIG_NAME, ManifestError, generation_eos_ids
from xlstm_edge.runtime import PackageError, load

from tests.runtime.conftest import make_model
from xlstm_edge.checkpoint import save_checkpoint
from xlstm_edge.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(make_model("tiny", seed=21), tmp_path_factory.mktemp("gen") / "ckpt",
                           tokenizer=byte_tokenizer())


def _write(directory, eos) -> None:
    (directory / GENERATION_CONFIG_NAME).write_text(json.dumps({"eos_token_id": eos, "do_sample": False}))


def _first_new(ids: list[int]) -> int:
    """Index of the last token that first occurs in ``ids`` (0 when every token is the first one)."""
    return max(i for i, t in enumerate(ids) if t not in ids[:i])


def test_eos_ids_read_as_transformers_writes_them(tmp_path):
    assert generation_eos_ids(tmp_path) == []
    _write(tmp_path, 7)
    assert generation_eos_ids(tmp_path) == [7]
    _write(tmp_path, [7, 9])
    assert generation_eos_ids(tmp_path) == [7, 9]
    for bad in ("7", [7, -1], [True]):
        _write(tmp_path, bad)
        with pytest.raises(ManifestError, match="eos_token_id"):
            generation_eos_ids(tmp_path)
    (tmp_path / GENERATION_CONFIG_NAME).write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        generation_eos_ids(tmp_path)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx package"])
def test_generation_config_eos_stops_the_reply(kind, ckpt, packages, tmp_path):
    """With generation_config.json naming a token the greedy reply produces, the reply stops there (not
    shown), as it does when that token is passed as a stop token; a bad id is refused at load."""
    src = ckpt if kind == "checkpoint" else packages["onnxruntime"]
    work = tmp_path / "src"
    shutil.copytree(src, work)
    plain = load(work, num_threads=1)
    prompt = "Hello"
    plain.generate(prompt, max_new_tokens=16, stop_tokens=[])
    state = plain.get_state()  # the reply's ids: fed ones in the recent window, the last one pending
    fed = [int(t) for t in state.recent[0] if t >= 0]
    ids = fed[len(plain.encode(prompt)):] + [int(state.pending[0])]
    assert len(ids) == 16
    stop = ids[_first_new(ids)]
    want = plain.generate(prompt, max_new_tokens=16, stop_tokens=[257, stop], continue_conversation=False)
    assert plain.last_stats.stopped == ["stop_token"]
    _write(work, [stop, 257])
    sess = load(work, num_threads=1)
    assert sess.eos_token_ids == {stop, 257}
    assert sess.generate(prompt, max_new_tokens=16) == want and sess.last_stats.stopped == ["stop_token"]
    assert sess.last_stats.new_tokens <= _first_new(ids) + 1
    _write(work, [10**6])
    with pytest.raises(PackageError, match="outside"):
        load(work, num_threads=1)


def test_export_copies_generation_config(tmp_path):
    from xlstm_edge.export import export_package

    model = make_model("tiny", seed=22)
    src = save_checkpoint(model, tmp_path / "ckpt", tokenizer=byte_tokenizer())
    _write(src, [257, 5])
    result = export_package(model, tmp_path / "pkg", "onnx", parity_steps=8, source={"checkpoint": str(src)})
    assert json.loads((result.out_dir / GENERATION_CONFIG_NAME).read_text())["eos_token_id"] == [257, 5]
    assert load(result.out_dir, num_threads=1).eos_token_ids == {257, 5}
