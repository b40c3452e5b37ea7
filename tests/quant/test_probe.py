"""The probe (quant/probe.py): a deep model's tight parity check runs on its first block of each kind."""

from __future__ import annotations

import copy

import pytest
import torch
from xlstm_edge.export.metadata import read_manifest
from xlstm_edge.quant import package as package_module
from xlstm_edge.quant.handler import QuantizationError
from xlstm_edge.quant.probe import NORM_JITTER, is_norm_weight, needs_probe, probe_blocks, probe_model

from tests.conftest import rel_err
from tests.quant.conftest import make_model, quantize


def deep_model():
    """4 blocks m, s, m, s (above PROBE_ABOVE_BLOCKS): the probe keeps blocks 0 and 1."""
    return make_model("tiny-ms", 7, num_hidden_layers=4, hidden_size=32, chunk_size=8, slstm_at=[1, 3])


def test_probe_keeps_first_block_of_each_kind_with_its_weights():
    model = deep_model()
    assert needs_probe(model.config) and probe_blocks(model.config) == [0, 1]
    probe = probe_model(model, norm_jitter=0.0)
    assert probe.config.block_types() == ["m", "s"] and probe.config.slstm_at == [1]
    for j, i in enumerate(probe_blocks(model.config)):
        for (name, a), (_, b) in zip(probe.backbone.blocks[j].state_dict().items(),
                                     model.backbone.blocks[i].state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(probe.lm_head.weight, model.lm_head.weight)
    assert torch.equal(probe.backbone.embeddings.weight, model.backbone.embeddings.weight)
    # the probe is the model without blocks 2 and 3: the same logits as the model whose blocks 2 and 3
    # add nothing to the residual stream (their output projections zeroed)
    silent = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in silent.backbone.blocks[2:].named_parameters():
            if name.endswith(("out_proj.weight", "proj_down.weight", "group_norm.weight")):
                param.zero_()
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    want, _ = silent(ids)
    got, _ = probe(ids)
    assert rel_err(got, want) < 1e-6
    assert rel_err(got, model(ids)[0]) > 1e-3  # and the blocks it drops do matter in the model


def test_probe_norm_weights_leave_the_stored_grid_and_nothing_else_changes():
    """Norm weights stored on a grid (bfloat16; all ones untrained) are moved off it, by ~NORM_JITTER,
    the same way each time; every other weight is the model's own."""
    model = deep_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_norm_weight(name):
                param.copy_(param.bfloat16().float())
        model.backbone.blocks[0].norm_mlstm.weight.fill_(1.0)
    probe, again = probe_model(model), probe_model(model)
    stored = probe_model(model, norm_jitter=0.0).state_dict()
    norms = [name for name in stored if is_norm_weight(name)]
    assert len(norms) == 7  # two blocks' pre-norms and FFN norms, per-head and group norms, output norm
    for name, value in probe.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
        if name not in norms:
            assert torch.equal(value, stored[name]), name
            continue
        ratio = value / stored[name] - 1
        assert 0.2 * NORM_JITTER < float(ratio.std()) < 5 * NORM_JITTER, name
        assert not torch.equal(value.bfloat16().float(), value), f"{name} still on the bfloat16 grid"


@pytest.mark.parametrize("key", [("int8-weight", "fp32"), ("int8-dynamic", "int8"), ("int4-dynamic", "fp32")])
def test_probe_path_is_checked_and_recorded(ort_built, key):
    """The session's quantized packages of the 2-block test model went through the probe path (every
    quantized export checks its probe: here the whole model, norm weights jittered)."""
    parity = read_manifest(ort_built.int8[key].out).parity["int8"]
    assert parity["tight"]["graphs"] == "probe" and parity["tight"]["blocks"] == [0, 1]
    assert parity["tight"]["norm_jitter"] == NORM_JITTER
    assert parity["tight"]["step_vs_eager_int8"]["median_rel_err"] < 1e-4
    assert parity["tight"]["prefill_short_vs_eager_int8"]["median_rel_err"] < 1e-4
    made_beside = sorted(p.name for p in ort_built.package.parent.iterdir())
    assert made_beside == ["ckpt", "fp32", "int4-dynamic-fp32", "int8-dynamic-int8", "int8-weight-fp32"], (
        "the probe's graphs are removed", made_beside)


def test_probe_refuses_a_graph_that_is_not_the_same_quantization(ort_built, tmp_path, monkeypatch):
    """A systematic 1e-3 difference (within the loose bound on the package's own graphs) is refused,
    the message naming the probe's graph, and nothing is left behind."""

    class Off(package_module.EagerGraph):  # the eager int8 reference, off by 1e-3; float32 as it is
        def __init__(self, model, *args):
            super().__init__(model, *args)
            self.factor = 1 + 1e-3 if hasattr(model, "quant_plan") else 1.0

        def run(self, inputs):
            return [t * self.factor for t in super().run(inputs)]

    monkeypatch.setattr(package_module, "EagerGraph", Off)
    with pytest.raises(QuantizationError, match=r"graph \(probe"):
        quantize(ort_built.package, tmp_path / "off", "int8-dynamic")
    assert not list(tmp_path.iterdir())
