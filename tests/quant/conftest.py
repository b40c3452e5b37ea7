"""Fixtures of the quantization tests: small random models, their checkpoints, float32 packages
(``export_package``) and the int8 packages made from them. Session-scoped: exporting and lowering
are the slow part (ONNX ~10 s per graph, ExecuTorch ~20 s per program here).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import randomize_
from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

PREFILL_TOKENS = 8
# small enough to keep the whole quantization suite within a few minutes, large enough to be a
# realistic check: the quality gate is that of the CLI only for trained models (see test_quality)
EVAL_TOKENS, GREEDY_TOKENS = 256, 32


def noise_bound(scheme: str) -> float:
    """Upper bound on quantized-vs-float32 logits (relative) for the tests' random tiny models: a sanity
    check that a graph is noisy, not wrong (uncorrelated logits give ~1.4). Eager sweep over 60 fresh
    draws (ids, state) per model: int8-dynamic median 0.025-0.030, worst 0.051; int4-dynamic (32-wide
    groups on a 32-wide model) median 0.27-0.32, worst 0.54. The bounds are about 2x and 1.5x the worst."""
    return 8e-1 if scheme == "int4-dynamic" else 1e-1


def make_model(preset: str = "tiny", seed: int = 0, **overrides) -> xLSTMForCausalLM:
    """A byte-level model with perturbed weights (no gate at its degenerate init), eval mode."""
    torch.manual_seed(seed)
    model = randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset(preset, **overrides))).eval()
    return model.requires_grad_(False)


def ms_model(seed: int = 1234) -> xLSTMForCausalLM:
    """An mLSTM block then an sLSTM block: every layer kind the plan decides about, kept small."""
    return make_model("tiny-ms", seed, num_hidden_layers=2, hidden_size=32, chunk_size=8, slstm_at=[1])


def one_block_model(seed: int = 0) -> xLSTMForCausalLM:
    """The smallest model worth lowering to ExecuTorch (lowering time grows with the node count)."""
    return make_model("tiny", seed, num_hidden_layers=1, hidden_size=32, chunk_size=8)


def write_checkpoint(model: xLSTMForCausalLM, root: Path) -> Path:
    from xlstm_edge.checkpoint import save_checkpoint
    from xlstm_edge.tokenizer import byte_tokenizer

    save_checkpoint(model, root, tokenizer=byte_tokenizer())
    return root


def write_float_package(model: xLSTMForCausalLM, root: Path, fmt: str, checkpoint: Path | None) -> Path:
    """A float32 package of ``model`` for ``fmt`` ("onnx" | "executorch"), recording ``checkpoint``."""
    from xlstm_edge.export import export_package

    from xlstm_edge.checkpoint import weights_sha256

    source = None if checkpoint is None else {"checkpoint": str(checkpoint.resolve()),
                                              "weights_sha256": weights_sha256(checkpoint)}
    export_package(model, root, fmt, prefill_tokens=PREFILL_TOKENS, parity_steps=8, source=source)
    return root


def quantize(package: Path, out: Path, scheme: str, **kw):
    from xlstm_edge.quant.package import QuantizeOptions, quantize_package

    opts = QuantizeOptions(scheme=scheme, eval_tokens=EVAL_TOKENS, greedy_tokens=GREEDY_TOKENS,
                           allow_quality_loss=True, **kw)
    return quantize_package(package, out, opts, log=lambda msg: None)


class Built:
    """A model with its checkpoint, float32 package and int8 packages ({(scheme, embedding): result})."""

    def __init__(self, model: xLSTMForCausalLM, checkpoint: Path, package: Path):
        self.model, self.checkpoint, self.package = model, checkpoint, package
        self.int8: dict[tuple[str, str], object] = {}


def build_ort(tmp_path_factory) -> Built:
    """ONNX Runtime: float32 package of ``ms_model`` (its own probe, as ``build_et``'s); int8-weight
    (embedding fp32), int8-dynamic (embedding int8) and int4-dynamic (embedding fp32) packages (the session
    fixture ``ort_built`` of tests/conftest.py: the quantization and the GenAI tests share it)."""
    root = tmp_path_factory.mktemp("quant-ort")
    model = ms_model()
    ckpt = write_checkpoint(model, root / "ckpt")
    built = Built(model, ckpt, write_float_package(model, root / "fp32", "onnx", ckpt))
    for scheme, emb in (("int8-weight", "fp32"), ("int8-dynamic", "int8"), ("int4-dynamic", "fp32")):
        built.int8[scheme, emb] = quantize(built.package, root / f"{scheme}-{emb}", scheme, embedding=emb)
    return built


def build_et(tmp_path_factory) -> Built:
    """ExecuTorch: float32 package of ``ms_model`` (an mLSTM then an sLSTM block, float32 norm weights:
    the model is its own probe, whose export would cost as much as the package's); its int8-dynamic
    (embedding int8) and int4-dynamic (embedding fp32) packages (the session fixture ``et_built`` of
    tests/conftest.py: the quantization tests and those of ExecuTorch's stock runner share them)."""
    root = tmp_path_factory.mktemp("quant-et")
    model = ms_model()
    ckpt = write_checkpoint(model, root / "ckpt")
    built = Built(model, ckpt, write_float_package(model, root / "fp32", "executorch", ckpt))
    for scheme, emb in (("int8-dynamic", "int8"), ("int4-dynamic", "fp32")):
        built.int8[scheme, emb] = quantize(built.package, root / f"{scheme}-{emb}", scheme, embedding=emb)
    return built


def quantize_cli_error(package: Path, out: Path) -> str:
    """Run ``xlstm-edge quantize PACKAGE OUT --scheme int8-dynamic``, which must fail with exactly one
    ``Error:`` line, no traceback and nothing at OUT; returns that line."""
    from click.testing import CliRunner

    from xlstm_edge.cli import main

    res = CliRunner().invoke(main, ["quantize", str(package), str(out), "--scheme", "int8-dynamic"])
    assert res.exit_code == 1, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in res.output, res.output
    assert not out.exists()
    return error[0]
