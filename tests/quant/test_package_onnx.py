"""ONNX Runtime int8 packages: graphs vs the same quantization in eager PyTorch (tight) and vs float32
(quality), state float32 in the graph, the manifest, the runtime loading them, and bad input."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from xlstm_edge.export.metadata import read_manifest
from xlstm_edge.export.step_module import random_state
from xlstm_edge.quant.handler import QuantizationError, quantize_model
from xlstm_edge.quant.onnx_backend import OrtGraph, inspect_graph
from xlstm_edge.quant.quality import EvalTextError
from xlstm_edge.quant.verify import (
    TIGHT_MAX_REL_ERR,
    EagerGraph,
    prefill_parity,
    require_tight,
    require_within,
    step_parity,
)

from tests.conftest import rel_err
from tests.quant.conftest import EVAL_TOKENS, GREEDY_TOKENS, PREFILL_TOKENS, noise_bound, quantize

CASES = [("int8-weight", "fp32"), ("int8-dynamic", "int8"), ("int4-dynamic", "fp32")]


@pytest.mark.parametrize(("scheme", "embedding"), CASES)
def test_manifest_reports_scheme_and_quality(ort_built, scheme, embedding):
    result = ort_built.int8[scheme, embedding]
    manifest = read_manifest(result.out)
    q = manifest.quantization
    assert manifest.backend == "onnxruntime" and q["scheme"] == scheme and q["embedding"] == embedding
    assert q["state_dtype"] == "float32" and q["activation"] == {"int8-weight": "none", "int8-dynamic": "per_block",
                                                               "int4-dynamic": "per_block"}[scheme]
    assert q["weight_bits"] == (4 if scheme == "int4-dynamic" else 8)
    assert q["quality"]["gate"]["max_ppl_increase"] == (0.05 if scheme == "int4-dynamic" else 0.01)
    assert manifest.source == read_manifest(ort_built.package).source  # provenance kept
    quality = q["quality"]
    assert quality["eval"]["tokens"] == EVAL_TOKENS - 1 and quality["greedy"]["generated_tokens"] == GREEDY_TOKENS
    for key in ("ppl_fp32", "ppl_quantized", "kl_mean", "top1_agreement"):
        assert quality["eval"][key] == quality["eval"][key]  # not NaN
    assert quality["size"]["quantized_bytes"] < quality["size"]["fp32_bytes"]
    tight = manifest.parity["int8"]["tight"]
    # one block of each kind, float32 norm weights off the bfloat16 grid: the model is its own probe
    assert tight["graphs"] == "package" and tight["blocks"] == [0, 1] and tight["norm_jitter"] == 0.0
    assert tight["step_vs_eager_int8"]["median_rel_err"] < 1e-4
    assert tight["prefill_short_vs_eager_int8"]["median_rel_err"] < 1e-4


@pytest.mark.parametrize(("scheme", "embedding"), CASES)
def test_graphs_match_eager_int8_and_stay_near_float(ort_built, seed, scheme, embedding):
    model = ort_built.model
    qmodel = quantize_model(copy.deepcopy(model), scheme, embedding, backend="onnxruntime")
    out = ort_built.int8[scheme, embedding].out
    refs = {"int8": EagerGraph(qmodel, "step"), "fp32": EagerGraph(model, "step")}
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    step = step_parity(OrtGraph(out / "step.onnx"), refs, ids, list(random_state(model, 2)))
    require_tight(step["int8"], "step graph")
    assert step["int8"].median_rel_err < 1e-5, f"seed {seed}"
    noise = noise_bound(scheme)  # the quantization noise itself, bounded
    assert step["fp32"].logits_rel_err < noise, f"seed {seed}"
    prefill_refs = {"int8": EagerGraph(qmodel, "prefill", PREFILL_TOKENS),
                    "fp32": EagerGraph(model, "prefill", PREFILL_TOKENS)}
    graph = OrtGraph(out / "prefill.onnx")
    short = prefill_parity(graph, prefill_refs, model, PREFILL_TOKENS, batch=3, valid_lengths=[1, 2], calls=3)
    require_tight(short["int8"], "prefill graph, 1-2 valid tokens")
    full = prefill_parity(graph, prefill_refs, model, PREFILL_TOKENS, batch=3)
    require_within(full["int8"], TIGHT_MAX_REL_ERR, "prefill graph")
    assert full["fp32"].logits_rel_err < noise and full["fp32"].state_rel_err < noise, f"seed {seed}"


@pytest.mark.parametrize(("scheme", "embedding"), CASES)
def test_state_and_gates_stay_float_in_the_graph(ort_built, scheme, embedding):
    out = ort_built.int8[scheme, embedding].out
    for file in ("step.onnx", "prefill.onnx"):
        facts = inspect_graph(out / file)  # raises if a state tensor is not float32 or feeds an int op
        g = onnx.load(str(out / file)).graph
        inits = {i.name: i.data_type for i in g.initializer}
        gates = [n for n in inits if "igate" in n or "fgate" in n or "recurrent" in n]
        assert gates and all(inits[n] == onnx.TensorProto.FLOAT for n in gates), gates
        if scheme != "int8-weight":  # one MatMulNBits per quantized Linear, activations per block
            assert facts["integer_ops"].get("MatMulNBits", 0) >= 10 and "MatMulInteger" not in facts["integer_ops"]
            attrs = {a.name: a.i for a in next(n for n in g.node if n.op_type == "MatMulNBits").attribute}
            expected = (4, 32) if scheme == "int4-dynamic" else (8, 128)
            assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (*expected, 4)
        else:
            assert "MatMulInteger" not in facts["integer_ops"] and facts["int8_initializers"] >= 10


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int4-dynamic"])
def test_graph_weights_stay_outside_the_graph_and_move_into_the_shared_file(ort_built, tmp_path, seed, scheme):
    """The one exporter keeps every weight out of the graph's protobuf (at any size: no 2 GiB limit, no
    whole-model copy in memory): the exporter's data file plus the packed MatMulNBits weights, written
    one at a time. The package's shared file then replaces both, with the same outputs bit for bit."""
    from xlstm_edge.export.onnx_weights import DATA_NAME, share_weights
    from xlstm_edge.quant import onnx_backend

    qmodel = quantize_model(copy.deepcopy(ort_built.model), scheme, "int8", backend="onnxruntime")
    path = onnx_backend.export_graph(qmodel, "step", 1, tmp_path / "step.onnx")
    data, nbits = tmp_path / "step.onnx.data", tmp_path / "step.onnx.nbits"
    proto = onnx.load(str(path), load_external_data=False)
    outside = [i for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    inside = [i for i in proto.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL]
    assert len(outside) >= 10 and all(len(i.raw_data) < 1024 for i in inside)
    assert data.stat().st_size > 0 and nbits.stat().st_size > 0
    assert {n.op_type for n in proto.graph.node} >= {"MatMulNBits"}
    ids = torch.randint(0, 256, (2, 1))
    inputs = [ids, *random_state(ort_built.model, 2)]
    expected = OrtGraph(path).run(inputs)
    share_weights([path], DATA_NAME)
    assert not data.exists() and not nbits.exists() and (tmp_path / DATA_NAME).exists()
    for actual, ref in zip(OrtGraph(path).run(inputs), expected, strict=True):
        assert torch.equal(actual, ref), f"seed {seed}"


def test_runtime_streams_from_the_int8_package(ort_built, seed):
    from xlstm_edge.runtime import load

    out = ort_built.int8["int8-dynamic", "int8"].out
    qmodel = quantize_model(copy.deepcopy(ort_built.model), "int8-dynamic", "int8", backend="onnxruntime")
    session = load(out, num_threads=2)
    ids = torch.randint(0, 256, (1, 2 * PREFILL_TOKENS + 3))
    logits = session.prefill(ids)
    ref, _ = qmodel(ids)
    assert rel_err(logits, ref[:, -1]) < 2e-2, f"seed {seed}"
    assert len(session.generate_ids([], max_new_tokens=5)[0]) == 5


def test_demo_reuses_a_package_only_for_the_same_weights_and_scheme(ort_built):
    from xlstm_edge.checkpoint import weights_sha256
    from xlstm_edge.demo import reusable

    sha = weights_sha256(ort_built.checkpoint)
    int8 = ort_built.int8["int8-dynamic", "int8"].out
    assert reusable(ort_built.package, sha) and not reusable(int8, sha)
    assert reusable(int8, sha, "int8-dynamic", "int8")
    assert not reusable(int8, sha, "int8-dynamic", "fp32") and not reusable(int8, sha, "int4-dynamic", "int8")
    assert not reusable(ort_built.package, sha, "int8-dynamic", "int8")
    assert not reusable(int8, "0" * 64, "int8-dynamic", "int8")
    assert not reusable(int8.parent / "missing", sha, "int8-dynamic", "int8")


def test_already_quantized_package(ort_built, tmp_path):
    with pytest.raises(QuantizationError, match="already quantized \\(int8-weight\\)"):
        quantize(ort_built.int8["int8-weight", "fp32"].out, tmp_path / "x", "int8-dynamic")


def test_bad_inputs(ort_built, tmp_path):
    pkg = ort_built.package
    with pytest.raises(QuantizationError, match="unknown quantization scheme 'int7'"):
        quantize(pkg, tmp_path / "a", "int7")
    with pytest.raises(EvalTextError, match="calibration text .*nope.txt does not exist"):
        quantize(pkg, tmp_path / "b", "int8-dynamic", calibration_text=tmp_path / "nope.txt")
    with pytest.raises(EvalTextError, match="evaluation text .*gone.txt does not exist"):
        quantize(pkg, tmp_path / "c", "int8-dynamic", eval_text=tmp_path / "gone.txt")
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(EvalTextError, match="need at least"):
        quantize(pkg, tmp_path / "d", "int8-dynamic", eval_text=tmp_path / "short.txt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    with pytest.raises(QuantizationError, match="already exists"):
        quantize(pkg, tmp_path / "taken", "int8-dynamic")
    with pytest.raises(QuantizationError, match="checkpoint .*missing.* does not exist"):
        quantize(pkg, tmp_path / "e", "int8-dynamic", checkpoint=tmp_path / "missing")
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_checkpoint_resolution(ort_built, tmp_path):
    """A package without a weights index, no --checkpoint and none recorded: a clear error; a checkpoint
    of other weights: refused."""
    import shutil

    from xlstm_edge.export.metadata import write_manifest

    from tests.quant.conftest import make_model, write_checkpoint

    bare = tmp_path / "bare"
    shutil.copytree(ort_built.package, bare)
    manifest = read_manifest(bare)
    manifest.source = None
    manifest.weights = None  # as a package exported before the weights index (or an ExecuTorch one)
    write_manifest(manifest, bare)
    with pytest.raises(QuantizationError, match="does not record the checkpoint .* pass --checkpoint"):
        quantize(bare, tmp_path / "out", "int8-dynamic")
    other = write_checkpoint(make_model("tiny", 5), tmp_path / "other")
    with pytest.raises(QuantizationError, match="other weights"):
        quantize(ort_built.package, tmp_path / "out", "int8-dynamic", checkpoint=other)
    with pytest.raises(QuantizationError, match="does not match the package: chunk_size is 16"):
        quantize(bare, tmp_path / "out", "int8-dynamic", checkpoint=other)


def test_cli_errors(ort_built, tmp_path):
    from xlstm_edge.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["quantize", str(ort_built.package), str(tmp_path / "o"), "--scheme", "int4"])
    assert res.exit_code != 0 and "unknown quantization scheme 'int4'" in res.output
    res = runner.invoke(main, ["quantize", str(ort_built.int8["int8-weight", "fp32"].out), str(tmp_path / "o"),
                               "--scheme", "int8-dynamic"])
    assert res.exit_code != 0 and "already quantized" in res.output
    res = runner.invoke(main, ["quantize", str(ort_built.package), str(tmp_path / "o"), "--scheme", "int8-dynamic",
                               "--calibration-text", str(tmp_path / "none.txt")])
    assert res.exit_code != 0 and "calibration text" in res.output and "does not exist" in res.output
    assert not (tmp_path / "o").exists()


def test_cli_fails_and_writes_nothing_when_the_quality_gate_is_missed(ort_built, tmp_path):
    from xlstm_edge.cli import main

    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["quantize", str(ort_built.package), str(out), "--scheme", "int8-dynamic",
                                    "--max-ppl-increase", "-1", "--eval-tokens", "64", "--greedy-tokens", "8"])
    assert res.exit_code != 0, res.output
    assert "quality gate (perplexity <= -100.0%" in res.output and "MISSED" in res.output
    assert "quality gate missed: nothing written" in res.output and not out.exists()


