"""The export's parity bound on random transformers checkpoints: how far the graphs are from float64, how
far the eager float32 model is, and the bound (16x the latter). Prints one line per seed.

    .venv/bin/python bench/parity_bound.py --seeds 8 --format onnx

Random gate biases (N(0, 3), forget gates +2) put the model far from its init, where its own float32
error is largest; the old absolute bound (1e-4) refused some of these correct exports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_edge.export import export_package  # noqa: E402
from xlstm_edge.export.verify import ParityError  # noqa: E402

from tests.export.test_parity_bound import hf_checkpoint  # noqa: E402
from xlstm_edge.checkpoint import load_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--format", default="onnx", choices=["onnx", "executorch"])
    ap.add_argument("--shape", default="333,128,2,3", help="vocab,hidden,heads,blocks")
    args = ap.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    print("| seed | graphs vs float64, abs | rel to max logit | eager float32's own | ratio | bound | passed |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            model = load_checkpoint(hf_checkpoint(Path(tmp), shape, seed))
            t0 = time.perf_counter()
            try:
                p = export_package(model, Path(tmp) / "pkg", args.format, parity_steps=64).manifest.parity
            except ParityError as e:
                print(f"| {seed} | refused: {e} |")
                continue
            print(f"| {seed} | {p['max_abs_dlogits']:.2e} | {p['max_rel_dlogits']:.2e} | "
                  f"{p['eager_float32_rel_err']:.2e} | {p['max_rel_dlogits'] / p['eager_float32_rel_err']:.1f}x | "
                  f"{p['bound_rel']:.2e} | {p['passed']} ({time.perf_counter() - t0:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
