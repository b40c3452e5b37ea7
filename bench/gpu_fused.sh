#!/usr/bin/env bash
# One device call for the fused forward (issue 16): bench/fused_sweep.py (launch sweep at 7B heads, each
# launch in its own process and checked against the two-kernel h, then timings with NX-AI limit_chunk
# from .whl/), then the GPU tests selected by $TESTS_K (default "fused"; empty: none) with the sweep's
# best launch in force (XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT) beside the same tests under memcheck (skipped
# when the best is LAUNCH_DEFAULTS' fused launch, unless TESTS_ALWAYS is set).
#     OUT=/tmp/out bash bench/gpu_fused.sh
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
machine_header 2>&1 | tee "$OUT/fused.log"
timeout "${SWEEP_TIMEOUT:-300}" python3 bench/fused_sweep.py --nxai ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/sweep.log"
best=$(grep "^BEST (" "$OUT/sweep.log" | tr -d '(),' | awk '{print "[0," $3 "," $4 "," $5 "]"}')
if [ -n "$best" ] && [ -z "${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-}" ]; then
    export XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT="{\"fused\": $best}"
fi
echo "16-bit launch override: ${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-none}" | tee -a "$OUT/fused.log"
cat >"$SHADOW/run_gpu_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-s", "-rA", "-p", "no:cacheprovider", "tests/kernels/test_gpu.py"] + sys.argv[1:]))
PY
K=${TESTS_K-fused}  # empty: no tests this call
if [ "$best" = "[0,64,8,2]" ] && [ -z "${TESTS_ALWAYS:-}" ]; then
    echo "best launch = the default fused launch, whose tests and memcheck ran before: tests skipped" | tee -a "$OUT/fused.log"
    K=""
fi
if [ -n "$K" ]; then
    (timeout "${TESTS_TIMEOUT:-240}" python3 "$SHADOW/run_gpu_tests.py" -k "$K" >"$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?" >"$OUT/tests_rc") &
    p1=$!
    (MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-300} bash bench/gpu_memcheck.sh -k "$K" >"$OUT/memcheck_summary" 2>&1) &
    p2=$!
    wait $p1 $p2
    cat "$OUT/tests_rc" "$OUT/memcheck_summary" | tee -a "$OUT/fused.log"
    grep -E "^(fused|chunkwise)|passed|failed|^FAILED" "$OUT/gpu_tests.log" | tail -n 40 >>"$OUT/fused.log"
    grep -E "passed|failed|^FAILED" "$OUT/gpu_tests.log" | tail -n 5
fi
