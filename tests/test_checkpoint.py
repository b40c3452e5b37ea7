"""Checkpoints: every bad input gives one CheckpointError line naming the problem; save/load round trips;
an interrupted save leaves nothing that looks complete; checkpoint_info's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xlstm_edge.checkpoint as ckpt_mod
from tests.conftest import randomize_
from xlstm_edge import state_bytes, xLSTMConfig, xLSTMForCausalLM
from xlstm_edge.checkpoint import (
    CheckpointError,
    checkpoint_info,
    expected_shapes,
    load_checkpoint,
    save_checkpoint,
)


def _model(preset: str = "tiny", **overrides) -> xLSTMForCausalLM:
    return randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset(preset, **overrides)).eval())


@pytest.fixture
def saved(tmp_path: Path, seed: int) -> Path:
    """A valid tiny checkpoint directory (config.json + model.safetensors)."""
    return save_checkpoint(_model(), tmp_path / "ckpt")


def _rewrite(ckpt: Path, edit) -> None:
    """Apply ``edit(tensors)`` to model.safetensors in place."""
    tensors = load_file(ckpt / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def _edit_config(ckpt: Path, **changes) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))


def _raises(path: Path, *fragments: str) -> str:
    """load_checkpoint(path) must raise CheckpointError: one line holding every fragment."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# ---- bad inputs -------------------------------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    _raises(tmp_path / "nowhere", "not found", "nowhere")


def test_no_config(saved: Path) -> None:
    (saved / "config.json").unlink()
    _raises(saved, "no config.json")


def test_config_not_json(saved: Path) -> None:
    (saved / "config.json").write_text('{"hidden_size": 64,,}')
    _raises(saved, "config.json", "not valid JSON", "line 1")


def test_config_not_an_object(saved: Path) -> None:
    (saved / "config.json").write_text("[1, 2]")
    _raises(saved, "JSON object", "list")


def test_config_other_model_type(saved: Path) -> None:
    _edit_config(saved, model_type="llama")
    _raises(saved, "model_type 'llama'")


def test_no_weights(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    _raises(saved, "no weights file", "model.safetensors")


def test_several_weight_files_without_index(saved: Path) -> None:
    (saved / "model.safetensors").rename(saved / "a.safetensors")
    save_file({"x": torch.randn(3)}, str(saved / "b.safetensors"))
    _raises(saved, "several .safetensors files", "a.safetensors", "b.safetensors")


def test_not_a_safetensors_file(saved: Path) -> None:
    _raises(saved / "config.json", "not a directory or a .safetensors file")


def test_truncated_data(saved: Path) -> None:
    blob = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(blob[: len(blob) - 100])
    _raises(saved, "model.safetensors", "truncated or corrupt")


def test_corrupt_header(saved: Path) -> None:
    blob = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(blob[:8] + b"{not json" + blob[17:])
    _raises(saved, "model.safetensors", "truncated or corrupt")


def test_empty_weights_file(saved: Path) -> None:
    (saved / "model.safetensors").write_bytes(b"")
    _raises(saved, "truncated or corrupt")


def test_missing_tensors(saved: Path) -> None:
    names = ["backbone.blocks.1.mlstm_layer.q.weight", "backbone.blocks.0.ffn.proj_down.weight"]
    _rewrite(saved, lambda t: [t.pop(n) for n in names])
    msg = _raises(saved, "2 tensor(s) missing", *names)
    assert msg.index(names[1]) < msg.index(names[0])  # model order, first few


def test_missing_lm_head_hints_at_tying(saved: Path) -> None:
    _rewrite(saved, lambda t: t.pop("lm_head.weight"))
    _raises(saved, "missing", "lm_head.weight", "tie_word_embeddings")


def test_unexpected_tensors(saved: Path) -> None:
    _rewrite(saved, lambda t: t.update({"backbone.blocks.0.extra.weight": torch.randn(4)}))
    _raises(saved, "1 unexpected tensor(s)", "backbone.blocks.0.extra.weight")


def test_wrong_shape(saved: Path) -> None:
    name = "backbone.blocks.0.mlstm_layer.out_proj.weight"
    _rewrite(saved, lambda t: t.update({name: torch.randn(64, 60)}))
    _raises(saved, "wrong shape", name, "(64, 60)", "expected (64, 64)")


def test_non_float_tensor(saved: Path) -> None:
    name = "backbone.blocks.0.norm_ffn.weight"
    _rewrite(saved, lambda t: t.update({name: torch.arange(64)}))
    _raises(saved, "not stored as floating point", name, "I64")


@pytest.mark.parametrize(
    "field, value, implied",
    [
        ("hidden_size", 128, "hidden_size=64"),
        ("vocab_size", 300, "vocab_size=260"),
        ("num_hidden_layers", 3, "blocks 0..1 (num_hidden_layers=2)"),
        ("num_heads", 4, "num_heads=2"),
        ("qk_dim_factor", 0.25, "(qk_dim=16) but backbone.blocks.0.mlstm_layer.q.weight (32, 64) implies qk_dim=32"),
        ("ffn_proj_factor", 4.0, "(ffn_dim=256) but backbone.blocks.0.ffn.proj_up.weight"),
        ("slstm_at", [1], "sLSTM blocks at []"),
        ("weight_mode", "fused", "single (unfused)"),
    ],
)
def test_config_contradicts_weights(saved: Path, field: str, value, implied: str) -> None:
    alias = {"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks"}.get(field)
    _edit_config(saved, **{field: value}, **({alias: value} if alias else {}))
    _raises(saved, "config.json contradicts the weights", f"{field}={value}", implied)



def test_invalid_config_values(saved: Path) -> None:
    _edit_config(saved, num_heads=3)
    _raises(saved, "config.json", "num_heads 3")


def test_tied_config_with_different_lm_head(saved: Path) -> None:
    _edit_config(saved, tie_word_embeddings=True)
    _raises(saved, "tie_word_embeddings=true", "lm_head.weight differs from the embedding")


def _shard(saved: Path) -> Path:
    out = saved.parent / "sharded"
    save_checkpoint(load_checkpoint(saved), out, max_shard_bytes=40_000)
    return out


def test_index_names_missing_shard(saved: Path) -> None:
    out = _shard(saved)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    _raises(out, "model.safetensors.index.json", "do not exist", victim.name)


def test_index_disagrees_with_shard(saved: Path) -> None:
    out = _shard(saved)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != shard)
    index["weight_map"][name] = other
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    _raises(out, f"tensor {name} in {other}", "does not hold it")


