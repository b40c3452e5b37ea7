"""ExecuTorch / XNNPACK int8 packages: the program vs the same quantization in eager PyTorch (tight)
and vs float32, state float32 in the program, the runtime loading it, and the weight-only refusal."""

from __future__ import annotations

import copy

import pytest
import torch
from xlstm_edge.export.metadata import read_manifest
from xlstm_edge.export.step_module import random_state
from xlstm_edge.quant.executorch_backend import PteMethod, inspect_method
from xlstm_edge.quant.handler import QuantizationError, quantize_model
from xlstm_edge.quant.verify import (
    TIGHT_MAX_REL_ERR,
    EagerGraph,
    prefill_parity,
    require_tight,
    require_within,
    step_parity,
)

from tests.conftest import rel_err
from tests.quant.conftest import PREFILL_TOKENS, noise_bound, quantize

KEY = ("int8-dynamic", "int8")
KEYS = [KEY, ("int4-dynamic", "fp32")]


@pytest.mark.parametrize("key", KEYS)
def test_manifest_and_lowering(et_built, key):
    out = et_built.int8[key].out
    manifest = read_manifest(out)
    q = manifest.quantization
    assert manifest.backend == "executorch" and (q["scheme"], q["embedding"]) == key
    assert q["activation"] == "per_token" and q["weight_bits"] == (4 if key[0] == "int4-dynamic" else 8)
    for method in ("step", "prefill"):
        facts = q["graphs"][method]
        assert facts["xnnpack_delegates"] >= 1
        assert "none feeds a quantize op" in facts["state_in_graph"]
        assert facts["state_io"].endswith("all float32")
    assert q["quality"]["size"]["quantized_bytes"] < q["quality"]["size"]["fp32_bytes"]
    tight = manifest.parity["int8"]["tight"]  # its own probe (quant.probe.is_own_probe): the program itself
    assert tight["graphs"] == "package" and tight["blocks"] == [0, 1]
    assert tight["step_vs_eager_int8"]["median_rel_err"] < 1e-4
    assert tight["prefill_short_vs_eager_int8"]["median_rel_err"] < 1e-4


@pytest.mark.parametrize("key", KEYS)
def test_program_matches_eager_int8_and_stays_near_float(et_built, seed, key):
    model = et_built.model
    qmodel = quantize_model(copy.deepcopy(model), *key, backend="executorch")
    noise = noise_bound(key[0])  # the quantization noise itself, bounded
    pte = et_built.int8[key].out / "model.pte"
    step = PteMethod(pte, "step")
    inspect_method(step, 1)  # state I/O float32
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    res = step_parity(step, {"int8": EagerGraph(qmodel, "step"), "fp32": EagerGraph(model, "step")}, ids,
                      list(random_state(model, 1)))
    require_tight(res["int8"], "step program")
    assert res["fp32"].logits_rel_err < noise, f"seed {seed}"
    graph = PteMethod(pte, "prefill")
    refs = {"int8": EagerGraph(qmodel, "prefill", PREFILL_TOKENS), "fp32": EagerGraph(model, "prefill", PREFILL_TOKENS)}
    short = prefill_parity(graph, refs, model, PREFILL_TOKENS, batch=1, valid_lengths=[2], calls=3)
    require_tight(short["int8"], "prefill program, 2 valid tokens")
    full = prefill_parity(graph, refs, model, PREFILL_TOKENS, batch=1, calls=2)
    require_within(full["int8"], TIGHT_MAX_REL_ERR, "prefill program")
    assert full["fp32"].logits_rel_err < noise, f"seed {seed}"


def test_runtime_streams_from_the_int8_program(et_built, seed):
    from xlstm_edge.runtime import load

    qmodel = quantize_model(copy.deepcopy(et_built.model), *KEY, backend="executorch")
    session = load(et_built.int8[KEY].out, num_threads=2)
    ids = torch.randint(0, 256, (1, PREFILL_TOKENS + 5))
    ref, _ = qmodel(ids)
    assert rel_err(session.prefill(ids), ref[:, -1]) < 2e-2, f"seed {seed}"
    assert len(session.generate_ids([], max_new_tokens=4)[0]) == 4


def test_weight_only_is_refused_with_the_reason(et_built, tmp_path):
    with pytest.raises(QuantizationError, match="int8-weight is not available for backend executorch .*wrong outputs with no error.*use int8-dynamic"):
        quantize(et_built.package, tmp_path / "w", "int8-weight")
    assert not (tmp_path / "w").exists()


def test_cli_names_a_truncated_program_in_one_line(et_built, tmp_path):
    import shutil

    from click.testing import CliRunner

    from xlstm_edge.cli import main

    shutil.copytree(et_built.package, tmp_path / "pkg")
    pte = tmp_path / "pkg" / "model.pte"
    with open(pte, "r+b") as fh:
        fh.truncate(pte.stat().st_size // 2)
    res = CliRunner().invoke(main, ["quantize", str(tmp_path / "pkg"), str(tmp_path / "o"), "--scheme",
                                    "int8-dynamic"])
    assert res.exit_code == 1, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(pte) in error[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_quantize_reads_the_program_own_weights_without_its_checkpoint(et_built):
    """The float package's weights index locates every parameter in model.pte (XNNPACK's named data, the
    constant segment): the weights read back are the model's, bit for bit, and the fixture's quantized
    packages were made from them, not from the checkpoint the manifest records."""
    from xlstm_edge.export.package_weights import PackageWeights

    from xlstm_edge.weights import ModelWeights

    manifest = read_manifest(et_built.package)
    assert manifest.weights["missing"] == [] and manifest.weights["file"] == "model.pte", manifest.weights
    source, model = PackageWeights(et_built.package, manifest), ModelWeights(et_built.model)
    assert sorted(source.names()) == sorted(model.names())
    for name in model.names():
        assert torch.equal(source.read(name, torch.float32), model.read(name, torch.float32)), name
    for key in KEYS:
        q = read_manifest(et_built.int8[key].out).quantization
        assert "source_checkpoint" not in q and q["source_package"] == str(et_built.package), q
