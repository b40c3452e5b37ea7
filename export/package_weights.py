"""Where a float package's weights lie in its own files, so that ``xlstm-edge quantize`` reads them there
and needs no checkpoint (``PackageWeights``, a ``WeightSource``).

At export every float32 parameter is looked up by content (sha256 of its bytes) among the blobs the
package stores: ONNX packages' ``weights.bin`` tensors (``onnx_weights.WeightsWriter``' locations) and
ExecuTorch packages' ``model.pte`` named-data and constant segments (``pte_weights.pte_locations``).
The manifest's ``weights`` entry records the result (``weights_index``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .onnx_weights import DATA_NAME


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


def stored_lengths(params) -> set[int]:
    """The byte lengths in which ``weights_index`` looks for each of the float32 tensors ``params``: whole,
    in 4 slices of dim 0, or row by row (``_find``)."""
    lengths: set[int] = set()
    for p in params:
        rows = p.shape[0] if p.dim() else 1
        for parts in (1, 4, rows):
            if parts >= 1 and rows % parts == 0:
                lengths.add(p.numel() * p.element_size() // parts)
    return lengths


def weights_index(model, locations: dict[bytes, dict[str, Any]], file: str = DATA_NAME) -> dict[str, Any]:
    """Where each float32 parameter of ``model`` lies in the package, found by content
    (``WeightsWriter``' ``locations``): stored as it is or transposed (the exporter folds a Linear's
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
    return {"file": file, "dtype": "float32", "tensors": tensors, "missing": missing}


class PackageWeights:
    """A float package's own weights as a ``WeightSource`` (``xlstm_edge.weights``), read through its
    manifest's weights index from the memory-mapped file it names (ONNX: ``weights.bin``, or for a tensor
    kept inline, its graph; ExecuTorch: ``model.pte``). ``xlstm-edge quantize`` reads these: it needs no
    checkpoint."""

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
