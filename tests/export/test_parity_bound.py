"""The export's parity bound scales with the model's own float32 error (``export.verify``).

Correct exports of random transformers checkpoints (random gate biases: far from the init, where the
float32 error of the model itself is largest) pass with default settings at every shape; graphs with
an injected fault (a swapped gate, a dropped soft cap) are refused. Fresh random weights each run
(the seed is in the failure message).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch
from xlstm_edge.export import export_package
from xlstm_edge.export.graph_model import ExportLM
from xlstm_edge.export.verify import REL_FLOOR, ParityError, blockwise_forward

from tests.conftest import randomize_
from xlstm_edge.checkpoint import load_checkpoint

transformers = pytest.importorskip("transformers")

STEPS = 16
# (vocab, hidden, heads, blocks); the first is the shape the old absolute bound refused at 1.18e-4; vocab
# at least the byte tokenizer's 259 ids (the default tokenizer of a checkpoint without one)
SHAPES = [(333, 128, 2, 3), (260, 64, 4, 2), (1000, 256, 4, 1)]


def hf_checkpoint(root: Path, shape: tuple[int, int, int, int], seed: int, head_scale: float = 1.0) -> Path:
    """A perturbed transformers xLSTMForCausalLM with random gate biases, saved with save_pretrained."""
    vocab, hidden, heads, blocks = shape
    torch.manual_seed(seed)
    config = transformers.xLSTMConfig(vocab_size=vocab, hidden_size=hidden, num_heads=heads,
                                      num_hidden_layers=blocks, chunk_size=16, autocast_kernel_dtype="float32",
                                      inference_state_dtype="float32")
    model = randomize_(transformers.xLSTMForCausalLM(config).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("igate_preact.bias", "fgate_preact.bias")):
                p.copy_(torch.randn_like(p) * 3 + (2.0 if "fgate" in name else 0.0))
            if name == "lm_head.weight":
                p.mul_(head_scale)
    model.save_pretrained(root / "hf")
    return root / "hf"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "V{}-D{}-NH{}-L{}".format(*s))
def test_random_transformers_checkpoints_export_with_default_settings(tmp_path, shape):
    seed = int.from_bytes(os.urandom(4), "little")
    model = load_checkpoint(hf_checkpoint(tmp_path, shape, seed))
    parity = export_package(model, tmp_path / "pkg", "onnx", parity_steps=STEPS).manifest.parity
    assert parity["passed"] and parity["tolerance"] is None, (seed, parity)
    assert parity["max_rel_dlogits"] <= parity["bound_rel"], (seed, parity)
    assert parity["bound_rel"] >= REL_FLOOR and parity["eager_float32_rel_err"] > 0, (seed, parity)


def test_executorch_export_of_a_random_transformers_checkpoint(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    model = load_checkpoint(hf_checkpoint(tmp_path, SHAPES[0], seed))
    parity = export_package(model, tmp_path / "pkg", "executorch", parity_steps=STEPS).manifest.parity
    assert parity["passed"], (seed, parity)


def _swap_gates(monkeypatch) -> None:
    step = ExportLM._mlstm_step

    def swapped(self, layer, x, state):
        fake = types.SimpleNamespace(**{n: getattr(layer, n) for n in ("q", "k", "v", "ogate_preact", "out_proj",
                                                                        "multihead_norm")},
                                     igate_preact=layer.fgate_preact, fgate_preact=layer.igate_preact)
        return step(self, fake, x, state)

    monkeypatch.setattr(ExportLM, "_mlstm_step", swapped)


def _drop_soft_cap(monkeypatch) -> None:
    def logits(self, x):
        return self.model.lm_head(self._rms(self.model.backbone.out_norm, x))

    monkeypatch.setattr(ExportLM, "_logits", logits)


@pytest.mark.parametrize("fault", [_swap_gates, _drop_soft_cap], ids=["swapped-gate", "dropped-soft-cap"])
def test_graphs_with_a_fault_are_refused(tmp_path, monkeypatch, fault):
    """Logits scaled to a trained model's size (|logit| ~ 10-30, where the soft cap at 30 matters)."""
    seed = int.from_bytes(os.urandom(4), "little")
    model = load_checkpoint(hf_checkpoint(tmp_path, SHAPES[0], seed, head_scale=40.0))
    fault(monkeypatch)
    with pytest.raises(ParityError, match="disagree") as info:
        export_package(model, tmp_path / "pkg", "onnx", parity_steps=STEPS)
    assert not (tmp_path / "pkg").exists(), (seed, str(info.value))


def test_blockwise_reference_is_the_model_in_float64(tmp_path):
    """The block-by-block float64 forward equals a whole float64 copy of the model (and the state)."""
    import copy

    from xlstm_edge.state import init_state, state_spec

    seed = int.from_bytes(os.urandom(4), "little")
    model = load_checkpoint(hf_checkpoint(tmp_path, SHAPES[1], seed))
    ids = torch.randint(0, model.config.vocab_size, (1, 29))
    positions = torch.tensor([0, 13, 28])
    logits, state = blockwise_forward(model, ids, positions)
    wide = copy.deepcopy(model).double()
    ref, ref_state = wide(ids, init_state(model.config, 1, dtype=torch.float64))
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, ref[0, positions], rtol=1e-12, atol=1e-12)
    for spec, got in zip(state_spec(model.config), state, strict=True):
        torch.testing.assert_close(got, ref_state[spec.layer][spec.name], rtol=1e-12, atol=1e-12)
