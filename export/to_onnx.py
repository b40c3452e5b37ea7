"""ONNX: one ``.onnx`` file per method (``step.onnx``, ``prefill.onnx``), dynamo exporter, opset 20.

Batch is dynamic (symbol "batch"); every other dim is static. The exporter writes each graph's
weights to ``<name>.onnx.data``; they then move to one shared ``weights.bin`` as each graph is written
(``PackageGraphs``): the package holds them once. Float32 and quantized graphs come out
of this one exporter (a quantized model brings its ``Lowering``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xlstm_edge.model import xLSTMForCausalLM

from .metadata import BATCH, GraphEntry
from .step_module import PrefillModule, StepModule, example_inputs, graph_entry, input_names, output_names

OPSET = 20


def _dynamic_batch(args: tuple[Tensor, ...], n_leading: int, max_batch: int):
    """dynamic_shapes for forward(leading..., *past): dim 0 of everything is the batch."""
    batch = torch.export.Dim(BATCH, min=1, max=max_batch)
    return (*({0: batch} for _ in args[:n_leading]), tuple({0: batch} for _ in args[n_leading:]))


@dataclass(frozen=True)
class Lowering:
    """How a transform (quantization) takes part in the one ONNX export: custom-op translations, a
    constant-folding limit (so that a weight expression is not folded back into float32), and a pass
    over the saved graph file (e.g. replacing placeholder ops, reading weights one at a time)."""

    translation_table: dict | None = None
    fold_limit: int | None = None
    after_save: Callable[[Path], object] | None = None


def export_onnx_method(
    model: xLSTMForCausalLM, method: str, tokens_per_call: int, path: Path, max_batch: int = 1024,
    lowering: Lowering | None = None,
) -> GraphEntry:
    """Export ``method`` ("step" | "prefill") to ``path``; return its manifest entry (file = path.name).

    Weights always go to a data file beside the graph, tensor by tensor (``PackageGraphs`` then
    moves them into the package's one weights file): serializing them into the graph's own protobuf
    would hold the whole model in memory twice more (and meet protobuf's 2 GB limit). ``lowering``:
    a quantized model's custom ops and passes (``quant.onnx_backend.LOWERING``).
    """
    prefill = method == "prefill"
    # norms spelled so that ONNX Runtime fuses each into one node (ExportLM)
    module = PrefillModule(model, tokens_per_call, fused_norms=True) if prefill else StepModule(model, fused_norms=True)
    args = example_inputs(model, 2, tokens_per_call, prefill)  # batch 2: a size-1 dim would be specialized
    export_onnx_module(module, args, path, input_names(model, prefill), output_names(model),
                       _dynamic_batch(args, 2 if prefill else 1, max_batch), lowering)
    return graph_entry(model, method, tokens_per_call, path.name)



def release_matched_graphs() -> int:
    """Drop the graph each of onnxscript's pattern matchers keeps from its last match.

    A ``SimplePatternMatcher`` (onnxscript 0.7.2, ``rewriter._matcher``) holds the graph it last matched
    in ``_graph`` (its node, tracer and bindings in ``_current_node``, ``_tracer``, ``_match``) until its
    next match, and the default rewrite rules that own the matchers are module globals. The exported
    graph's initializers wrap the module's own tensors, so after an export the model's weights stayed
    alive through them: at 1.4 B params a freed int8 model's 1.4 GiB stayed resident. Returns how many
    matchers held one."""
    import gc

    from onnxscript.rewriter import _matcher

    held = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): the heap holds weakref proxies, and isinstance on a dead one raises
        if issubclass(type(obj), _matcher.SimplePatternMatcher) and getattr(obj, "_graph", None) is not None:
            obj._graph = obj._current_node = obj._tracer = None
            if getattr(obj, "_match", None) is not None:
                obj._match = type(obj._match)()  # an empty MatchResult: no bindings to the graph's values
            held += 1
    return held


# onnxscript's default rewrite rules less these: "SlicesSplit" (two Slices of one input -> a Split) is the
# one rule whose pattern has two output nodes, which onnxscript 0.7.2 matches by scanning every node of
# the graph for each candidate node (O(nodes^2)): at the 7B shape (32 blocks) that scan took most of
# the 19 min of exporting three graphs; with one block, under a second
SKIPPED_REWRITE_RULES = ("SlicesSplit",)


def optimize_graph(model: Any, fold_limit: int | None = None) -> None:
    """onnxscript's ``optimize`` (0.7.2's pass sequence: inline, then twice constant folding, the rewrite
    rules and unused-node removal, then the clean-up passes) on an ``onnx_ir`` model in place, without
    ``SKIPPED_REWRITE_RULES``; ``fold_limit`` (elements) bounds what constant folding may read and write
    (None: onnxscript's defaults, the exporter's own setting)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    limits = ({"input_size_limit": _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
               "output_size_limit": _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT}
              if fold_limit is None else {"input_size_limit": fold_limit, "output_size_limit": fold_limit})
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r.name not in SKIPPED_REWRITE_RULES]
    loop = ir.passes.PassManager(
        [_constant_folding.FoldConstantsPass(shape_inference=True, **limits), rewriter.RewritePass(rules),
         common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()],
        steps=2, early_stop=True,
    )
    ir.passes.Sequential(
        common.InlinePass(), loop, common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass(),
    )(model)


