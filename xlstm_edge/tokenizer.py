"""Tokenizers: one ``Tokenizer`` class over the Hugging Face ``tokenizers`` library, and a streaming decoder.

The byte-level default (``byte_tokenizer()``) is built in code, with no download: ids 0..255 are the raw
bytes in order, then the specials ``<bos>`` 256, ``<eos>`` 257, ``<pad>`` 258 (the byte presets of
``xlstm_edge.config`` pad the model's vocab to 260; id 259 is never produced and does not decode).
It is a real ``tokenizers.Tokenizer`` so it saves as an ordinary ``tokenizer.json``: a BPE model with no
merges over the 256-symbol byte alphabet of GPT-2's ByteLevel scheme, whose vocab is ordered by byte value,
so "id == byte" holds exactly for every input (the ByteLevel pre-tokenizer maps each byte of the UTF-8 text
to one alphabet symbol, and BPE without merges leaves the symbols alone).

    tok = load_tokenizer("ckpt/")            # tokenizer.json in ckpt/, else the byte-level default
    ids = tok.encode("héllo 🙂")              # list[int]
    stream = StreamDecoder(tok)
    text = "".join(stream.push(i) for i in ids) + stream.flush()
"""

from __future__ import annotations

import codecs
import json
import operator
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
SPECIAL_ROLES = ("bos", "eos", "pad")
# names by which common tokenizers call their specials; used only when no tokenizer_config.json or
# special_tokens_map.json says which added token plays which role
KNOWN_SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>"),
    "pad": ("<pad>", "<|padding|>", "<|pad|>", "[PAD]"),
}
BYTE_SPECIALS = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>"}  # ids 256, 257, 258 in this order


class TokenizerError(ValueError):
    """A tokenizer file is missing, corrupt or inconsistent with the model (one line, names the problem)."""


