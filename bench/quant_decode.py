"""Decode speed of float32 and int8 packages through the runtime, against the memory-bandwidth floor.

    .venv/bin/python bench/quant_decode.py PKG [PKG ...] [--threads 2] [--decode-threads N] [--prompt 64]
        [--decode 64] [--rounds 3]

Packages are measured in --rounds interleaved rounds, one session loaded at a time, each round after
a bandwidth reading, so that a slow spell of the shared machine hits every package alike; the table
gives medians over rounds (progress on stderr). For each package (batch 1, --threads threads, decode
steps on --decode-threads, default the same): prefill of --prompt tokens, then --decode greedy steps
(``runtime.bench.run_bench``: medians), and the floor = bytes of weights read per decode step / read
bandwidth measured here (a float32 sum over 1 GiB). Bytes per step come from the manifest: int8
weights 1 byte each plus a float32 scale per output channel (int4: half a byte plus a scale per
group), everything else 4 bytes, the input embedding one row. Prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_decode import read_bandwidth_gbs  # noqa: E402


def bytes_per_token(package: Path) -> tuple[float, str]:
    """Weight bytes one decode step reads, and the scheme's label (the plan rebuilt on a meta model)."""
    from xlstm_edge.export.metadata import read_manifest
    from xlstm_edge.quant.handler import plan_quantization

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    manifest = read_manifest(package)
    with torch.device("meta"):
        model = xLSTMForCausalLM(xLSTMConfig.from_dict(manifest.model))
    params = {id(p): p for p in model.parameters()}.values()
    nbytes = 4.0 * sum(p.numel() for p in params)
    emb = model.backbone.embeddings.weight
    q = manifest.quantization
    emb_row = 4.0 * emb.shape[1]
    if q is not None:
        plan = plan_quantization(model, q["scheme"], q["embedding"], backend=manifest.backend)
        seen = set()
        for d in plan.quantized_layers:
            w = model.get_submodule(d.name).weight
            if id(w) in seen:
                continue
            seen.add(id(w))
            if d.dtype == "int4":  # half a byte each + one float32 scale per (row, group)
                groups = -(-w.shape[1] // q.get("weight_group_size", 32))
                nbytes -= 4.0 * w.numel() - (w.numel() / 2 + 4.0 * w.shape[0] * groups)
            else:  # int8 + one float32 scale per row
                nbytes -= 4.0 * w.numel() - (w.numel() + 4.0 * w.shape[0])
        if q["embedding"] == "int8":
            emb_row = emb.shape[1] + 4.0
    tied = model.lm_head.weight is emb
    if not tied:  # the input embedding: one row per token
        nbytes -= (emb_row * emb.shape[0]) - emb_row
    label = "fp32" if q is None else f"{q['scheme']}, embedding {q['embedding']}"
    return nbytes, label


def bandwidth_summary(bws: list[float], threads: str) -> str:
    """One line: the median of the rounds' bandwidth readings (GB/s), their range, the threads, the CPU."""
    return (f"read bandwidth {statistics.median(bws):.1f} GB/s (median of {len(bws)} rounds: {min(bws):.1f}-"
            f"{max(bws):.1f}; {threads}), {platform.processor() or platform.machine()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds over all packages, each after its own bandwidth reading")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="threads of decode steps (default --threads); the floor stays at --threads' bandwidth")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.bench import run_bench

    per_token = [bytes_per_token(pkg) for pkg in args.packages]
    backends: list[str] = [""] * len(args.packages)
    bws: list[float] = []
    decode: list[list[float]] = [[] for _ in args.packages]
    prefill: list[list[float]] = [[] for _ in args.packages]
    for i in range(args.rounds):  # packages interleaved: a slow spell of the machine hits them all
        bws.append(read_bandwidth_gbs(args.threads))
        for j, pkg in enumerate(args.packages):
            print(f"round {i + 1}/{args.rounds}: {pkg.name}", file=sys.stderr, flush=True)
            # one session alive at a time: idle pools of other sessions would compete for the cores
            sess = load(pkg, num_threads=args.threads, decode_threads=args.decode_threads)
            r = run_bench(sess, args.prompt, args.decode, (), 16, 3)
            backends[j] = r.backend
            decode[j].append(r.decode_tok_s)
            prefill[j].append(r.prefill_tok_s)
            del sess
            gc.collect()
    bw = statistics.median(bws)
    on = f", decode on {args.decode_threads}" if args.decode_threads not in (None, args.threads) else ""
    print(bandwidth_summary(bws, f"{args.threads} threads{on}"))
    print("| package | backend | scheme | weight MB read / token | floor tok/s | decode tok/s (range) | % of floor "
          "| prefill tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for j, pkg in enumerate(args.packages):
        nbytes, label = per_token[j]
        floor = bw * 1e9 / nbytes
        tok_s = statistics.median(decode[j])
        print(f"| {pkg.name} | {backends[j]} | {label} | {nbytes / 1e6:.2f} | {floor:.0f} "
              f"| {tok_s:.1f} ({min(decode[j]):.1f}-{max(decode[j]):.1f}) | {100 * tok_s / floor:.1f}% "
              f"| {statistics.median(prefill[j]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
