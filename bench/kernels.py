"""GPU benchmark of the Triton kernels: chunkwise mLSTM fwd and fwd+bwd against torch SDPA flash
attention (and NX-AI mlstm_kernels `chunkwise--triton_limit_chunk` when importable), the fused step
kernel against the PyTorch step, and the sLSTM scan against the PyTorch scan.

Usage (CUDA machine; `xlstm_edge` importable):
    python bench/kernels.py [--out DIR] [--shapes 8x256x512,16x128x128] [--seqs 2048,8192,32768]

65,536 tokens per call (B = 65536 // S), bfloat16 q/k/v (float32 gates). Times are medians of
`triton.testing.do_bench` (CUDA events). TFLOP/s use each method's own algorithmic FLOPs:
    ours, per token and head, chunk L: fwd 4 DQK DV + 2 L (DQK + DV); bwd (states recomputed)
        10 DQK DV + 2 L (3 DQK + 2 DV)   (full L x L blocks, as the kernels compute them)
    flash attention (causal, head dim D): fwd 2 S D per token and head, bwd 2.5 x fwd
and are compared with a measured bf16 matmul peak (8192^3). Prints a Markdown table; with --out
also writes kernels_bench.md and kernels_bench.json there.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton
from xlstm_edge.kernels.mlstm_chunkwise.forward import state_launch
from xlstm_edge.kernels.mlstm_recurrent import mlstm_step_triton
from xlstm_edge.kernels.slstm import slstm_scan_triton

from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_step
from xlstm_edge.slstm import slstm_scan

TOKENS = 65536
DEV = "cuda"


@dataclass
class Row:
    method: str
    NH: int
    DQK: int
    DV: int
    S: int
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    fwd_tflops: float | None = None
    fwdbwd_tflops: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def bench_ms(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def matmul_peak() -> float:
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    return 2 * 8192**3 / ms / 1e9


def mlstm_inputs(NH, S, DQK, DV, requires_grad):
    B = TOKENS // S
    q = torch.randn(B, NH, S, DQK, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(B, NH, S, DQK, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(B, NH, S, DV, device=DEV, dtype=torch.bfloat16)
    i = torch.randn(B, NH, S, device=DEV)
    f = torch.randn(B, NH, S, device=DEV) + 3
    leaves = [q, k, v, i, f]
    for t in leaves:
        t.requires_grad_(requires_grad)
    return leaves


def ours_flops(NH, S, DQK, DV, L) -> tuple[float, float]:
    th = TOKENS * NH
    fwd = th * (4 * DQK * DV + 2 * L * (DQK + DV))
    bwd = th * (10 * DQK * DV + 2 * L * (3 * DQK + 2 * DV))
    return fwd, bwd


def flash_flops(NH, S, D) -> tuple[float, float]:
    fwd = TOKENS * NH * 2 * S * D  # causal: half of 4 S^2 D per sequence
    return fwd, 2.5 * fwd


def time_fwd_bwd(run, leaves) -> tuple[float, float]:
    """run(*leaves) -> output tensor. Returns (fwd ms, fwd+bwd ms)."""
    with torch.no_grad():
        fwd = bench_ms(lambda: run(*leaves))
    out = run(*leaves)
    grad = torch.randn_like(out)
    del out

    def step():
        run(*leaves).backward(grad)

    return fwd, bench_ms(step, grad_to_none=leaves)


CHECK_TOL = 1e-2


def check_config(NH, DQK, DV, S, L, cfg: ChunkwiseConfig) -> float:
    """Max rel. error (h and the grads of q, k, v, i, f) of the configuration as it runs at sequence
    length S (state tiles pinned to what the automatic choice takes at B = 65536 / S), on bfloat16
    inputs (B 1, an odd length) against the float64 PyTorch chunkwise form."""
    bh, dev = (TOKENS // S) * NH, torch.device(DEV)
    fw = state_launch(bh, DQK, DV, cfg, dev, L, 2)
    bw = state_launch(bh, DQK, DV, cfg, dev, L, 2, backward=True)
    pinned = replace(cfg, block_k_states=fw.block_k, block_v_states=fw.block_v, num_warps_states=fw.num_warps,
                     block_k_states_bwd=bw.block_k, block_v_states_bwd=bw.block_v,
                     num_warps_states_bwd=bw.num_warps)  # fmt: skip
    Sc = 2 * L + 37
    leaves = [t[:1, :, :Sc].detach().requires_grad_() for t in mlstm_inputs(NH, Sc, DQK, DV, False)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    h, _ = mlstm_chunkwise_triton(*leaves, chunk_size=L, config=pinned)
    h64, _ = mlstm_chunkwise(*leaves64, chunk_size=64)
    grad = torch.randn_like(h64)
    h.backward(grad.to(h.dtype))
    h64.backward(grad)
    pairs = [(h, h64)] + [(a.grad, b.grad) for a, b in zip(leaves, leaves64, strict=True)]
    return max(((a.double() - b).norm() / b.norm()).item() for a, b in pairs)


def bench_ours(NH, DQK, DV, S, L, cfg: ChunkwiseConfig) -> tuple[float, float]:
    err = check_config(NH, DQK, DV, S, L, cfg)
    if not err <= CHECK_TOL:
        raise ValueError(f"wrong results: max rel err {err:.2e} > {CHECK_TOL} against float64")
    leaves = mlstm_inputs(NH, S, DQK, DV, True)
    return time_fwd_bwd(lambda *x: mlstm_chunkwise_triton(*x, chunk_size=L, config=cfg)[0], leaves)


def bench_flash(NH, D, S) -> tuple[float, float]:
    B = TOKENS // S
    leaves = [
        torch.randn(B, NH, S, D, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    ]

    def run(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return time_fwd_bwd(run, leaves)


def nxai_kernel():
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError as err:
        return None, f"mlstm_kernels not importable ({err})"
    return get_mlstm_kernel("chunkwise--triton_limit_chunk"), ""


def bench_nxai(kernel, NH, DQK, DV, S) -> tuple[float, float]:
    leaves = mlstm_inputs(NH, S, DQK, DV, True)
    return time_fwd_bwd(lambda *x: kernel(*x, chunk_size=64), leaves)


def guarded(fn, *args):
    """A benchmark entry that may fail to compile or run out of memory: (result, error text)."""
    try:
        return fn(*args), ""
    except Exception as err:  # a benchmark table records the failure and goes on
        torch.cuda.empty_cache()
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


# candidate (chunk size, config) pairs; the sweep picks the fastest fwd+bwd per head shape, each
# checked against float64 first (bench_ours). State kernel tiles are left automatic. H100 runs,
# 2026-11-23, S 8k: L=64 with 128-wide DV tiles best at both head shapes; num_stages=3 7-11% faster
# than 2 at 7B heads. L=128 ran up to 12% faster at 7B heads but gave intermittently wrong results,
# so the op refuses it on CUDA (function.MAX_CUDA_CHUNK). H200, 2026-12-04: num_stages=3 with a
# one-tile DQK or DV (e.g. 128/128 heads with block_v=128) is refused too (function._check_pipelining);
# the sweep records the refusal as that candidate's error and goes on. Issue 16: the per-kernel sweep
# (bench/tune_chunkwise.py) chose the 16-bit defaults; the first candidate runs them.
CANDIDATES = [
    (64, ChunkwiseConfig()),  # the launch written in the code for q's dtype (forward.LAUNCH_DEFAULTS)
    (64, ChunkwiseConfig(block_v=128)),
    (64, ChunkwiseConfig(block_v=128, num_stages=3)),
    (64, ChunkwiseConfig(num_stages=3)),
]


def warm(index: int, shapes) -> None:
    """Compile one candidate's kernels (fwd+bwd once at S=2048, B=1) so that parallel processes can
    fill Triton's on-disk cache before the timed run. S, NC divisible by 16 as in the timed run."""
    if index >= len(CANDIDATES):
        return
    L, cfg = CANDIDATES[index]
    for NH, DQK, DV in shapes:
        leaves = [t[:1].detach().requires_grad_() for t in mlstm_inputs(NH, 2048, DQK, DV, False)]
        h, _ = mlstm_chunkwise_triton(*leaves, chunk_size=L, config=cfg)
        h.float().sum().backward()
    torch.cuda.synchronize()
    print(f"warm {index}: L={L} {asdict(cfg)} compiled", flush=True)


