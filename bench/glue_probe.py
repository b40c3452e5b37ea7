"""Where the time of one default chunkwise fwd+bwd goes, and what three low-risk changes buy, at one
shape (default xLSTM 7B heads at 65k tokens: B 8, NH 8, S 8192, DQK 256, DV 512, chunk 64, bf16):

    profile   torch.profiler over fwd+bwd steps: device time per kernel (the Triton kernels and every
              PyTorch launch between them), per step
    kernels   each Triton kernel alone on one fwd+bwd's intermediates (bench/tune_chunkwise.py's
              problem), for launch variants: register caps (Launch.maxnreg) that let more blocks share a
              multiprocessor, tiles, pipelining depth; every
              variant's outputs checked against the default launch's (norm-wise relative error)
    e2e       fwd and fwd+bwd (do_bench median) of E2E_SETUPS (the default), the per-kernel winners of
              `kernels` when run, and NX-AI limit_chunk when importable; h and every gradient of each
              against the first row's

Usage (CUDA machine, repository root, the shadow package of bench/gpu_env.sh on the path):
    python bench/glue_probe.py warm          compile every variant in worker processes (small problem)
    python bench/glue_probe.py [--parts profile,kernels,e2e] [--nxai] [--shape 8x8x8192x256x512]
Prints "PROFILE", "KERNEL", "E2E" and "TIME" lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import sys
from collections import defaultdict
from pathlib import Path

import torch
import triton
import xlstm_edge.kernels.mlstm_chunkwise as mc
from xlstm_edge.kernels.mlstm_chunkwise import backward as bw
from xlstm_edge.kernels.mlstm_chunkwise import forward as fw

L = 64
BEST_FILE = Path("/tmp/glue_probe_best.json")
BASE_FILE = Path("/tmp/glue_probe_base.json")
_spec = importlib.util.spec_from_file_location("tune_chunkwise", Path(__file__).with_name("tune_chunkwise.py"))
tc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tc
_spec.loader.exec_module(tc)

DEFAULTS = {k: v for k, v in fw.LAUNCH_DEFAULTS["16bit"].items()}
# (kind, (block_k, block_v, warps, stages, maxnreg)); the first of each kind is the default. Registers
# (bench/state_ptxas.py, Triton 3.6): states 64x128/4 230 (2 blocks of 4 warps a multiprocessor);
# 64x128/8 172, capped at 128: 40 B of spills, 2 blocks of 8 warps; states_bwd 64x128/4 255, 64x128/8
# 222, at 128: 128 B. First call (H100, 4393ab0): caps at 168 on 4 warps and 64x64 tiles all slower.
VARIANTS = [
    ("states", (64, 128, 4, 2, 0)),
    ("states", (64, 128, 8, 2, 128)),
    ("states", (64, 128, 8, 3, 128)),
    ("states_bwd", (64, 128, 4, 2, 0)),
    ("states_bwd", (64, 128, 8, 2, 128)),
    ("states_bwd", (64, 128, 8, 3, 128)),
]


def apply(kind: str, launch: tuple) -> None:
    """Make launch the 16-bit default of kind (the launchers read it at call time)."""
    fw.LAUNCH_DEFAULTS["16bit"] = {**DEFAULTS, kind: fw.Launch(*launch)}


GLUE0, OVERLAP0 = bw.FUSED_GLUE, bw.OVERLAP_GRAD_TERMS
# the default before this branch (commit f8898a5): PyTorch glue, in line, these launches
PREVIOUS = {"output": fw.Launch(64, 128, 8, 3), "bwd": fw.Launch(64, 128, 8, 3),
            "states": fw.Launch(64, 128, 4, 2), "states_bwd": fw.Launch(64, 128, 4, 2)}  # fmt: skip


def reset() -> None:
    """The defaults as imported."""
    fw.LAUNCH_DEFAULTS["16bit"] = dict(DEFAULTS)
    bw.FUSED_GLUE, bw.OVERLAP_GRAD_TERMS = GLUE0, OVERLAP0


# e2e rows (name: setup), the first the reference of the error columns (an input-gradient kernel holding
# the whole DQK was measured here on 2026-12-07, 11.21 vs 10.90 ms on an H200, and removed)
E2E_SETUPS = {
    "default": reset,
}


def previous() -> None:
    fw.LAUNCH_DEFAULTS["16bit"] = {**DEFAULTS, **PREVIOUS}
    bw.FUSED_GLUE = bw.OVERLAP_GRAD_TERMS = False


def label(kind, launch) -> str:
    bk, bv, w, s, r = launch
    return f"{kind} {bk}x{bv} w{w} s{s}{f' maxnreg {r}' if r else ''}"


def _warm(args) -> list[str]:
    jobs, e2e_setup = args  # e2e_setup: a name of E2E_SETUPS to compile a whole fwd+bwd of, or None
    out = []
    p = tc.make_problem(1, 1, 1024, 256, 512, torch.bfloat16) if jobs else None
    for kind, launch in jobs:
        try:
            apply(kind, launch)
            tc.runner(kind, p, mc.ChunkwiseConfig())()
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001 - reported, the variant is skipped later
            out.append(f"{label(kind, launch)}: {type(err).__name__}: {str(err)[:160]}")
        reset()
    # a whole fwd+bwd of one e2e row (same specialisation as S 8192)
    if e2e_setup is not None:
        try:
            E2E_SETUPS[e2e_setup]()
            leaves, grad = inputs("1x1x1024x256x512")
            mc.mlstm_chunkwise_triton(*leaves, chunk_size=L)[0].backward(grad)
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001 - reported; e2e reports the row's failure again
            out.append(f"e2e {e2e_setup}: {type(err).__name__}: {str(err)[:160]}")
    reset()
    return out


def warm(workers: int, parts: list[str]) -> None:
    """Compile the variants (parts has "kernels") over the workers; the previous and current default's
    fwd+bwd (parts has "e2e") in one more."""
    variants = "kernels" in parts
    slices = [(VARIANTS[j::workers], None) for j in range(workers)] if variants else []
    if "e2e" in parts:  # one worker per row
        slices += [([], name) for name in E2E_SETUPS]
    with mp.get_context("spawn").Pool(max(len(slices), 1)) as pool:
        errs = sum(pool.map(_warm, slices), [])
    print(f"WARM {len(VARIANTS) if variants else 0} variants{' and the e2e defaults' if 'e2e' in parts else ''} "
          f"compiled, {len(errs)} failed", flush=True)  # fmt: skip
    for e in errs:
        print("WARM failed:", e, flush=True)


def inputs(shape: str):
    B, NH, S, DQK, DV = (int(x) for x in shape.split("x"))
    torch.manual_seed(0)
    q, k = (torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    i = torch.randn(B, NH, S, device="cuda")
    f = torch.randn(B, NH, S, device="cuda") + 3
    grad = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    return [t.requires_grad_() for t in (q, k, v, i, f)], grad


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def bench(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, grad_to_none=grad_to_none, return_mode="median")


def profile(shape: str, label_: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_

    leaves, grad = inputs(shape)

    def step():
        mc.mlstm_chunkwise_triton(*leaves, chunk_size=L)[0].backward(grad)
        for t in leaves:
            t.grad = None

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    n = 3
    with prof_(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for ev in p.events():
        t = ev.device_time_total if ev.device_type == torch.autograd.DeviceType.CUDA else 0
        if t:
            per[ev.name][0] += t / n / 1e3
            per[ev.name][1] += 1
    total = sum(v[0] for v in per.values())
    triton_ms = sum(v[0] for k, v in per.items() if k.startswith("_"))
    calls = sum(v[1] for v in per.values()) / n
    other = total - triton_ms
    print(f"PROFILE {label_}: kernels {total:.3f} ms a step ({calls:.0f} launches), Triton mLSTM kernels "
          f"{triton_ms:.3f} ms, the rest {other:.3f} ms in {sum(v[1] for k, v in per.items() if not k.startswith('_')) / n:.0f} launches", flush=True)  # fmt: skip
    for name, (ms, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[:24]:
        print(f"PROFILE   {ms:8.3f} ms  x{c / n:4.0f}  {name[:110]}", flush=True)


def kernels(shape: str) -> dict[str, tuple]:
    """Per-kernel times of every variant; returns the fastest right variant of each kind."""
    B, NH, S, DQK, DV = (int(x) for x in shape.split("x"))
    torch.manual_seed(0)
    p = tc.make_problem(B, NH, S, DQK, DV, torch.bfloat16)
    best: dict[str, tuple] = {}
    ref: dict[str, list] = {}
    base_ms: dict[str, float] = {}
    for kind, launch in VARIANTS:
        apply(kind, launch)
        try:
            fn = tc.runner(kind, p, mc.ChunkwiseConfig())
            out = fn()
            if kind not in ref:
                ref[kind] = [t.clone() for t in out]
                err = 0.0
            else:
                err = max(rel(a, b) for a, b in zip(out, ref[kind], strict=True))
            ms = bench(fn)
        except Exception as exc:  # noqa: BLE001 - reported
            print(f"KERNEL {label(kind, launch)}: failed {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            torch.cuda.empty_cache()
            reset()
            continue
        reset()
        base_ms.setdefault(kind, ms)
        ok = err <= 5e-3
        print(f"KERNEL {label(kind, launch):<44} {ms:7.3f} ms ({ms / base_ms[kind]:.3f}x)  err vs default "
              f"{err:.1e}{'' if ok else ' WRONG'}", flush=True)  # fmt: skip
        if ok and (kind not in best or ms < best[kind][1]):
            best[kind] = (launch, ms)
    del p
    torch.cuda.empty_cache()
    BEST_FILE.write_text(json.dumps({k: [list(v[0]), v[1]] for k, v in best.items()}))
    BASE_FILE.write_text(json.dumps(base_ms))
    return best


def e2e(shape: str, best: dict[str, tuple], nxai: bool) -> None:
    B, NH, S, DQK, DV = (int(x) for x in shape.split("x"))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak = 2 * 8192**3 / bench(lambda a=a: a @ a) / 1e9
    del a
    th = B * S * NH
    flops = th * (4 * DQK * DV + 2 * L * (DQK + DV)) + th * (10 * DQK * DV + 2 * L * (3 * DQK + 2 * DV))
    leaves, grad = inputs(shape)

    def setup_best(glue):
        reset()
        bw.FUSED_GLUE = glue
        fw.LAUNCH_DEFAULTS["16bit"] = {**DEFAULTS, **{kind: fw.Launch(*v[0]) for kind, v in best.items()}}

    setups = dict(E2E_SETUPS)
    if best:
        setups["per-kernel best launches"] = lambda: setup_best(GLUE0)
        print("E2E per-kernel best:", {k: v[0] for k, v in best.items()}, flush=True)
    runs = {name: (setup, lambda *x: mc.mlstm_chunkwise_triton(*x, chunk_size=L)[0]) for name, setup in setups.items()}
    if nxai:
        try:
            from mlstm_kernels.torch import get_mlstm_kernel

            nx = get_mlstm_kernel("chunkwise--triton_limit_chunk")
            runs["NX-AI limit_chunk"] = (reset, lambda *x: nx(*x, chunk_size=L))
        except ImportError as err:
            print("NX-AI not importable:", err)
    ref = None
    for name, (setup, run) in runs.items():
        setup()
        for t in leaves:  # the previous timing left its last step's gradients
            t.grad = None
        try:
            h = run(*leaves)
            h.backward(grad)
        except Exception as err:  # noqa: BLE001 - a launch that does not compile (shared memory): reported
            print(f"TIME {name}: failed, {type(err).__name__}: {str(err)[:200]}", flush=True)
            continue
        outs = [h.detach()] + [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        if ref is None:
            ref = outs
            errs = "reference"
        else:
            errs = " ".join(f"{n}={rel(a, b):.1e}" for n, a, b in zip("h dq dk dv di df".split(), outs, ref, strict=True))
        del h, outs
        with torch.no_grad():
            fwd = bench(lambda run=run: run(*leaves))

        def step(run=run):
            run(*leaves).backward(grad)

        fb = bench(step, grad_to_none=leaves)
        rate = flops / fb / 1e9
        print(f"TIME {name} {shape} {torch.cuda.get_device_name()}: fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms "
              f"({rate:.0f} TFLOP/s, {100 * rate / peak:.1f}% of the measured {peak:.0f}); vs default: {errs}", flush=True)  # fmt: skip
    reset()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "warm", "override"])
    ap.add_argument("--shape", default="8x8x8192x256x512")
    ap.add_argument("--parts", default="profile,kernels,e2e")
    ap.add_argument("--nxai", action="store_true")
    ap.add_argument("--workers", type=int, default=6)
    args = ap.parse_args()
    if args.mode == "override":
        # the state kernels' winners of an earlier `--parts kernels` run that beat the first (default)
        # variant by 2%, as XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT's JSON (nothing printed: none)
        if BEST_FILE.exists():
            best = json.loads(BEST_FILE.read_text())
            base = {k: v for k, v in json.loads(BASE_FILE.read_text()).items()}
            over = {k: v[0] for k, v in best.items() if k in ("states", "states_bwd") and v[1] < 0.98 * base[k]}
            if over:
                print(json.dumps(over))
        return
    if args.mode == "warm":
        warm(args.workers, args.parts.split(","))
        return
    parts = args.parts.split(",")
    if "profile" in parts:
        previous()
        profile(args.shape, "previous default (f8898a5)")
        reset()
        profile(args.shape, "default")
    best = kernels(args.shape) if "kernels" in parts else {}
    if "e2e" in parts:
        if not best and BEST_FILE.exists():  # an earlier `--parts kernels` run
            best = {k: (tuple(v[0]), v[1]) for k, v in json.loads(BEST_FILE.read_text()).items()}
        e2e(args.shape, best, args.nxai)


if __name__ == "__main__":
    main()
