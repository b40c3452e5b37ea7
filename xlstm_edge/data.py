"""Training text: files or folders tokenized into one id stream, a held-out split, random windows.

The embedded default corpus needs no download: the Python standard library's own ``.py`` sources
(whatever interpreter runs this), read byte-level. The split is by file (a stable hash of the
relative path), so held-out text is text the model never saw.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".c", ".h", ".html", ".csv")


def default_corpus_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files(max_bytes: int = 24_000_000) -> list[Path]:
    """Standard-library sources, sorted, tests and vendored packages left out, at most ``max_bytes``."""
    root = default_corpus_root()
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def collect_files(sources: list[str | Path]) -> list[Path]:
    """Files named directly, and text files under folders (sorted). Errors name the missing path."""
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise ValueError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {path}")
            files.extend(found)
        else:
            raise FileNotFoundError(f"training data not found: {path}")
    return files


def is_held_out(path: Path, val_fraction: float) -> bool:
    digest = hashlib.sha1(path.name.encode() + str(path.parent.name).encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < val_fraction


@dataclass
class Corpus:
    """Token ids of the training and held-out text, each one long int32 tensor."""

    train: Tensor
    val: Tensor
    num_files: int

    @classmethod
    def from_files(cls, files: list[Path], tokenizer, val_fraction: float = 0.02) -> Corpus:
        if not files:
            raise ValueError("no training files")
        parts: dict[bool, list[int]] = {True: [], False: []}
        eos = tokenizer.eos_token_id
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            ids = tokenizer.encode(text)
            held = is_held_out(path, val_fraction)
            parts[held].extend(ids + ([eos] if eos is not None else []))
        if not parts[True]:  # tiny corpora: hold out the tail instead
            cut = int(len(parts[False]) * (1 - val_fraction))
            parts[True], parts[False] = parts[False][cut:], parts[False][:cut]
        return cls(torch.tensor(parts[False], dtype=torch.int32), torch.tensor(parts[True], dtype=torch.int32),
                   len(files))


class WindowSampler:
    """Random (B, T+1) windows of a token stream, reproducible from its generator state."""

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, seed: int):
        if len(ids) <= seq_len + 1:
            raise ValueError(f"corpus split has {len(ids)} tokens, fewer than one window of {seq_len + 1}")
        self.ids, self.batch_size, self.seq_len, self.seed = ids, batch_size, seq_len, seed
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[Tensor, Tensor]:
        """inputs (B, T) int64 and targets (B, T) int64 (inputs shifted by one)."""
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (self.batch_size,), generator=self.generator)
        rows = torch.stack([self.ids[s : s + self.seq_len + 1] for s in starts.tolist()]).long()
        return rows[:, :-1], rows[:, 1:]
