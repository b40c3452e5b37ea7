"""Precision of the chunkwise mLSTM Triton kernel over many random draws (CUDA): a table, not a test.

The GPU tests check one fresh draw per run against the bounds (bf16 1e-2, fp32 1e-5); this script
shows the distribution behind them: for each dtype and chunk size, the median and the worst relative
error (norm-wise, against a float64 PyTorch reference on the same rounded inputs and the same
rounded incoming gradients) of the output, the final state and every gradient, over --seeds draws
at xLSTM 7B head dims (DQK 256, DV 512), S 333 by default (a partial last chunk), with an initial
state. dm0 is measured against the spread of its terms (tests/kernels/metrics.py), the plain figure
beside it. With --out the table is appended to DIR/kernel_precision.md.

Usage (CUDA machine, `xlstm_edge` importable):
    python bench/kernel_precision.py [--seeds 8] [--chunks 32,64] [--seq 333] [--heads 2] [--out DIR]
Chunk sizes above the CUDA limit (MAX_CUDA_CHUNK) are run through the autograd function directly,
to see whether they still miscompute.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from tests.kernels.metrics import (
    chunkwise_errors,  # the draw the GPU tests make (repository root on the path)
)

NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0", "dm0 (plain)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--chunks", default="32,64")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--seq", type=int, default=333, help="S (tokens per sequence)")
    ap.add_argument("--heads", type=int, default=2, help="B * NH (B = 1)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lines = [
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; S {args.seq}, {args.heads} heads, "
        f"DQK 256, DV 512; {args.seeds} draws each, median / worst rel err (bounds: bf16 1e-2, fp32 1e-5)",
        "",
        "| dtype | chunk | " + " | ".join(NAMES) + " |",
        "|---|---|" + "---|" * len(NAMES),
    ]
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for chunk in (int(c) for c in args.chunks.split(",")):
            try:
                shape = (1, args.heads, args.seq, 256, 512)  # B, NH, S, DQK, DV
                draws = []
                for seed in range(args.seeds):
                    torch.manual_seed(seed)
                    draws.append(chunkwise_errors(shape, dtype, chunk, "cuda", any_chunk=True))
            except Exception as err:  # noqa: BLE001 - a configuration that fails is a row of the table
                lines.append(f"| {dtype_name} | {chunk} | failed: {type(err).__name__}: {str(err)[:200]} |")
                print(lines[-1], flush=True)
                continue
            cells = []
            for name in NAMES:
                vals = [d[name] for d in draws]
                cells.append(f"{statistics.median(vals):.1e} / {max(vals):.1e}")
            lines.append(f"| {dtype_name} | {chunk} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "kernel_precision.md", "a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
