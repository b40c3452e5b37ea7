#!/usr/bin/env bash
# One device call (issue 16, fourth session): every GPU test (bench/gpu_check.sh STAGES=tests:
# tests/kernels/test_gpu.py and the `gpu` tests of tests/test_train.py) beside bench/gpu_memcheck.sh,
# while bench/glue_probe.py compiles its variants; then, on the idle GPU, bench/glue_probe.py's
# profile, per-kernel variants and end-to-end timings (with NX-AI limit_chunk from .whl/).
#     OUT=/tmp/out bash bench/gpu_glue.sh          (GLUE_STAGES: any of "verify time", default both)
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
GLUE_STAGES=${GLUE_STAGES:-verify time}
has() { [[ " $GLUE_STAGES " == *" $1 "* ]]; }
{
    machine_header
    cat COMMIT 2>/dev/null || true
    echo "16-bit launch override: ${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-none}"
} 2>&1 | tee "$OUT/glue.log"
(timeout "${WARM_TIMEOUT:-200}" python3 bench/glue_probe.py warm >"$OUT/warm.log" 2>&1) &
warm_pid=$!
if has verify; then
    { tests_beside_memcheck "${TESTS_TIMEOUT:-280}" "${MEMCHECK_TIMEOUT:-300}"
      grep -E "passed|failed|^FAILED|rror" "$OUT/gpu_tests.log" | tail -n 12; } 2>&1 | tee -a "$OUT/glue.log"
fi
wait $warm_pid
grep WARM "$OUT/warm.log" | tee -a "$OUT/glue.log"
if has time; then
    timeout "${PROFILE_TIMEOUT:-50}" python3 bench/glue_probe.py --parts profile 2>&1 | tee -a "$OUT/glue.log"
    timeout "${KERNELS_TIMEOUT:-110}" python3 bench/glue_probe.py --parts kernels 2>&1 | tee -a "$OUT/glue.log"
    timeout "${E2E_TIMEOUT:-130}" python3 bench/glue_probe.py --parts e2e --nxai 2>&1 | tee -a "$OUT/glue.log"
fi
