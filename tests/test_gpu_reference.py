"""The embedded demo model on CPU (PyTorch forms) against reference logits and states computed on an
H100 with our Triton kernels (bench/gpu_reference.py, stored in tests/data/gpu_reference.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import max_rel_err, rel_err
from xlstm_edge.checkpoint import load_checkpoint
from xlstm_edge.tokenizer import load_tokenizer

DEMO = Path(__file__).resolve().parents[1] / "xlstm_edge" / "assets" / "demo"
REFERENCE = Path(__file__).resolve().parent / "data" / "gpu_reference.safetensors"


def _reference():
    with safe_open(str(REFERENCE), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return json.loads(meta["prompts"]), tensors, meta


@pytest.mark.parametrize("form", ["chunkwise", "parallel", "recurrent"])
def test_cpu_forms_match_gpu_triton_reference(form):
    prompts, ref, meta = _reference()
    model, tok = load_checkpoint(DEMO), load_tokenizer(DEMO)
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            logits, state = model(torch.tensor([tok.encode(prompt)]), form=form)
            expected = ref[f"logits.{p}"]
            # relative, not absolute: logits reach |15|, where fp32 summation order alone moves ~1e-4
            # (the 249-token prompt through the parallel form: rel 1.3e-6, max abs 1.5e-4)
            assert rel_err(logits[0], expected) <= 1e-5, (form, p, meta["device"])
            assert max_rel_err(logits[0], expected) <= 2e-5, (form, p, meta["device"])
            for layer, tensors in enumerate(state):
                for name, value in tensors.items():
                    assert rel_err(value[0], ref[f"state.{p}.{layer}.{name}"]) <= 1e-4, (form, p, layer, name)
