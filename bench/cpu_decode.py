"""Decode and prefill speed of each backend against the memory-bandwidth floor and transformers (one run).

    .venv/bin/python bench/cpu_decode.py                       # small preset, 2 threads, 512 / 128
    .venv/bin/python bench/cpu_decode.py --preset tiny --prefill 64 --decode 32   # quick check
    .venv/bin/python bench/cpu_decode.py --package out/pkg-int8 ...              # extra packages (int8)

A random-weight model of the preset is exported once to ONNX and ExecuTorch packages (kept in
--work, reused when present); then, batch 1, --threads threads, fp32:
  * each backend (torch eager, onnxruntime, executorch) through the runtime: prefill of --prefill
    tokens through the prefill graph, then --decode greedy steps (``runtime.bench.run_bench``, medians);
  * transformers' xLSTMForCausalLM with the same weights: one forward over the prompt, and
    ``generate(do_sample=False)`` of --decode tokens;
  * the memory-bandwidth floor: bytes of weights read per token (every parameter once, the input
    embedding one row) / read bandwidth measured here (a float32 sum over 1 GiB, --threads threads).
Prints a markdown table (and writes it, with JSON, under --out). Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


def read_bandwidth_gbs(threads: int, gib: float = 1.0, repeat: int = 7) -> float:
    """Sustained read bandwidth: median over ``repeat`` float32 sums of a ``gib`` GiB buffer."""
    torch.set_num_threads(threads)
    buf = torch.rand(int(gib * 2**30 / 4))
    buf.sum()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes_per_token(model: xLSTMForCausalLM, bytes_per_weight: float = 4.0) -> float:
    """Every parameter is read once per decode step, except an untied input embedding (one row)."""
    emb = model.backbone.embeddings.weight
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if model.lm_head.weight is not emb:
        total -= emb.numel() - emb.shape[1]
    return total * bytes_per_weight


def checkpoint_for(preset: str, work: Path) -> Path:
    from xlstm_edge.checkpoint import save_checkpoint
    from xlstm_edge.tokenizer import byte_tokenizer

    ckpt = work / f"{preset}-ckpt"
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        model = xLSTMForCausalLM(xLSTMConfig.from_preset(preset)).eval()
        save_checkpoint(model, ckpt, tokenizer=byte_tokenizer(), overwrite=True)
    return ckpt


def package_for(ckpt: Path, fmt: str, work: Path) -> Path:
    from xlstm_edge.export import export_package
    from xlstm_edge.export.metadata import ManifestError, read_manifest

    from xlstm_edge.checkpoint import load_checkpoint

    pkg = work / f"{ckpt.name.removesuffix('-ckpt')}-{fmt}"
    try:
        read_manifest(pkg)
        return pkg
    except ManifestError:
        pass
    t = time.perf_counter()
    export_package(load_checkpoint(ckpt), pkg, fmt, force=True, source={"checkpoint": str(ckpt.resolve())})
    print(f"exported {pkg} in {time.perf_counter() - t:.0f} s", flush=True)
    return pkg


def bench_session(source: Path, backend: str, threads: int, prefill: int, decode: int) -> dict:
    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.bench import run_bench

    sess = load(source, backend=backend, num_threads=threads)
    r = run_bench(sess, prompt_tokens=prefill, decode_tokens=decode, contexts=(prefill,), steps_per_point=8,
                  repeats=3)
    return {"prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s, "first_token_ms": r.first_token_ms,
            "peak_rss_mb": r.peak_rss_mb}


def bench_transformers(ckpt: Path, threads: int, prefill: int, decode: int) -> dict:
    import transformers

    torch.set_num_threads(threads)
    hf = transformers.xLSTMForCausalLM.from_pretrained(str(ckpt)).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (1, prefill), generator=g)
    with torch.no_grad():
        hf(prompt[:, :8])
        t = time.perf_counter()
        hf(prompt, use_cache=False)
        prefill_s = time.perf_counter() - t
        short = prompt[:, :16]
        t = time.perf_counter()
        out = hf.generate(short, max_new_tokens=decode, min_new_tokens=decode, do_sample=False,
                          pad_token_id=hf.config.pad_token_id)
        gen_s = time.perf_counter() - t
    new = out.shape[1] - short.shape[1]
    return {"prefill_tok_s": prefill / prefill_s, "decode_tok_s": new / gen_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--work", type=Path, default=Path("out/bench"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--package", type=Path, action="append", default=[], help="Extra package(s) to measure.")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    ckpt = checkpoint_for(args.preset, args.work)
    model = xLSTMForCausalLM(xLSTMConfig.from_dict(json.loads((ckpt / "config.json").read_text())))
    fp32_bytes = weight_bytes_per_token(model)
    del model
    bw = read_bandwidth_gbs(args.threads)
    runs: list[tuple[str, Path, str, float]] = [("torch (eager)", ckpt, "torch", fp32_bytes)]
    for fmt, backend in (("onnx", "onnxruntime"), ("executorch", "executorch")):
        runs.append((backend, package_for(ckpt, fmt, args.work), backend, fp32_bytes))
    for pkg in args.package:
        from xlstm_edge.export.metadata import read_manifest

        m = read_manifest(pkg)
        scheme = (m.quantization or {}).get("scheme", "fp32")
        runs.append((f"{m.backend} {scheme}", pkg, m.backend, fp32_bytes / 4 if scheme.startswith("int8") else fp32_bytes))

    rows = []
    for label, source, backend, nbytes in runs:
        r = bench_session(source, backend, args.threads, args.prefill, args.decode)
        floor = bw * 1e9 / nbytes
        rows.append({"backend": label, **r, "floor_tok_s": floor, "of_floor": r["decode_tok_s"] / floor})
        print(f"{label}: {r}", flush=True)
    hf = None if args.skip_transformers else bench_transformers(ckpt, args.threads, args.prefill, args.decode)

    head = (f"{args.preset} preset (random weights), batch 1, {args.threads} threads, float32 state; prefill "
            f"{args.prefill} tokens, decode {args.decode} greedy tokens; read bandwidth {bw:.1f} GB/s; fp32 weights "
            f"read per token {fp32_bytes / 1e6:.1f} MB")
    lines = [head, "", "| backend | prefill tok/s | decode tok/s | floor tok/s | % of floor | first token ms | "
             "vs transformers (prefill / decode) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = (f"{r['prefill_tok_s'] / hf['prefill_tok_s']:.1f}x / {r['decode_tok_s'] / hf['decode_tok_s']:.1f}x"
              if hf else "-")
        lines.append(f"| {r['backend']} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['floor_tok_s']:.1f} "
                     f"| {100 * r['of_floor']:.0f}% | {r['first_token_ms']:.0f} | {vs} |")
    if hf:
        lines.append(f"| transformers {transformers_version()} | {hf['prefill_tok_s']:.1f} | {hf['decode_tok_s']:.1f} "
                     "| | | | 1x |")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append("")
    lines.append(f"{stamp}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                 f"`python bench/cpu_decode.py --preset {args.preset} --threads {args.threads}`")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_decode.md").write_text(table + "\n")
        (args.out / "cpu_decode.json").write_text(json.dumps({"rows": rows, "transformers": hf, "bandwidth_gbs": bw,
                                                              "fp32_bytes_per_token": fp32_bytes}, indent=2))


def transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    main()
