"""The fused forward (`_fwd_fused_kernel`, ChunkwiseConfig.fused_forward) against the two-kernel
forward: launch sweep at one shape (each launch's h checked against the two-kernel h), then forward
and fwd+bwd at several shapes with the sweep's best launch, the two-kernel default beside it in the
same process. bf16, chunk 64, do_bench median.

Usage (CUDA machine, repository root, the shadow package of bench/gpu_env.sh on the path):
    python bench/fused_sweep.py [--shape 8x8x8192x256x512] [--shapes 8x8x8192x256x512,16x16x2048x128x128]
        [--launches 64:8:2,32:4:2] [--nxai]
Prints "SWEEP bv warps stages: fwd ms, rel err vs two-kernel h" lines, then "TIME" lines.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
import triton
import xlstm_edge.kernels.mlstm_chunkwise as mc


def bench(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, grad_to_none=grad_to_none, return_mode="median")


def inputs(shape: str):
    B, NH, S, DQK, DV = (int(x) for x in shape.split("x"))
    q, k = (torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    i = torch.randn(B, NH, S, device="cuda")
    f = torch.randn(B, NH, S, device="cuda") + 3
    return [t.requires_grad_() for t in (q, k, v, i, f)], torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def one(shape: str, spec: str) -> None:
    """Time the two-kernel forward and one fused launch; print "RESULT bv warps stages ms err"."""
    torch.manual_seed(0)
    leaves, _ = inputs(shape)
    base = mc.ChunkwiseConfig(fused_forward=False)
    bv, w, st = (int(x) for x in spec.split(":"))
    cfg = mc.ChunkwiseConfig(fused_forward=True, block_v_fused=bv, num_warps_fused=w, num_stages_fused=st)
    with torch.no_grad():
        h0 = mc.mlstm_chunkwise_triton(*leaves, config=base)[0]
        h = mc.mlstm_chunkwise_triton(*leaves, config=cfg)[0]
        torch.cuda.synchronize()
        err = rel(h, h0)
        t = bench(lambda: mc.mlstm_chunkwise_triton(*leaves, config=cfg))
    print(f"SWEEP {bv} {w} {st}: fwd {t:.3f} ms, h vs two-kernel {err:.2e}{'' if err <= 1e-2 else ' WRONG'}")
    print(f"RESULT {bv} {w} {st} {t} {err}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8x8x8192x256x512")
    ap.add_argument("--shapes", default="8x8x8192x256x512")
    ap.add_argument("--launches", default="32:4:1,32:4:2,32:8:2,64:4:1,64:4:2,64:8:1,64:8:2,64:8:3,128:8:1,128:8:2")
    ap.add_argument("--nxai", action="store_true")
    ap.add_argument("--one", default="", help="bv:warps:stages: time this launch alone (a subprocess)")
    args = ap.parse_args()
    if args.one:
        return one(args.shape, args.one)
    dev = torch.cuda.get_device_name()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak = 2 * 8192**3 / bench(lambda a=a: a @ a) / 1e9
    del a
    print(f"{dev}: measured bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    torch.manual_seed(0)
    leaves, _ = inputs(args.shape)
    base = mc.ChunkwiseConfig(fused_forward=False)
    with torch.no_grad():
        t0 = bench(lambda: mc.mlstm_chunkwise_triton(*leaves, config=base))
    print(f"SWEEP two-kernel {args.shape}: fwd {t0:.3f} ms", flush=True)
    leaves = None
    best = None
    for spec in args.launches.split(","):  # one process per launch: a faulting launch kills its context
        run = subprocess.run(
            [sys.executable, __file__, "--one", spec, "--shape", args.shape],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = [x for x in run.stdout.splitlines() if x.startswith(("SWEEP", "RESULT"))]
        print("\n".join(lines) or f"SWEEP {spec}: exit {run.returncode} {run.stderr[-300:]}", flush=True)
        for x in lines:
            if x.startswith("RESULT"):
                _, bv, w, st, t, err = x.split()
                if float(err) <= 1e-2 and (best is None or float(t) < best[0]):
                    best = (float(t), int(bv), int(w), int(st))
    print(f"BEST {best}", flush=True)
    configs = {"two-kernel": base, "two-kernel keep_states": mc.ChunkwiseConfig(fused_forward=False, keep_states=True)}
    if best is not None:
        _, bv, w, st = best
        kw = dict(fused_forward=True, block_v_fused=bv, num_warps_fused=w, num_stages_fused=st)
        configs["fused"] = mc.ChunkwiseConfig(**kw)
        configs["fused keep_states"] = mc.ChunkwiseConfig(**kw, keep_states=True)
    runs = {n: (lambda *x, c=c: mc.mlstm_chunkwise_triton(*x, config=c)[0]) for n, c in configs.items()}
    if args.nxai:
        try:
            from mlstm_kernels.torch import get_mlstm_kernel

            nx = get_mlstm_kernel("chunkwise--triton_limit_chunk")
            runs["NX-AI limit_chunk"] = lambda *x: nx(*x, chunk_size=64)
        except ImportError as err:
            print("NX-AI not importable:", err)
    for shape in args.shapes.split(","):
        B, NH, S, DQK, DV = (int(x) for x in shape.split("x"))
        torch.manual_seed(0)
        lv, gr = inputs(shape)
        th = B * S * NH
        L = 64
        flops = th * (4 * DQK * DV + 2 * L * (DQK + DV)) + th * (10 * DQK * DV + 2 * L * (3 * DQK + 2 * DV))
        for name, run in runs.items():
            if name.startswith("NX-AI") and shape != args.shape:
                continue
            with torch.no_grad():
                fwd = bench(lambda run=run, lv=lv: run(*lv))

            def step(run=run, lv=lv, gr=gr):
                run(*lv).backward(gr)

            fb = bench(step, grad_to_none=lv)
            r = flops / fb / 1e9
            print(f"TIME {name} {shape} {dev}: fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms ({r:.0f} TFLOP/s, "
                  f"{100 * r / peak:.1f}% of {peak:.0f})", flush=True)  # fmt: skip
        del lv, gr


if __name__ == "__main__":
    main()
