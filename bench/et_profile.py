"""Profile one method of ExecuTorch .pte files: XNNPACK op times by kind (ETDump) and plain call times.

For each .pte: load it with ETDump on, run the method ``--calls`` times on the manifest's input
shapes (token 0, state drawn from N(0, 0.1^2)), and print

- DELEGATE_CALL per call (p50 / min) and the sum of all delegated op times *of the same call*
  (p50 / min); their difference is the per-call work outside the ops (xnn_reshape_runtime, setup,
  ETDump's own logging of one event per op). Summing per-op medians instead understates the call:
  on a noisy machine the stalls land on different ops in every call.
- a table by op kind (count, summed p50 ms, median of one op);
- with ``--plain N``: ``Method.execute`` wall times without ETDump, N rounds of 20 calls,
  the files interleaved round by round (A/B on a noisy machine).

ETDump rounds op times to 1 us steps, so the hundreds of sub-microsecond ops read as 0.

    .venv/bin/python bench/et_profile.py out/bench/small-executorch a.pte b.pte --plain 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def step_inputs(package: Path, graph: str) -> tuple[str, list[torch.Tensor]]:
    from xlstm_edge.export import metadata as md

    g = md.read_manifest(package).graph(graph)
    gen = torch.Generator().manual_seed(0)
    ins = []
    for spec in g.inputs:
        if spec.dtype == "int64":  # token ids 0; a prefill's valid length = its full chunk
            fill = spec.shape[-1] if spec.name == g.valid_length_input else 0
            ins.append(torch.full(spec.shape, fill, dtype=torch.int64))
        else:
            ins.append(torch.randn(*spec.shape, generator=gen) * 0.1)
    return g.method, ins


def etdump_profile(pte: Path, method: str, inputs: list[torch.Tensor], calls: int) -> dict:
    import pandas as pd
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    m = _load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
    for _ in range(calls):
        m.run_method(method, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/run.etdp"
        m.write_etdump_result_to_file(path)
        df = Inspector(etdump_path=path).to_dataframe()
    ops = df[df.is_delegated_op]
    per_call_ops = np.array(ops.raw.tolist()).sum(0)  # (calls,)
    call = np.array(df[df.event_name == "DELEGATE_CALL"].raw.tolist()).sum(0)  # all delegates, per call
    ops = ops.assign(kind=ops.event_name.str.replace(r"[ #_]*\d+$", "", regex=True))
    kinds = ops.groupby("kind")["p50 (ms)"].agg(["count", "sum", "median"]).sort_values("sum", ascending=False)
    delegates = int((df.event_name == "DELEGATE_CALL").sum())
    pd.set_option("display.width", 200)
    return {"call": call, "ops": per_call_ops, "kinds": kinds, "n_ops": len(ops), "delegates": delegates}


def plain_times(ptes: list[Path], method: str, inputs: list[torch.Tensor], rounds: int) -> list[list[float]]:
    from executorch.runtime import Runtime
    from xlstm_edge.runtime.host_threads import torch_threads

    methods = [Runtime.get().load_program(str(p)).load_method(method) for p in ptes]
    times: list[list[float]] = [[] for _ in methods]
    with torch_threads(1):  # as Session.host_ops: torch's spinning OpenMP workers would take XNNPACK's cores
        for _ in range(rounds):
            for j, m in enumerate(methods):
                for _ in range(3):
                    m.execute(inputs)
                for _ in range(20):
                    t = time.perf_counter()
                    m.execute(inputs)
                    times[j].append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="package dir whose manifest gives the input shapes")
    ap.add_argument("ptes", type=Path, nargs="*", help=".pte files (default: the package's model.pte)")
    ap.add_argument("--graph", default="step", help="manifest graph (step | prefill)")
    ap.add_argument("--calls", type=int, default=20, help="ETDump calls per file")
    ap.add_argument("--plain", type=int, default=0, help="rounds of 20 plain calls per file, interleaved")
    ap.add_argument("--threads", type=int, default=2, help="XNNPACK threadpool size")
    ap.add_argument("--no-kinds", action="store_true", help="skip the table by op kind")
    args = ap.parse_args()

    import executorch.kernels.quantized  # noqa: F401  (embedding_byte of int8 packages)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    ptes = args.ptes or [args.package / "model.pte"]
    method, inputs = step_inputs(args.package, args.graph)
    for pte in ptes:
        r = etdump_profile(pte, method, inputs, args.calls)
        gap = r["call"] - r["ops"]
        print(f"== {pte}  method {method}: {r['delegates']} delegate(s), {r['n_ops']} ops")
        print(f"DELEGATE_CALL p50 {np.median(r['call']):.3f} ms min {r['call'].min():.3f} | ops per call "
              f"p50 {np.median(r['ops']):.3f} min {r['ops'].min():.3f} | call - ops p50 {np.median(gap):.3f} "
              f"min {gap.min():.3f} ms")
        if not args.no_kinds:
            print(r["kinds"].to_string(float_format=lambda v: f"{v:.4f}"))
    if args.plain:
        for pte, t in zip(ptes, plain_times(ptes, method, inputs, args.plain), strict=True):
            print(f"plain {pte}: p50 {statistics.median(t):.3f} ms  p10 {np.percentile(t, 10):.3f}  "
                  f"min {min(t):.3f}  n {len(t)}")


if __name__ == "__main__":
    main()
