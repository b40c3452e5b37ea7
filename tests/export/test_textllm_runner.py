"""ExecuTorch packages run unmodified in ExecuTorch's own LLM runner (``TextLLMRunner``, the pip
package's binding of the C++ runner behind its Android / iOS apps).

Greedy text from the runner must equal ``xlstm-edge generate --temperature 0`` on the same package;
two generations in a row from one runner (``reset()`` between, which only sets the position to 0)
must give the same text: the graph zeroes its state at position 0. The packages ship a tokenizer
whose every id decodes to ASCII (``ascii_tokenizer``): the binding hands each piece to Python as a
``str`` and raises ``UnicodeDecodeError`` on a byte-level piece that is not valid UTF-8 alone, which a
random model emits often (a limit of the binding, not of the C++ runner).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from tests.quant.conftest import make_model
from xlstm_edge.tokenizer import Tokenizer, byte_to_unicode

pytest.importorskip("executorch.extension.llm.runner")

PROMPT = "The quick brown fox jumps over the lazy dog; then it ran far away."  # > 2 forward calls of 8
NEW_TOKENS = 24
MAX_SEQ_LEN = 8


def ascii_tokenizer() -> Tokenizer:
    """259 ids like the byte tokenizer's (specials 256..258), each decoding to printable ASCII: the 95
    printable characters and newline, then two-letter tokens. BPE without merges, ByteLevel alphabet
    (which both ``tokenizers`` and ExecuTorch's C++ HF tokenizer read)."""
    table = byte_to_unicode()
    vocab = {table[b]: i for i, b in enumerate([*range(32, 127), 10])}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for pair in (a + b for a in letters for b in letters):
        if len(vocab) == 256:
            break
        vocab[pair] = len(vocab)
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<bos>", "<eos>", "<pad>")])
    return Tokenizer(backend, bos_token_id=256, eos_token_id=257, pad_token_id=258)


def with_ascii_tokenizer(package: Path, dest: Path) -> Path:
    """A copy of ``package`` whose tokenizer is ``ascii_tokenizer`` (same 259 ids, same specials: the
    graphs and the manifest hold for it as they are)."""
    import shutil

    shutil.copytree(package, dest)
    ascii_tokenizer().save(dest)
    return dest


@pytest.fixture(scope="module")
def packages(et_built, tmp_path_factory) -> dict[str, Path]:
    """The session's ExecuTorch packages of an mLSTM then an sLSTM block (tests/conftest.py ``et_built``),
    ASCII tokenizer swapped in: "fp32-ms" (float32), "int8-ms" (int8-dynamic, int8 embedding), "int4-ms"
    (int4-dynamic)."""
    root = tmp_path_factory.mktemp("runner")
    sources = {"fp32-ms": et_built.package, "int8-ms": et_built.int8["int8-dynamic", "int8"].out,
               "int4-ms": et_built.int8["int4-dynamic", "fp32"].out}
    return {kind: with_ascii_tokenizer(pkg, root / kind) for kind, pkg in sources.items()}


@pytest.fixture(scope="module")
def float_m(tmp_path_factory) -> Path:
    """A float32 package of an mLSTM-only model (no sLSTM state buffers), ASCII tokenizer."""
    from xlstm_edge.export import export_package

    m = make_model("tiny", 7, num_hidden_layers=1, hidden_size=32, chunk_size=8)
    out = tmp_path_factory.mktemp("runner-m") / "fp32-m"
    export_package(m, out, "executorch", tokenizer=ascii_tokenizer(), prefill_tokens=MAX_SEQ_LEN, parity_steps=8)
    return out


def ours(package: Path, prompt: str = PROMPT, n: int = NEW_TOKENS) -> str:
    """``xlstm-edge generate PACKAGE --prompt ... --temperature 0 -n n``'s text."""
    from click.testing import CliRunner

    from xlstm_edge.cli import main

    res = CliRunner().invoke(main, ["generate", str(package), "--prompt", prompt, "--temperature", "0",
                                    "-n", str(n), "--threads", "2"])
    assert res.exit_code == 0, res.output
    return res.stdout.rstrip("\n")


def stock(runner, prompt: str = PROMPT, n: int = NEW_TOKENS) -> str:
    """One greedy generation through TextLLMRunner (no bos, as ours); the eos piece is not text."""
    from executorch.extension.llm.runner import GenerationConfig

    pieces: list[str] = []
    runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=n, temperature=0.0),
                    token_callback=pieces.append)
    runner.reset()
    text = "".join(pieces)
    return text.removesuffix("<eos>")


def open_runner(package: Path):
    from executorch.extension.llm.runner import TextLLMRunner

    return TextLLMRunner(str(package / "model.pte"), str(package / "tokenizer.json"))


def check_greedy_twice(package: Path, kind: str) -> None:
    expected = ours(package)
    assert len(expected) >= 8, expected  # the comparison means something
    runner = open_runner(package)
    first, second = stock(runner), stock(runner)
    assert first == expected, (kind, first, expected)
    assert second == first, (kind, "the state was not reset at position 0", first, second)


def test_greedy_text_equals_ours_twice_mlstm_only(float_m):
    check_greedy_twice(float_m, "fp32-m")


@pytest.mark.parametrize("kind", ["fp32-ms", "int8-ms", "int4-ms"])
def test_greedy_text_equals_ours_twice(packages, kind):
    check_greedy_twice(packages[kind], kind)


def test_manifest_and_metadata(packages, float_m):
    """The manifest records the runner's contract and its parity; the .pte has the metadata methods."""
    from executorch.runtime import Runtime
    from xlstm_edge.export.metadata import read_manifest
    from xlstm_edge.export.runner_module import MAX_CONTEXT_LEN

    for package in (float_m, packages["int8-ms"]):
        manifest = read_manifest(package)
        assert manifest.runner == {"method": "forward", "max_seq_len": MAX_SEQ_LEN, "vocab_size": 259, "bos_id": 256,
                                   "eos_ids": [257], "max_context_len": MAX_CONTEXT_LEN}
        program = Runtime.get().load_program(package / "model.pte")
        names = set(program.method_names)
        assert {"forward", "step", "prefill", "get_max_seq_len", "get_max_context_len", "use_kv_cache",
                "enable_dynamic_shape", "get_eos_ids", "get_vocab_size", "get_bos_id"} <= names, names
        assert "decode" not in names  # the runner would decode with it, on buffers of its own
        meta = program.load_method("forward").metadata
        assert (meta.num_inputs(), meta.num_outputs()) == (2, 1)
    parity = read_manifest(packages["fp32-ms"]).parity["runner"]
    assert parity["passed"] and parity["max_rel_dlogits"] <= parity["bound_rel"], parity


def test_long_prompt_and_stream(packages):
    """A prompt of several max_seq_len pieces and a stream past it: the runner never stops on length."""
    package = packages["fp32-ms"]
    prompt = PROMPT * 3
    assert stock(open_runner(package), prompt, 40) == ours(package, prompt, 40)
