"""Shared fixtures: fresh random inputs every run (seed printed on failure), float64 references."""

from __future__ import annotations

import os

import pytest
import torch

# under pytest-xdist (``make test`` runs ``-n 2``) each worker takes one core's share of the threads
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))

# the session fixtures that export or quantize (minutes each): every module that uses one runs on one
# xdist worker, so that each is built once (``pytest_collection_modifyitems``)
SESSION_BUILDS = ("ort_built", "et_built", "exported_packages")
# the groups that take longest on one core, longest first (seconds measured in a 2-worker run, 2026-12-07):
# ``make test`` passes ``--no-loadscope-reorder``, so pytest-xdist hands the groups out in collection order
# and these start first (by default it orders groups by their number of tests: the one-test memory-bound
# export came last and ran alone for its five minutes at the end)
HEAVY_FIRST = (
    "et_built",  # ExecuTorch float32, int8 and int4 packages, the stock-runner tests: ~850
    "ort_built",  # ONNX float32 and three quantized packages, the GenAI and quantization tests: ~400
    "tests/export/test_memory_bound.py",  # a 250 M float32 export in a subprocess: ~290
    "tests/export/test_parity_bound.py",  # transformers checkpoints exported to both formats: ~330
    "exported_packages",  # tiny-ms in both formats, the runtime tests on them: ~300
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items) -> None:
    """Group tests for ``--dist loadgroup``: a module's tests stay together (its module fixtures are built
    once), and the modules that share a session build (``SESSION_BUILDS``) share a group."""
    by_module: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        build = next((name for name in SESSION_BUILDS if name in item.fixturenames), None)
        if build is not None and module not in by_module:
            by_module[module] = build
    group_of = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        group_of[item.nodeid] = by_module.get(module, module)
        item.add_marker(pytest.mark.xdist_group(group_of[item.nodeid]))
    rank = {group: i for i, group in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(group_of[item.nodeid], len(rank)))  # stable: the rest keep their order


def pytest_collection_finish(session) -> None:
    """Under ``--dist loadgroup`` pytest-xdist has put each test's group into its node id; if it has not (a
    pytest it does not know: 9.2 moved the node id it rewrites), every worker would build every session
    fixture: stop rather than run twice as long."""
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist did not group the tests (--dist loadgroup): check the pytest / "
                                "pytest-xdist pins in pyproject.toml")


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
    Session-wide: exporting costs about a minute per format on 2 cores. Without the stock runners'
    graphs (GenAI's ``genai.onnx``, ExecuTorch's ``forward``): their tests have packages of their own
    (``ort_built``, ``et_built``)."""
    from xlstm_edge.export import export_package

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(1234)
    model = randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset("tiny-ms"))).eval()
    root = tmp_path_factory.mktemp("packages")
    out: dict[str, object] = {"model": model}
    for fmt, backend in (("onnx", "onnxruntime"), ("executorch", "executorch")):
        out[backend] = export_package(model, root / fmt, fmt, genai=False, runner_method=False).out_dir
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
