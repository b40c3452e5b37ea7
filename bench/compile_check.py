"""Does `train --compile` compute the same training step? One batch through the `small` preset three
ways: float32 (no autocast: the reference), bf16 autocast eager (what `train` runs without
--compile) and bf16 autocast compiled (``compile_for_training``, what `train --compile` runs), same
weights, same batch; the loss and every parameter's gradient of the two bf16 runs against the
float32 one (norm-wise relative error, and the global gradient's). Compiled numerics are fine when
their errors are those of the eager bf16 run. CUDA only.

    python bench/compile_check.py [--preset small] [--batch 4] [--seq 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools

import torch
from xlstm_edge.kernels import dispatch

from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


def run(model, x, y, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss, _ = model(x, labels=y)
    loss.backward()
    return loss.detach().double(), {n: p.grad.detach().double() for n, p in model.named_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = xLSTMConfig.from_preset(args.preset)
    model = xLSTMForCausalLM(cfg).cuda().train()
    kernel = functools.partial(dispatch.mlstm_chunkwise, backend="triton", keep_states=True)
    model.set_chunkwise_kernel(torch.compiler.disable(kernel))
    model.set_slstm_kernel(torch.compiler.disable(functools.partial(dispatch.slstm_scan, backend="triton")))
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda")
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda")
    ref_loss, ref = run(model, x, y, autocast=False)
    runs = {"eager bf16": run(model, x, y, autocast=True)}
    model.compile_for_training()
    run(model, x, y, autocast=True)  # compiles
    runs["compiled bf16"] = run(model, x, y, autocast=True)
    ref_all = torch.cat([g.flatten() for g in ref.values()])
    print(f"{args.preset} B{args.batch} S{args.seq} seed {args.seed}: float32 loss {ref_loss.item():.6f}")
    for label, (loss, grads) in runs.items():
        flat = torch.cat([grads[n].flatten() for n in ref])
        glob = ((flat - ref_all).norm() / ref_all.norm()).item()
        per = {n: ((grads[n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in ref.items()}
        worst = sorted(per.items(), key=lambda kv: -kv[1])[:3]
        print(f"  {label:14s} loss {loss.item():.6f} (rel {abs(loss - ref_loss).item() / ref_loss.item():.1e}); "
              f"gradient rel err {glob:.2e} (global), median parameter {sorted(per.values())[len(per) // 2]:.2e}, "
              f"worst " + ", ".join(f"{n} {e:.2e}" for n, e in worst))  # fmt: skip


if __name__ == "__main__":
    main()
