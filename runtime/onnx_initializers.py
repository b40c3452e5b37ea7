"""Read an ONNX graph's initializer records without the ``onnx`` package (the runtime needs only
onnxruntime and numpy): a protobuf wire-format reader for the few fields we use.

    graph = read_graph(Path("pkg/step.onnx"))
    graph.num_nodes                      # top-level nodes
    for init in graph.initializers:      # name, dtype, dims, and where an external one lies
        init.location, init.offset, init.length

Field numbers are those of ``onnx.proto`` (ModelProto.graph = 7, GraphProto.node = 1 / initializer = 5,
TensorProto.dims = 1 / data_type = 2 / name = 8 / raw_data = 9 / external_data = 13 /
data_location = 14, StringStringEntryProto.key = 1 / value = 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TensorProto.DataType -> numpy dtype (the types an exported package's initializers use)
ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8), 4: np.dtype(np.uint16),
    5: np.dtype(np.int16), 6: np.dtype(np.int32), 7: np.dtype(np.int64), 9: np.dtype(np.bool_),
    10: np.dtype(np.float16), 11: np.dtype(np.float64), 12: np.dtype(np.uint32), 13: np.dtype(np.uint64),
}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


@dataclass(frozen=True)
class Initializer:
    """One TensorProto initializer: ``location`` is None for one stored inside the graph file."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str | None = None
    offset: int = 0
    length: int | None = None

    @property
    def dtype(self) -> np.dtype | None:
        return ONNX_DTYPES.get(self.data_type)

    @property
    def nbytes(self) -> int | None:
        """Bytes the tensor takes (None for a dtype not in ``ONNX_DTYPES``)."""
        if self.dtype is None:
            return None
        n = self.dtype.itemsize
        for d in self.dims:
            n *= d
        return n


@dataclass(frozen=True)
class GraphRecord:
    num_nodes: int
    initializers: tuple[Initializer, ...]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint too long")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one message: an int (varint / fixed) or a memoryview."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64")
            yield field, wire, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ProtoError("truncated length-delimited field")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32")
            yield field, wire, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise ProtoError(f"wire type {wire}")


def _tensor(buf: memoryview) -> Initializer:
    name, data_type, dims, location = "", 0, [], 0
    ext: dict[str, str] = {}
    for field, wire, value in _fields(buf):
        if field == 1:
            if wire == 2:  # packed dims
                pos = 0
                while pos < len(value):
                    d, pos = _varint(value, pos)  # type: ignore[arg-type]
                    dims.append(d)
            else:
                dims.append(value)
        elif field == 2 and wire == 0:
            data_type = value  # type: ignore[assignment]
        elif field == 8 and wire == 2:
            name = bytes(value).decode()  # type: ignore[arg-type]
        elif field == 13 and wire == 2:
            entry = {f: bytes(v).decode() for f, w, v in _fields(value) if w == 2}  # type: ignore[arg-type]
            ext[entry.get(1, "")] = entry.get(2, "")
        elif field == 14 and wire == 0:
            location = value  # type: ignore[assignment]
    if location != _EXTERNAL:
        return Initializer(name, data_type, tuple(dims))
    length = ext.get("length")
    return Initializer(name, data_type, tuple(dims), ext.get("location"), int(ext.get("offset", "0") or 0),
                       None if length is None else int(length))


def parse_graph(data: bytes) -> GraphRecord:
    """The top-level node count and initializers of a serialized ModelProto. Raises ``ProtoError``."""
    graph = None
    for field, wire, value in _fields(memoryview(data)):
        if field == 7 and wire == 2:
            graph = value
    if graph is None:
        raise ProtoError("no graph")
    nodes, inits = 0, []
    for field, wire, value in _fields(graph):  # type: ignore[arg-type]
        if field == 1 and wire == 2:
            nodes += 1
        elif field == 5 and wire == 2:
            inits.append(_tensor(value))  # type: ignore[arg-type]
    return GraphRecord(nodes, tuple(inits))


def read_graph(path: Path) -> GraphRecord:
    """``parse_graph`` of the file at ``path``."""
    return parse_graph(Path(path).read_bytes())


__all__ = ["Initializer", "GraphRecord", "ONNX_DTYPES", "ProtoError", "parse_graph", "read_graph"]
