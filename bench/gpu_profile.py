"""Where the GPU time goes, for ncu and torch.profiler (run on the GPU machine from bench/gpu_ncu.sh).

    python3 bench/gpu_profile.py kernel B NH S DQK DV   one chunkwise fwd+bwd after a warm-up (bf16,
                                                        default config): ncu profiles the second one
    python3 bench/gpu_profile.py train [PRESET B S]     torch.profiler over 3 training steps of the
                                                        preset (default small, 16 x 2048; bf16 autocast,
                                                        Triton kernels, fused AdamW): device time per
                                                        kernel family
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch
import torch.nn.functional as F


def kernel(B: int, NH: int, S: int, DQK: int, DV: int) -> None:
    from xlstm_edge.kernels.mlstm_chunkwise import mlstm_chunkwise_triton

    q, k = (torch.randn(B, NH, S, DQK, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    i = torch.randn(B, NH, S, device="cuda", requires_grad=True)
    f = (torch.randn(B, NH, S, device="cuda") + 3).requires_grad_()
    grad = torch.randn(B, NH, S, DV, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # the first compiles; ncu --launch-skip skips its launches
        mlstm_chunkwise_triton(q, k, v, i, f)[0].backward(grad)
    torch.cuda.synchronize()
    print("done", flush=True)


FAMILIES = (  # (label, substrings of kernel names), first match wins
    ("mLSTM chunkwise (Triton)", ("_fwd_states", "_fwd_output", "_bwd_states", "_bwd_inputs", "_bwd_delta")),
    ("sLSTM scan (Triton)", ("_slstm",)),
    ("matmul (cuBLAS / cutlass)", ("gemm", "sm90_xmma", "cutlass", "nvjet", "cublas")),
    ("optimizer (fused AdamW)", ("adam",)),
    ("cross entropy / softmax", ("softmax", "nll", "cross_entropy", "log_softmax")),
    ("norms, gates, elementwise", ("elementwise", "vectorized", "reduce", "norm", "unrolled", "index", "cat")),
)


def train(preset: str, B: int, S: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    from xlstm_edge.kernels import dispatch

    from xlstm_edge import xLSTMConfig, xLSTMForCausalLM

    cfg = xLSTMConfig.from_preset(preset)
    model = xLSTMForCausalLM(cfg).cuda().train()
    model.set_chunkwise_kernel(lambda *a: dispatch.mlstm_chunkwise(*a, backend="triton"))
    model.set_slstm_kernel(lambda *a: dispatch.slstm_scan(*a, backend="triton"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (B, S + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        step()
    end.record()
    torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    per_kernel = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", 0) or 0
        if t:
            per_kernel[ev.key] += t / 3 / 1e3
    families = defaultdict(float)
    for name, ms in per_kernel.items():
        low = name.lower()
        label = next((lab for lab, keys in FAMILIES if any(k.lower() in low for k in keys)), "other")
        families[label] += ms
    total = sum(families.values())
    print(f"{preset} B{B} S{S}: {step_ms:.1f} ms per step (events), kernels {total:.1f} ms, "
          f"{B * S / step_ms * 1e3:,.0f} tokens/s")
    for label, ms in sorted(families.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:8.2f} ms  {100 * ms / total:5.1f}%  {label}")
    print("  top kernels:")
    for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {ms:8.2f} ms  {name[:100]}")


if __name__ == "__main__":
    if sys.argv[1] == "kernel":
        kernel(*(int(a) for a in sys.argv[2:7]))
    else:
        args = sys.argv[2:]
        train(args[0] if args else "small", int(args[1]) if args else 16, int(args[2]) if args else 2048)