def test_index_not_json(saved: Path) -> None:
    out = _shard(saved)
    (out / "model.safetensors.index.json").write_text("{")
    _raises(out, "model.safetensors.index.json", "not valid JSON")


def test_index_without_weight_map(saved: Path) -> None:
    out = _shard(saved)
    (out / "model.safetensors.index.json").write_text('{"metadata": {}}')
    _raises(out, "no 'weight_map'")


def test_bad_dtype_argument(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="floating torch.dtype"):
        load_checkpoint(saved, dtype=torch.int8)


def test_save_refuses_existing_dir(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="already exists; pass overwrite=True"):
        save_checkpoint(_model(), saved)


# ---- round trips ------------------------------------------------------------------------------------
class _DuckTokenizer:
    """Anything with save(dir) will do (the real one lives in xlstm_edge.tokenizer)."""

    def save(self, directory) -> None:
        (Path(directory) / "tokenizer.json").write_text('{"model": "duck"}')


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
@torch.no_grad()
def test_round_trip_identical_logits(tmp_path: Path, seed: int, preset: str) -> None:
    model = _model(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 21))
    ref, ref_state = model(ids)
    out = save_checkpoint(model, tmp_path / preset, tokenizer=_DuckTokenizer())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded = load_checkpoint(out)
    assert not loaded.training
    assert loaded.config == model.config
    assert all(not p.is_meta and p.dtype == torch.float32 for p in loaded.parameters())
    logits, state = loaded(ids)
    assert torch.equal(logits, ref), f"seed {seed}"
    for a, b in zip(state, ref_state, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    # sharded: several files and an index, same logits
    sharded = save_checkpoint(model, tmp_path / f"{preset}-sharded", max_shard_bytes=50_000)
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert torch.equal(load_checkpoint(sharded)(ids)[0], ref)


@torch.no_grad()
def test_load_in_bfloat16_and_tied(tmp_path: Path, seed: int) -> None:
    model = _model(tie_word_embeddings=True)
    out = save_checkpoint(model, tmp_path / "tied")
    loaded = load_checkpoint(out, dtype=torch.bfloat16)
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(loaded.backbone.embeddings.weight, model.backbone.embeddings.weight.bfloat16())
    # saved again from bfloat16: the config records it, and loading back in float32 widens exactly
    out16 = save_checkpoint(loaded, tmp_path / "tied16")
    assert json.loads((out16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert checkpoint_info(out16)["bytes_by_dtype"].keys() == {"bfloat16"}
    again = load_checkpoint(out16)
    assert torch.equal(again.lm_head.weight, loaded.lm_head.weight.float())


def test_overwrite_replaces(tmp_path: Path, seed: int) -> None:
    first, second = _model(), _model()
    out = save_checkpoint(first, tmp_path / "c")
    save_checkpoint(second, out, overwrite=True)
    assert torch.equal(load_checkpoint(out).lm_head.weight, second.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# ---- interrupted saves ------------------------------------------------------------------------------
def _failing_writer(calls_before_failure: int):
    calls = {"n": 0}

    def write(tensors, path: Path) -> None:
        if calls["n"] >= calls_before_failure:
            path.write_bytes(b"\x00" * 100)  # half a file, then the crash
            raise OSError("disk full (simulated)")
        calls["n"] += 1
        ckpt_mod.save_file(tensors, str(path), metadata={"format": "pt"})

    return write


@pytest.mark.parametrize("shard_bytes, fail_after", [(None, 0), (40_000, 1)], ids=["single", "second-shard"])
def test_interrupted_save_leaves_nothing(tmp_path: Path, monkeypatch, shard_bytes, fail_after) -> None:
    monkeypatch.setattr(ckpt_mod, "_write_weights", _failing_writer(fail_after))
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(_model(), tmp_path / "ckpt", max_shard_bytes=shard_bytes)
    assert list(tmp_path.iterdir()) == []  # no ckpt/, no partial folder
    _raises(tmp_path / "ckpt", "not found")


def test_interrupted_overwrite_keeps_the_old_checkpoint(saved: Path, monkeypatch) -> None:
    before = load_file(saved / "model.safetensors")
    monkeypatch.setattr(ckpt_mod, "_write_weights", _failing_writer(0))
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(_model(), saved, overwrite=True)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]
    after = load_file(saved / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# ---- checkpoint_info --------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
def test_checkpoint_info(tmp_path: Path, preset: str) -> None:
    model = _model(preset)
    out = save_checkpoint(model, tmp_path / preset)
    info = checkpoint_info(out)
    n = model.num_params()
    assert info["num_params"] == n
    assert info["bytes_by_dtype"] == {"float32": 4 * n} and info["total_bytes"] == 4 * n
    assert info["state_bytes_per_sequence"] == state_bytes(model.config, 1)
    assert info["layout"] == "hf" and info["weight_mode"] == "single"
    assert info["files"] == ["model.safetensors"]
    assert xLSTMConfig.from_dict(info["config"]) == model.config
    # by hand for tiny: D 64, 2 mLSTM blocks, vocab 260, ffn 192 (qk 32, v 64, 2 heads)
    if preset == "tiny":
        D, V, F, QK, NH = 64, 260, model.config.ffn_dim, 32, 2
        block = D + (2 * QK * D + 2 * D * D + 2 * (NH * D + NH) + D + D * D) + D + 3 * D * F
        assert n == 2 * V * D + D + 2 * block
        assert info["state_bytes_per_sequence"] == 4 * 2 * NH * (16 * 32 + 16 + 1)


def test_checkpoint_info_tied_counts_the_embedding_once(tmp_path: Path) -> None:
    model = _model(tie_word_embeddings=True)
    info = checkpoint_info(save_checkpoint(model, tmp_path / "t"))
    n, extra = model.num_params(), model.lm_head.weight.numel()
    assert info["num_params"] == n
    assert info["total_bytes"] == 4 * (n + extra)  # the copy written for transformers' sake


def test_checkpoint_info_reads_headers_only(saved: Path) -> None:
    """Corrupting tensor *data* (not its length) does not bother info: it reads headers alone."""
    blob = bytearray((saved / "model.safetensors").read_bytes())
    blob[-400:] = b"\xff" * 400
    (saved / "model.safetensors").write_bytes(bytes(blob))
    assert checkpoint_info(saved)["num_params"] > 0


def test_checkpoint_info_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_info(tmp_path / "missing")


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
@pytest.mark.parametrize(
    "extra", [{}, {"use_bias": True}, {"tie_word_embeddings": True}, {"add_out_norm": False},
              {"slstm_conv_kernel_size": 0}], ids=["plain", "bias", "tied", "no-out-norm", "no-conv"]
)
def test_expected_shapes_match_the_model(preset: str, extra: dict) -> None:
    """The loader's shape table (worked out from the config) is the model's own state dict, in order."""
    config = xLSTMConfig.from_preset(preset, **extra)
    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    if config.tie_word_embeddings:
        shapes.remove(("lm_head.weight", (config.vocab_size, config.hidden_size)))
    assert list(expected_shapes(config).items()) == shapes


def test_random_checkpoint_is_written_block_by_block_in_shards(tmp_path: Path) -> None:
    """``write_random_checkpoint``: bfloat16 shards with an index, loadable, every tensor read in float32 the
    stored bfloat16 value; no block sits at an all-zero or NaN value (the init scheme ran)."""
    import json

    from xlstm_edge.checkpoint import write_random_checkpoint
    from xlstm_edge.config import xLSTMConfig
    from xlstm_edge.weights import CheckpointWeights

    config = xLSTMConfig.from_preset("tiny-ms")
    out = write_random_checkpoint(config, tmp_path / "ck", dtype=torch.bfloat16, seed=3, max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = load_checkpoint(out)
    source = CheckpointWeights(out)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert torch.equal(source.read(name, torch.bfloat16).float(), p), name
    assert float(model.backbone.blocks[0].mlstm_layer.q.weight.std()) > 0
    again = write_random_checkpoint(config, tmp_path / "ck2", dtype=torch.bfloat16, seed=3, max_shard_bytes=20_000)
    assert torch.equal(load_checkpoint(again).lm_head.weight, model.lm_head.weight)  # the seed decides
