"""ONNX Runtime's MatMulNBits alone, one token (M = 1): how much of the read bandwidth its weight stream gets.

    .venv/bin/python bench/nbits_gemv.py [--n 4096] [--k 4096] [--layers 8] [--threads 2] [--calls 20]

Builds an in-memory graph of ``--layers`` chained MatMulNBits nodes (random packed weights, accuracy level 4,
as our quantized packages use: int8 in blocks of 128, int4 in blocks of 32), times ``--calls`` runs after a
warm-up, and prints the weight bytes streamed per second beside the machine's read bandwidth
(``cpu_decode.read_bandwidth_gbs``, a float32 sum over 1 GiB). This is the ceiling of a decode step whose time
is the weight products: at the 7B shape our int8 decode reached 62% of the bandwidth floor (bench/RESULTS.md).
Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_decode import read_bandwidth_gbs  # noqa: E402

SCHEMES = {"int8": (8, 128), "int4": (4, 32)}  # bits, block size (quant.onnx_backend's lowering)


def chain(n: int, k: int, bits: int, block: int, layers: int):
    """A ModelProto: x (1, k) through ``layers`` MatMulNBits (k == n so that they chain)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nb = k // block
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        packed = rng.integers(0, 256, (n, nb, block * bits // 8), dtype=np.uint8)
        scales = (rng.random(n * nb, dtype=np.float32) * 0.01).astype(np.float32)
        inits += [helper.make_tensor(f"B{i}", TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True),
                  helper.make_tensor(f"S{i}", TensorProto.FLOAT, scales.shape, scales.tobytes(), raw=True)]
        nodes.append(helper.make_node("MatMulNBits", [x, f"B{i}", f"S{i}"], [f"y{i}"], domain="com.microsoft",
                                      K=k, N=n, bits=bits, block_size=block, accuracy_level=4))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # onnxruntime 1.31 reads up to 13; onnx 1.23 writes 14 by default
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    if args.n != args.k:
        ap.error("--n must equal --k (the nodes chain)")
    import onnxruntime as ort

    bw = read_bandwidth_gbs(args.threads)
    print(f"read bandwidth {bw:.1f} GB/s ({args.threads} threads); {args.layers} x ({args.n} x {args.k}), M = 1")
    print("| scheme | ms a call | weight GB/s | % of read bandwidth |")
    print("|---|---|---|---|")
    for name, (bits, block) in SCHEMES.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(chain(args.n, args.k, bits, block, args.layers).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((1, args.k), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(args.calls):
            sess.run(None, {"x": x})
        dt = (time.perf_counter() - t) / args.calls
        gbs = args.layers * args.n * args.k * bits / 8 / dt / 1e9
        print(f"| {name} (block {block}) | {dt * 1e3:.2f} | {gbs:.1f} | {100 * gbs / bw:.0f}% |")


if __name__ == "__main__":
    main()
