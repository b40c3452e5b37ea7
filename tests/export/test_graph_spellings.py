"""The graphs' backend-specific spellings (``ExportLM``'s ``fused_norms`` for ONNX Runtime,
``flat_step`` for ExecuTorch) compute what the default spelling computes, on mLSTM and sLSTM blocks."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.export.step_module import PrefillModule, StepModule, example_inputs

from tests.conftest import rel_err
from tests.runtime.conftest import make_model

BOUND = 1e-5  # float32: the spellings differ only in rounding


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
@pytest.mark.parametrize("spelling", [{"fused_norms": True}, {"flat_step": True}, {"fused_norms": True, "flat_step": True}])
def test_step_spellings_agree(preset, spelling, seed):
    model = make_model(preset, seed=seed)
    args = example_inputs(model, 2, 1, prefill=False)
    with torch.no_grad():
        ref = StepModule(model)(*args)
        got = StepModule(model, **spelling)(*args)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert rel_err(g, r) < BOUND


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
def test_prefill_with_fused_norms_agrees(preset, seed):
    model = make_model(preset, seed=seed)
    args = list(example_inputs(model, 2, 16, prefill=True))
    args[1] = torch.tensor([16, 5])  # one row padded
    with torch.no_grad():
        ref = PrefillModule(model, 16)(*args)
        got = PrefillModule(model, 16, fused_norms=True)(*args)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and rel_err(g, r) < BOUND
