"""Fixtures of the runtime tests: small random xLSTM models (mLSTM-only and xLSTM[m:s])."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import randomize_
from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


def make_model(preset: str = "tiny-ms", seed: int = 0) -> xLSTMForCausalLM:
    """A byte-level model with perturbed weights (no gate at its degenerate init), eval mode."""
    torch.manual_seed(seed)
    return randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset(preset))).eval()


@pytest.fixture(scope="module")
def model_ms() -> xLSTMForCausalLM:
    return make_model("tiny-ms", seed=1234)


@pytest.fixture(scope="module")
def model_m() -> xLSTMForCausalLM:
    return make_model("tiny", seed=4321)


def random_ids(n: int, vocab: int = 256, batch: int | None = None) -> list[int] | list[list[int]]:
    """Fresh random byte ids (the global RNG, seeded by the ``seed`` fixture)."""
    if batch is None:
        return torch.randint(0, vocab, (n,)).tolist()
    return torch.randint(0, vocab, (batch, n)).tolist()


def write_fake_package(root, config, backend: str = "onnxruntime", prefill_tokens: int = 16):
    """A package directory whose manifest is valid but whose graph files are placeholders (bad-input tests)."""
    from xlstm_edge.export import metadata as md

    from xlstm_edge.tokenizer import byte_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    entries = md.state_entries(config)
    ext = "onnx" if backend == "onnxruntime" else "pte"
    graphs = {}
    for method, tpc in (("step", 1), ("prefill", prefill_tokens)):
        inputs = [md.TensorEntry(md.INPUT_IDS, [md.BATCH, tpc], "int64")]
        if method == "prefill":
            inputs.append(md.TensorEntry(md.VALID_LENGTH, [md.BATCH], "int64"))
        inputs += md.state_tensor_entries(entries, output=False)
        outputs = [md.TensorEntry(md.LOGITS, [md.BATCH, config.vocab_size], "float32"),
                   *md.state_tensor_entries(entries, output=True)]
        file = f"{method}.onnx" if ext == "onnx" else "model.pte"
        graphs[method] = md.GraphEntry(file, method, inputs, outputs, tpc,
                                       md.VALID_LENGTH if method == "prefill" else None)
        (root / file).write_bytes(b"not a graph")
    byte_tokenizer().save(root)
    manifest = md.Manifest(
        backend=backend, model=config.to_dict(),
        tokenizer=md.TokenizerEntry(md.TOKENIZER_NAME, 256, 257, 258, 259),
        state=md.StateSection(md.STATE_CONVENTION, entries), graphs=graphs,
    )
    md.write_manifest(manifest, root)
    return root


@pytest.fixture(scope="session")
def packages(exported_packages) -> dict[str, object]:
    """The session's tiny-ms model and its two packages (tests/conftest.py)."""
    return exported_packages