def export_onnx_module(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                       dynamic_shapes: Any, lowering: Any = None) -> None:
    """``torch.onnx.export`` (dynamo) of ``module`` at ``args`` to ``path``, weights in a data file beside it.

    The exporter's own optimization is replaced by ``optimize_graph`` (the same passes, less a rule
    quadratic in the graph's size). ``lowering`` (a quantized model's ``Lowering``): its custom-op
    translation table, the optimizer's fold limit, and a pass run on the saved file (``after_save``)."""
    fold_limit = lowering.fold_limit if lowering is not None else None
    extra: dict[str, Any] = {}
    if lowering is not None and lowering.translation_table is not None:
        extra["custom_translation_table"] = lowering.translation_table
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecated pytree calls
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, input_names=inputs, output_names=outputs,
            dynamic_shapes=dynamic_shapes, external_data=True, optimize=False, verbose=False, **extra,
        )
        optimize_graph(program.model, fold_limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path), external_data=True)
    del program
    release_matched_graphs()
    if lowering is not None and lowering.after_save is not None:
        lowering.after_save(path)

class PackageGraphs:
    """A package's ONNX graphs as they are exported: ``add(path, entry)`` moves the graph's weights into the
    package's one ``weights.bin`` at once (``onnx_weights.WeightsWriter``: the disk holds the weights once
    plus one graph's files) and, with an ``entry``, records it among the manifest's graphs (``extra``
    graphs such as ``genai.onnx`` go without). ``finish(model)``: the writer's figures, and with ``model``
    the manifest's weights index (``package_weights.weights_index``, key "index")."""

    def __init__(self, package_dir: Path):
        from .onnx_weights import WeightsWriter

        self.locations: dict[bytes, dict[str, Any]] = {}
        self.writer = WeightsWriter(package_dir, locations=self.locations)
        self.graphs: dict[str, GraphEntry] = {}

    def add(self, path: Path, key: str | None = None, entry: GraphEntry | None = None) -> GraphEntry | None:
        from .onnx_weights import DATA_NAME

        self.writer.add(path)
        if entry is not None:
            entry.data_file = DATA_NAME
            self.graphs[key or entry.method] = entry
        return entry

    def finish(self, model: nn.Module | None = None) -> dict[str, Any]:
        from .package_weights import weights_index

        stats: dict[str, Any] = dict(self.writer.close())
        if model is not None:
            stats["index"] = weights_index(model, self.locations)
        return stats


def check_onnx(path: Path) -> None:
    """``onnx.checker.check_model`` on the file (path form, so external data is followed)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class OnnxRunner:
    """A package's ONNX graphs (``runtime.graphs.OrtGraph``): ``run(method, inputs) -> outputs`` (torch).

    Sessions open on first use. ``one_at_a_time``: opening one closes the other, so that the weights
    are in memory once (each session holds its own copy): a caller that runs every prefill call and
    then every step opens each session once.
    """

    def __init__(self, package_dir: Path, graphs: dict[str, GraphEntry], threads: int | None = None,
                 one_at_a_time: bool = True):
        self.package_dir, self.graphs, self.threads = package_dir, graphs, threads
        self.one_at_a_time = one_at_a_time
        self.sessions: dict[str, Any] = {}

    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]:
        from xlstm_edge.runtime.graphs import OrtGraph

        if method not in self.sessions:
            if self.one_at_a_time:
                self.sessions.clear()
            self.sessions[method] = OrtGraph(self.package_dir / self.graphs[method].file, self.threads)
        return self.sessions[method].run(inputs)
