"""Peak RSS of streaming a package: load, prefill a prompt, generate; run it under ``/usr/bin/time -v``
(the kernel's peak, "Maximum resident set size").

    /usr/bin/time -v .venv/bin/python bench/runtime_rss.py PKG [--tokens 64] [--threads 2] [--own-weights]

``--own-weights`` turns ``SharedWeights`` off (each ONNX Runtime session loads weights.bin itself, as
before it): the comparison for the shared copy. Prints the package's bytes, whether torch was imported,
and the process's own peak. Not a test.
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
    args = ap.parse_args()

    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.graphs import SharedWeights

    if args.prepack != "auto":
        import xlstm_edge.runtime.ort_backend as ob

        ob.PREPACK_OVERRIDE = args.prepack == "on"
    if args.own_weights:
        SharedWeights.add_to = lambda self, options, record: 0  # type: ignore[method-assign]
    t0 = time.perf_counter()
    sess = load(args.package, num_threads=args.threads)
    t_load = time.perf_counter() - t0
    prompt = ("the state of a recurrent model holds its whole context " * 20)[:args.prompt_bytes]
    t0 = time.perf_counter()
    sess.generate(prompt, max_new_tokens=args.tokens, stop_tokens=[])
    pkg_bytes = sum(p.stat().st_size for p in args.package.iterdir() if p.is_file())
    print(f"package {pkg_bytes / 2**20:.0f} MiB, load {t_load:.1f} s, generate {time.perf_counter() - t0:.1f} s, "
          f"{sess.last_stats.summary()}; torch imported: {'torch' in sys.modules}; shared weights: "
          f"{getattr(sess.backend, 'weights', None) is not None and sess.backend.weights.num_values > 0}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