def sweep(NH, DQK, DV, S) -> tuple[int, ChunkwiseConfig, list[dict]]:
    results = []
    for L, cfg in CANDIDATES:
        (res, err) = guarded(bench_ours, NH, DQK, DV, S, L, cfg)
        results.append(
            {
                "L": L,
                "config": asdict(cfg),
                "fwd_ms": res and res[0],
                "fwdbwd_ms": res and res[1],
                "error": err,
            }
        )
        print(f"  sweep NH{NH} {DQK}/{DV} S{S} L{L} {asdict(cfg)}: {res} {err}", flush=True)
    ok = [(r["fwdbwd_ms"], j) for j, r in enumerate(results) if r["fwdbwd_ms"] is not None]
    if not ok:
        raise RuntimeError(f"no kernel configuration ran for NH{NH} {DQK}/{DV}")
    best = min(ok)[1]
    return CANDIDATES[best][0], CANDIDATES[best][1], results


def bench_step() -> dict:
    B, NH, DQK, DV = 1, 8, 256, 512
    state = (
        torch.randn(B, NH, DQK, DV, device=DEV),
        torch.randn(B, NH, DQK, device=DEV),
        torch.randn(B, NH, device=DEV),
    )
    q, k = (torch.randn(B, NH, DQK, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, DV, device=DEV, dtype=torch.bfloat16)
    i, f = torch.randn(B, NH, device=DEV), torch.randn(B, NH, device=DEV) + 3
    with torch.no_grad():
        ours = bench_ms(lambda: mlstm_step_triton(q, k, v, i, f, state))
        ours_graph = triton.testing.do_bench_cudagraph(
            lambda: mlstm_step_triton(q, k, v, i, f, state), rep=100
        )
        ref = bench_ms(lambda: mlstm_step(q, k, v, i, f, state))
    bytes_moved = 2 * B * NH * DQK * DV * 4
    return {
        "shape": f"B{B} NH{NH} DQK{DQK} DV{DV} (one xLSTM 7B layer)",
        "triton_us": ours * 1e3,
        "triton_cudagraph_us": ours_graph * 1e3,
        "torch_step_us": ref * 1e3,
        "state_bytes_read_written": bytes_moved,
        "cudagraph_GBps": bytes_moved / (ours_graph * 1e-3) / 1e9,
    }


def bench_slstm() -> dict:
    B, S, NH, DH = 16, 512, 4, 64
    wx = torch.randn(B, S, 4, NH, DH, device=DEV, requires_grad=True)
    R = (torch.randn(NH, DH, 4 * DH, device=DEV) / DH**0.5).requires_grad_()
    ours = time_fwd_bwd(lambda w, r: slstm_scan_triton(w, r)[0], [wx, R])
    t0 = time.perf_counter()
    y, _ = slstm_scan(wx, R)
    y.backward(torch.randn_like(y))
    torch.cuda.synchronize()
    ref_once = (time.perf_counter() - t0) * 1e3
    return {
        "shape": f"B{B} S{S} NH{NH} DH{DH}",
        "triton_fwd_ms": ours[0],
        "triton_fwdbwd_ms": ours[1],
        "torch_fwdbwd_ms_one_run": ref_once,
    }


def profile(shapes, S: int, variants: list[tuple[int, ChunkwiseConfig]], nxai) -> None:
    """Per-kernel device time of one fwd+bwd step (torch.profiler, mean of 5 steps) for each variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def breakdown(label, step):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        total = bench_ms(step)
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        times = {}
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t:
                times[ev.key] = times.get(ev.key, 0) + t / 5 / 1e3
        top = sorted(times.items(), key=lambda kv: -kv[1])[:10]
        print(f"PROFILE {label}: fwd+bwd {total:.2f} ms (do_bench); kernels sum {sum(times.values()):.2f} ms")
        for name, ms in top:
            print(f"    {ms:7.3f} ms  {name[:110]}")

    for NH, DQK, DV in shapes:
        for L, cfg in variants:
            leaves = mlstm_inputs(NH, S, DQK, DV, True)
            grad = torch.randn(TOKENS // S, NH, S, DV, device=DEV, dtype=torch.bfloat16)

            def step(leaves=leaves, L=L, cfg=cfg, grad=grad):
                for t in leaves:
                    t.grad = None
                mlstm_chunkwise_triton(*leaves, chunk_size=L, config=cfg)[0].backward(grad)

            try:
                breakdown(f"ours NH{NH} {DQK}/{DV} S{S} L{L} {asdict(cfg)}", step)
            except Exception as err:  # a variant that fails to compile is reported, not fatal
                print(f"PROFILE ours L{L} {asdict(cfg)} failed: {type(err).__name__}: {str(err)[:200]}")
                torch.cuda.empty_cache()
            del leaves, grad
        if nxai is not None:
            leaves = mlstm_inputs(NH, S, DQK, DV, True)
            grad = torch.randn(TOKENS // S, NH, S, DV, device=DEV, dtype=torch.bfloat16)

            def step_nx(leaves=leaves, grad=grad):
                for t in leaves:
                    t.grad = None
                nxai(*leaves, chunk_size=64).backward(grad)

            breakdown(f"NX-AI NH{NH} {DQK}/{DV} S{S}", step_nx)
            del leaves, grad


PROFILE_VARIANTS = {
    (8, 256, 512): [
        (64, ChunkwiseConfig(block_v=128)),
        (64, ChunkwiseConfig(block_v=128, num_stages=3)),
        (64, ChunkwiseConfig(block_k=128, block_v=128, num_stages=3)),
    ],
    (16, 128, 128): [
        (64, ChunkwiseConfig(block_v=128)),
        (64, ChunkwiseConfig(block_v=128, num_stages=3)),
    ],
}


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(rows: list[Row], peak: float, meta: dict) -> str:
    lines = [
        f"bf16 matmul peak measured: {peak:.0f} TFLOP/s. 65,536 tokens per call.",
        "",
        "| method | NH | DQK | DV | S | fwd ms | fwd+bwd ms | fwd TFLOP/s (% peak) | fwd+bwd TFLOP/s (% peak) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pf = "-" if r.fwd_tflops is None else f"{r.fwd_tflops:.0f} ({100 * r.fwd_tflops / peak:.0f}%)"
        pb = (
            "-" if r.fwdbwd_tflops is None else f"{r.fwdbwd_tflops:.0f} ({100 * r.fwdbwd_tflops / peak:.0f}%)"
        )
        lines.append(
            f"| {r.method} | {r.NH} | {r.DQK} | {r.DV} | {r.S} | {fmt(r.fwd_ms)} | {fmt(r.fwdbwd_ms)} | {pf} | {pb} | {r.note} |"
        )
    for key, val in meta.items():
        lines.append(f"\n{key}: {json.dumps(val)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--shapes", default="8x256x512,16x128x128", help="NHxDQKxDV, comma separated")
    ap.add_argument("--seqs", default="2048,8192,32768")
    ap.add_argument("--sweep-seq", type=int, default=8192, help="S at which configs are compared")
    ap.add_argument("--warm", type=int, default=None, help="only compile candidate N, then exit")
    ap.add_argument(
        "--profile", action="store_true", help="per-kernel breakdown of PROFILE_VARIANTS, then exit"
    )
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.warm is not None:
        warm(args.warm, shapes)
        return
    if args.profile:
        nxai, note = nxai_kernel()
        print(note or "NX-AI kernel loaded", flush=True)
        for shape in shapes:
            profile([shape], args.sweep_seq, PROFILE_VARIANTS.get(shape, CANDIDATES), nxai)
        return
    seqs = [int(s) for s in args.seqs.split(",")]
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__}
    peak = matmul_peak()
    print(f"{meta}; bf16 matmul {peak:.0f} TFLOP/s", flush=True)
    nxai, nxai_note = nxai_kernel()
    rows: list[Row] = []
    sweeps = {}
    for NH, DQK, DV in shapes:
        L, cfg, results = sweep(NH, DQK, DV, args.sweep_seq)
        sweeps[f"NH{NH}_{DQK}_{DV}"] = {
            "S": args.sweep_seq,
            "chosen_L": L,
            "chosen": asdict(cfg),
            "all": results,
        }
        for S in seqs:
            ff, fb = ours_flops(NH, S, DQK, DV, L)
            res, err = guarded(bench_ours, NH, DQK, DV, S, L, cfg)
            row = Row(
                "ours (triton)",
                NH,
                DQK,
                DV,
                S,
                note=err or f"L={L} bv{cfg.block_v or 'auto'} stages{cfg.num_stages or 'auto'}",
            )
            if res:
                row.fwd_ms, row.fwdbwd_ms = res
                row.fwd_tflops, row.fwdbwd_tflops = ff / res[0] / 1e9, (ff + fb) / res[1] / 1e9
            rows.append(row)
            if nxai is not None:
                res, err = guarded(bench_nxai, nxai, NH, DQK, DV, S)
                row = Row("NX-AI limit_chunk", NH, DQK, DV, S, note=err or "chunk 64")
                if res:
                    row.fwd_ms, row.fwdbwd_ms = res
                rows.append(row)
            D = DQK  # flash attention with q, k, v all of head dim DQK
            ff, fb = flash_flops(NH, S, D)
            res, err = guarded(bench_flash, NH, D, S)
            row = Row(f"SDPA flash (D{D})", NH, D, D, S, note=err)
            if res:
                row.fwd_ms, row.fwdbwd_ms = res
                row.fwd_tflops, row.fwdbwd_tflops = ff / res[0] / 1e9, (ff + fb) / res[1] / 1e9
            rows.append(row)
            print(rows[-3:] if nxai is not None else rows[-2:], flush=True)
    step, err = guarded(bench_step)
    meta["step_kernel"] = step or err
    sl, err = guarded(bench_slstm)
    meta["slstm"] = sl or err
    if nxai is None:
        meta["nxai"] = nxai_note
    table = markdown(rows, peak, meta)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels_bench.md").write_text(table + "\n")
        payload = {"meta": meta, "peak_tflops": peak, "rows": [asdict(r) for r in rows], "sweeps": sweeps}
        (args.out / "kernels_bench.json").write_text(json.dumps(payload, indent=1, default=str))
    assert math.isfinite(peak)


if __name__ == "__main__":
    main()
