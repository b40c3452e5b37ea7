"""An ONNX export leaves nothing of the model behind: its weights are freed with it (onnxscript's pattern
matchers kept the last exported graph, and the graph's initializers wrap the model's own tensors)."""

from __future__ import annotations

import gc
import weakref

from xlstm_edge.export.to_onnx import export_onnx_method
from xlstm_edge.quant.handler import quantize_model
from xlstm_edge.quant.onnx_backend import LOWERING

from tests.quant.conftest import make_model


class _Referent:
    pass


def test_exported_model_is_freed(tmp_path, seed):
    dead = [weakref.proxy(_Referent())]  # a dead weakref proxy on the heap: the release must step over it
    model = make_model("tiny", seed=seed % 1000, num_hidden_layers=1, hidden_size=32, chunk_size=8)
    int8 = quantize_model(model, "int8-dynamic", backend="onnxruntime")
    export_onnx_method(model, "step", 1, tmp_path / "fp32" / "step.onnx")
    export_onnx_method(int8, "step", 1, tmp_path / "int8" / "step.onnx", lowering=LOWERING)
    tensors = [weakref.ref(t) for m in (model, int8) for t in m.state_dict(keep_vars=True).values()]
    del model, int8
    gc.collect()
    assert dead
    alive = sum(r() is not None for r in tensors)
    assert alive == 0, f"{alive} of {len(tensors)} weight tensors outlive their exported models"
