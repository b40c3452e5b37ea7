"""MatMulNBits (ONNX Runtime, accuracy level 4) against the eager int8 reference (quant.ops.linear_block), one
Linear at a time, across K and rows: is the kernel the same arithmetic at every shape?

    .venv/bin/python bench/nbits_parity.py
"""

import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from xlstm_edge.quant import ops
from xlstm_edge.quant.onnx_backend import pack_matmulnbits
from xlstm_edge.quant.primitives import quantize_per_channel_symmetric


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


torch.manual_seed(0)
for K, N in ((768, 512), (2048, 512), (4096, 512), (5504, 512), (10944, 512), (2048, 50304)):
    block = 128
    w = torch.randn(N, K) * 0.02
    q, s = quantize_per_channel_symmetric(w, axis=0)
    packed, scales = pack_matmulnbits(q.numpy(), s.numpy(), block, 8)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N, bits=8, block_size=block, accuracy_level=4)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                          [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for M in (1, 2, 64):
        x = torch.randn(M, K)
        got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        ref = ops.linear_block(x, q, s, None, block, 8)
        fp = x @ (q.float() * s[:, None]).T
        print(f"K {K} M {M}: graph vs eager int8 {rel(got, ref):.2e}, graph vs float {rel(got, fp):.2e}, eager vs float {rel(ref, fp):.2e}")
