#!/usr/bin/env bash
# A/B of the chunkwise kernels' precision in one device run: kernels of an older commit against the
# working tree, then the GPU tests and the 7B-head benchmark at S 8k. Results under $OUT.
# Prepare here (the old kernels travel in .gpu_ab/, listed in .git/info/exclude; carry it and .whl):
#     mkdir -p .gpu_ab && git archive <old commit> kernels | tar -x -C .gpu_ab
# then on the device: bash bench/gpu_precision_ab.sh   (used on 2026-11-23 with fe75999)
set -o pipefail; export PYTHONUNBUFFERED=1
ROOT=$(pwd)
rm -rf /tmp/old && mkdir -p /tmp/old $OUT/old && cp -r xlstm_edge bench tests /tmp/old/ && cp -r .gpu_ab/kernels /tmp/old/kernels
(cd /tmp/old && for S in 333 4096; do OUT=$OUT/old STAGES=precision PRECISION_SEEDS=4 PRECISION_CHUNKS=64 \
   PRECISION_DTYPES=bfloat16 PRECISION_EXTRA="--seq $S" timeout 120 bash bench/gpu_check.sh > /dev/null 2>&1; done) & OLD=$!
OUT=$OUT PRECISION_SEEDS=4 PRECISION_CHUNKS=32,64 STAGES="precision tests" timeout 200 bash bench/gpu_check.sh > $OUT/new.log 2>&1
echo "new part rc $?"
OUT=$OUT/n2 PRECISION_SEEDS=4 PRECISION_CHUNKS=64 PRECISION_DTYPES=bfloat16 PRECISION_EXTRA="--seq 4096" STAGES=precision timeout 100 bash bench/gpu_check.sh > /dev/null 2>&1
wait $OLD; echo old done
OUT=$OUT/b SHAPES=8x256x512 SEQS=8192 STAGES=bench timeout 150 bash bench/gpu_check.sh > $OUT/bench.log 2>&1; echo "bench rc $?"
cat $OUT/old/kernel_precision.md $OUT/kernel_precision.md $OUT/n2/kernel_precision.md | grep -v "^|---"
grep -h "exit code\|passed\|failed\|^E  " $OUT/gpu_check.log $OUT/gpu_tests.log | head; grep "^| ours\|^| NX\|^| SDPA" $OUT/b/gpu_check.log
