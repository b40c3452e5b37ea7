"""int8 graphs for ONNX Runtime: export the quantized step / prefill modules, run them, inspect them.

The graphs are exported from the eager quantized model itself (``quantize_model``), with the custom
ops translated by ``onnx_ops``: the ONNX graph computes the same integers as the eager reference.
Graph I/O follows the package contract (``export/metadata.py``): named inputs ``input_ids``
(+ ``valid_length``), ``past.*``; outputs ``logits``, ``present.*``; dynamic batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnxscript.optimizer
import torch
from torch import Tensor, nn
from xlstm_edge.export.step_module import PrefillModule, StepModule, example_inputs, input_names, output_names

from .handler import QuantizationError
from .onnx_ops import translation_table

OPSET = 20
FOLD_LIMIT = 256  # elements: fold scalars and small constants, never a weight
# ops that carry int8 / uint8 values; a state tensor must never feed one directly
QUANT_OPS = ("MatMulInteger", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "MatMulNBits")


def _module(model: nn.Module, method: str, tokens_per_call: int) -> nn.Module:
    return StepModule(model) if method == "step" else PrefillModule(model, tokens_per_call)


def export_graph(model: nn.Module, method: str, tokens_per_call: int, path: Path) -> Path:
    """Export the (quantized) model's ``method`` graph ("step" or "prefill") to ``path`` (.onnx).

    The exporter's optimizer runs with constant folding limited to ``FOLD_LIMIT`` elements: at its
    defaults it turns an int8-weight Linear's ``Cast(W) * scales`` (and small int8 tables) back into
    float32 initializers, undoing the 4x smaller file. ONNX Runtime folds those weight expressions
    itself when it loads the graph (in memory, where int8-weight is float32 by design).
    """
    prefill = method == "prefill"
    module = _module(model, method, tokens_per_call)
    args = example_inputs(model, 2, tokens_per_call, prefill)
    batch = torch.export.Dim("batch", min=1, max=1024)
    n_fixed = 2 if prefill else 1
    dynamic_shapes = (*({0: batch} for _ in range(n_fixed)), tuple({0: batch} for _ in args[n_fixed:]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and axis-renaming chatter
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET,
            input_names=input_names(model, prefill), output_names=output_names(model),
            dynamic_shapes=dynamic_shapes, custom_translation_table=translation_table(),
            optimize=False, verbose=False,
        )
        onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    strip_debug_info(path)
    return path


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node metadata (stack traces, FX node text, name scopes) and doc strings.

    They hold no computation and, for a small model, outweigh its int8 weights (~0.5 KB per node).
    """
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))


class OrtGraph:
    """One .onnx graph in an ``InferenceSession``: ``run(inputs) -> outputs`` in the contract's order."""

    def __init__(self, path: Path, num_threads: int = 2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        feeds = {name: t.contiguous().numpy() for name, t in zip(self.input_names, inputs, strict=True)}
        return [torch.from_numpy(a) for a in self.session.run(self.output_names, feeds)]


def inspect_graph(path: Path) -> dict[str, Any]:
    """Check the graph's state I/O: float32, and no state tensor feeding an integer op directly.

    Returns counts of the graph's integer ops and int8 / uint8 initializers; raises
    ``QuantizationError`` naming the first state tensor that breaks the rule.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    float_type = onnx.TensorProto.FLOAT
    state = set()
    for value in [*g.input, *g.output]:
        if value.name.startswith(("past.", "present.")):
            state.add(value.name)
            if value.type.tensor_type.elem_type != float_type:
                dtype = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
                raise QuantizationError(f"{path.name}: state tensor {value.name} is {dtype}, not float32")
    op_counts: dict[str, int] = {}
    for node in g.node:
        if node.op_type in QUANT_OPS:
            op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
            bad = state.intersection(node.input)
            if bad:
                raise QuantizationError(f"{path.name}: state tensor {sorted(bad)[0]} feeds {node.op_type} directly")
    int_types = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    int_inits = [i for i in g.initializer if i.data_type in int_types]
    return {
        "state_io": f"{len(state)} tensors, all float32",
        "integer_ops": op_counts,
        "int8_initializers": len(int_inits),
    }


def onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
