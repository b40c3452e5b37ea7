"""Where a decode step's time goes: the whole step against its weight products alone, and the floor.

    .venv/bin/python bench/step_anatomy.py PKG [PKG ...] [--threads 2] [--calls 40] [--rounds 3]

For each package (ONNX Runtime or ExecuTorch, float32 or quantized), in --rounds interleaved rounds,
each after a bandwidth reading (``cpu_decode.read_bandwidth_gbs``), one package loaded at a time:

- step: ``Session.step`` on one token (batch 1, state carried), as the runtime decodes;
- products alone: one graph that holds only the step's weight products (every Linear; the same
  kernels: ONNX Runtime's nodes copied from step.onnx with their weights; ExecuTorch the package
  model's Linears quantized by the same plan, random weights of the same shapes, lowered the same way)
  on independent inputs, so nothing else runs between them;
- floor: weight bytes a step reads (``quant_decode.bytes_per_token``) / bandwidth; state: the
  recurrent state read once and written once (fp32), / bandwidth.

The products-alone share of the floor is the package's ceiling on these kernels: what a step would
reach if every other op (gates, norms, the state update, the runtime's own per-call work) were free.
Medians over rounds of per-call medians. Prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_decode import read_bandwidth_gbs  # noqa: E402
from quant_decode import bandwidth_summary, bytes_per_token  # noqa: E402

PRODUCT_OPS = ("MatMulNBits", "MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def median_call_ms(call: Callable[[], object], calls: int, warmup: int = 5) -> float:
    """Median wall time of ``call`` in ms, torch on one thread (as ``Session.host_ops``: torch's OpenMP
    workers, woken by the output tensors' copies, would spin on the cores the backend's pool needs)."""
    from xlstm_edge.runtime.host_threads import torch_threads

    with torch_threads(1):
        for _ in range(warmup):
            call()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


# ---- the products alone --------------------------------------------------------------------------
def onnx_products(package: Path, graph_file: str, out: Path) -> tuple[Path, int]:
    """step.onnx's weight products (MatMulNBits, or a product whose second input is a 2-D initializer),
    each on its own (1, K) input, saved as one graph. Returns its path and the product count."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(package / graph_file))  # external weights load from the package
    inits = {t.name: t for t in model.graph.initializer}
    nodes, inputs, outputs, used = [], [], [], {}
    for node in model.graph.node:
        if node.op_type not in PRODUCT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits[node.input[1]]
        if node.op_type == "MatMulNBits":
            k = attrs["K"]
        elif len(w.dims) != 2 or min(w.dims) == 1:  # not a weight (a constant mean vector of a norm)
            continue
        else:
            k = w.dims[1] if node.op_type == "Gemm" and attrs.get("transB", 0) else w.dims[0]
        idx = len(nodes)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"product_{idx}"
        copy.input[0] = f"x_{idx}"
        del copy.output[:]
        copy.output.append(f"y_{idx}")
        nodes.append(copy)
        inputs.append(helper.make_tensor_value_info(f"x_{idx}", TensorProto.FLOAT, [1, k]))
        outputs.append(helper.make_tensor_value_info(f"y_{idx}", TensorProto.FLOAT, None))
        used.update({name: inits[name] for name in node.input[1:] if name in inits})
    graph = helper.make_graph(nodes, "products", inputs, outputs, list(used.values()))
    path = out / "products.onnx"
    onnx.save(helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version), str(path),
              save_as_external_data=True, location="products.bin")
    return path, len(nodes)


