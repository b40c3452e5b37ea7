"""Tokenizers: the byte-level default, HF tokenizer.json files built here, streaming decode, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.tokenizer import (
    StreamDecoder,
    Tokenizer,
    TokenizerError,
    byte_tokenizer,
    decode_stream,
    load_tokenizer,
)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "streaming text one token at a time, the state stays the same size",
    "héllo wörld, ça va? naïve café",
    "xLSTM runs on the edge: mLSTM and sLSTM blocks",
    "世界 你好 😀 emoji and CJK in the training text",
] * 4
FIXED_TEXTS = [
    "plain ASCII text\twith a tab\nand a newline",
    "héllo wörld ça va",
    "emoji 🙂🚀 and a family 👩‍👩‍👧 with joiners",
    "CJK 世界你好 and Hangul 안녕하세요",
    "unseen 🦜 and 龘 next to <eos> and </s> as plain text",
]
# code point ranges for random text: ASCII, Latin-1, Greek/Cyrillic, CJK, emoji (no surrogates)
RANGES = [(0x20, 0x7E), (0xA0, 0xFF), (0x370, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]


def random_text(rng: random.Random, n: int) -> str:
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(RANGES)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def assert_streams_whole(tok: Tokenizer, ids: list[int], expected: str) -> list[str]:
    """Stream ``ids`` token by token: the pieces join to ``expected`` and none holds a broken character."""
    pieces = decode_stream(tok, ids)
    assert "".join(pieces) == expected
    for i, piece in enumerate(pieces):
        assert "\ufffd" not in piece, f"piece {i} {piece!r} holds part of a character"
        piece.encode("utf-8")  # a str with a lone surrogate would fail here
    return pieces


# ---- tokenizers built in the tests with the library ------------------------------------------------
def gpt2_style_bpe(tmp_path: Path) -> Path:
    """A ByteLevel BPE (GPT-2 scheme) trained on SENTENCES, saved with a special_tokens_map.json."""
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|padding|>"], show_progress=False)
    tk.train_from_iterator(SENTENCES, trainer)
    out = tmp_path / "gpt2"
    out.mkdir()
    tk.save(str(out / "tokenizer.json"))
    special_map = {"bos_token": {"content": "<|endoftext|>", "special": True}, "eos_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map))
    return out


def sentencepiece_style_bpe(tmp_path: Path) -> Path:
    """A Llama-style BPE: '▁' for spaces, <0xNN> byte-fallback tokens, decoder Replace/ByteFallback/Fuse/Strip."""
    tk = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tk.train_from_iterator(SENTENCES[:4], trainer)  # no CJK or emoji: those must fall back to bytes
    spec = json.loads(tk.to_str())
    vocab = spec["model"]["vocab"]
    first = max(vocab.values()) + 1
    vocab.update({f"<0x{b:02X}>": first + b for b in range(256)})
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]}
    path = tmp_path / "sp.json"
    path.write_text(json.dumps(spec))
    return path


# ---- the byte-level default -------------------------------------------------------------------------
def test_byte_tokenizer_ids_are_bytes() -> None:
    tok = byte_tokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (256, 257, 258, 259)
    assert tok.vocab_size <= xLSTMConfig.from_preset("tiny").vocab_size
    for text in FIXED_TEXTS:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))  # special-token text stays literal by default
        assert tok.decode(ids) == text
    assert tok.encode("a<eos>", allow_special=True) == [97, 257]
    assert tok.decode([104, 256, 105, 257], skip_special_tokens=False) == "h<bos>i<eos>"
    assert tok.decode([104, 256, 105, 257]) == "hi"


def test_byte_tokenizer_random_text_round_trip(seed: int) -> None:
    tok, rng = byte_tokenizer(), random.Random(seed)
    for _ in range(20):
        text = random_text(rng, rng.randint(1, 60))
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")), f"seed {seed}: {text!r}"
        assert tok.decode(ids) == text
        assert_streams_whole(tok, ids, text)


def test_byte_tokenizer_random_bytes(seed: int) -> None:
    """Arbitrary bytes (mostly invalid UTF-8): exact bytes per token; stream == full decode == Python's."""
    tok, rng = byte_tokenizer(), random.Random(seed)
    for _ in range(20):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        ids = list(data)
        assert b"".join(tok.token_bytes(i) for i in ids) == data
        expected = data.decode("utf-8", errors="replace")
        assert tok.decode(ids) == expected, f"seed {seed}: {data!r}"
        assert "".join(decode_stream(tok, ids)) == expected, f"seed {seed}: {data!r}"


