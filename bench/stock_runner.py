"""Prefill and decode speed of one ExecuTorch package through ExecuTorch's own ``TextLLMRunner`` and through
our runtime, in the same process, rounds interleaved; and the state A/B: the .pte's ``step`` (state in
and out as tensors, today's runtime) against its ``forward`` at T = 1 (state in mutable buffers).

    .venv/bin/python bench/stock_runner.py PKG [PKG ...] [--prompt 64] [--decode 64] [--rounds 3]

Runner: greedy ``generate`` of a --prompt-character ASCII prompt (byte tokenizer: one token each) for
--decode + 1 tokens; tok/s from its own Stats (ms timestamps): prefill = prompt tokens / (prompt_eval_end
- inference_start), decode = generated tokens / (inference_end - prompt_eval_end). Ours:
``runtime.bench.run_bench`` (medians over calls). The runner's threadpool is ExecuTorch's default (one
thread per core: 2 here); ours is sized to --threads. A/B: median ms of single calls of each method,
same program, same inputs. Prints markdown tables. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def stdout_silenced():
    """The runner prints every piece to the C stdout; keep it out of the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def runner_round(pkg: Path, prompt: str, decode: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one greedy generation through TextLLMRunner (after a warm-up)."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(pkg / "model.pte"), str(pkg / "tokenizer.json"))
    stats = []
    with stdout_silenced():
        runner.generate(prompt[:8], GenerationConfig(echo=False, max_new_tokens=2, temperature=0.0))
        runner.reset()
        runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=decode + 1, temperature=0.0),
                        stats_callback=stats.append)
    s = stats[-1]
    prefill = s.num_prompt_tokens / max(s.prompt_eval_end_ms - s.inference_start_ms, 1) * 1e3
    dec = s.num_generated_tokens / max(s.inference_end_ms - s.prompt_eval_end_ms, 1) * 1e3
    del runner
    return prefill, dec


def ours_round(pkg: Path, prompt_tokens: int, decode: int, threads: int) -> tuple[float, float]:
    from xlstm_edge.runtime import load
    from xlstm_edge.runtime.bench import run_bench

    sess = load(pkg, num_threads=threads)
    r = run_bench(sess, prompt_tokens, decode, (), 16, 3)
    del sess
    return r.prefill_tok_s, r.decode_tok_s


def state_ab(pkg: Path, calls: int, threads: int) -> tuple[float, float]:
    """Median ms of one ``step`` call (state copied in and out) and of one ``forward`` call at T = 1
    (state in the program's buffers), on the same loaded program."""
    from xlstm_edge.export.metadata import read_manifest
    from xlstm_edge.runtime.graphs import PteMethod, open_pte_program

    manifest = read_manifest(pkg)
    path = pkg / manifest.graph("step").file
    program = open_pte_program(path)
    step, fwd = PteMethod(path, "step", threads, program), PteMethod(path, "forward", None, program)
    state = [torch.zeros(1, *e.static_shape) for e in manifest.state.tensors]
    tok = torch.zeros(1, 1, dtype=torch.int64)
    pos = torch.ones(1, dtype=torch.int64)
    t_step, t_fwd = [], []
    for i in range(calls + 4):
        t0 = time.perf_counter()
        outs = step.run([tok, *state])
        t1 = time.perf_counter()
        state = outs[1:]
        fwd.run([tok, pos])
        t2 = time.perf_counter()
        if i >= 4:
            t_step.append(t1 - t0)
            t_fwd.append(t2 - t1)
    return 1e3 * statistics.median(t_step), 1e3 * statistics.median(t_fwd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ab-calls", type=int, default=32)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    prompt = "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (args.prompt,), generator=g))
    rows = {p: {"runner": [], "ours": [], "ab": []} for p in args.packages}
    for i in range(args.rounds):
        for pkg in args.packages:
            print(f"round {i + 1}/{args.rounds}: {pkg}", file=sys.stderr, flush=True)
            rows[pkg]["ours"].append(ours_round(pkg, args.prompt, args.decode, args.threads))
            gc.collect()
            rows[pkg]["runner"].append(runner_round(pkg, prompt, args.decode))
            gc.collect()
            rows[pkg]["ab"].append(state_ab(pkg, args.ab_calls, args.threads))
            gc.collect()

    def med(values: list[tuple[float, float]], k: int) -> str:
        xs = [v[k] for v in values]
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"

    print(f"{args.prompt}-token prompt, {args.decode} decode tokens, {args.threads} threads, medians of "
          f"{args.rounds} interleaved rounds (range)")
    print("| package | runner prefill tok/s | ours prefill tok/s | runner decode tok/s | ours decode tok/s "
          "| step ms (state in/out) | forward T=1 ms (state in buffers) |")
    print("|---|---|---|---|---|---|---|")
    for pkg, r in rows.items():
        print(f"| {pkg.name} | {med(r['runner'], 0)} | {med(r['ours'], 0)} | {med(r['runner'], 1)} "
              f"| {med(r['ours'], 1)} | {med(r['ab'], 0)} | {med(r['ab'], 1)} |", flush=True)


if __name__ == "__main__":
    main()
