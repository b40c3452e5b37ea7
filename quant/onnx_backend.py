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
from torch import nn
from xlstm_edge.export.step_module import PrefillModule, StepModule, example_inputs, input_names, output_names
from xlstm_edge.export.to_onnx import EXTERNAL_DATA_BYTES, weight_bytes
from xlstm_edge.runtime.graphs import OrtGraph  # noqa: F401  (the one ONNX graph runner)

from .handler import QuantizationError
from .onnx_ops import PLACEHOLDER_DOMAIN, translation_table

OPSET = 20
FOLD_LIMIT = 256  # elements: fold scalars and small constants, never a weight
# ops that carry int8 / uint8 values; a state tensor must never feed one directly
QUANT_OPS = ("MatMulInteger", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "MatMulNBits")


def _module(model: nn.Module, method: str, tokens_per_call: int) -> nn.Module:
    """The graph module, norms spelled for ONNX Runtime's fusions (as ``export.to_onnx``)."""
    return (StepModule(model, fused_norms=True) if method == "step"
            else PrefillModule(model, tokens_per_call, fused_norms=True))


def export_graph(model: nn.Module, method: str, tokens_per_call: int, path: Path) -> Path:
    """Export the (quantized) model's ``method`` graph ("step" or "prefill") to ``path`` (.onnx).

    The exporter's optimizer runs with constant folding limited to ``FOLD_LIMIT`` elements: at its
    defaults it turns an int8-weight Linear's ``Cast(W) * scales`` (and small int8 tables) back into
    float32 initializers, undoing the 4x smaller file. ONNX Runtime folds those weight expressions
    itself when it loads the graph (in memory, where int8-weight is float32 by design).
    Above ``EXTERNAL_DATA_BYTES`` of weights (parameters and buffers: an int8 weight is a buffer; the
    float32 export's limit, under protobuf's 2 GiB) the tensors go to ``<file>.data`` beside the graph
    (the package then merges them into its shared weights file).
    """
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
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
    program.save(str(path), external_data=external)
    import onnx

    model = onnx.load(str(path))  # with its external tensors, if any
    strip_debug_info(model)
    lower_linear_blocks(model)
    data = path.with_name(path.name + ".data")
    if external:
        data.unlink(missing_ok=True)  # the exporter's file: rewritten whole, never appended to
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)
    return path


def strip_debug_info(model) -> None:
    """Drop the exporter's per-node metadata (stack traces, FX node text, name scopes) and doc strings.

    They hold no computation and, for a small model, outweigh its int8 weights (~0.5 KB per node).
    """
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]


def pack_matmulnbits(q, scales, block_size: int, bits: int):
    """q (N, K) int8 numpy (values within ``bits``), scales (N,) or (N, nb) -> (B (N, nb, block_size * bits / 8)
    uint8, scales (N * nb,) float32): MatMulNBits' layout with its default zero point 2^(bits-1).

    Each value is stored unsigned (q + 2^(bits-1)); K is padded to nb * block_size with the zero
    point; 4-bit pairs share a byte, the even index in the low nibble.
    """
    import numpy as np

    N, K = q.shape
    nb = -(-K // block_size)
    zp = 1 << (bits - 1)
    lo, hi = -zp + (bits == 8), zp - 1  # int8 [-127, 127]; int4 [-8, 7]
    if int(q.min(initial=0)) < lo or int(q.max(initial=0)) > hi:
        raise QuantizationError(f"weight values outside the {bits}-bit range [{lo}, {hi}]")
    u = np.full((N, nb * block_size), zp, dtype=np.uint8)
    u[:, :K] = (q.astype(np.int16) + zp).astype(np.uint8)
    u = u.reshape(N, nb, block_size)
    if bits == 4:
        u = u[..., 0::2] | (u[..., 1::2] << 4)
    s = np.asarray(scales, dtype=np.float32)
    s = np.repeat(s[:, None], nb, axis=1) if s.ndim == 1 else s
    if s.shape != (N, nb):
        raise QuantizationError(f"scales of shape {s.shape} for a ({N}, {K}) weight in blocks of {block_size}")
    return np.ascontiguousarray(u), np.ascontiguousarray(s.reshape(-1))


def lower_linear_blocks(model) -> int:
    """Replace every ``xlstm_quant.LinearBlock`` placeholder by ``com.microsoft.MatMulNBits`` (accuracy level
    4), its weight and scales initializers packed (``pack_matmulnbits``). Returns the count; raises
    ``QuantizationError`` if a placeholder's weight or scales is not an initializer."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, count = [], 0
    for node in g.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            nodes.append(node)
            continue
        if node.op_type != "LinearBlock":
            raise QuantizationError(f"unknown placeholder op {node.domain}.{node.op_type}")
        x, w_name, s_name = node.input
        if w_name not in inits or s_name not in inits:
            raise QuantizationError(f"{node.name}: weight {w_name} / scales {s_name} are not initializers")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block = int(attrs["bits"]), int(attrs["block_size"])
        q = numpy_helper.to_array(inits[w_name])
        packed, scales = pack_matmulnbits(q, numpy_helper.to_array(inits[s_name]), block, bits)
        b_name, sc_name = f"{w_name}.nbits{bits}b{block}", f"{s_name}.nbits{bits}b{block}"
        if b_name not in inits:
            inits[b_name] = numpy_helper.from_array(packed, b_name)
            inits[sc_name] = numpy_helper.from_array(scales, sc_name)
            g.initializer.extend([inits[b_name], inits[sc_name]])
        nodes.append(helper.make_node(
            "MatMulNBits", [x, b_name, sc_name], list(node.output), name=node.name, domain="com.microsoft",
            K=q.shape[1], N=q.shape[0], bits=bits, block_size=block, accuracy_level=4,
        ))
        count += 1
    if not count:
        return 0
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    imports = [o for o in model.opset_import if o.domain not in (PLACEHOLDER_DOMAIN, "com.microsoft")]
    del model.opset_import[:]
    model.opset_import.extend([*imports, onnx.helper.make_opsetid("com.microsoft", 1)])
    for f in list(model.functions):
        if f.domain == PLACEHOLDER_DOMAIN:
            model.functions.remove(f)
    return count


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
        if node.domain == PLACEHOLDER_DOMAIN:
            raise QuantizationError(f"{path.name}: placeholder {node.op_type} left in the graph (not lowered)")
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