def test_stream_holds_back_partial_characters() -> None:
    tok = byte_tokenizer()
    stream = StreamDecoder(tok)
    assert [stream.push(b) for b in "🙂".encode()] == ["", "", "", "🙂"]
    assert [stream.push(b) for b in "世".encode()] == ["", "", "世"]
    assert stream.push(0xF0) == "" and stream.push(0x9F) == ""
    assert stream.flush() == "\ufffd"  # an emoji cut short: flush gives what is left, replaced
    assert stream.push(ord("a")) == "a"  # and the decoder starts afresh
    assert stream.push(257) == ""  # eos has no text


def test_save_and_load_byte_tokenizer(tmp_path: Path) -> None:
    written = byte_tokenizer().save(tmp_path)
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert tok.encode("héllo 🙂") == list("héllo 🙂".encode())
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size == 259


def test_directory_without_tokenizer_is_byte_level(tmp_path: Path) -> None:
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 259 and tok.eos_token_id == 257
    with pytest.raises(TokenizerError, match="vocab is only 100"):
        load_tokenizer(tmp_path, xLSTMConfig.from_preset("tiny", vocab_size=100))


def test_transformers_reads_saved_tokenizer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    byte_tokenizer().save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    text = "héllo 世界 🙂"
    assert hf.encode(text, add_special_tokens=False) == list(text.encode())
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (256, 257, 258)


# ---- HF tokenizer.json files ------------------------------------------------------------------------
def test_gpt2_style_bpe_loads_and_streams(tmp_path: Path, seed: int) -> None:
    tok = load_tokenizer(gpt2_style_bpe(tmp_path), xLSTMConfig.from_preset("small"))
    assert tok.byte_level
    eot, pad = tok.backend.token_to_id("<|endoftext|>"), tok.backend.token_to_id("<|padding|>")
    # bos/eos from special_tokens_map.json (one as a serialized AddedToken); pad by its usual name
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (eot, eot, pad)
    rng = random.Random(seed)
    for text in [*FIXED_TEXTS, *(random_text(rng, 40) for _ in range(10))]:
        ids = tok.encode(text)
        assert len(ids) < len(text.encode())  # merges were learned and used
        assert tok.decode(ids) == text
        pieces = assert_streams_whole(tok, ids, text)
        if "🦜" in text:  # unseen emoji: four byte tokens, the first three give no text
            assert pieces.count("") >= 3


def test_sentencepiece_style_bpe_loads_and_streams(tmp_path: Path, seed: int) -> None:
    config = xLSTMConfig.from_preset("small", pad_token_id=3)
    tok = load_tokenizer(sentencepiece_style_bpe(tmp_path), config)
    assert not tok.byte_level  # the windowed path
    # no tokenizer_config.json: <s>, </s> by their usual names, pad from the model config
    assert tok.bos_token_id == tok.backend.token_to_id("<s>")
    assert tok.eos_token_id == tok.backend.token_to_id("</s>")
    assert tok.pad_token_id == 3
    rng = random.Random(seed)
    for text in ["the fox 🙂 says 世界 hello", "ça va? 👩‍👩‍👧 naïve", random_text(rng, 30), random_text(rng, 30)]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert any(tok.backend.id_to_token(i).startswith("<0x") for i in ids)  # byte fallback in use
        pieces = assert_streams_whole(tok, ids, text)
        assert "" in pieces[:-1]  # some token completed no character


def test_tokenizer_config_names_specials(tmp_path: Path) -> None:
    directory = gpt2_style_bpe(tmp_path)
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|padding|>", "pad_token": None}))
    tok = load_tokenizer(directory)
    # tokenizer_config.json wins over special_tokens_map.json; a null falls through to the next source
    assert tok.eos_token_id == tok.backend.token_to_id("<|padding|>")
    assert tok.bos_token_id == tok.backend.token_to_id("<|endoftext|>")


# ---- errors ----------------------------------------------------------------------------------------
def test_bad_token_ids() -> None:
    tok = byte_tokenizer()
    for bad in (259, 260, -1, 10**9):
        with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
            tok.decode([65, bad])
        with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
            StreamDecoder(tok).push(bad)
    with pytest.raises(ValueError, match="not an integer"):
        tok.decode([1.5])


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt" / "tokenizer.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="cannot read .*tokenizer.json"):
        load_tokenizer(corrupt.parent)
    corrupt.write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(corrupt)
    with pytest.raises(TokenizerError, match="pad_token_id 50000 is out of range"):
        load_tokenizer(sentencepiece_style_bpe(tmp_path), xLSTMConfig.from_preset("small", pad_token_id=50000))
    directory = gpt2_style_bpe(tmp_path)
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(TokenizerError, match="eos_token '</s>'"):
        load_tokenizer(directory)
    (directory / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match="vocab is only 260"):
        load_tokenizer(directory, xLSTMConfig.from_preset("tiny"))
