"""Shared fixtures: fresh random inputs every run (seed printed on failure), float64 references."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def fresh_seed() -> int:
    """A fresh random seed, or ``XLSTM_EDGE_SEED`` when set (to replay a failure's printed seed)."""
    fixed = os.environ.get("XLSTM_EDGE_SEED")
    return int(fixed) if fixed else int.from_bytes(os.urandom(4), "little")


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test, reported in the test's name on failure via the assertion messages."""
    value = fresh_seed()
    torch.manual_seed(value)
    return value


def _tensor(x) -> torch.Tensor:
    """A torch tensor of ``x`` (the runtime returns numpy arrays)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def rel_err(actual, expected) -> float:
    """Norm-wise relative error ||a - e|| / ||e|| (Frobenius), against a never-zero reference.
    Takes torch tensors or numpy arrays."""
    actual, expected = _tensor(actual), _tensor(expected).double()
    scale = expected.norm().item()
    assert scale > 0, "reference is all zeros: the test would prove nothing"
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.double() - expected).norm().item() / scale


def max_rel_err(actual, expected) -> float:
    """max |a - e| / max |e|: the stricter, element-wise figure (reported, looser bound)."""
    actual, expected = _tensor(actual), _tensor(expected).double()
    return (actual.double() - expected).abs().max().item() / expected.abs().max().item()


def randomize_(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter so that no gate or norm sits at its (degenerate) init value."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))
    return model


@pytest.fixture(scope="session")
def exported_packages(tmp_path_factory) -> dict[str, object]:
    """{"model": the eager model, "onnxruntime": dir, "executorch": dir}: one tiny-ms model (an sLSTM block
    between mLSTM blocks, perturbed weights) exported to both formats, each parity-checked at export.
    Session-wide: exporting costs about a minute per format on 2 cores."""
    from xlstm_edge.export import export_package

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(1234)
    model = randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset("tiny-ms"))).eval()
    root = tmp_path_factory.mktemp("packages")
    out: dict[str, object] = {"model": model}
    for fmt, backend in (("onnx", "onnxruntime"), ("executorch", "executorch")):
        out[backend] = export_package(model, root / fmt, fmt).out_dir
    return out


@pytest.fixture(scope="session")
def ort_built(tmp_path_factory):
    """``tests.quant.conftest.build_ort``: an xLSTM[m:s] model's float32 ONNX package and its int8-weight,
    int8-dynamic and int4-dynamic packages (session-wide: quantization and GenAI tests use them)."""
    from tests.quant.conftest import build_ort

    return build_ort(tmp_path_factory)


@pytest.fixture(scope="session")
def et_built(tmp_path_factory):
    """``tests.quant.conftest.build_et``: an xLSTM[m:s] model's float32 ExecuTorch package and its
    int8-dynamic and int4-dynamic packages (session-wide: quantization and stock-runner tests use them)."""
    from tests.quant.conftest import build_et

    return build_et(tmp_path_factory)
