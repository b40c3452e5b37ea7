"""ONNX: one ``.onnx`` file per method (``step.onnx``, ``prefill.onnx``), dynamo exporter, opset 20.

Batch is dynamic (symbol "batch"); every other dim is static. The graphs' weights then move to one
shared ``weights.bin`` (``onnx_weights.share_weights``): the package holds them once, and no graph
file meets protobuf's 2 GB limit (the exporter itself writes ``<name>.onnx.data`` above it).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from xlstm_edge.model import xLSTMForCausalLM

from .metadata import BATCH, GraphEntry
from .step_module import PrefillModule, StepModule, example_inputs, graph_entry, input_names, output_names

EXTERNAL_DATA_BYTES = 1_800_000_000  # a little under protobuf's 2 GiB, leaving room for the graph itself
OPSET = 20


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameters and buffers (an int8 weight is a buffer)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _dynamic_batch(args: tuple[Tensor, ...], n_leading: int, max_batch: int):
    """dynamic_shapes for forward(leading..., *past): dim 0 of everything is the batch."""
    batch = torch.export.Dim(BATCH, min=1, max=max_batch)
    return (*({0: batch} for _ in args[:n_leading]), tuple({0: batch} for _ in args[n_leading:]))


def export_onnx_method(
    model: xLSTMForCausalLM, method: str, tokens_per_call: int, path: Path, max_batch: int = 1024
) -> GraphEntry:
    """Export ``method`` ("step" | "prefill") to ``path``; return its manifest entry (file = path.name)."""
    prefill = method == "prefill"
    # norms spelled so that ONNX Runtime fuses each into one node (ExportLM)
    module = PrefillModule(model, tokens_per_call, fused_norms=True) if prefill else StepModule(model, fused_norms=True)
    args = example_inputs(model, 2, tokens_per_call, prefill)  # batch 2: a size-1 dim would be specialized
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecated pytree calls
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names(model, prefill),
            output_names=output_names(model),
            dynamic_shapes=_dynamic_batch(args, 2 if prefill else 1, max_batch),
            external_data=external,
            verbose=False,
        )
        program.save(str(path), external_data=external)
    return graph_entry(model, method, tokens_per_call, path.name)


def share_graph_weights(package_dir: Path, graphs: dict[str, GraphEntry]) -> dict[str, int]:
    """Move the graphs' weights into one ``weights.bin`` and name it in their entries."""
    from .onnx_weights import DATA_NAME, share_weights

    stats = share_weights([package_dir / g.file for g in graphs.values()], DATA_NAME)
    for g in graphs.values():
        g.data_file = DATA_NAME
    return stats


def check_onnx(path: Path) -> None:
    """``onnx.checker.check_model`` on the file (path form, so external data is followed)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class OnnxRunner:
    """Runs a package's ONNX graphs on ONNX Runtime CPU: ``run(method, inputs) -> outputs`` (torch)."""

    def __init__(self, package_dir: Path, graphs: dict[str, GraphEntry], threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.graphs = graphs
        self.sessions = {
            name: ort.InferenceSession(str(package_dir / g.file), opts, providers=["CPUExecutionProvider"])
            for name, g in graphs.items()
        }

    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]:
        names = [t.name for t in self.graphs[method].inputs]
        feeds = {n: t.contiguous().numpy() for n, t in zip(names, inputs, strict=True)}
        return [torch.from_numpy(o) for o in self.sessions[method].run(None, feeds)]
