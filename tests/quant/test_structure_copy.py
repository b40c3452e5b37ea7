"""``executorch_backend.structure_copy``: the torchao form of a quantized model is built on a copy of its
modules that shares its tensors (no second copy of the weights), and the eager model stays as it was."""

from __future__ import annotations

import torch
from xlstm_edge.quant.executorch_backend import structure_copy
from xlstm_edge.quant.handler import quantize_model
from xlstm_edge.quant.modules import Int8Linear
from xlstm_edge.quant.torchao_bridge import to_torchao

from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


def test_structure_copy_shares_the_weights_and_leaves_the_model(seed):
    model = xLSTMForCausalLM(xLSTMConfig.from_preset("tiny")).eval()
    q = quantize_model(model, "int8-dynamic", "int8", backend="executorch")
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    before = q(ids)[0]
    ao = to_torchao(structure_copy(q))
    ours = {t.data_ptr() for t in [*q.parameters(), *q.buffers()]}
    assert all(t.data_ptr() in ours for t in ao.parameters() if not hasattr(t, "qdata") and t.numel() > 1)
    assert all(p.qdata.data_ptr() in ours for p in ao.parameters() if hasattr(p, "qdata")), "int8 weights copied"
    assert any(isinstance(m, Int8Linear) for m in q.modules()) and not any(isinstance(m, Int8Linear) for m in ao.modules())
    assert torch.equal(q(ids)[0], before), f"seed {seed}"
