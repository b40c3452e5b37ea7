"""The manifest: round trip through JSON, validation errors name the problem in one line."""

from __future__ import annotations

import json

import pytest
from xlstm_edge.export.metadata import (
    INPUT_IDS,
    LOGITS,
    MANIFEST_NAME,
    VALID_LENGTH,
    GraphEntry,
    Manifest,
    ManifestError,
    StateSection,
    TensorEntry,
    TokenizerEntry,
    read_manifest,
    state_entries,
    state_tensor_entries,
    write_manifest,
)

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.state import state_spec


def _manifest(config: xLSTMConfig) -> Manifest:
    entries = state_entries(config)
    V = config.vocab_size

    def graph(name: str, T: int, valid: str | None) -> GraphEntry:
        extra = [TensorEntry(valid, ["batch"], "int64")] if valid else []
        return GraphEntry(
            file=f"{name}.onnx", method=name,
            inputs=[TensorEntry(INPUT_IDS, ["batch", T], "int64"), *extra,
                    *state_tensor_entries(entries, output=False)],
            outputs=[TensorEntry(LOGITS, ["batch", V], "float32"), *state_tensor_entries(entries, output=True)],
            tokens_per_call=T, valid_length_input=valid, chunk_size=None if T == 1 else config.chunk_size,
        )

    return Manifest(
        backend="onnxruntime", model=config.to_dict(),
        tokenizer=TokenizerEntry("tokenizer.json", 256, 257, 258, 260),
        state=StateSection("scale_q", entries),
        graphs={"step": graph("step", 1, None), "prefill": graph("prefill", 32, VALID_LENGTH)},
        parity={"max_abs_dlogits": 1e-6}, tools={"torch": "x"}, created="2026-01-01T00:00:00Z",
    )


def _complete(tmp_path, manifest: Manifest):
    write_manifest(manifest, tmp_path)
    for name in ("step.onnx", "prefill.onnx", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"x")


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
def test_round_trip(tmp_path, preset):
    config = xLSTMConfig.from_preset(preset)
    m = _manifest(config)
    _complete(tmp_path, m)
    back = read_manifest(tmp_path)
    assert back == m
    assert back.state_inputs == [s.input_name for s in state_spec(config)]
    assert [e.static_shape for e in back.state.tensors] == [s.shape for s in state_spec(config)]
    assert xLSTMConfig.from_dict(back.model) == config
    roles = {e.role for e in back.state.tensors}
    assert ("slstm.conv" in roles) == bool(config.slstm_at)


def test_errors_name_the_problem(tmp_path):
    m = _manifest(xLSTMConfig.from_preset("tiny"))
    with pytest.raises(ManifestError, match="no xlstm_edge.json"):
        read_manifest(tmp_path)
    _complete(tmp_path, m)
    (tmp_path / "prefill.onnx").unlink()
    with pytest.raises(ManifestError, match="lacks the file 'prefill.onnx'"):
        read_manifest(tmp_path)
    (tmp_path / "prefill.onnx").write_bytes(b"x")
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    for key, value, pattern in [("format_version", 2, "unsupported format_version 2"),
                                ("format", "other", "not an xlstm-edge package"),
                                ("backend", "tflite", "unknown backend 'tflite'")]:
        (tmp_path / MANIFEST_NAME).write_text(json.dumps({**raw, key: value}))
        with pytest.raises(ManifestError, match=pattern) as info:
            read_manifest(tmp_path)
        assert "\n" not in str(info.value)
    bad = json.loads(json.dumps(raw))
    bad["graphs"]["step"]["inputs"] = bad["graphs"]["step"]["inputs"][::-1]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="graph 'step' inputs"):
        read_manifest(tmp_path)