class TokenIdError(TokenizerError):
    """A token id outside the tokenizer's vocabulary (or not an integer)."""


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters (ByteLevel scheme).

    Printable Latin-1 bytes map to themselves; the 68 others map to U+0100 onwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of ``byte_to_unicode``."""
    return {c: b for b, c in byte_to_unicode().items()}


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids of its bos/eos/pad specials (each may be None).

    ``encode`` never adds specials and treats special-token text in the input as plain text unless
    ``allow_special=True``; callers prepend ``bos_token_id`` themselves.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ):
        self.backend = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        if not vocab:
            raise TokenizerError("tokenizer has an empty vocabulary")
        self.vocab_size: int = max(vocab.values()) + 1
        self._unused_ids = set(range(self.vocab_size)) - set(vocab.values())  # holes in the id range
        self._special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        for role, value in (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id)):
            if value is not None:
                self._check_id(value, what=f"{role}_token_id")
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        # exact byte streaming needs the id -> bytes map, which only the ByteLevel decoder makes explicit
        self.byte_level: bool = isinstance(backend.decoder, decoders.ByteLevel)

    # ---- encoding / decoding --------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text`` (no bos/eos added). Special-token text is encoded literally unless allowed."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        self.backend.encode_special_tokens = not allow_special
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD. Raises TokenIdError (a ValueError) for a bad id."""
        return self.backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int, skip_special_tokens: bool = True) -> bytes:
        """The exact bytes one token stands for (ByteLevel tokenizers only, e.g. the byte tokenizer, GPT-2).

        Mirrors the library's ByteLevel decoder: a token whose characters are all in the byte alphabet maps
        to those bytes; any other token (an added token such as ``"<eos>"`` with a space) to its UTF-8 text.
        """
        if not self.byte_level:
            raise TypeError("token_bytes needs a ByteLevel tokenizer; this one decodes through "
                            f"{type(self.backend.decoder).__name__}")
        token_id = self._check_id(token_id)
        if skip_special_tokens and token_id in self._special_ids:
            return b""
        token = self.backend.id_to_token(token_id)
        table = unicode_to_byte()
        if all(c in table for c in token):
            return bytes(table[c] for c in token)
        return token.encode("utf-8")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def _check_id(self, token_id: int, what: str = "token id") -> int:
        """``token_id`` as a plain int; TokenIdError naming it when it is not an id of this tokenizer."""
        try:
            value = operator.index(token_id)  # int, numpy and torch integer scalars; not floats
        except TypeError:
            raise TokenIdError(f"{what} {token_id!r} is not an integer") from None
        if not 0 <= value < self.vocab_size or value in self._unused_ids:
            raise TokenIdError(f"{what} {value} is out of range for this tokenizer (ids 0..{self.vocab_size - 1})")
        return value

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        try:
            values = list(map(operator.index, ids))
        except TypeError:
            values = [self._check_id(i) for i in ids]  # raises, naming the bad element
        if values and (min(values) < 0 or max(values) >= self.vocab_size or not self._unused_ids.isdisjoint(values)):
            for value in values:
                self._check_id(value)
        return values

    # ---- persistence ----------------------------------------------------------------------------
    def special_tokens(self) -> dict[str, str | None]:
        """{"bos_token": "<bos>", ...}: the text of each special, None where the role is unset."""
        out: dict[str, str | None] = {}
        for role in SPECIAL_ROLES:
            token_id = getattr(self, f"{role}_token_id")
            out[f"{role}_token"] = None if token_id is None else self.backend.id_to_token(token_id)
        return out

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` naming the specials; returns the paths.

        The pair loads back with ``load_tokenizer`` and with ``transformers.PreTrainedTokenizerFast``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok_path = directory / TOKENIZER_FILE
        cfg_path = directory / TOKENIZER_CONFIG_FILE
        self.backend.encode_special_tokens = False  # runtime flag, not part of the file; keep it neutral
        self.backend.save(str(tok_path))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens()}
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
        return [tok_path, cfg_path]

    def __repr__(self) -> str:
        kind = "byte-level" if self.byte_level else type(self.backend.model).__name__
        return (f"Tokenizer({kind}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_id}, pad={self.pad_token_id})")


# ---- construction -------------------------------------------------------------------------------
def byte_tokenizer() -> Tokenizer:
    """The byte-level default: ids 0..255 = bytes, ``<bos>`` 256, ``<eos>`` 257, ``<pad>`` 258 (259 ids)."""
    table = byte_to_unicode()
    backend = tokenizers.Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    # use_regex=False: no GPT-2 word splitting, every byte is its own symbol anyway
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(BYTE_SPECIALS[r], special=True, normalized=False) for r in SPECIAL_ROLES])
    ids = [backend.token_to_id(BYTE_SPECIALS[r]) for r in SPECIAL_ROLES]
    assert ids == [256, 257, 258], ids  # the layout the byte presets rely on
    return Tokenizer(backend, bos_token_id=256, eos_token_id=257, pad_token_id=258)


def load_tokenizer(path: str | Path, config: Any | None = None) -> Tokenizer:
    """Load a ``tokenizer.json`` (a file, or a directory holding one); a directory without one is byte-level.

    Special ids come from ``tokenizer_config.json`` or ``special_tokens_map.json`` beside a file named
    ``tokenizer.json``, else
    from the tokenizer's special added tokens by their usual names (``<eos>``, ``</s>``, ``<|endoftext|>``,
    ...), else from ``config`` (an ``xLSTMConfig``: its ``bos/eos/pad_token_id``). With ``config`` given,
    a tokenizer with more ids than the model's vocab is an error.
    """
    path = Path(path)
    if path.is_dir():
        tok_file = path / TOKENIZER_FILE
        if not tok_file.is_file():
            tok = byte_tokenizer()
            _check_fits_model(tok, config, f"{path} has no {TOKENIZER_FILE}, so the byte-level default")
            return tok
    elif path.is_file():
        tok_file = path
    else:
        raise TokenizerError(f"tokenizer not found: {path} does not exist")

    backend = _read_backend(tok_file)
    # the HF side files describe a tokenizer.json beside them, not some other *.json in that folder
    named = _special_names_from_files(tok_file.parent) if tok_file.name == TOKENIZER_FILE else {}
    ids: dict[str, int | None] = {}
    for role in SPECIAL_ROLES:
        name = named.get(role)
        if name is not None:
            token_id = backend.token_to_id(name)
            if token_id is None:
                raise TokenizerError(f"{tok_file.parent} names {role}_token {name!r}, which {tok_file.name} lacks")
            ids[role] = token_id
        else:
            ids[role] = _special_by_known_name(backend, role)
            if ids[role] is None and config is not None:
                ids[role] = getattr(config, f"{role}_token_id", None)
    try:
        tok = Tokenizer(backend, ids["bos"], ids["eos"], ids["pad"])
    except TokenIdError as e:  # a special id from the model config outside this tokenizer
        raise TokenizerError(f"{tok_file}: {e}") from e
    _check_fits_model(tok, config, str(tok_file))
    return tok


def _read_backend(tok_file: Path) -> tokenizers.Tokenizer:
    try:
        text = tok_file.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read {tok_file}: {e}") from e
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the library raises a plain Exception for every parse error
        raise TokenizerError(f"{tok_file} is not a valid tokenizer.json: {str(e).splitlines()[0]}") from e


def _special_names_from_files(directory: Path) -> dict[str, str]:
    """{"bos": "<s>", ...} from tokenizer_config.json, then special_tokens_map.json (first one wins)."""
    names: dict[str, str] = {}
    for file_name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        file = directory / file_name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read {file}: {e}") from e
        if not isinstance(data, dict):
            raise TokenizerError(f"{file} is not a JSON object")
        for role in SPECIAL_ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):  # a serialized AddedToken
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise TokenizerError(f"{file}: {role}_token should be a string, got {value!r}")
            if value is not None:
                names.setdefault(role, value)
    return names


def _special_by_known_name(backend: tokenizers.Tokenizer, role: str) -> int | None:
    specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    for name in KNOWN_SPECIAL_NAMES[role]:
        if name in specials:
            return specials[name]
    return None


def _check_fits_model(tok: Tokenizer, config: Any | None, what: str) -> None:
    model_vocab = getattr(config, "vocab_size", None)
    if model_vocab is not None and tok.vocab_size > model_vocab:
        raise TokenizerError(f"{what} has {tok.vocab_size} ids but the model's vocab is only {model_vocab}")


# ---- streaming ----------------------------------------------------------------------------------
class StreamDecoder:
    """Turns a stream of token ids into text pieces that never end inside a UTF-8 character.

    ``push(token_id)`` returns the text completed by that token (often "", e.g. for the first bytes of an
    emoji); ``flush()`` returns what is held back (incomplete bytes become U+FFFD) and resets.
    ByteLevel tokenizers stream exactly, byte by byte. Others (SentencePiece-style byte fallback, WordPiece)
    decode a small window with one token of left context and emit only when its text does not end in
    U+FFFD, so a character split over several byte tokens comes out whole.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # window path: _ids[:_read] were emitted last time and are left context, their text is _prefix
        self._ids: list[int] = []
        self._read = 0
        self._prefix = ""

    def push(self, token_id: int) -> str:
        """Text completed by ``token_id`` (possibly ""). Raises TokenIdError (a ValueError) for a bad id."""
        tok = self.tokenizer
        if tok.byte_level:
            return self._utf8.decode(tok.token_bytes(token_id, self.skip_special_tokens))
        self._ids.append(tok._check_id(token_id))
        text = tok.decode(self._ids, self.skip_special_tokens)
        if len(text) <= len(self._prefix) or text.endswith("\ufffd"):
            return ""  # nothing new yet, or a character still incomplete
        piece = text[len(self._prefix):]
        # the tokens just emitted become the left context of the next window
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix = tok.decode(self._ids, self.skip_special_tokens)
        return piece

    def flush(self) -> str:
        """The held-back rest (U+FFFD for bytes that never completed a character); the decoder resets."""
        if self.tokenizer.byte_level:
            return self._utf8.decode(b"", final=True)
        text = self.tokenizer.decode(self._ids, self.skip_special_tokens)
        piece = text[len(self._prefix):]
        self.reset()
        return piece

    def reset(self) -> None:
        """Forget everything pushed so far (start a new text)."""
        self._utf8.reset()
        self._ids, self._read, self._prefix = [], 0, ""


def decode_stream(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Every piece ``StreamDecoder`` yields for ``ids``, the flushed rest last (for tests and tools)."""
    stream = StreamDecoder(tokenizer)
    return [stream.push(i) for i in ids] + [stream.flush()]
