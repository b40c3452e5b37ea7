"""Exported packages: what the manifest records, the ONNX / ExecuTorch files, parity at export, and the
atomic write (a failed or interrupted export leaves nothing at OUT). The session's tiny-ms packages
(tests/conftest.py ``exported_packages``) serve most tests; the runtime tests check the backends'
logits over prefill + 256 steps on the same packages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from xlstm_edge.export import ExportError, ParityError, export_package
from xlstm_edge.export.metadata import MANIFEST_NAME, read_manifest

from tests.conftest import randomize_
from xlstm_edge import xLSTMConfig, xLSTMForCausalLM
from xlstm_edge.cli import main
from xlstm_edge.state import state_spec


def tiny_model(preset: str = "tiny", seed: int = 0) -> xLSTMForCausalLM:
    torch.manual_seed(seed)
    return randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset(preset))).eval()


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") or p.name == name]


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_manifest_records_the_package(exported_packages, backend):
    model = exported_packages["model"]
    manifest = read_manifest(exported_packages[backend])  # validates structure and files
    assert manifest.backend == backend
    assert xLSTMConfig.from_dict(manifest.model).to_dict() == model.config.to_dict()
    assert manifest.state.convention == "scale_q"
    specs = state_spec(model.config)
    assert [(t.layer, t.name, t.input, t.output) for t in manifest.state.tensors] == [
        (s.layer, s.name, s.input_name, s.output_name) for s in specs
    ]
    assert [t.static_shape for t in manifest.state.tensors] == [tuple(s.shape) for s in specs]
    roles = {t.role for t in manifest.state.tensors}
    assert {"mlstm.C", "mlstm.n", "mlstm.m", "slstm.c", "slstm.conv"} <= roles  # both block kinds
    parity = manifest.parity
    assert parity["passed"] and parity["steps"] >= 64 and parity["prefill_calls"] >= 2
    assert 0 < parity["max_abs_dlogits"] <= 1e-4, parity
    assert parity["argmax_agreement"] == 1.0
    assert manifest.tools["torch"] == torch.__version__.split("+")[0] or manifest.tools["torch"]
    assert manifest.tokenizer.eos_token_id == model.config.eos_token_id
    assert (exported_packages[backend] / manifest.tokenizer.file).is_file()
    prefill = manifest.graph("prefill")
    assert prefill.tokens_per_call == model.config.chunk_size and prefill.valid_length_input
    assert manifest.graph("step").tokens_per_call == 1


def test_onnx_graphs_pass_the_checker_and_share_one_weights_file(exported_packages):
    import onnx

    pkg = exported_packages["onnxruntime"]
    manifest = read_manifest(pkg)
    model = exported_packages["model"]
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    data_files = {g.data_file for g in manifest.graphs.values()}
    assert data_files == {"weights.bin"}
    assert weight_bytes * 0.9 <= (pkg / "weights.bin").stat().st_size <= weight_bytes * 1.1  # once, not twice
    for g in manifest.graphs.values():
        onnx.checker.check_model(str(pkg / g.file), full_check=True)
        graph = onnx.load(str(pkg / g.file), load_external_data=False).graph
        assert [i.name for i in graph.input] == [t.name for t in g.inputs]
        assert [o.name for o in graph.output] == [t.name for t in g.outputs]
        state_inputs = [i for i in graph.input if i.name.startswith("past.")]
        assert state_inputs and all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in state_inputs)
        batch = graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param, "batch must be dynamic"
    assert not list(pkg.glob("*.onnx.data"))


def test_executorch_package_is_one_pte_with_both_methods(exported_packages):
    from executorch.runtime import Runtime

    pkg = exported_packages["executorch"]
    manifest = read_manifest(pkg)
    assert {g.file for g in manifest.graphs.values()} == {"model.pte"}
    program = Runtime.get().load_program(str(pkg / "model.pte"))
    assert {"step", "prefill"} <= set(program.method_names)
    assert manifest.parity["xnnpack_delegate_calls"]["step"] >= 1


def test_package_files_get_normal_permissions(exported_packages):
    pkg = exported_packages["onnxruntime"]
    assert pkg.stat().st_mode & 0o055 == 0o055 or pkg.stat().st_mode & 0o077 == 0  # umask 077 is respected
    assert (pkg / MANIFEST_NAME).stat().st_mode & 0o600 == 0o600


def test_failed_parity_leaves_nothing_and_names_the_figures(tmp_path):
    """An mLSTM-only model with an impossible tolerance: the graphs are right (figures ~1e-6) but the
    check fails, so nothing may appear at OUT. The exporter writes external data (as it always does),
    so the figures also show that the shared weights file is built from external data."""
    out = tmp_path / "pkg"
    with pytest.raises(ParityError, match=r"max \|dlogits\| ") as info:
        export_package(tiny_model(), out, "onnx", tolerance=1e-12, parity_steps=8)
    figure = float(re.search(r"max \|dlogits\| ([0-9.e+-]+)", str(info.value)).group(1))
    assert 0 < figure <= 1e-4  # the mLSTM-only graphs themselves agree with the eager model
    assert leftovers(tmp_path, "pkg") == []


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import xlstm_edge.export.to_onnx as to_onnx

    def half_written(model, method, tokens, path):
        path.write_bytes(b"partial graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(to_onnx, "export_onnx_method", half_written)
    with pytest.raises(KeyboardInterrupt):
        export_package(tiny_model(), tmp_path / "pkg", "onnx")
    assert leftovers(tmp_path, "pkg") == []


def test_force_replaces_only_after_success(tmp_path, monkeypatch):
    import xlstm_edge.export.to_onnx as to_onnx

    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("old package")

    def failing(model, method, tokens, path):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(to_onnx, "export_onnx_method", failing)
    with pytest.raises(RuntimeError):
        export_package(tiny_model(), out, "onnx", force=True)
    assert (out / "keep.txt").read_text() == "old package"
    assert leftovers(tmp_path, "pkg") == ["pkg"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "tflite"}, "unknown format 'tflite'"),
        ({"prefill_tokens": 20}, "must be a multiple of the chunk size 16"),
        ({"prefill_tokens": 0}, "prefill length must be positive"),
        ({"batch": 0}, "batch must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"fmt": "onnx", **kwargs}
    fmt = args.pop("fmt")
    with pytest.raises(ExportError, match=re.escape(message)):
        export_package(tiny_model(), tmp_path / "pkg", fmt, **args)
    assert leftovers(tmp_path, "pkg") == []


def test_existing_out_and_missing_parent(tmp_path):
    (tmp_path / "pkg").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_package(tiny_model(), tmp_path / "pkg", "onnx")
    with pytest.raises(ExportError, match="does not exist"):
        export_package(tiny_model(), tmp_path / "nowhere" / "pkg", "onnx")


def test_tokenizer_larger_than_the_vocab(tmp_path):
    from xlstm_edge.tokenizer import byte_tokenizer

    model = xLSTMForCausalLM(xLSTMConfig.from_preset("tiny", vocab_size=200)).eval()
    with pytest.raises(ExportError, match="tokenizer has 259 ids, the model only 200"):
        export_package(model, tmp_path / "pkg", "onnx", tokenizer=byte_tokenizer())


def test_non_float32_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs float32 weights"):
        export_package(tiny_model().to(torch.bfloat16), tmp_path / "pkg", "onnx")
    assert leftovers(tmp_path, "pkg") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "no/such/ckpt", "OUT"], "checkpoint path not found"),
        (["export", "demo", "OUT", "--format", "tflite"], "'tflite' is not one of"),
        (["export", "demo", "OUT", "--quantize", "int3"], "unknown quantization scheme 'int3'"),
        (["export", "demo", "EXISTS"], "already exists (pass --force to replace it)"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTS").mkdir()
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "OUT").exists()


def test_cli_help_has_examples():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0 and "xlstm-edge export demo" in result.output


def test_manifest_is_json_with_the_documented_keys(exported_packages):
    raw = json.loads((exported_packages["onnxruntime"] / MANIFEST_NAME).read_text())
    assert raw["format"] == "xlstm-edge-package" and raw["format_version"] == 1
    assert {"model", "tokenizer", "state", "graphs", "quantization", "parity", "tools", "created", "source"} <= set(raw)
