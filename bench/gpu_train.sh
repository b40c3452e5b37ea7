#!/usr/bin/env bash
# Training throughput of the `small` preset (D 768, 12 blocks, 4 heads: DQK 96, DV 192; 162 M params)
# on one GPU with `xlstm-edge train` and our Triton kernels, a short demo-model run (the shape whose
# backward hit an illegal address, issue 16), and xLSTM[m:s] models with the Triton sLSTM kernels
# (--kernels triton) and without (--kernels torch: the PyTorch loop), same seed and data: tokens/s
# and the two loss curves side by side. Run from the repository root on the GPU machine:
#     OUT=/tmp/out bash bench/gpu_train.sh          (bench/gpu_check.sh calls it as its `train` stage)
# Writes train_small.jsonl / train_demo.jsonl (the runs' logs) and train_summary.txt under $OUT.
# MFU = tokens/s x FLOPs per token / peak, with FLOPs per token = 6 x (parameters less the input
# embedding) + the mLSTM cells' fwd+bwd FLOPs (bench/kernels.py's count), and peak both the measured
# bf16 matmul rate (8192^3) and the H100 SXM datasheet dense bf16 figure, 989 TFLOP/s.
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
# `python -m` puts the working directory first on sys.path: run from the shadow's folder
# train SECONDS ARGS...: one `xlstm-edge train` run under a time limit
train() { local t=$1; shift; (cd "$SHADOW" && PYTHONPATH="$SHADOW:$ROOT" timeout "$t" python3 -m xlstm_edge.train "$@"); }

RUNS=${RUNS:-small demo ms}  # any subset; smallc: the `small` run with --compile (torch.compile)
has() { [[ " $RUNS " == *" $1 "* ]]; }
SMALL_STEPS=${SMALL_STEPS:-300}
BATCH=${BATCH:-16}
SEQ=${SEQ:-2048}
rm -rf /tmp/run_small /tmp/run_demo
if has small; then
echo "== small preset: batch $BATCH x seq $SEQ, bf16 autocast, Triton kernels"
train 420 --out /tmp/run_small --preset small \
    --steps $SMALL_STEPS --batch-size $BATCH --seq-len $SEQ --warmup 50 --log-every 20 --eval-every 100000 \
    --eval-batches 2 --save-every 100000 --max-minutes "${SMALL_MINUTES:-2}" --kernels triton 2>&1 \
    | tr '\r' '\n' | grep -v "step/s]$\|s/step]$" | tail -n 15
echo "small exit code: ${PIPESTATUS[0]}"
cp /tmp/run_small/train_log.jsonl "$OUT/train_small.jsonl" 2>/dev/null
fi

if has smallc; then
echo "== small preset, --compile: batch $BATCH x seq $SEQ, bf16 autocast, Triton kernels"
rm -rf /tmp/run_smallc
train 480 --out /tmp/run_smallc --preset small --compile \
    --steps $SMALL_STEPS --batch-size $BATCH --seq-len $SEQ --warmup 50 --log-every 20 --eval-every 100000 \
    --eval-batches 2 --save-every 100000 --max-minutes "${SMALLC_MINUTES:-3}" --kernels triton 2>&1 \
    | tr '\r' '\n' | grep -v "step/s]$\|s/step]$" | tail -n 15
echo "small --compile exit code: ${PIPESTATUS[0]}"
cp /tmp/run_smallc/train_log.jsonl "$OUT/train_smallc.jsonl" 2>/dev/null
fi

if has demo; then
echo "== demo model (D 128, 6 blocks, 2 heads: DQK 32, DV 64), batch 64 x seq 256, Triton kernels"
train 180 --out /tmp/run_demo --preset tiny \
    --set hidden_size=128 --set num_hidden_layers=6 --set num_heads=2 --set chunk_size=64 \
    --steps 300 --batch-size 64 --seq-len 256 --lr 4e-3 --warmup 50 --log-every 50 --eval-every 300 \
    --eval-batches 4 --save-every 100000 --max-minutes 1.5 --kernels triton 2>&1 \
    | tr '\r' '\n' | grep -v "step/s]$\|s/step]$" | tail -n 8
echo "demo exit code: ${PIPESTATUS[0]}"
cp /tmp/run_demo/train_log.jsonl "$OUT/train_demo.jsonl" 2>/dev/null
fi

