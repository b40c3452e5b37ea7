"""xlstm_edge.export: a model -> a package (ONNX Runtime or ExecuTorch graphs + manifest + tokenizer).

    from xlstm_edge.export import export_package
    export_package(model, "pkg/", "onnx")          # or "executorch"

``metadata`` (the manifest, shared with the runtime) imports nothing heavy; the exporters load on use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"export_package": "package", "ExportError": "package", "ExportResult": "package",
         "ParityError": "verify", "FORMATS": "package"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
