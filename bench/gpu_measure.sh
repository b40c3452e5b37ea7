#!/usr/bin/env bash
# Issue 16 in one device call, measurements first on an idle GPU, then the correctness runs:
#   1. ncu on one chunkwise fwd+bwd at xLSTM 7B heads (B 8, NH 8, S 8192, DQK 256, DV 512, bf16;
#      bench/gpu_ncu.sh, part 1 only): per-kernel time, DRAM / SM throughput, occupancy, registers
#   2. bench/time_fwdbwd.py at that shape: ours (the default launch, and with keep_states), NX-AI
#      limit_chunk (mlstm_kernels from .whl/, when carried) and torch SDPA flash attention, one process
#   3. every GPU test (bench/gpu_check.sh STAGES=tests: tests/kernels/test_gpu.py and the `gpu` tests
#      of tests/test_train.py, nothing deselected) beside bench/gpu_memcheck.sh (test_gpu.py under
#      compute-sanitizer memcheck), the two at once
# Run from the repository root on the GPU machine:  OUT=/tmp/out bash bench/gpu_measure.sh
# MEASURE_STAGES: any subset of "ncu time verify" (default all).
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
MEASURE_STAGES=${MEASURE_STAGES:-ncu time verify}
has() { [[ " $MEASURE_STAGES " == *" $1 "* ]]; }
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/measure.log"
if has ncu; then
    (OUT=$OUT NCU_SHAPES="8 8 8192 256 512" PROFILE_TRAIN=0 bash bench/gpu_ncu.sh) 2>&1 | tail -n 8 | tee -a "$OUT/measure.log"
fi
if has time; then
    timeout "${TIME_TIMEOUT:-150}" python3 bench/time_fwdbwd.py --label "ours (default)" --nxai --flash 2>&1 | tee -a "$OUT/measure.log"
    timeout 60 python3 bench/time_fwdbwd.py --label "ours (keep_states)" --config '{"keep_states": true}' 2>&1 | tee -a "$OUT/measure.log"
fi
if has verify; then
    (OUT=$OUT STAGES=tests timeout "${TESTS_TIMEOUT:-330}" bash bench/gpu_check.sh >/dev/null 2>&1; echo "tests exit $?" >/tmp/tests_rc) &
    p1=$!
    (OUT=$OUT MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-380} bash bench/gpu_memcheck.sh >/tmp/memcheck_summary 2>&1) &
    p2=$!
    wait $p1 $p2
    { cat /tmp/tests_rc /tmp/memcheck_summary; grep -E "passed|failed|^FAILED|rror" "$OUT/gpu_tests.log" | tail -n 12; } 2>&1 | tee -a "$OUT/measure.log"
fi