def executorch_products(manifest, out: Path) -> tuple[Path, int]:
    """Every Linear of the package's model (quantized by its plan when the package is), on independent
    inputs, lowered to XNNPACK like the package's step."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch import nn
    from xlstm_edge.export.to_executorch import backend_config
    from xlstm_edge.quant.handler import quantize_model
    from xlstm_edge.quant.torchao_bridge import to_torchao

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(0)
    model = xLSTMForCausalLM(xLSTMConfig.from_dict(manifest.model)).eval()
    q = manifest.quantization
    if q is not None:
        model = quantize_model(model, q["scheme"], q["embedding"], backend=manifest.backend)
        model = to_torchao(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    widths = sorted({m.in_features for m in linears})

    class Products(nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = nn.ModuleList(linears)

        def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            by_width = dict(zip(widths, xs, strict=True))
            return tuple(lin(by_width[lin.in_features]) for lin in self.linears)

    args = tuple(torch.randn(1, w) for w in widths)
    with torch.no_grad():
        program = torch.export.export(Products(), args, strict=False)
        edge = to_edge_transform_and_lower({"forward": program}, partitioner=[XnnpackPartitioner()])
        pte = edge.to_executorch(backend_config(do_quant_fusion_and_const_prop=True))
    path = out / "products.pte"
    path.write_bytes(pte.buffer)
    return path, len(linears)


def build_products(package: Path, work: Path) -> tuple[Path, int]:
    """The products-alone graph of ``package``'s step, written under ``work``; its path and product count."""
    from xlstm_edge.export.metadata import read_manifest

    manifest = read_manifest(package)
    if manifest.backend == "onnxruntime":
        return onnx_products(package, manifest.graph("step").file, work)
    return executorch_products(manifest, work)


def load_products(path: Path, threads: int) -> Callable[[], object]:
    """A no-argument call running the products-alone graph at ``path`` (.onnx or .pte) once."""
    if path.suffix == ".onnx":
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
        return lambda: sess.run(None, feeds)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    meta = method.metadata
    ins = [torch.randn(*meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    return lambda: method.execute(ins)


# ---- the step -------------------------------------------------------------------------------------
def step_runner(package: Path, threads: int):
    from xlstm_edge.runtime import load

    sess = load(package, num_threads=threads)
    sess.prefill([1, 2, 3, 4])
    token = torch.tensor([[5]])

    def call() -> None:
        with sess.host_ops():
            sess.step(token)

    return sess, call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=40, help="timed calls of each graph per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.rounds < 1 or args.calls < 1:
        ap.error("--rounds and --calls must be >= 1")

    from xlstm_edge.export.metadata import read_manifest

    from xlstm_edge import state_bytes as xlstm_state_bytes
    from xlstm_edge import xLSTMConfig

    per_token = [bytes_per_token(p) for p in args.packages]
    state_bytes = [xlstm_state_bytes(xLSTMConfig.from_dict(read_manifest(p).model)) for p in args.packages]
    bws: list[float] = []
    step_ms: list[list[float]] = [[] for _ in args.packages]
    prod_ms: list[list[float]] = [[] for _ in args.packages]
    n_products = [0] * len(args.packages)
    backends = [read_manifest(p).backend for p in args.packages]
    with tempfile.TemporaryDirectory() as tmp:
        graphs = []
        for j, pkg in enumerate(args.packages):  # build the products-alone graphs once
            print(f"building the products-alone graph of {pkg}", file=sys.stderr, flush=True)
            work = Path(tmp) / str(j)
            work.mkdir()
            path, n_products[j] = build_products(pkg, work)
            graphs.append(path)
            gc.collect()
        for i in range(args.rounds):
            bws.append(read_bandwidth_gbs(args.threads))
            for j, pkg in enumerate(args.packages):
                print(f"round {i + 1}/{args.rounds}: {pkg.name}", file=sys.stderr, flush=True)
                sess, call = step_runner(pkg, args.threads)  # one package's pools alive at a time
                step_ms[j].append(median_call_ms(call, args.calls))
                del sess, call
                gc.collect()
                prod_call = load_products(graphs[j], args.threads)
                prod_ms[j].append(median_call_ms(prod_call, args.calls))
                del prod_call
                gc.collect()
    bw = statistics.median(bws)
    print(bandwidth_summary(bws, f"{args.threads} threads"))
    print("| package | backend | scheme | floor ms | step ms (% of floor) | products alone ms (% of floor) "
          "| rest ms | state read+write ms |")
    print("|---|---|---|---|---|---|---|---|")
    for j, pkg in enumerate(args.packages):
        nbytes, label = per_token[j]
        floor = nbytes / (bw * 1e9) * 1e3
        step, prod = statistics.median(step_ms[j]), statistics.median(prod_ms[j])
        state = 2 * state_bytes[j] / (bw * 1e9) * 1e3
        print(f"| {pkg.name} | {backends[j]} | {label} | {floor:.2f} | {step:.2f} ({100 * floor / step:.0f}%) "
              f"| {prod:.2f} ({100 * floor / prod:.0f}%, {n_products[j]} products) | {step - prod:.2f} "
              f"| {state:.2f} |", flush=True)


if __name__ == "__main__":
    main()
