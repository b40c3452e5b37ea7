"""Prefill and decode tok/s of one ONNX package through ONNX Runtime GenAI and through our runtime, same run.

    .venv/bin/python bench/genai.py --build /tmp/genai-bench            # small preset: fp32 + int8 packages
    .venv/bin/python bench/genai.py /tmp/genai-bench/fp32 /tmp/genai-bench/int8 [--threads 2] [--prompt 256]
        [--decode 64] [--rounds 3]

``--build OUT`` exports the `small` preset (162 M params, random init) to OUT/fp32 and quantizes it to
OUT/int8 (int8-dynamic: MatMulNBits), both with their ``genai.onnx``. Measuring: per package and
round, interleaved (one runner loaded at a time, so a slow spell of the shared machine hits both):
- ORT GenAI: ``og.Model(PKG)`` with ``intra_op_num_threads`` = --threads (a config overlay); prefill =
  ``append_tokens`` of --prompt random ids (one call: the graph's parallel form), decode = --decode
  ``generate_next_token`` calls (greedy), each timed;
- ours: ``xlstm_edge.runtime.load(PKG, backend="onnxruntime")`` with ``runtime.bench.run_bench``'s
  measures (prefill through the package's prefill graph in chunks, decode through its step graph).
Medians over rounds (decode: the median step of each round). Prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def build(out: Path) -> list[Path]:
    """The `small` preset's float32 ONNX package at OUT/fp32 and its int8-dynamic package at OUT/int8."""
    from xlstm_edge.export import export_package
    from xlstm_edge.quant.package import QuantizeOptions, quantize_package

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(0)
    model = xLSTMForCausalLM(xLSTMConfig.from_preset("small")).eval().requires_grad_(False)
    fp32, int8 = out / "fp32", out / "int8"
    t0 = time.perf_counter()
    if not fp32.exists():
        res = export_package(model, fp32, "onnx", parity_steps=16, on_stage=lambda s: print(f"  fp32: {s}"))
        print(f"fp32 package in {time.perf_counter() - t0:.0f} s: {res.timings}")
    del model
    if not int8.exists():
        opts = QuantizeOptions(scheme="int8-dynamic", eval_tokens=256, greedy_tokens=32, allow_quality_loss=True)
        quantize_package(fp32, int8, opts, log=lambda m: print(f"  int8: {m}"))
        print(f"int8 package after {time.perf_counter() - t0:.0f} s")
    return [fp32, int8]


def genai_round(package: Path, prompt: list[int], decode: int, threads: int) -> tuple[float, float]:
    """(prefill tok/s, median decode step tok/s) through ORT GenAI."""
    import onnxruntime_genai as og

    config = og.Config(str(package))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                         "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + decode + 8, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt[:8])  # warm-up: first calls allocate and plan
    gen.generate_next_token()
    gen.rewind_to(0)
    t = time.perf_counter()
    gen.append_tokens(prompt)
    prefill_s = time.perf_counter() - t
    steps = []
    for _ in range(decode):
        t = time.perf_counter()
        gen.generate_next_token()
        steps.append(time.perf_counter() - t)
    del gen, model
    return len(prompt) / prefill_s, 1.0 / statistics.median(steps)


def ours_round(package: Path, prompt_tokens: int, decode: int, threads: int) -> tuple[float, float]:
    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.bench import run_bench

    sess = load(package, backend="onnxruntime", num_threads=threads)
    res = run_bench(sess, prompt_tokens=prompt_tokens, decode_tokens=decode, contexts=(prompt_tokens,),
                    steps_per_point=1, repeats=1)
    del sess
    return res.prefill_tok_s, res.decode_tok_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="*", type=Path)
    ap.add_argument("--build", type=Path, default=None, help="export + quantize the small preset here first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # our runtime's host work; the graphs run on --threads ONNX Runtime threads
    packages = list(args.packages) + (build(args.build) if args.build else [])
    g = torch.Generator().manual_seed(0)
    rows = []
    for package in packages:
        from xlstm_edge.export.metadata import read_manifest

        manifest = read_manifest(package)
        vocab = min(manifest.model["vocab_size"], 50000)
        prompt = torch.randint(0, vocab, (args.prompt,), generator=g).tolist()
        results: dict[str, list[tuple[float, float]]] = {"ORT GenAI": [], "ours": []}
        for r in range(args.rounds):
            results["ORT GenAI"].append(genai_round(package, prompt, args.decode, args.threads))
            results["ours"].append(ours_round(package, args.prompt, args.decode, args.threads))
            print(f"{package.name} round {r + 1}: " + ", ".join(
                f"{k} prefill {v[-1][0]:.0f} decode {v[-1][1]:.1f}" for k, v in results.items()), flush=True)
        scheme = (manifest.quantization or {}).get("scheme", "fp32")
        for runner, vals in results.items():
            rows.append((package.name, scheme, runner, statistics.median(v[0] for v in vals),
                         statistics.median(v[1] for v in vals)))
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, prompt {args.prompt} tok, "
          f"decode {args.decode} tok, medians of {args.rounds} rounds")
    print("| package | scheme | runner | prefill tok/s | decode tok/s |\n|---|---|---|---|---|")
    for name, scheme, runner, pre, dec in rows:
        print(f"| {name} | {scheme} | {runner} | {pre:.0f} | {dec:.1f} |")


if __name__ == "__main__":
    main()
