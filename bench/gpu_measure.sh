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
{
    machine_header
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
    { tests_beside_memcheck "${TESTS_TIMEOUT:-330}" "${MEMCHECK_TIMEOUT:-380}"; grep -E "passed|failed|^FAILED|rror" "$OUT/gpu_tests.log" | tail -n 12; } 2>&1 | tee -a "$OUT/measure.log"
fi
