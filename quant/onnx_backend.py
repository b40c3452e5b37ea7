"""int8 graphs for ONNX Runtime: export the quantized step / prefill modules, run them, inspect them.

The graphs are exported from the eager quantized model itself (``quantize_model``), with the custom
ops translated by ``onnx_ops``: the ONNX graph computes the same integers as the eager reference.
Graph I/O follows the package contract (``export/metadata.py``): named inputs ``input_ids``
(+ ``valid_length``), ``past.*``; outputs ``logits``, ``present.*``; dynamic batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from xlstm_edge.export.to_onnx import Lowering
from xlstm_edge.runtime.graphs import OrtGraph  # noqa: F401  (the one ONNX graph runner)

from .handler import QuantizationError
from .onnx_ops import PLACEHOLDER_DOMAIN, translation_table

FOLD_LIMIT = 256  # elements: fold scalars and small constants, never a weight
# ops that carry int8 / uint8 values; a state tensor must never feed one directly
QUANT_OPS = ("MatMulInteger", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "MatMulNBits")


def export_graph(model: nn.Module, method: str, tokens_per_call: int, path: Path) -> Path:
    """Export the quantized model's ``method`` graph ("step" or "prefill") to ``path`` (.onnx) through the
    one ONNX exporter (``export.to_onnx.export_onnx_method``) with this scheme's ``LOWERING``: the custom
    ops translated (``onnx_ops``), constant folding limited to ``FOLD_LIMIT`` elements (at its defaults
    the optimizer turns an int8-weight Linear's ``Cast(W) * scales`` and small int8 tables back into
    float32 initializers, undoing the 4x smaller file; ONNX Runtime folds those weight expressions
    itself when it loads the graph), then ``lower_linear_blocks_file`` on the saved graph.
    The weights stay in data files beside the graph (the package merges them into its shared file)."""
    from xlstm_edge.export.to_onnx import export_onnx_method

    export_onnx_method(model, method, tokens_per_call, path, lowering=LOWERING)
    return path


def pack_matmulnbits(q, scales, block_size: int, bits: int):
    """q (N, K) int8 numpy (values within ``bits``), scales (N,) or (N, nb) -> (B (N, nb, block_size * bits / 8)
    uint8, scales (N * nb,) float32): MatMulNBits' layout with its default zero point 2^(bits-1).

    Each value is stored unsigned (q + 2^(bits-1)); K is padded to nb * block_size with the zero
    point; 4-bit pairs share a byte, the even index in the low nibble. A 4-bit weight already packed
    so (``primitives.pack_int4``: (N, K / 2) uint8, as a 4-bit model holds it) is only padded.
    """
    import numpy as np

    zp = 1 << (bits - 1)
    if q.dtype == np.uint8:
        if bits != 4 or block_size % 2:
            raise QuantizationError(f"a packed (uint8) weight holds 4-bit values in even blocks, not {bits}-bit "
                                    f"in blocks of {block_size}")
        N, half = q.shape
        nb = -(-2 * half // block_size)
        u = np.full((N, nb * block_size // 2), zp | zp << 4, dtype=np.uint8)
        u[:, :half] = q
        return _pack_scales(u.reshape(N, nb, block_size // 2), scales, N, 2 * half, nb, block_size)
    N, K = q.shape
    nb = -(-K // block_size)
    lo, hi = -zp + (bits == 8), zp - 1  # int8 [-127, 127]; int4 [-8, 7]
    if int(q.min(initial=0)) < lo or int(q.max(initial=0)) > hi:
        raise QuantizationError(f"weight values outside the {bits}-bit range [{lo}, {hi}]")
    u = np.full((N, nb * block_size), zp, dtype=np.uint8)
    u[:, :K] = (q.astype(np.int16) + zp).astype(np.uint8)
    u = u.reshape(N, nb, block_size)
    if bits == 4:
        u = u[..., 0::2] | (u[..., 1::2] << 4)
    return _pack_scales(u, scales, N, K, nb, block_size)


def _pack_scales(u, scales, N: int, K: int, nb: int, block_size: int):
    """(packed weight, scales (N,) or (N, nb) -> (N * nb,) float32), both contiguous."""
    import numpy as np

    s = np.asarray(scales, dtype=np.float32)
    s = np.repeat(s[:, None], nb, axis=1) if s.ndim == 1 else s
    if s.shape != (N, nb):
        raise QuantizationError(f"scales of shape {s.shape} for a ({N}, {K}) weight in blocks of {block_size}")
    return np.ascontiguousarray(u), np.ascontiguousarray(s.reshape(-1))


def _initializer_array(tensor, base: Path):
    """An initializer as a numpy array, read from its external data file if it has one (only it)."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnx.onnx_pb import TensorProto
    from xlstm_edge.export.onnx_weights import _tensor_bytes

    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(_tensor_bytes(tensor, base), dtype=dtype).reshape(tuple(tensor.dims))


