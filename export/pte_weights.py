"""Where the weights lie in an ExecuTorch ``.pte``: its named-data segments (XNNPACK stores each delegated
constant there, once per distinct tensor, under the sha256 of its bytes) and its constant segment (the
tensors the portable kernels read, e.g. the embedding table of a gather).

``pte_locations`` reads the file's extended header and program flatbuffer only, then hashes the segments
through a memory map: nothing the size of the weights is held in memory. The result feeds
``package_weights.weights_index``; ``PackageWeights`` then reads a float package's weights from its
``model.pte`` (``xlstm-edge quantize`` needs no checkpoint).
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Any

# the extended header ("eh00": program size, segment base offset) lies within the file's first bytes
HEAD_BYTES = 64


class PteLayoutError(ValueError):
    """The file is not a .pte whose segments this module can read (no extended header, truncated)."""


def read_program(path: Path) -> tuple[Any, int]:
    """(the program flatbuffer as ``executorch.exir.schema.Program``, the segment base offset) of ``path``,
    reading the header and the flatbuffer only."""
    from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
    from executorch.exir._serialize._program import _get_extended_header

    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
        header = _get_extended_header(head)
        if header is None or not header.segment_base_offset:
            raise PteLayoutError(f"{path} has no extended header with segments (not a .pte of this exporter)")
        fh.seek(0)
        flatbuffer = fh.read(header.program_size)
    if len(flatbuffer) != header.program_size:
        raise PteLayoutError(f"{path} is truncated: its program needs {header.program_size} bytes")
    return _flatbuffer_to_program(flatbuffer), header.segment_base_offset


def pte_locations(path: Path, lengths: set[int] | None = None) -> dict[bytes, dict[str, Any]]:
    """sha256 of a stored tensor's bytes -> {"offset", "length"} (absolute, in ``path``): every named-data
    segment whole and, for each ``L`` in ``lengths`` (None: none), each constant-segment entry's first ``L``
    bytes where they fit (entries record their start only; the gap to the next one may hold padding)."""
    program, base = read_program(Path(path))
    segments = [(base + s.offset, s.size) for s in program.segments]
    size = Path(path).stat().st_size
    if any(off + n > size for off, n in segments):
        raise PteLayoutError(f"{path} is truncated: its segments end past its {size} bytes")
    found: dict[bytes, dict[str, Any]] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        view = memoryview(mem)
        try:
            for entry in program.named_data:
                off, n = segments[entry.segment_index]
                found.setdefault(hashlib.sha256(view[off : off + n]).digest(), {"offset": off, "length": n})
            constants = program.constant_segment
            if lengths and constants is not None and constants.offsets:
                seg_off, seg_size = segments[constants.segment_index]
                ends = [*constants.offsets[1:], seg_size]
                for start, end in zip(constants.offsets, ends, strict=True):
                    for n in sorted(length for length in lengths if 0 < length <= end - start):
                        off = seg_off + start
                        found.setdefault(hashlib.sha256(view[off : off + n]).digest(), {"offset": off, "length": n})
        finally:
            view.release()
    return found


def pte_weights_index(model, path: Path) -> dict[str, Any]:
    """The manifest's weights index (``package_weights.weights_index``) of ``model`` in the .pte ``path``:
    looked up in the named data first (exact segments), then, for the parameters not found there (the
    portable kernels' constants: an embedding table), in the constant segment at their lengths only."""
    from .package_weights import stored_lengths, weights_index

    name = Path(path).name
    index = weights_index(model, pte_locations(path), file=name)
    if not index["missing"]:
        return index
    missing = set(index["missing"])
    lengths = stored_lengths(p for n, p in model.named_parameters() if n in missing)
    return weights_index(model, pte_locations(path, lengths), file=name)
