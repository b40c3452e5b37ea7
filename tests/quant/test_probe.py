"""The probe (quant/probe.py): a deep model's tight parity check runs on its first block of each kind."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from xlstm_edge.export.metadata import read_manifest
from xlstm_edge.quant import package as package_module
from xlstm_edge.quant.handler import QuantizationError
from xlstm_edge.quant.probe import (
    NORM_JITTER,
    is_norm_weight,
    is_own_probe,
    needs_probe,
    probe_blocks,
    probe_model,
)

from tests.conftest import rel_err
from tests.quant.conftest import (
    EVAL_TOKENS,
    GREEDY_TOKENS,
    PREFILL_TOKENS,
    make_model,
    one_block_model,
    write_checkpoint,
)
from xlstm_edge.weights import ModelWeights


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


def quantize_probed(checkpoint: Path, out: Path):
    """``export CKPT OUT --quantize int8-dynamic --embedding int8`` (ONNX): no float package is written."""
    from xlstm_edge.quant.package import QuantizeOptions, quantize_checkpoint

    from xlstm_edge.tokenizer import byte_tokenizer

    opts = QuantizeOptions(scheme="int8-dynamic", embedding="int8", eval_tokens=EVAL_TOKENS,
                           greedy_tokens=GREEDY_TOKENS, allow_quality_loss=True)
    return quantize_checkpoint(checkpoint, out, "onnx", opts, tokenizer=byte_tokenizer(), prefill_tokens=PREFILL_TOKENS,
                               log=lambda msg: None)


@pytest.fixture(scope="module")
def probed_built(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-block mLSTM model's checkpoint and its int8-dynamic ONNX package (int8 embedding): the cheapest
    model whose tight check runs on its probe (block 0 alone)."""
    root = tmp_path_factory.mktemp("probed")
    model = make_model("tiny", 5, num_hidden_layers=2, hidden_size=32, chunk_size=8)
    checkpoint = write_checkpoint(model, root / "ckpt")
    return checkpoint, quantize_probed(checkpoint, root / "int8").out


def test_probe_path_is_checked_and_recorded(probed_built):
    """A model with two mLSTM blocks went through the probe path: block 0, norm weights jittered, the
    probe's graphs exported, checked and removed."""
    checkpoint, quantized = probed_built
    parity = read_manifest(quantized).parity["int8"]
    assert parity["tight"]["graphs"] == "probe" and parity["tight"]["blocks"] == [0]
    assert parity["tight"]["norm_jitter"] == NORM_JITTER
    assert parity["tight"]["step_vs_eager_int8"]["median_rel_err"] < 1e-4
    assert parity["tight"]["prefill_short_vs_eager_int8"]["median_rel_err"] < 1e-4
    made_beside = sorted(p.name for p in checkpoint.parent.iterdir())
    assert made_beside == ["ckpt", "int8"], ("the probe's graphs are removed", made_beside)


def test_a_model_is_its_own_probe_with_one_block_of_each_kind_and_norms_off_the_grid():
    """Only when the probe would have the model's blocks and the jitter has nothing to move."""
    model = make_model("tiny-ms", 3, num_hidden_layers=2, hidden_size=32, chunk_size=8, slstm_at=[1])
    assert is_own_probe(ModelWeights(model))  # randomized float32 norm weights
    assert not is_own_probe(ModelWeights(deep_model()))  # blocks 2 and 3 are not in the probe
    with torch.no_grad():
        model.backbone.blocks[1].norm_slstm.weight.copy_(model.backbone.blocks[1].norm_slstm.weight.bfloat16())
    assert not is_own_probe(ModelWeights(model))  # one norm on the bfloat16 grid: the probe's jitter is needed


class Off(package_module.EagerGraph):
    """The eager int8 reference, off by 1e-3 (within the loose bound on the package's own graphs); the
    float32 reference as it is."""

    def __init__(self, model, *args):
        super().__init__(model, *args)
        self.factor = 1 + 1e-3 if hasattr(model, "quant_plan") else 1.0

    def run(self, inputs):
        return [t * self.factor for t in super().run(inputs)]


def test_probe_refuses_a_graph_that_is_not_the_same_quantization(probed_built, tmp_path, monkeypatch):
    """A systematic 1e-3 difference is refused, the message naming the probe's graph, nothing left behind."""
    monkeypatch.setattr(package_module, "EagerGraph", Off)
    with pytest.raises(QuantizationError, match=r"graph \(probe"):
        quantize_probed(probed_built[0], tmp_path / "off")
    assert not list(tmp_path.iterdir())


def test_own_probe_refuses_a_graph_that_is_not_the_same_quantization(tmp_path, monkeypatch):
    """The same on a model that is its own probe (one mLSTM block, float32 norm weights): the tight check
    runs on the package's graphs."""
    checkpoint = write_checkpoint(one_block_model(seed=11), tmp_path / "ckpt")
    monkeypatch.setattr(package_module, "EagerGraph", Off)
    with pytest.raises(QuantizationError, match=r"graph \(package"):
        quantize_probed(checkpoint, tmp_path / "off")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