# xLSTM[m:s]: tiny-ms (D 64, sLSTM block 1 of 3, 2 sLSTM heads of 32) and `small` with sLSTM blocks
# 3 and 9 (12 sLSTM heads of 64, as the sLSTM benchmark's head size)
MS_STEPS=${MS_STEPS:-40}
has ms && for ms in "tiny-ms 32 512 --preset tiny-ms" "small-ms 16 512 --preset small --set slstm_at=[3,9] --set slstm_num_heads=12"; do
    set -- $ms
    name=$1 bs=$2 sl=$3; shift 3
    for kern in triton torch; do
        rm -rf "/tmp/run_${name}_$kern"
        echo "== $name, batch $bs x seq $sl, --kernels $kern"
        train 150 --out "/tmp/run_${name}_$kern" "$@" --steps $MS_STEPS --batch-size $bs --seq-len $sl \
            --warmup 5 --log-every 5 --eval-every 100000 --eval-batches 2 --save-every 100000 --max-minutes "${MS_MINUTES:-1}" \
            --kernels $kern 2>&1 | tr '\r' '\n' | grep -v "step/s]$\|s/step]$" | tail -n 3
        cp "/tmp/run_${name}_$kern/train_log.jsonl" "/tmp/ms_${name}_$kern.jsonl" 2>/dev/null
    done
done
cat >"$SHADOW/ms_summary.py" <<'PY'
"""tokens/s (median of the windows after the first) and loss per logged step, Triton vs PyTorch sLSTM."""
import json
import statistics
import sys

for name in sys.argv[1:]:
    runs = {}
    for kern in ("triton", "torch"):
        try:
            rows = [json.loads(line) for line in open(f"/tmp/ms_{name}_{kern}.jsonl")]
        except FileNotFoundError:
            print(f"{name} {kern}: no log")
            continue
        train_rows = [r for r in rows if r.get("event") == "train"]
        runs[kern] = (rows[0].get("kernels"), train_rows)
    if len(runs) < 2:
        continue
    line = []
    for kern, (kernels, rows) in runs.items():
        tok = [r["tokens_per_s"] for r in rows][1:] or [r["tokens_per_s"] for r in rows]
        line.append(f"{kern} {kernels}: {statistics.median(tok):,.0f} tok/s over {len(rows)} windows")
    print(f"{name}: " + "; ".join(line))
    (_, a), (_, b) = runs["triton"], runs["torch"]
    pairs = [(x["step"], x["loss"], y["loss"]) for x, y in zip(a, b) if x["step"] == y["step"]]
    print("  step  loss triton  loss torch  diff")
    for step, la, lb in pairs:
        print(f"  {step:4d}  {la:11.4f}  {lb:10.4f}  {la - lb:+.4f}")
PY
has ms && (cd "$SHADOW" && python3 ms_summary.py tiny-ms small-ms) 2>&1 | tee "$OUT/train_ms.txt"

cat >"$SHADOW/train_summary.py" <<'PY'
"""Summarise the small-preset run: median tokens/s over the log windows after the first two."""
import json
import statistics
import sys

import torch

rows = [json.loads(line) for line in open(sys.argv[1])]
start = rows[0]
model, params = start["model"], start["params"]
D, V, NL, NH = model["hidden_size"], model["vocab_size"], model["num_hidden_layers"], model["num_heads"]
dqk, dv = int(D * model["qk_dim_factor"]) // NH, int(D * model["v_dim_factor"]) // NH
L = model["chunk_size"]
matmul = 6 * (params - V * D)  # lm head included, the input embedding (a lookup) left out
cell = NL * NH * (4 * dqk * dv + 2 * L * (dqk + dv) + 10 * dqk * dv + 2 * L * (3 * dqk + 2 * dv))
per_token = matmul + cell
tok = [r["tokens_per_s"] for r in rows if r.get("event") == "train"]
steady = tok[2:] or tok
med = statistics.median(steady)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
import triton  # noqa: E402

ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
peak = 2 * 8192**3 / ms / 1e9
achieved = med * per_token / 1e12
print(f"small preset: {params / 1e6:.1f} M params, heads {dqk}/{dv}, chunk {L}; windows {len(tok)}")
print(f"tokens/s median (windows 3..): {med:,.0f}  (all: {[round(t) for t in tok]})")
print(f"FLOPs/token {per_token / 1e9:.3f} G (matmuls {matmul / 1e9:.3f} G, mLSTM cells {cell / 1e9:.3f} G)")
print(f"achieved {achieved:.0f} TFLOP/s; MFU {100 * achieved / peak:.1f}% of measured bf16 matmul {peak:.0f} "
      f"TFLOP/s, {100 * achieved / 989:.1f}% of 989 TFLOP/s (datasheet dense bf16)")
print(f"peak memory: see nvidia-smi; device {torch.cuda.get_device_name()}")
PY
for run in small smallc; do
    if [ -s "$OUT/train_$run.jsonl" ]; then
        echo "== $run" | tee -a "$OUT/train_summary.txt"
        (cd "$SHADOW" && python3 train_summary.py "$OUT/train_$run.jsonl") 2>&1 | tee -a "$OUT/train_summary.txt"
    fi
done
