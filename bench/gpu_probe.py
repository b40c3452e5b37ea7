"""One chunkwise mLSTM forward + backward at a given shape and launch config, then a check against float64.

Run in its own process per configuration (an illegal address poisons the CUDA context):
    python3 bench/gpu_probe.py B NH S DQK DV dtype [key=value ...]
keys: chunk, block_k, block_v, num_warps_output, num_stages, block_k_states, block_v_states.
    python3 bench/gpu_probe.py slstm B S NH DH       (the sLSTM kernels, float32, with a timing)
Prints one line: the configuration, then OK with the relative errors, or the error.
"""

from __future__ import annotations

import sys

import torch


def slstm(B: int, S: int, NH: int, DH: int) -> int:
    import triton
    from xlstm_edge.kernels.slstm import slstm_scan_triton

    from xlstm_edge.slstm import slstm_scan

    label = f"slstm B{B} S{S} NH{NH} DH{DH}"
    wx = torch.randn(B, S, 4, NH, DH, device="cuda", requires_grad=True)
    R = (torch.randn(NH, DH, 4 * DH, device="cuda") / DH**0.5).requires_grad_()
    try:
        y, _ = slstm_scan_triton(wx, R)
        g = torch.randn_like(y)
        y.backward(g)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001  reported, the process exits non-zero
        print(f"{label}: FAILED {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        return 1
    wx64, R64 = (t.detach().double().requires_grad_() for t in (wx, R))
    y64, _ = slstm_scan(wx64, R64)
    y64.backward(g.double())
    rel = {n: ((a.double() - b).norm() / b.norm()).item()
           for n, a, b in (("y", y, y64), ("dwx", wx.grad, wx64.grad), ("dR", R.grad, R64.grad))}
    ms = triton.testing.do_bench(lambda: slstm_scan_triton(wx, R)[0].backward(g), warmup=5, rep=50)
    print(f"{label}: OK " + " ".join(f"{n}={e:.1e}" for n, e in rel.items()) + f" fwd+bwd {ms:.2f} ms", flush=True)
    return 0


def main() -> int:
    if sys.argv[1] == "slstm":
        return slstm(*(int(x) for x in sys.argv[2:6]))
    B, NH, S, DQK, DV = (int(x) for x in sys.argv[1:6])
    dtype = getattr(torch, sys.argv[6])
    opts = dict(kv.split("=") for kv in sys.argv[7:])
    chunk = int(opts.pop("chunk", 64))
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton

    from xlstm_edge.mlstm import mlstm_chunkwise

    config = ChunkwiseConfig(**{k: int(v) for k, v in opts.items()})
    label = f"B{B} NH{NH} S{S} {DQK}/{DV} {sys.argv[6]} L{chunk} {opts}"
    dev = "cuda"
    q, k = (torch.randn(B, NH, S, DQK, device=dev).to(dtype) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=dev).to(dtype)
    i = torch.randn(B, NH, S, device=dev)
    f = torch.randn(B, NH, S, device=dev) + 3
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
    try:
        h, _ = mlstm_chunkwise_triton(*leaves, chunk_size=chunk, config=config)
        grad = torch.randn_like(h)
        h.backward(grad)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001  reported, the process exits non-zero
        print(f"{label}: FAILED {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        return 1
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    h64, _ = mlstm_chunkwise(*leaves64, chunk_size=64)
    h64.backward(grad.double())
    errs = {"h": h, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
    refs = {"h": h64, "dq": leaves64[0].grad, "dk": leaves64[1].grad, "dv": leaves64[2].grad}
    rel = {n: ((errs[n].double() - refs[n]).norm() / refs[n].norm()).item() for n in errs}
    print(f"{label}: OK " + " ".join(f"{n}={e:.1e}" for n, e in rel.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
