"""One weights file for all of a package's ONNX graphs.

The step and prefill graphs hold the same weights (the exporter names them differently after
constant folding, but the bytes are equal). ``share_weights`` moves every initializer of at least
``MIN_EXTERNAL_BYTES`` into one external-data file, storing each distinct tensor (by dtype, shape and
content) once, so a package holds its weights once instead of once per graph. Tensors are read one
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


def share_weights(paths: list[Path], data_name: str = DATA_NAME,
                  locations: dict[bytes, dict[str, Any]] | None = None) -> dict[str, int]:
    """Rewrite the ONNX files ``paths`` (all in one directory) to keep their large initializers in
    ``data_name`` beside them, each distinct tensor once; delete the exporter's own data files and the
    graphs' debug metadata.

    Initializers stored as typed fields (float_data...) rather than raw bytes stay inline.
    ``locations``, if given, is filled with sha256 of a tensor's bytes -> where it now lies:
    {"offset", "length"} in the data file, or {"initializer", "graph"} for one kept inline.
    Returns {"tensors": written, "shared": references resolved to an existing tensor, "bytes": file size}.
    """
    import onnx
    from onnx.onnx_pb import TensorProto

    base = paths[0].parent
    if any(p.parent != base for p in paths):
        raise ValueError("graphs sharing a weights file must be in one directory")
    data_path = base / data_name
    offsets: dict[tuple, tuple[int, int]] = {}
    old_files: set[Path] = set()
    written = shared = 0
    with open(data_path, "wb") as data:
        for path in paths:
            model = onnx.load(str(path), load_external_data=False)
            for tensor in model.graph.initializer:
                if tensor.data_location == TensorProto.EXTERNAL:
                    old_files.add(base / {e.key: e.value for e in tensor.external_data}["location"])
                elif not tensor.HasField("raw_data") or len(tensor.raw_data) < MIN_EXTERNAL_BYTES:
                    if locations is not None and tensor.HasField("raw_data"):
                        digest = hashlib.sha256(tensor.raw_data).digest()
                        locations.setdefault(digest, {"initializer": tensor.name, "graph": path.name})
                    continue
                raw = _tensor_bytes(tensor, base)
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
                if key in offsets:
                    shared += 1
                else:
                    pad = -data.tell() % ALIGN
                    data.write(b"\0" * pad)
                    offsets[key] = (data.tell(), len(raw))
                    data.write(raw)
                    written += 1
                offset, length = offsets[key]
                if locations is not None:
                    locations[key[2]] = {"offset": offset, "length": length}
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
                tensor.data_location = TensorProto.EXTERNAL
            strip_debug_metadata(model)
            tmp = path.with_name(f".{path.name}.tmp")
            onnx.save(model, str(tmp))
            os.replace(tmp, path)
        size = data.tell()
    for f in old_files - {data_path}:
        f.unlink(missing_ok=True)
    return {"tensors": written, "shared": shared, "bytes": size}
