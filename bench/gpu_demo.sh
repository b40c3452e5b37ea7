#!/usr/bin/env bash
# Train the embedded demo model on the GPU machine with our Triton kernels, sample from it, and write
# the GPU reference logits. Run through the device tool from the repo root:
#     bash bench/gpu_demo.sh            (results under $OUT: model files, log, loss.png, reference)
set -euo pipefail
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RUN=/tmp/demo-run
rm -rf "$RUN"
# 6 mLSTM blocks, D 128, 2 heads (DQK 32, DV 64), byte-level vocab 260: ~1.35 M params, ~5.4 MB fp32
python3 -m xlstm_edge.train --out "$RUN" --preset tiny \
  --set hidden_size=128 --set num_hidden_layers=6 --set num_heads=2 --set chunk_size=64 \
  --steps "${STEPS:-4000}" --batch-size 64 --seq-len 256 --lr 4e-3 --min-lr 4e-4 --warmup 200 \
  --eval-every 500 --eval-batches 16 --max-minutes "${MAX_MINUTES:-5}" --save-every "${STEPS:-4000}" --log-every 100 --kernels "${KERNELS:-triton}" 2>&1 \
  | tr '\r' '\n' | grep -v "it/s]$" | tail -n 40
CKPT=$(ls -d "$RUN"/checkpoint-* | tail -n 1)
python3 bench/gpu_reference.py "$CKPT" "$OUT/gpu_reference.safetensors" || echo "GPU reference FAILED"
python3 - "$CKPT" <<'PY'
import sys, torch
from xlstm_edge.checkpoint import load_checkpoint
from xlstm_edge.tokenizer import load_tokenizer
ckpt = sys.argv[1]
model, tok = load_checkpoint(ckpt).eval(), load_tokenizer(ckpt)
torch.manual_seed(0)
for prompt in ["import ", "def parse(self, text):\n", "class "]:
    ids = torch.tensor([tok.encode(prompt)])
    logits, state = model(ids)
    out = []
    for _ in range(200):
        probs = torch.softmax(logits[0, -1, :256] / 0.7, -1)
        nxt = int(torch.multinomial(probs, 1))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
    print("=" * 20, repr(prompt)); print(prompt + tok.decode(out))
PY
cp "$CKPT"/config.json "$CKPT"/model.safetensors "$CKPT"/tokenizer.json "$CKPT"/tokenizer_config.json "$OUT"/
cp "$RUN"/train_log.jsonl "$RUN"/loss.png "$OUT"/
ls -la "$OUT"
