"""CPU forward speed: our PyTorch model vs Hugging Face transformers' xLSTM, same weights, same run.

    .venv/bin/python bench/cpu_forward.py                      # small preset, 2 threads, 512 / 128
    .venv/bin/python bench/cpu_forward.py --preset tiny --prefill 64 --decode 32   # quick check

Prefill: one forward over a prompt of --prefill tokens (ours: chunkwise form, logits of the last
position only, which is all a prompt needs; transformers: its forward, logits for every position).
Decode: greedy generation of --decode tokens after a 16-token prompt (ours: one-step form with the
recurrent state; transformers: generate(do_sample=False) with its cache). Medians of --repeat runs.
Prints a markdown table; not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from xlstm_edge import xLSTMConfig, xLSTMForCausalLM


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_models(preset: str):
    import transformers

    torch.manual_seed(0)
    ours = xLSTMForCausalLM(xLSTMConfig.from_preset(preset)).eval()
    hf_config = transformers.xLSTMConfig(**ours.config.to_hf_dict())
    hf = transformers.xLSTMForCausalLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, hf


def our_greedy(model: xLSTMForCausalLM, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    logits, state = model(prompt, last_only=True)
    out = []
    token = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new_tokens):
        out.append(int(token))
        logits, state = model(token, state)
        token = logits[:, -1].argmax(-1, keepdim=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, hf = build_models(args.preset)
    ours.column_major_linears_()  # what the runtime's torch backend does: faster M=1 matmuls on CPU
    vocab = ours.config.vocab_size
    long_prompt = torch.randint(0, vocab, (1, args.prefill))
    short_prompt = torch.randint(0, vocab, (1, 16))

    with torch.inference_mode():
        # same logits first: a speed comparison of different functions would mean nothing
        a, _ = ours(long_prompt[:, :64])
        b = hf(long_prompt[:, :64]).logits
        max_diff = (a - b).abs().max().item()

        ours_prefill = timed(lambda: ours(long_prompt, last_only=True), args.repeat)
        hf_prefill = timed(lambda: hf(long_prompt, use_cache=False), args.repeat)

        ours_tokens: list[int] = []
        ours_decode = timed(lambda: ours_tokens.extend(our_greedy(ours, short_prompt, args.decode)), args.repeat)

        def hf_generate():
            hf.generate(short_prompt, max_new_tokens=args.decode, min_new_tokens=args.decode, do_sample=False,
                        pad_token_id=ours.config.pad_token_id)

        hf_decode = timed(hf_generate, max(1, args.repeat - 1))

    rows = [
        ("prefill", args.prefill, args.prefill / ours_prefill, args.prefill / hf_prefill),
        ("decode (greedy)", args.decode, args.decode / ours_decode, args.decode / hf_decode),
    ]
    print(f"# cpu_forward: preset {args.preset} ({ours.num_params() / 1e6:.1f} M params), {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"# max |logits ours - transformers| on 64 tokens: {max_diff:.2e}")
    print("| phase | tokens | xlstm-edge tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|---|")
    for phase, n, ours_rate, hf_rate in rows:
        print(f"| {phase} | {n} | {ours_rate:.1f} | {hf_rate:.1f} | {ours_rate / hf_rate:.2f}x |")


if __name__ == "__main__":
    main()
