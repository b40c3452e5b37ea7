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


def _find(stored, locations: dict[bytes, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``stored`` (a contiguous tensor) as one tensor of the package, or as equal slices of dim 0 each
    stored on its own (the exporter folds ``bias[g * D:(g + 1) * D]`` and per-row ``narrow``s into
    initializers of their own): the locations of the parts in order, or None."""
    rows = stored.shape[0] if stored.dim() else 1
    for parts in dict.fromkeys((1, 4, rows)):
        if parts < 1 or rows % parts:
            continue
        pieces = stored.chunk(parts) if parts > 1 else [stored]
        found = [locations.get(hashlib.sha256(p.contiguous().numpy().tobytes()).digest()) for p in pieces]
        if all(f is not None for f in found):
            return found  # type: ignore[return-value]
    return None


def weights_index(model, locations: dict[bytes, dict[str, Any]]) -> dict[str, Any]:
    """Where each float32 parameter of ``model`` lies in the package, found by content
    (``share_weights``' ``locations``): stored as it is or transposed (the exporter folds a Linear's
    ``W^T`` into an initializer of its own; a conv weight (D, 1, K) becomes (K, D)), whole or as
    slices of dim 0 (``_find``). Returns {"file": DATA_NAME, "tensors": {name: {"shape", "transposed",
    "parts": [{"offset", "length"} | {"initializer", "graph"}]}}, "missing": [names]}.
    """
    import torch

    tensors: dict[str, Any] = {}
    missing: list[str] = []
    for name, p in model.named_parameters():
        t = p.detach()
        if t.dtype != torch.float32:
            missing.append(name)
            continue
        found = None
        layouts = [(False, t.contiguous())]
        if t.dim() >= 2:
            layouts.append((True, t.reshape(t.shape[0], -1).T.contiguous()))
        for transposed, stored in layouts:
            parts = _find(stored, locations)
            if parts is not None:
                found = {"shape": list(t.shape), "transposed": transposed, "parts": parts}
                break
        if found is None:
            missing.append(name)
        else:
            tensors[name] = found
    return {"file": DATA_NAME, "dtype": "float32", "tensors": tensors, "missing": missing}


class PackageWeights:
    """A float ONNX package's own weights as a ``WeightSource`` (``xlstm_edge.weights``), read through
    its manifest's weights index from the memory-mapped ``weights.bin`` (or, for a tensor kept inline,
    from its graph). ``xlstm-edge quantize`` reads these: it needs no checkpoint."""

    def __init__(self, package_dir: Path, manifest: Any):
        from xlstm_edge.config import xLSTMConfig

        index = manifest.weights or {}
        if index.get("missing"):
            raise ValueError(f"package {package_dir} does not hold {len(index['missing'])} weight(s) in readable "
                             f"form ({', '.join(index['missing'][:3])})")
        if not index.get("tensors"):
            raise ValueError(f"package {package_dir} has no weights index (exported before it was recorded)")
        self.root = Path(package_dir)
        self.config = xLSTMConfig.from_dict(manifest.model)
        self._tensors: dict[str, dict[str, Any]] = index["tensors"]
        self._data = self.root / index.get("file", DATA_NAME)
        self._inline: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        tied = self.config.tie_word_embeddings
        return [n for n in self._tensors if not (tied and n == "lm_head.weight")]

    def describe(self) -> str:
        return f"the weights of package {self.root}"

    def _inline_tensor(self, graph: str, name: str):
        import onnx
        from onnx import numpy_helper

        if graph not in self._inline:
            model = onnx.load(str(self.root / graph), load_external_data=False)
            self._inline[graph] = {t.name: t for t in model.graph.initializer if t.data_location != 1}
        return numpy_helper.to_array(self._inline[graph][name])

    def _part(self, loc: dict[str, Any]):
        import numpy as np

        if "offset" in loc:
            return np.memmap(self._data, dtype=np.float32, mode="r", offset=loc["offset"], shape=(loc["length"] // 4,))
        return self._inline_tensor(loc["graph"], loc["initializer"]).reshape(-1)

    def read(self, name: str, dtype, rows: tuple[int, int] | None = None):
        import numpy as np
        import torch

        entry = self._tensors.get(name)
        if entry is None:
            raise KeyError(f"package {self.root} has no weight {name}")
        shape = entry["shape"]
        parts = [self._part(loc) for loc in entry["parts"]]
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if entry["transposed"]:  # stored (prod(shape[1:]), shape[0])
            view = flat.reshape(-1, shape[0]).T.reshape(shape)
        else:
            view = flat.reshape(shape)
        if rows is not None:
            view = view[rows[0] : rows[1]]
        return torch.from_numpy(np.array(view, dtype=np.float32)).to(dtype)  # np.array: a fresh copy
