"""One weights file for all of a package's ONNX graphs.

The step and prefill graphs hold the same weights (the exporter names them differently after
constant folding, but the bytes are equal). ``WeightsWriter`` moves every initializer of at least
``MIN_EXTERNAL_BYTES`` into one external-data file, graph by graph as they are exported, storing each
distinct tensor (by dtype, shape and content) once, so a package holds its weights once instead of
once per graph. Tensors are read one
at a time (from the proto or from the exporter's own external file), so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

DATA_NAME = "weights.bin"
MIN_EXTERNAL_BYTES = 1024
ALIGN = 64  # offsets aligned for mmap-friendly reads


def _tensor_bytes(tensor, base: Path) -> bytes:
    """The raw bytes of an initializer, inline or external."""
    from onnx.onnx_pb import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return tensor.raw_data
    info = {e.key: e.value for e in tensor.external_data}
    with open(base / info["location"], "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        length = info.get("length")
        return fh.read(int(length)) if length is not None else fh.read()


def strip_debug_metadata(model) -> None:
    """Drop the exporter's per-node debug records (stack traces, FX node text, doc strings) and the
    intermediate value_info: about 1 MB on a 1 M-param model, nothing the runtime reads."""
    del model.graph.value_info[:]
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


class WeightsWriter:
    """``DATA_NAME`` being written in one directory: ``add(path)`` moves the large initializers of the ONNX
    file ``path`` into it (each distinct tensor, by dtype, shape and content, once), rewrites the file to
    point there, and deletes the file's own data files (the exporter's ``NAME.onnx.data``, a lowering's
    ``NAME.onnx.nbits``) at once. A package's graphs are added one by one as they are exported, so the
    disk holds the weights once plus one graph's files: at 7B int8, every graph's files until the end
    (three graphs, each with the exporter's copy and the packed copy, and the shared file) were 45 GB and
    filled this machine's disk.

    Initializers stored as typed fields (float_data...) rather than raw bytes stay inline.
    ``locations``, if given, is filled with sha256 of a tensor's bytes -> where it now lies:
    {"offset", "length"} in the data file, or {"initializer", "graph"} for one kept inline.
    Use as a context manager (or call ``close``); ``stats``: {"tensors": written, "shared": references
    resolved to an existing tensor, "bytes": file size}.
    """

    def __init__(self, base: Path, data_name: str = DATA_NAME, locations: dict[bytes, dict[str, Any]] | None = None):
        self.base, self.data_name, self.locations = Path(base), data_name, locations
        self._offsets: dict[tuple, tuple[int, int]] = {}
        self._data = open(self.base / data_name, "wb")
        self.stats = {"tensors": 0, "shared": 0, "bytes": 0}

    def __enter__(self) -> WeightsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, path: Path) -> None:
        """Move ``path``'s large initializers into the shared file (flushed: a session may open ``path``
        now) and delete its own data files."""
        import onnx
        from onnx.onnx_pb import TensorProto

        if Path(path).parent != self.base:
            raise ValueError("graphs sharing a weights file must be in one directory")
        data, locations = self._data, self.locations
        model = onnx.load(str(path), load_external_data=False)
        old_files: set[Path] = set()
        for tensor in model.graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                old_files.add(self.base / {e.key: e.value for e in tensor.external_data}["location"])
            elif not tensor.HasField("raw_data") or len(tensor.raw_data) < MIN_EXTERNAL_BYTES:
                if locations is not None and tensor.HasField("raw_data"):
                    digest = hashlib.sha256(tensor.raw_data).digest()
                    locations.setdefault(digest, {"initializer": tensor.name, "graph": Path(path).name})
                continue
            raw = _tensor_bytes(tensor, self.base)
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
            if key in self._offsets:
                self.stats["shared"] += 1
            else:
                data.write(b"\0" * (-data.tell() % ALIGN))
                self._offsets[key] = (data.tell(), len(raw))
                data.write(raw)
                self.stats["tensors"] += 1
            offset, length = self._offsets[key]
            if locations is not None:
                locations[key[2]] = {"offset": offset, "length": length}
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            for k, v in (("location", self.data_name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            tensor.data_location = TensorProto.EXTERNAL
        strip_debug_metadata(model)
        data.flush()
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
        for f in old_files - {self.base / self.data_name}:
            f.unlink(missing_ok=True)
        self.stats["bytes"] = data.tell()

    def close(self) -> dict[str, int]:
        if not self._data.closed:
            self.stats["bytes"] = self._data.tell()
            self._data.close()
        return self.stats


def share_weights(paths: list[Path], data_name: str = DATA_NAME,
                  locations: dict[bytes, dict[str, Any]] | None = None) -> dict[str, int]:
    """``WeightsWriter.add`` of every ONNX file of ``paths`` (all in one directory) into a new ``data_name``
    beside them; returns its ``stats``."""
    if not paths:
        raise ValueError("no graphs to share weights between")
    with WeightsWriter(Path(paths[0]).parent, data_name, locations) as writer:
        for path in paths:
            writer.add(path)
    return writer.stats
