"""Reference logits and final states of a checkpoint, computed on the GPU with our Triton kernels.

    python3 bench/gpu_reference.py CKPT OUT.safetensors          # on the GPU machine (fp32, Triton)

Fixed prompts (PROMPTS below, byte-level), chunkwise form through `xlstm_edge.kernels.dispatch`
(Triton), float32 with TF32 off. Writes, per prompt p: `logits.{p}` (S, V) and every final state
tensor `state.{p}.{layer}.{name}`, plus metadata (prompts, versions, device). CPU tests compare the
PyTorch model, and exported graphs, against this file (tests/test_gpu_reference.py).
"""

from __future__ import annotations

import functools
import json
import sys

import torch
from safetensors.torch import save_file

from xlstm_edge.checkpoint import load_checkpoint
from xlstm_edge.tokenizer import load_tokenizer

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    ",
    "class Parser:\n    \"\"\"A small recursive-descent parser.\"\"\"\n\n    def __init__(self, text):\n",
    "for i in range(10):\n    if i % 3 == 0:\n        print(i)\n    else:\n        continue\n" * 3,
]


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    ckpt, out = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = load_checkpoint(ckpt).cuda().eval()
    from xlstm_edge.kernels import dispatch

    model.set_chunkwise_kernel(functools.partial(dispatch.mlstm_chunkwise, backend="triton"))
    tokenizer = load_tokenizer(ckpt)
    tensors = {}
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            ids = torch.tensor([tokenizer.encode(prompt)], device="cuda")
            logits, state = model(ids)
            tensors[f"logits.{p}"] = logits[0].float().cpu().contiguous()
            for layer, tensors_of_layer in enumerate(state):
                for name, value in tensors_of_layer.items():
                    tensors[f"state.{p}.{layer}.{name}"] = value[0].float().cpu().contiguous()
    import triton

    meta = {"prompts": json.dumps(PROMPTS), "torch": torch.__version__, "triton": triton.__version__,
            "device": torch.cuda.get_device_name(), "form": "chunkwise (Triton kernels), float32, TF32 off"}
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out}: {len(tensors)} tensors for {len(PROMPTS)} prompts on {meta['device']}")


if __name__ == "__main__":
    main()
