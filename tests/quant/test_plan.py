"""The per-layer plan (what becomes int8, what stays float32 and why) and the eager int8 model."""

from __future__ import annotations

import copy

import pytest
import torch
from xlstm_edge.quant.handler import QuantizationError, check_scheme, plan_quantization, quantize_model
from xlstm_edge.quant.modules import Int8Embedding, Int8Linear

from tests.conftest import rel_err
from tests.quant.conftest import make_model, ms_model, noise_bound


@pytest.fixture(scope="module")
def model():
    return ms_model()


def test_plan_keeps_gates_norms_and_recurrence_float(model):
    plan = plan_quantization(model, "int8-dynamic", backend="executorch")
    dtype = {d.name: d.dtype for d in plan.layers}
    m, s = "backbone.blocks.0.mlstm_layer", "backbone.blocks.1.slstm_layer"
    for name in (f"{m}.igate_preact", f"{m}.fgate_preact", f"{s}.igate", f"{s}.fgate", f"{s}.recurrent",
                 f"{s}.bias", f"{s}.conv", "backbone.blocks.0.norm_mlstm", "backbone.embeddings"):
        assert dtype[name] == "float32", name
    for name in (f"{m}.q", f"{m}.k", f"{m}.v", f"{m}.out_proj", f"{m}.ogate_preact", f"{s}.zgate", f"{s}.ogate",
                 "backbone.blocks.1.ffn.proj_down", "lm_head"):
        assert dtype[name] == "int8", name
    summary = plan.summary()
    assert summary["state_dtype"] == "float32"
    assert all(reason for reason in summary["float32_layers"].values())  # every float32 layer says why
    assert plan_quantization(model, "int8-weight", "int8", backend="onnxruntime").summary()["activation"] == "none"
    assert {d.name: d.dtype for d in plan_quantization(model, "int8-dynamic", "int8", backend="onnxruntime").layers}[
        "backbone.embeddings"] == "int8"


@pytest.mark.parametrize(("scheme", "embedding", "match"), [
    ("int4", "fp32", "unknown quantization scheme 'int4'; choose one of int8-weight, int8-dynamic, int4-dynamic"),
    ("int8-dynamic", "bf16", "unknown embedding choice 'bf16'"),
])
def test_bad_scheme_names(scheme, embedding, match):
    with pytest.raises(QuantizationError, match=match):
        check_scheme(scheme, embedding)


@pytest.mark.parametrize(("scheme", "embedding", "backend"), [
    ("int8-weight", "fp32", "onnxruntime"), ("int8-dynamic", "int8", "executorch"),
    ("int8-dynamic", "int8", "onnxruntime"), ("int4-dynamic", "fp32", "executorch"),
    ("int4-dynamic", "int8", "onnxruntime"),
])
def test_eager_int8_model_near_float(model, seed, scheme, embedding, backend):
    q = quantize_model(copy.deepcopy(model), scheme, embedding, backend=backend)
    assert any(isinstance(mod, Int8Embedding) for mod in q.modules()) == (embedding == "int8")
    n_int8 = sum(isinstance(mod, Int8Linear) for mod in q.modules())
    assert n_int8 == len([d for d in q.quant_plan.quantized_layers if d.kind != "embedding"])
    assert {m.activation for m in q.modules() if isinstance(m, Int8Linear)} == {q.quant_plan.activation}
    assert {m.bits for m in q.modules() if isinstance(m, Int8Linear)} == {4 if scheme == "int4-dynamic" else 8}
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    ref_logits, ref_state = copy.deepcopy(model).double()(ids)
    logits, state = q(ids)
    assert rel_err(logits, ref_logits) < noise_bound(scheme), f"seed {seed}"
    assert all(t.dtype == torch.float32 for layer in state for t in layer.values())
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(q, scheme, backend=backend)


def test_tied_head_shares_int8_rows(seed):
    tied = make_model("tiny", 3, tie_word_embeddings=True)
    q = quantize_model(copy.deepcopy(tied), "int8-dynamic", "int8", backend="executorch")
    assert q.lm_head.weight is q.backbone.embeddings.weight  # one int8 table, not two
    ids = torch.randint(0, 260, (1, 16))
    assert rel_err(q(ids)[0], tied.double()(ids)[0]) < 5e-2, f"seed {seed}"
