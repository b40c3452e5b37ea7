#!/usr/bin/env bash
# One device run for the Triton kernels, results under $OUT. Run from the repository root:
#     OUT=/tmp/out STAGES="precision tests memcheck train bench" bash bench/gpu_check.sh
# Stages (any subset, in this order):
#   precision  bench/kernel_precision.py: median / worst errors over PRECISION_SEEDS draws per dtype
#          and chunk size (PRECISION_CHUNKS, default 32,64,128: 128 through the autograd function)
#   tests  every GPU test: tests/kernels/test_gpu.py and the `gpu` tests of tests/test_train.py
#          (kernel vs PyTorch loss curves); nothing deselected
#   memcheck  bench/gpu_memcheck.sh: tests/kernels/test_gpu.py under compute-sanitizer memcheck
#   train  bench/gpu_train.sh: `small` preset training throughput, a demo-model run, an xLSTM[m:s]
#          model with and without the Triton sLSTM kernels
#   bench  bench/kernels.py (candidates compiled in parallel while the tests run)
# Makes `xlstm_edge` (with xlstm_edge.kernels -> kernels/) importable without pip: a shadow package
# of symlinks, imported before pytest can put the repository root first on sys.path. NX-AI's
# mlstm_kernels (a benchmark comparator only) is installed from .whl/ when that folder is there.
OUT=${OUT:-/tmp/kernels_out}
STAGES=${STAGES:-precision tests memcheck train bench}
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW, $XLSTM_SHADOW)
LOG="$OUT/gpu_check.log"
has() { [[ " $STAGES " == *" $1 "* ]]; }
{
    machine_header
    echo "import xlstm_edge.kernels.mlstm_chunkwise as m; print('kernels from', m.__file__)" >"$SHADOW/where.py"
    python3 "$SHADOW/where.py"
    echo "stages: $STAGES"
} 2>&1 | tee "$LOG"

# compile the benchmark's candidate configurations in parallel while the tests run
SHAPES=${SHAPES:-8x256x512,16x128x128}
pids=()
if has bench; then
    for j in 0 1 2 3 4; do
        python3 bench/kernels.py --warm "$j" --shapes "$SHAPES" >"/tmp/warm_$j.log" 2>&1 &
        pids+=($!)
    done
fi
# a script file (not python -c, which puts the repository root first on sys.path)
cat >"$SHADOW/run_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

args = ["-q", "-s", "-rA", "-p", "no:cacheprovider", "-m", "gpu", "tests/kernels/test_gpu.py", "tests/test_train.py"]
sys.exit(pytest.main(args + sys.argv[1:]))
PY
if has precision; then
    timeout 300 python3 bench/kernel_precision.py --seeds "${PRECISION_SEEDS:-6}" \
        --chunks "${PRECISION_CHUNKS:-32,64,128}" \
        --dtypes "${PRECISION_DTYPES:-bfloat16,float32}" ${PRECISION_EXTRA:-} --out "$OUT" 2>&1 | tee -a "$LOG"
    echo "precision exit code: ${PIPESTATUS[0]}" | tee -a "$LOG"
fi
if has tests; then
    timeout 500 python3 "$SHADOW/run_tests.py" 2>&1 | tee "$OUT/gpu_tests.log"
    echo "gpu tests exit code: ${PIPESTATUS[0]}" | tee -a "$LOG"
fi
if has memcheck; then
    bash bench/gpu_memcheck.sh 2>&1 | tee -a "$LOG"
fi
for p in "${pids[@]}"; do wait "$p"; done
if has bench; then cat /tmp/warm_*.log >>"$LOG"; fi
if has train; then
    bash bench/gpu_train.sh 2>&1 | tee "$OUT/gpu_train.log"
    echo "train exit code: ${PIPESTATUS[0]}" | tee -a "$LOG"
fi
if has bench; then
    python3 bench/kernels.py --out "$OUT" --shapes "$SHAPES" ${SEQS:+--seqs $SEQS} 2>&1 | tee -a "$LOG"
    echo "bench exit code: ${PIPESTATUS[0]}" | tee -a "$LOG"
fi
