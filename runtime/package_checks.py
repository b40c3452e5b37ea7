"""Checks shared by the package backends: manifest vs model config, manifest vs the graphs' own I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import PackageError
from .state import StateLayout

# (name, shape, dtype) as a graph reports it; shape entries are ints, or str / None for dynamic dims
GraphIO = Sequence[tuple[str, Sequence[Any], str]]


def manifest_config_and_layout(manifest: Any, source: str) -> tuple[Any, StateLayout]:
    """The ``xLSTMConfig`` and ``StateLayout`` of a package; the manifest's state list must agree with them."""
    from xlstm_edge.config import xLSTMConfig

    try:
        config = xLSTMConfig.from_dict(manifest.model)
    except (TypeError, ValueError) as e:
        raise PackageError(f"package {source}: its manifest's model config is invalid: {e}") from None
    layout = StateLayout.from_config(config, model_name=source)
    want = [(t.input_name, t.shape) for t in layout.tensors]
    got = [(e.input, e.static_shape) for e in manifest.state.tensors]
    if want != got:
        diff = next((f"{w} vs {g}" for w, g in zip(want, got, strict=False) if w != g),
                    f"{len(got)} tensors listed, the config implies {len(want)}")
        raise PackageError(f"package {source}: the manifest's state tensors do not match its model config ({diff})")
    for key, graph in manifest.graphs.items():
        shapes = {t.name: list(t.shape) for t in [*graph.inputs, *graph.outputs]}
        for t in layout.tensors:
            for name in (t.input_name, t.output_name):
                if name in shapes and [int(d) for d in shapes[name][1:]] != list(t.shape):
                    raise PackageError(f"package {source}: graph {key!r} lists {name} with shape {shapes[name]}, "
                                       f"the state is (batch, *{t.shape})")
        logits = shapes.get("logits")
        if logits is not None and (len(logits) != 2 or logits[-1] != config.vocab_size):
            raise PackageError(f"package {source}: graph {key!r} lists logits {logits}, the vocab is {config.vocab_size}")
    return config, layout


def _dims_agree(listed: Sequence[Any], actual: Sequence[Any]) -> bool:
    """A dim the manifest fixes (an int) must be that int in the graph or dynamic there."""
    if len(listed) != len(actual):
        return False
    return all(not isinstance(d, int) or not isinstance(a, int) or d == a for d, a in zip(listed, actual, strict=True))


def check_graph_io(
    path: Path, entry: Any, inputs: GraphIO, outputs: GraphIO, type_names: dict[str, str], ordered: bool
) -> None:
    """Raise ``PackageError`` when the graph's inputs / outputs differ from the manifest's entry.

    ``type_names`` maps manifest dtypes ("float32") to the graph's type strings; ``ordered``: the
    graph's I/O is positional (ExecuTorch) so the order must match too.
    """
    for kind, listed, actual in (("inputs", entry.inputs, inputs), ("outputs", entry.outputs, outputs)):
        want = [t.name for t in listed]
        got = [name for name, _, _ in actual]
        if ordered and len(want) != len(got):
            raise PackageError(f"{path} does not match its manifest: {len(got)} {kind}, the manifest lists {len(want)}")
        if not ordered and sorted(want) != sorted(got):
            missing = sorted(set(want) - set(got))[:3]
            extra = sorted(set(got) - set(want))[:3]
            raise PackageError(f"{path} does not match its manifest: {kind} missing {missing}, unexpected {extra}")
        by_name = {name: (shape, dtype) for name, shape, dtype in actual}
        for pos, t in enumerate(listed):
            shape, dtype = actual[pos][1:] if ordered else by_name[t.name]
            type_name = type_names.get(t.dtype, t.dtype)
            if dtype != type_name or not _dims_agree(t.shape, list(shape)):
                raise PackageError(f"{path} does not match its manifest: {kind[:-1]} {t.name} is {dtype} "
                                   f"{list(shape)} in the graph, {type_name} {t.shape} in the manifest")
