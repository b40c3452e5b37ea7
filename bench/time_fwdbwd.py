"""Time one chunkwise mLSTM fwd and fwd+bwd (bf16, default launch unless --config) at one shape, and
NX-AI's limit_chunk beside it when importable: the A/B figure of bench/gpu_tune.sh, small enough to
run against an older copy of the kernels in the same call (whatever `xlstm_edge` is on the path).

Usage (CUDA machine):
    python bench/time_fwdbwd.py [--shape 8x8x8192x256x512] [--config '{"num_stages": 3}'] [--nxai]
        [--flash] [--label NAME]
--flash: torch SDPA flash attention beside it (causal, q, k, v of head dim DQK: at 7B heads DV 256, not
512; its FLOPs as bench/kernels.py counts them: fwd 2 S DQK per token and head, bwd 2.5 x fwd).
FLOPs as bench/kernels.py counts them (ours: fwd 4 DQK DV + 2 L (DQK + DV), bwd 10 DQK DV + 2 L (3 DQK
+ 2 DV) per token and head); % of a bf16 matmul peak measured in the same process (8192^3).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import xlstm_edge.kernels.mlstm_chunkwise as mc


def bench(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8x8x8192x256x512", help="BxNHxSxDQKxDV")
    ap.add_argument("--config", default="{}", help="ChunkwiseConfig fields as JSON")
    ap.add_argument("--nxai", action="store_true")
    ap.add_argument("--flash", action="store_true")
    ap.add_argument("--label", default="ours")
    args = ap.parse_args()
    B, NH, S, DQK, DV = (int(x) for x in args.shape.split("x"))
    L = 64
    cfg = mc.ChunkwiseConfig(**json.loads(args.config))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak = 2 * 8192**3 / bench(lambda a=a: a @ a) / 1e9
    del a
    torch.manual_seed(0)
    q, k = (torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    i = torch.randn(B, NH, S, device="cuda")
    f = torch.randn(B, NH, S, device="cuda") + 3
    leaves = [t.requires_grad_() for t in (q, k, v, i, f)]
    grad = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    runs = {args.label: lambda *x: mc.mlstm_chunkwise_triton(*x, chunk_size=L, config=cfg)[0]}
    if args.nxai:
        try:
            from mlstm_kernels.torch import get_mlstm_kernel

            nx = get_mlstm_kernel("chunkwise--triton_limit_chunk")
            runs["NX-AI limit_chunk"] = lambda *x: nx(*x, chunk_size=L)
        except ImportError as err:
            print("NX-AI not importable:", err)
    th = B * S * NH
    flops = th * (4 * DQK * DV + 2 * L * (DQK + DV)) + th * (10 * DQK * DV + 2 * L * (3 * DQK + 2 * DV))
    counts = dict.fromkeys(runs, flops)
    inputs = dict.fromkeys(runs, (leaves, grad))
    if args.flash:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash(q, k, v, *_):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        fl = [torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        runs[f"SDPA flash (D{DQK})"] = flash
        counts[f"SDPA flash (D{DQK})"] = 3.5 * th * 2 * S * DQK
        inputs[f"SDPA flash (D{DQK})"] = (fl, torch.randn_like(fl[0]))
    for label, run in runs.items():
        leaves, grad = inputs[label]
        with torch.no_grad():
            fwd = bench(lambda run=run, leaves=leaves: run(*leaves))

        def step(run=run, leaves=leaves, grad=grad):
            run(*leaves).backward(grad)

        fb = bench(step, grad_to_none=leaves)
        rate = counts[label] / fb / 1e9
        print(f"TIME {label} {args.shape} {torch.cuda.get_device_name()}: fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms "
              f"({rate:.0f} TFLOP/s, {100 * rate / peak:.1f}% of the measured {peak:.0f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