def lower_linear_blocks_file(path: Path) -> int:
    """Replace every ``xlstm_quant.LinearBlock`` placeholder of the graph file at ``path`` by
    ``com.microsoft.MatMulNBits`` (accuracy level 4), its weight and scales packed (``pack_matmulnbits``).

    Reads one weight at a time from the graph's external data and writes the packed tensors to
    ``<name>.nbits`` beside it (the package's ``WeightsWriter`` merges every data file into one), so
    memory stays at one weight, whatever the model's size. Returns the count; raises
    ``QuantizationError`` if a placeholder's weight or scales is not an initializer.
    """
    import numpy as np
    import onnx
    from onnx import helper
    from onnx.onnx_pb import TensorProto

    base = path.parent
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nbits_name = path.name + ".nbits"
    nodes, count = [], 0
    with open(base / nbits_name, "wb") as data:

        def external(name: str, array) -> onnx.TensorProto:
            import numpy as np

            pad = -data.tell() % 64
            data.write(b"\0" * pad)
            offset = data.tell()
            raw = np.ascontiguousarray(array).tobytes()
            data.write(raw)
            tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                 dims=list(array.shape), data_location=TensorProto.EXTERNAL)
            for k, v in (("location", nbits_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            return tensor

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
            q = _initializer_array(inits[w_name], base)
            b_name, sc_name = f"{w_name}.nbits{bits}b{block}", f"{s_name}.nbits{bits}b{block}"
            if b_name not in inits:
                packed, scales = pack_matmulnbits(q, _initializer_array(inits[s_name], base), block, bits)
                inits[b_name] = external(b_name, packed)
                inits[sc_name] = external(sc_name, scales)
                g.initializer.extend([inits[b_name], inits[sc_name]])
            nodes.append(helper.make_node(
                "MatMulNBits", [x, b_name, sc_name], list(node.output), name=node.name, domain="com.microsoft",
                K=q.shape[1] * (2 if q.dtype == np.uint8 else 1), N=q.shape[0], bits=bits, block_size=block, accuracy_level=4,
            ))
            count += 1
            del q
    if not count:
        (base / nbits_name).unlink()
        return 0
    del g.node[:]
    g.node.extend(nodes)
    used = graph_reads(g) | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    imports = [o for o in model.opset_import if o.domain not in (PLACEHOLDER_DOMAIN, "com.microsoft")]
    del model.opset_import[:]
    model.opset_import.extend([*imports, onnx.helper.make_opsetid("com.microsoft", 1)])
    for f in list(model.functions):
        if f.domain == PLACEHOLDER_DOMAIN:
            model.functions.remove(f)
    onnx.save(model, str(path))  # the graph only: its tensors stay where their external_data says
    return count


def graph_reads(graph) -> set[str]:
    """Every name the nodes of ``graph`` read, including outer-scope names read inside their subgraphs
    (a Scan / Loop / If body reads the main graph's initializers by name: the sLSTM recurrent weights
    of ``genai.onnx``'s Scan), so that pruning unused initializers keeps those."""
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= graph_reads(sub)
    return names


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


LOWERING = Lowering(translation_table=translation_table(), fold_limit=FOLD_LIMIT,
                    after_save=lower_linear_blocks_file)


def onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
