"""Peak RSS of streaming a package: load, prefill a prompt, generate; run it under ``/usr/bin/time -v``
(the kernel's peak, "Maximum resident set size").

    /usr/bin/time -v .venv/bin/python bench/runtime_rss.py PKG [--tokens 64] [--threads 2] [--own-weights]
        [--sessions auto|one|two]

``--own-weights`` turns ``SharedWeights`` off (each ONNX Runtime session loads weights.bin itself, as
before it): the comparison for the shared copy. ``--sessions`` picks ONNX Runtime's one ``genai.onnx``
session or the step + prefill pair (auto: the runtime's choice, one for quantized packages). Prints the
package's bytes, whether torch was imported, and the process's own peak against issue 13's bound for
streaming (package + state + 1 GiB). Not a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-bytes", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--own-weights", action="store_true", help="each session loads its own weights")
    ap.add_argument("--prepack", choices=["auto", "on", "off"], default="auto",
                    help="ONNX Runtime's weight prepacking (auto: the backend's choice)")
    ap.add_argument("--sessions", choices=["auto", "one", "two"], default="auto",
                    help="ONNX Runtime: one genai.onnx session or step + prefill (auto: the runtime's choice)")
    args = ap.parse_args()

    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.graphs import SharedWeights

    if args.prepack != "auto":
        import xlstm_edge.runtime.ort_backend as ob

        ob.PREPACK_OVERRIDE = args.prepack == "on"
    if args.sessions != "auto":
        import xlstm_edge.runtime.ort_genai_backend as og

        og.ONE_SESSION_OVERRIDE = args.sessions == "one"
    if args.own_weights:
        SharedWeights.add_to = lambda self, options, record: 0  # type: ignore[method-assign]
    t0 = time.perf_counter()
    sess = load(args.package, num_threads=args.threads)
    t_load = time.perf_counter() - t0
    prompt = ("the state of a recurrent model holds its whole context " * 20)[:args.prompt_bytes]
    t0 = time.perf_counter()
    sess.generate(prompt, max_new_tokens=args.tokens, stop_tokens=[])
    t_gen = time.perf_counter() - t0
    pkg_bytes = sum(p.stat().st_size for p in args.package.iterdir() if p.is_file())
    state = sess.backend.layout.bytes_per_row
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bound = pkg_bytes + state + 2**30
    shared = getattr(sess.backend, "weights", None) is not None and sess.backend.weights.num_values > 0
    print(f"{sess.backend.describe()}\npackage {pkg_bytes / 2**20:.0f} MiB, state {state / 2**20:.0f} MiB a row, "
          f"load {t_load:.1f} s, generate {t_gen:.1f} s, {sess.last_stats.summary()}; torch imported: "
          f"{'torch' in sys.modules}; shared weights: {shared}; peak RSS {peak / 2**20:.0f} MiB, "
          f"bound (package + state + 1 GiB) {bound / 2**20:.0f} MiB: {peak / bound:.0%}")


if __name__ == "__main__":
    main()