def _corrupt_copy(package: Path, dest: Path, file: str, how: str) -> Path:
    shutil.copytree(package, dest)
    path = dest / file
    if how == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    else:
        path.write_bytes(b"not a graph at all\n" * 50)
    return path


@pytest.mark.parametrize(("file", "how"), [("weights.bin", "truncate"), ("step.onnx", "garbage"),
                                           ("step.onnx", "truncate")])
def test_cli_names_the_corrupt_file_in_one_line(ort_built, tmp_path, file, how):
    from tests.quant.conftest import quantize_cli_error

    bad = _corrupt_copy(ort_built.package, tmp_path / "pkg", file, how)
    assert str(bad) in quantize_cli_error(tmp_path / "pkg", tmp_path / "o")


def test_quantize_reads_the_package_own_weights_without_its_checkpoint(ort_built):
    """The float package's weights index locates every parameter in weights.bin (some stored transposed):
    the weights read back are the model's, bit for bit, and ``quantize`` read them there, not from the
    checkpoint the manifest records (``test_checkpoint_resolution``: without an index it needs one)."""
    from xlstm_edge.export.package_weights import PackageWeights

    from xlstm_edge.weights import ModelWeights

    manifest = read_manifest(ort_built.package)
    index = manifest.weights
    assert index["missing"] == [] and any(t["transposed"] for t in index["tensors"].values())
    source, model = PackageWeights(ort_built.package, manifest), ModelWeights(ort_built.model)
    assert sorted(source.names()) == sorted(model.names())
    for name in model.names():
        assert torch.equal(source.read(name, torch.float32), model.read(name, torch.float32)), name
    head = "lm_head.weight"
    assert torch.equal(source.read(head, torch.float32, (3, 7)), model.read(head, torch.float32)[3:7])

    for key, result in ort_built.int8.items():  # the session's quantized packages were made from them
        q = read_manifest(result.out).quantization
        assert "source_checkpoint" not in q and q["source_package"] == str(ort_built.package), (key, q)
        assert read_manifest(result.out).parity["int8"]["source_check_rel_err"] <= 1e-4
